"""Ranking metrics of the CTR task (METHOD.md §6): AUC, UAUC, GAUC, user-level bootstrap CIs, warm/cold slices.

The ROC-AUC kernel is scikit-learn's. This module also declares the one metric vocabulary that trials, MLflow,
reports, ``compare`` and ``train`` share: ``{split}/{name}`` for what was measured on a split (:func:`metric_key`,
:data:`SPLITS` x :data:`SPLIT_METRICS`), ``train/...`` for training progress, ``cost/...`` for what it cost and
``cache/<stage>`` for where a stage came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

__all__ = ["auc", "uauc", "gauc", "UAUC", "bootstrap_ci", "evaluate_slices", "metric_key", "MIN_SLICE_ROWS",
           "SPLITS", "SPLIT_METRICS", "TRAIN_LOSS", "TRAIN_STEP", "COST_TRAINABLE_PARAMS", "COST_COMPUTE_SECONDS",
           "COST_TRIAL_SECONDS", "COST_PEAK_GPU_MIB", "stage_seconds_key", "cache_key", "current_names"]

# Reports leave out the AUCs of a slice scored on fewer rows than this: near AUC 0.75 with half the rows positive,
# Hanley and McNeil's standard error on 30 rows is ~0.09, an interval of about ±0.18, wider than any effect here.
MIN_SLICE_ROWS = 30


SPLITS = ("valid", "valid_warm", "valid_cold", "test", "test_warm", "test_cold")
SPLIT_METRICS = ("auc", "uauc", "uauc_users", "rows", "users", "auc_ci_low", "auc_ci_high", "uauc_ci_low",
                 "uauc_ci_high")
TRAIN_LOSS = "train/loss"                        # mean training loss since the previous evaluation
TRAIN_STEP = "train/step"                        # the final stage's optimizer step (ASHA's time attribute)
COST_TRAINABLE_PARAMS = "cost/trainable_params"  # parameters the final stage trains
COST_COMPUTE_SECONDS = "cost/compute_seconds"    # the stages' training seconds, also when cached: the config's cost
COST_TRIAL_SECONDS = "cost/trial_seconds"        # wall time of the trial in this invocation (cache hits are fast)
COST_PEAK_GPU_MIB = "cost/peak_gpu_mib"


def metric_key(split: str, name: str) -> str:
    """The one spelling of a metric name, shared by Tune, MLflow and reports: ``valid/auc``, ``test_cold/uauc``."""
    return f"{split}/{name}"


def stage_seconds_key(stage: str) -> str:
    """``cost/stage3_seconds``: a stage's own seconds (its training, or its test scoring: ``stage3_test``)."""
    return f"cost/{stage}_seconds"


def cache_key(stage: str) -> str:
    """``cache/stage1``: 1 when the stage came from the stage cache, 0 when it was computed."""
    return f"cache/{stage}"


# Names that runs logged before the vocabulary was declared once (sweep and ablation child runs of stores written
# before then); readers pass every logged dict through :func:`current_names`, so old stores keep rendering.
_LEGACY_NAMES = {"trainable_params": COST_TRAINABLE_PARAMS, "compute_seconds": COST_COMPUTE_SECONDS,
                 "trial_seconds": COST_TRIAL_SECONDS, "peak_gpu_mib": COST_PEAK_GPU_MIB,
                 "seconds": stage_seconds_key("stage3"), "stage3/step": TRAIN_STEP}


