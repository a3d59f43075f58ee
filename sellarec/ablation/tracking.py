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
from typing import Any

from sellarec.config import SellaConfig, to_flat_dict
from sellarec.experiment.tracking import RUNNING, latest_run, log_values, search_runs
from sellarec.experiment.trial_metrics import cache_flags, split_metrics

__all__ = ["EXPERIMENT", "PARENT_ROLE", "SPLITS", "METRIC_NAMES", "find_parent", "start_parent", "child_runs",
           "create_child", "pipeline_metrics", "label_rule"]

EXPERIMENT = "ablations"
PARENT_ROLE = "parent"
SPLITS = ("valid", "valid_warm", "valid_cold", "test", "test_warm", "test_cold")
METRIC_NAMES = ("auc", "uauc", "uauc_users", "rows", "auc_ci_low", "auc_ci_high", "uauc_ci_low", "uauc_ci_high")
_STAGES = ("stage1", "stage2", "stage3")


def find_parent(client: Any, experiment_id: str, ablation: str, profile: str) -> Any | None:
    """The latest parent run of ``ablation`` on ``profile`` (by start time, then run id), or None."""
    return latest_run(client, experiment_id, {"ablation": ablation, "profile": profile, "role": PARENT_ROLE})


def start_parent(client: Any, experiment_id: str, ablation: str, profile: str, tags: Mapping[str, str]) -> str:
    """Reuse (resume) or create the parent run, mark it RUNNING and update ``tags``; returns its id."""
    parent = find_parent(client, experiment_id, ablation, profile)
    if parent is None:
        run = client.create_run(experiment_id, run_name=f"{ablation} ({profile})",
                                tags={"ablation": ablation, "profile": profile, "role": PARENT_ROLE})
        run_id = run.info.run_id
    else:
        run_id = parent.info.run_id
        client.update_run(run_id, status=RUNNING)
    log_values(client, run_id, tags=tags)
    return run_id


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """Every child run of ``parent_id``, any status."""
    return search_runs(client, experiment_id, {"mlflow.parentRunId": parent_id})


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
    flat = split_metrics(final, SPLITS, METRIC_NAMES)
    if "trainable_params" in final:
        flat["trainable_params"] = float(final["trainable_params"])
    seconds = {s: float(metrics[s]["seconds"]) for s in _STAGES if isinstance(metrics.get(s), dict)
               and "seconds" in metrics[s]}
    flat["compute_seconds"] = math.fsum(seconds.values())
    flat.update({f"stage_seconds/{s}": v for s, v in seconds.items()})
    flat.update(cache_flags(metrics))
    return flat


def label_rule(cfg: SellaConfig) -> str:
    """The label rule of ``cfg.data`` in words, e.g. ``rating >= 4 is positive (ml100k default)``."""
    from sellarec.data.protocol import DEFAULT_POSITIVE_RATING

    if cfg.data.positive_rating is not None:
        return f"rating >= {cfg.data.positive_rating:g} is positive (data.positive_rating)"
    return f"rating >= {DEFAULT_POSITIVE_RATING[cfg.data.dataset]:g} is positive ({cfg.data.dataset} default)"

