"""MLflow bookkeeping of ablations: one parent run per (spec, profile), one child run per cell x seed.

Only the driver writes (STACK.md §5: the experiment is created before Ray starts, child runs are opened and closed
by the driver, so no run is left RUNNING by a stopped trial). Tags name everything the report needs:

* parent: ``ablation``, ``profile``, ``role=parent``, ``command``, ``git_commit``;
* child: ``ablation``, ``profile``, ``cell``, ``seed``, ``run_key``, ``cell_kind``, ``cell_index``, ``description``,
  ``data_fingerprint``, ``label_rule``, ``git_commit``, and ``superseded=true`` once a newer spec replaced it.

The report keeps the FINISHED, non-superseded children of the latest parent and, per (cell, seed), the latest one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sellarec.config import SellaConfig, to_flat_dict
from sellarec.metrics import metric_key

__all__ = ["EXPERIMENT", "PARENT_ROLE", "SPLITS", "METRIC_NAMES", "default_tracking_uri", "client_for",
           "ensure_experiment", "find_parent", "start_parent", "child_runs", "create_child", "log_values",
           "pipeline_metrics", "label_rule"]

EXPERIMENT = "ablations"
PARENT_ROLE = "parent"
SPLITS = ("valid", "valid_warm", "valid_cold", "test", "test_warm", "test_cold")
METRIC_NAMES = ("auc", "uauc", "uauc_users", "rows", "auc_ci_low", "auc_ci_high", "uauc_ci_low", "uauc_ci_high")
_STAGES = ("stage1", "stage2", "stage3")


def default_tracking_uri(root: Path) -> str:
    """``sqlite:///<root>/mlflow/mlflow.db`` (MLflow 3 refuses the file store; STACK.md §5)."""
    return f"sqlite:///{(Path(root) / 'mlflow' / 'mlflow.db').resolve()}"


def client_for(tracking_uri: str):
    """An ``MlflowClient`` on ``tracking_uri``; a sqlite file's folder is created first."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name``, created (in the driver, before any trial) when missing.

    Without ``artifact_location``, a sqlite store keeps artifacts in ``artifacts/`` beside its database file
    (MLflow's default is ``./mlruns`` under whatever the current folder is).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = client.tracking_uri
    if artifact_location is None and uri.startswith("sqlite:///"):
        artifact_location = str(Path(uri[len("sqlite:///"):]).parent / "artifacts")
    return client.create_experiment(name, artifact_location=artifact_location)


def _search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent(client: Any, experiment_id: str, ablation: str, profile: str) -> Any | None:
    """The latest parent run of ``ablation`` on ``profile`` (by start time, then run id), or None."""
    runs = _search(client, experiment_id, f"tags.ablation = '{ablation}' and tags.profile = '{profile}' "
                                          f"and tags.role = '{PARENT_ROLE}'")
    return max(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id), default=None)


def start_parent(client: Any, experiment_id: str, ablation: str, profile: str, tags: Mapping[str, str]) -> str:
    """Reuse (resume) or create the parent run, mark it RUNNING and update ``tags``; returns its id."""
    parent = find_parent(client, experiment_id, ablation, profile)
    if parent is None:
        run = client.create_run(experiment_id, run_name=f"{ablation} ({profile})",
                                tags={"ablation": ablation, "profile": profile, "role": PARENT_ROLE})
        run_id = run.info.run_id
    else:
        run_id = parent.info.run_id
        client.update_run(run_id, status="RUNNING")
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """Every child run of ``parent_id``, any status."""
    return _search(client, experiment_id, f"tags.mlflow.parentRunId = '{parent_id}'")


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def log_values(client: Any, run_id: str, *, params: Mapping[str, Any] | None = None,
               metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None) -> None:
    """Log params, metrics and tags in batches (MLflow takes at most 100 params or tags per batch)."""
    from mlflow.entities import Metric, Param, RunTag

    items = [Param(k, _text(v)) for k, v in sorted((params or {}).items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])
    tag_items = [RunTag(k, str(v)) for k, v in sorted((tags or {}).items())]
    for start in range(0, len(tag_items), 100):
        client.log_batch(run_id, tags=tag_items[start:start + 100])
    metric_items = [Metric(k, float(v), 0, 0) for k, v in sorted((metrics or {}).items())]
    for start in range(0, len(metric_items), 1000):
        client.log_batch(run_id, metrics=metric_items[start:start + 1000])


def create_child(client: Any, experiment_id: str, parent_id: str, cfg: SellaConfig, tags: Mapping[str, str]) -> str:
    """Open a RUNNING child run with the flat configuration as params; returns its id."""
    run = client.create_run(experiment_id, run_name=f"{tags['cell']} seed={tags['seed']}",
                            tags={"mlflow.parentRunId": parent_id, **tags})
    log_values(client, run.info.run_id, params=to_flat_dict(cfg))
    return run.info.run_id


def pipeline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flat numbers of a ``PipelineResult.metrics``: the final stage's ``split/name`` metrics and the costs.

    Returns:
        ``test/auc``, ``test_warm/uauc``, ... (:data:`SPLITS` x :data:`METRIC_NAMES`, where present),
        ``trainable_params`` (where the final stage reports it), ``compute_seconds`` (sum of every stage's own
        seconds, also for cache hits: what training the configuration costs), ``stage_seconds/<stage>`` and
        ``cache/<stage>`` (1 hit, 0 miss).
    """
    final = metrics[metrics["final"]]
    flat: dict[str, float] = {}
    for split in SPLITS:
        for name in METRIC_NAMES:
            value = final.get(split, {}).get(name)
            if value is not None:
                flat[metric_key(split, name)] = float(value)
    if "trainable_params" in final:
        flat["trainable_params"] = float(final["trainable_params"])
    seconds = {s: float(metrics[s]["seconds"]) for s in _STAGES if isinstance(metrics.get(s), dict)
               and "seconds" in metrics[s]}
    flat["compute_seconds"] = math.fsum(seconds.values())
    flat.update({f"stage_seconds/{s}": v for s, v in seconds.items()})
    flat.update({f"cache/{s}": float(state == "hit") for s, state in metrics.get("cache", {}).items()})
    return flat


def label_rule(cfg: SellaConfig) -> str:
    """The label rule of ``cfg.data`` in words, e.g. ``rating >= 4 is positive (ml100k default)``."""
    from sellarec.data.protocol import DEFAULT_POSITIVE_RATING

    if cfg.data.positive_rating is not None:
        return f"rating >= {cfg.data.positive_rating:g} is positive (data.positive_rating)"
    return f"rating >= {DEFAULT_POSITIVE_RATING[cfg.data.dataset]:g} is positive ({cfg.data.dataset} default)"