def current_names(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with legacy names (``compute_seconds``, ``stage_seconds/stage1``, ...) in today's spelling."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("stage_seconds/"):
            key = stage_seconds_key(key.split("/", 1)[1])
        out[_LEGACY_NAMES.get(key, key)] = value
    return out


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Global ROC-AUC; NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


@dataclass(frozen=True)
class UAUC:
    """Result of :func:`uauc`.

    Attributes:
        value: unweighted mean of per-user AUC (NaN when no user counts).
        n_users: users that counted (at least two rows and both labels).
        n_single_row: users skipped because they have one row.
        n_single_class: users skipped because all their rows share a label.
    """

    value: float
    n_users: int
    n_single_row: int
    n_single_class: int


def _per_user_auc(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Per-user AUC for users with both classes: (users, aucs, positive counts, n_single_row, n_single_class).

    Vectorised Mann-Whitney form of ROC-AUC (ties get average ranks), equal to scikit-learn's per-user
    ``roc_auc_score`` (tested) without one call per user: AUC = (R_pos - P (P + 1) / 2) / (P N), where R_pos is the
    rank sum of the user's positives among the user's rows.
    """
    frame = pd.DataFrame({"u": user_ids, "y": np.asarray(labels).astype(np.int64), "s": scores})
    frame["r"] = frame.groupby("u", sort=True)["s"].rank(method="average")
    per_user = frame.groupby("u", sort=True).agg(n=("y", "size"), p=("y", "sum"))
    per_user["rank_pos"] = frame[frame["y"] == 1].groupby("u", sort=True)["r"].sum()
    per_user["rank_pos"] = per_user["rank_pos"].fillna(0.0)
    single_row = int((per_user["n"] < 2).sum())
    multi = per_user[per_user["n"] >= 2]
    both = multi[(multi["p"] > 0) & (multi["p"] < multi["n"])]
    single_class = len(multi) - len(both)
    pos, neg = both["p"].to_numpy(float), (both["n"] - both["p"]).to_numpy(float)
    aucs = (both["rank_pos"].to_numpy(float) - pos * (pos + 1) / 2) / (pos * neg)
    return both.index.to_numpy(), aucs, both["p"].to_numpy(), single_row, single_class


def uauc(user_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
         scores: Sequence[float] | np.ndarray) -> UAUC:
    """Unweighted mean of per-user ROC-AUC (SeLLa/CoLLM UAUC; METHOD.md §6.3).

    Users with a single row or a single class are skipped and counted, not hidden.
    """
    _, aucs, _, single_row, single_class = _per_user_auc(np.asarray(user_ids), np.asarray(labels),
                                                         np.asarray(scores, dtype=float))
    value = float(aucs.mean()) if len(aucs) else float("nan")
    return UAUC(value, int(len(aucs)), single_row, single_class)


def gauc(user_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
         scores: Sequence[float] | np.ndarray) -> float:
    """RecBole's GAUC: per-user AUC weighted by the user's number of positive rows (single-class users skipped)."""
    _, aucs, positives, _, _ = _per_user_auc(np.asarray(user_ids), np.asarray(labels), np.asarray(scores, dtype=float))
    if not len(aucs):
        return float("nan")
    return float(np.sum(aucs * positives) / np.sum(positives))


def bootstrap_ci(user_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
                 scores: Sequence[float] | np.ndarray, metric: str = "auc", n_samples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of ``metric`` ('auc' or 'uauc') from resampling whole users with replacement.

    Resampling users (not rows) respects that a user's rows are correlated. A user drawn k times contributes its
    rows k times. Resamples where the metric is undefined are dropped.
    """
    if metric not in ("auc", "uauc"):
        raise ValueError(f"bootstrap_ci supports 'auc' and 'uauc', not {metric!r}")
    user_ids, labels = np.asarray(user_ids), np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    users, inverse = np.unique(user_ids, return_inverse=True)
    rng = np.random.default_rng(seed)
    values = []
    if metric == "uauc":
        # A user's AUC is the same in every resample, so a resample's UAUC is the mean over drawn eligible users.
        eligible, aucs, _, _, _ = _per_user_auc(user_ids, labels, scores)
        user_auc = np.full(len(users), np.nan)
        user_auc[np.searchsorted(users, eligible)] = aucs
        for _ in range(n_samples):
            drawn = user_auc[rng.integers(0, len(users), size=len(users))]
            drawn = drawn[~np.isnan(drawn)]
            if len(drawn):
                values.append(float(drawn.mean()))
    else:
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(users) + 1))
        rows_of = [order[bounds[k]:bounds[k + 1]] for k in range(len(users))]
        for _ in range(n_samples):
            rows = np.concatenate([rows_of[k] for k in rng.integers(0, len(users), size=len(users))])
            value = auc(labels[rows], scores[rows])
            if not np.isnan(value):
                values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def evaluate_slices(frame: pd.DataFrame, *, score_col: str = "score", warm_col: str = "warm_sella",
                    cold_col: str = "cold", prefix: str = "test", bootstrap_samples: int = 0,
                    ci_level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """AUC, UAUC, row and user counts (all users; UAUC's eligible ones) on all, warm and cold rows of ``frame``.

    Args:
        frame: rows with ``user``, ``label``, the score column and warm/cold flag columns.
        score_col: column holding the model scores.
        warm_col: boolean column marking warm rows (``warm_sella`` or ``warm_collm``).
        cold_col: boolean column marking cold rows.
        prefix: split name of the keys: ``{prefix}/auc``, ``{prefix}_warm/uauc``, ``{prefix}_cold/auc``, ...
        bootstrap_samples: when > 0, also ``.../auc_ci_low`` etc. from a user-level bootstrap.
        ci_level: confidence level of the intervals.
        seed: bootstrap seed.

    Returns:
        A flat dict of metric key -> value (NaN where a slice has no rows or one class).
    """
    out: dict[str, float] = {}
    slices = {prefix: np.ones(len(frame), dtype=bool), f"{prefix}_warm": frame[warm_col].to_numpy(bool),
              f"{prefix}_cold": frame[cold_col].to_numpy(bool)}
    for name, mask in slices.items():
        rows = frame[mask]
        users, labels, scores = rows["user"].to_numpy(), rows["label"].to_numpy(), rows[score_col].to_numpy()
        result = uauc(users, labels, scores)
        out[metric_key(name, "auc")] = auc(labels, scores)
        out[metric_key(name, "uauc")] = result.value
        out[metric_key(name, "uauc_users")] = float(result.n_users)
        out[metric_key(name, "rows")] = float(len(rows))
        out[metric_key(name, "users")] = float(len(np.unique(users)))
        if bootstrap_samples > 0 and len(rows):
            for metric in ("auc", "uauc"):
                low, high = bootstrap_ci(users, labels, scores, metric, bootstrap_samples, ci_level, seed)
                out[metric_key(name, f"{metric}_ci_low")] = low
                out[metric_key(name, f"{metric}_ci_high")] = high
    return out
