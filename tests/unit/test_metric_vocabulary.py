"""The one metric vocabulary: a run's flat numbers from metrics.json's layout, legacy names, what a trial logs."""

from __future__ import annotations

import math

from sellarec.metrics import current_names
from sellarec.pipeline import flat_metrics, split_metrics

# metrics.json of a stage-3 run whose stages 1-2 came from the cache and whose stage 3 was trained and scored on test
METRICS = {
    "final": "stage3",
    "cache": {"stage1": "hit", "stage1_test": "hit", "stage2": "hit", "stage3": "miss", "stage3_test": "miss"},
    "stage1": {"valid": {"auc": 0.55}, "seconds": 1.5, "test_seconds": 0.5, "trainable_params": 4},
    "stage2": {"valid": {"auc": 0.6}, "seconds": 2.25},
    "stage3": {"valid": {"auc": 0.71, "rows": 200.0, "auc_ci_low": 0.64, "auc_ci_high": 0.78},
               "test": {"auc": 0.7, "uauc": 0.6, "users": 30.0}, "test_cold": {"auc": math.nan, "rows": 3.0},
               "seconds": 4.0, "test_seconds": 10.0, "trainable_params": 12, "steps": 8, "best_step": 4,
               "history": [{"step": 4, "train_loss": 0.5}]},
}


def test_flat_metrics_names_the_final_stage_and_sums_training_costs() -> None:
    flat = flat_metrics(METRICS)
    assert flat["valid/auc"] == 0.71 and flat["valid/auc_ci_low"] == 0.64 and flat["valid/rows"] == 200
    assert flat["test/auc"] == 0.7 and flat["test/users"] == 30 and math.isnan(flat["test_cold/auc"])
    assert "test_warm/auc" not in flat and "stage3/valid_auc" not in flat   # nothing invented, no stage prefix
    assert flat["train/step"] == 8 and flat["cost/trainable_params"] == 12
    # training seconds of every stage, cached or not (1.5 + 2.25 + 4.0); test scoring is a cost of its own
    assert flat["cost/compute_seconds"] == 7.75
    assert (flat["cost/stage1_seconds"], flat["cost/stage2_seconds"], flat["cost/stage3_seconds"]) == (1.5, 2.25, 4.0)
    assert (flat["cost/stage1_test_seconds"], flat["cost/stage3_test_seconds"]) == (0.5, 10.0)
    assert [flat[f"cache/{s}"] for s in ("stage1", "stage1_test", "stage2", "stage3", "stage3_test")] == [1, 1, 1, 0, 0]
    assert all("/" in key for key in flat)                         # split/name, train/, cost/, cache/ only


def test_split_metrics_of_one_stage() -> None:
    assert split_metrics(METRICS["stage2"]) == {"valid/auc": 0.6}


def test_legacy_names_read_in_todays_spelling() -> None:
    legacy = {"compute_seconds": 7.0, "stage_seconds/stage2": 2.0, "trainable_params": 12.0, "seconds": 4.0,
              "trial_seconds": 9.0, "stage3/step": 8.0, "test/auc": 0.7, "cache/stage1": 1.0}
    assert current_names(legacy) == {"cost/compute_seconds": 7.0, "cost/stage2_seconds": 2.0,
                                     "cost/trainable_params": 12.0, "cost/stage3_seconds": 4.0,
                                     "cost/trial_seconds": 9.0, "train/step": 8.0, "test/auc": 0.7,
                                     "cache/stage1": 1.0}
