"""What an ablation adds to the experiment layer's MLflow schema (:mod:`sellarec.experiment.tracking`).

Only the driver writes (STACK.md §5). One parent run per (spec, profile), reused by every invocation, with tags
``ablation``, ``profile``, ``command``, ``git_commit``, ``machine``, ``mode``, ``jobs``, ``description``; one child
run per cell x seed, with the schema's tags plus ``ablation``, ``profile``, ``cell``, ``seed``, ``cell_kind``,
``cell_index``, ``description``, ``data_fingerprint``, ``label_rule``, ``git_commit``, and ``superseded=true`` once a
newer spec replaced it.

The report keeps the FINISHED, non-superseded children of the latest parent and, per (cell, seed), the latest one.
"""

from __future__ import annotations

from collections.abc import Mapping

from sellarec.config import SellaConfig
from sellarec.experiment.tracking import RunTracker

__all__ = ["EXPERIMENT", "parent_tags", "open_parent", "label_rule"]

EXPERIMENT = "ablations"


def parent_tags(ablation: str, profile: str) -> dict[str, str]:
    """The tags that identify an ablation's parent run."""
    return {"ablation": ablation, "profile": profile}


def open_parent(tracker: RunTracker, ablation: str, profile: str, tags: Mapping[str, str]) -> str:
    """Reuse (resume) the latest parent run of ``ablation`` on ``profile`` or create it, mark it RUNNING and update
    ``tags``; returns its id."""
    parent = tracker.find_parent(parent_tags(ablation, profile))
    if parent is None:
        run_id = tracker.start_parent(f"{ablation} ({profile})", parent_tags(ablation, profile))
    else:
        run_id = parent.info.run_id
        tracker.reopen(run_id)
    tracker.set_tags(run_id, tags)
    return run_id


def label_rule(cfg: SellaConfig) -> str:
    """The label rule of ``cfg.data`` in words, e.g. ``rating >= 4 is positive (ml100k default)``."""
    from sellarec.data.protocol import DEFAULT_POSITIVE_RATING

    if cfg.data.positive_rating is not None:
        return f"rating >= {cfg.data.positive_rating:g} is positive (data.positive_rating)"
    return f"rating >= {DEFAULT_POSITIVE_RATING[cfg.data.dataset]:g} is positive ({cfg.data.dataset} default)"
