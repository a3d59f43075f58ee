"""Flat numbers of a finished pipeline run for Tune and MLflow, shared by sweep and ablation trials."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sellarec.metrics import metric_key

__all__ = ["split_metrics", "cache_flags"]


def split_metrics(stage: Mapping[str, Any], splits: Iterable[str], names: Iterable[str]) -> dict[str, float]:
    """``{split}/{name}`` numbers (:func:`~sellarec.metrics.metric_key`) of one stage's metrics, where present."""
    names = tuple(names)
    return {metric_key(split, name): float(stage[split][name]) for split in splits for name in names
            if stage.get(split, {}).get(name) is not None}


def cache_flags(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``cache/<stage>``: 1 when the stage came from the cache, 0 when it was computed."""
    return {f"cache/{stage}": 1.0 if state == "hit" else 0.0 for stage, state in metrics.get("cache", {}).items()}
