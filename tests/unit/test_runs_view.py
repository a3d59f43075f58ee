"""What the MLflow UI opens on, checked on a sqlite store without a browser (mlflow/browser_check.py renders it): the
experiments are marked model training on creation, and the link mlflow/ui.sh prints is the latest parent run's runs
view, its columns stored as the experiment's saved view.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sellarec.experiment.tracking import (EXPERIMENT_TAGS, client_for, ensure_experiment, latest_parent,
                                          latest_view_url, runs_view_url)

BASE = "http://127.0.0.1:5055"
KIND = "mlflow.experimentKind"


@pytest.fixture()
def client(tmp_path: Path):
    return client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _sweep(client, experiment_id: str, name: str, start_ms: int, trials: list[dict[str, str]]) -> str:
    """A parent run tagged as sweep ``name`` with one FINISHED child per entry of ``trials`` (its drawn params)."""
    tags = {"role": "parent", "sweep": name, "profile": "tiny"}
    parent = client.create_run(experiment_id, start_time=start_ms, run_name=name, tags=tags).info.run_id
    for index, params in enumerate(trials):
        child = client.create_run(experiment_id, start_time=start_ms + index + 1, run_name=f"{name}-{index}",
                                  tags={"mlflow.parentRunId": parent, "role": "trial", "sweep": name,
                                        "profile": "tiny", "varied": ",".join(params)}).info.run_id
        for key, value in {**params, "stage1.lr": "0.001"}.items():
            client.log_param(child, key, value)
        client.log_metric(child, "valid/auc", 0.6 + index / 100)
        client.log_metric(child, "cache/stage1", 1.0)
        client.set_terminated(child)
    return parent


def test_an_experiment_is_created_as_model_training_and_an_older_one_is_marked_once(client) -> None:
    created = ensure_experiment(client, "search-new")
    assert client.get_experiment(created).tags[KIND] == EXPERIMENT_TAGS[KIND] == "custom_model_development"

    older = client.create_experiment("search-old")
    assert KIND not in client.get_experiment(older).tags
    assert ensure_experiment(client, "search-old") == older
    assert client.get_experiment(older).tags[KIND] == "custom_model_development"

    chosen = client.create_experiment("ablations", tags={KIND: "genai_development"})   # a kind picked in the UI
    ensure_experiment(client, "ablations")
    assert client.get_experiment(chosen).tags[KIND] == "genai_development"


def test_the_link_opens_the_latest_sweeps_runs_with_its_varied_params_and_valid_auc(client) -> None:
    exp_a = ensure_experiment(client, "search-projector")
    exp_b = ensure_experiment(client, "search-lora")
    _sweep(client, exp_a, "old", 1_000, [{"stage3.lr": "0.01"}])
    newest = _sweep(client, exp_b, "new", 5_000, [{"stage1.lora.r": "8", "stage3.lr": "0.1"},
                                                  {"stage1.lora.r": "16", "stage3.lr": "0.1"}])
    _sweep(client, ensure_experiment(client, "ablations"), "later-ablation", 9_000, [])   # not a sweep

    url = latest_view_url(client, BASE + "/")

    parts = urlsplit(url)
    path, _, query = parts.fragment.partition("?")
    assert (parts.scheme, parts.netloc, path) == ("http", "127.0.0.1:5055", f"/experiments/{exp_b}/runs")
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": [newest]}
    view = json.loads(client.get_experiment(exp_b).tags[f"mlflow.sharedViewState.{newest}"])
    assert view["name"] == "new (search-lora)" and view["createdAt"] == view["updatedAt"] > 0
    assert json.loads(view["state"]) == {
        "searchFilter": "tags.sweep = 'new' and tags.profile = 'tiny'",
        "orderByKey": "metrics.`valid/auc`", "orderByAsc": False,
        "selectedColumns": ["params.`stage1.lora.r`", "params.`stage3.lr`", "metrics.`valid/auc`"]}

    assert latest_view_url(client, BASE + "/") == url   # printed again: the same view, replaced
    ablation = latest_parent(client, "ablations")
    assert latest_view_url(client, BASE, "ablations").endswith(f"viewStateShareKey={ablation.info.run_id}")


def test_no_link_without_a_sweep_and_a_url_alone_carries_the_filter_and_sort(client) -> None:
    assert latest_view_url(client, BASE) is None
    ensure_experiment(client, "search-empty")
    assert latest_view_url(client, BASE) is None

    url = runs_view_url(BASE, "3", state={"searchFilter": "tags.sweep = 'a'", "orderByKey": "metrics.`valid/auc`",
                                          "orderByAsc": False, "selectedColumns": ["params.`x`"]})
    assert url == (f"{BASE}/#/experiments/3/runs?workflowType=machine_learning&searchFilter=tags.sweep%20%3D%20%27a%27"
                   "&orderByKey=metrics.%60valid%2Fauc%60&orderByAsc=false")
