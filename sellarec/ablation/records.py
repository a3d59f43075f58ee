"""Read an ablation back from MLflow: the parent run's tags and one record per (cell, seed).

Selection rule (see :mod:`sellarec.ablation.tracking`): the latest parent of (ablation, profile); of its children
the FINISHED ones not tagged ``superseded=true``; per (cell, seed) the latest (start time, then run id). Nothing is
read from run folders, so the report depends on the MLflow store only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sellarec.ablation.tracking import EXPERIMENT, parent_tags
from sellarec.errors import DataError
from sellarec.experiment.tracking import PARENT_ROLE, client_for, latest_run, search_runs
from sellarec.metrics import current_names

__all__ = ["AblationRuns", "FOOTER_PARAMS", "FOOTER_TAGS", "load_ablation_runs", "selected_runs"]

FOOTER_PARAMS = ("data.dataset", "data.split", "data.max_users", "data.sample_seed", "data.warm_definition",
                 "backbone.name", "eval.max_test_samples", "eval.score_fn", "final_stage")
FOOTER_TAGS = ("data_fingerprint", "label_rule", "git_commit", "machine", "imported_from")


@dataclass(frozen=True)
class AblationRuns:
    """An ablation as stored in MLflow.

    Attributes:
        ablation: the spec name.
        profile: the size profile.
        parent: the parent run's tags (``command``, ``description``, ``git_commit``, ...).
        runs: one row per selected run, sorted by cell index, cell and seed: ``cell, seed, kind, index,
            description, run_id``, every metric (by its name in :mod:`sellarec.metrics`, legacy names renamed),
            :data:`FOOTER_PARAMS` and :data:`FOOTER_TAGS`.
    """

    ablation: str
    profile: str
    parent: dict[str, str]
    runs: pd.DataFrame


def _record(run: Any) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    cell = tags["cell"]
    record: dict[str, Any] = {
        "cell": cell, "seed": int(tags["seed"]), "run_id": run.info.run_id,
        "kind": tags.get("cell_kind", "full" if cell == "full" else "ablation"),
        "index": int(tags.get("cell_index", 10**6)), "description": tags.get("description", ""),
    }
    record.update({key: params.get(key, "") for key in FOOTER_PARAMS})
    record.update({key: tags.get(key, "") for key in FOOTER_TAGS})
    record.update({key: float(value) for key, value in current_names(dict(run.data.metrics)).items()})
    return record


def _client(tracking_uri: str) -> Any:
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise DataError(f"MLflow store {tracking_uri} does not exist; run ablations/run.py first or pass "
                        "--tracking-uri")
    return client_for(tracking_uri)


def selected_runs(tracking_uri: str, ablation: str, profile: str,
                  experiment: str = EXPERIMENT) -> tuple[Any, list[Any]]:
    """The parent run of ``ablation`` on ``profile`` and its selected children (module docstring), as MLflow runs.

    Raises:
        DataError: no such store, experiment, parent run or finished run.
    """
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    parent = (latest_run(client, found.experiment_id, {"role": PARENT_ROLE, **parent_tags(ablation, profile)})
              if found is not None else None)
    hint = f"run `python ablations/run.py --spec {ablation} --profile {profile}` first"
    if parent is None:
        raise DataError(f"no ablation '{ablation}' on profile '{profile}' in {tracking_uri}; {hint}")
    latest: dict[tuple[str, str], Any] = {}
    for run in search_runs(client, found.experiment_id, {"mlflow.parentRunId": parent.info.run_id}):
        tags = run.data.tags
        if run.info.status != "FINISHED" or tags.get("superseded") == "true" or "cell" not in tags:
            continue
        ident = (tags["cell"], tags["seed"])
        if ident not in latest or (run.info.start_time, run.info.run_id) > (latest[ident].info.start_time,
                                                                             latest[ident].info.run_id):
            latest[ident] = run
    if not latest:
        raise DataError(f"ablation '{ablation}' on profile '{profile}' has no finished run in {tracking_uri}; {hint}")
    return parent, list(latest.values())


def load_ablation_runs(tracking_uri: str, ablation: str, profile: str, experiment: str = EXPERIMENT) -> AblationRuns:
    """Read the current runs of ``ablation`` on ``profile`` from the MLflow store at ``tracking_uri``.

    Raises:
        DataError: no such store, experiment, parent run or finished run.
    """
    parent, runs = selected_runs(tracking_uri, ablation, profile, experiment)
    frame = pd.DataFrame([_record(run) for run in runs])
    frame = frame.sort_values(["index", "cell", "seed"], kind="stable").reset_index(drop=True)
    return AblationRuns(ablation, profile, dict(sorted(parent.data.tags.items())), frame)
