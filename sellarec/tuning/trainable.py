"""The Tune function trainable: one trial = the whole SeLLa-Rec pipeline through the shared stage cache.

A trial's parameters are dotted config overrides; the trainable applies them to the sweep's base configuration,
runs :func:`sellarec.pipeline.run_pipeline` in the trial folder and reports through ``ray.tune.report`` only: one
report per stage-3 validation pass (the ASHA rungs; stage-1 passes are never reported, so the scheduler never
compares a stage-1 AUC with a stage-3 one) and a final report with the selected model's metrics. MLflow is written
by the driver (:mod:`sellarec.tuning.callbacks`), never from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sellarec.config import apply_overrides, from_dict
from sellarec.experiment.trial_metrics import cache_flags, split_metrics
from sellarec.metrics import metric_key

__all__ = ["train_trial", "final_metrics", "STEP_KEY",
           "COMPLETE_KEY", "trial_dirname"]

STEP_KEY = "stage3/step"          # ASHA's time attribute: the stage-3 optimizer step of the evaluation
COMPLETE_KEY = "trial/complete"   # present (1) only in the final report: the pipeline ran to the end
_FINAL_SPLITS = ("valid", "test", "test_warm", "test_cold")


def trial_dirname(trial: Any) -> str:
    """Short trial folder name (Tune's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for Tune and MLflow from ``PipelineResult.metrics`` (stage 3 is the final model).

    Returns:
        ``valid/auc``, its CI (``valid/auc_ci_low``, ``_high``), ``valid/rows``, ``valid/users``, ``valid/uauc``, the
        same for ``test``, ``test_warm``, ``test_cold`` where the trial evaluated test, ``trainable_params``, ``seconds``
        (stage-3 seconds), ``stage3/step`` and ``cache/<stage>`` (1 hit, 0 miss) plus ``cache_hits``.
    """
    stage3 = metrics[metrics["final"]]
    flat = split_metrics(stage3, _FINAL_SPLITS, ("auc", "uauc", "auc_ci_low", "auc_ci_high", "rows", "users"))
    for name in ("trainable_params", "seconds"):
        if name in stage3:
            flat[name] = float(stage3[name])
    flat[STEP_KEY] = float(stage3.get("steps", 0))
    flags = cache_flags(metrics)
    flat.update(flags)
    flat["cache_hits"] = float(sum(flags.values()))
    return flat


def train_trial(config: dict[str, Any], base: dict[str, Any], intermediate: bool = True) -> None:
    """Run one trial (a Tune function trainable; wrap with ``tune.with_parameters``).

    Args:
        config: the trial's parameters, ``{dotted path: value}`` (from the search space).
        base: the sweep's resolved base configuration as a nested dict (``to_dict``).
        intermediate: report each stage-3 validation pass but the last (needs the sweep metric to be
            ``valid/auc``, the only metric those passes compute).

    Raises:
        Whatever the pipeline raises (out of memory, NaN, a data or config error): Tune records it and retries up
        to ``FailureConfig.max_failures`` times.
    """
    import torch
    from ray import tune

    from sellarec.pipeline import run_pipeline
    from sellarec.experiment.resources import cap_gpu_memory, trial_gpu_fraction

    # The trial's torch threads are the CPUs --cpus-per-trial gave it (at least 1; more threads than CPUs on shared
    # cores is 3-40x slower, STACK.md §7); run_pipeline sets them from runtime.threads.
    threads = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    fraction = trial_gpu_fraction()
    cap_gpu_memory(fraction)
    cfg = apply_overrides(from_dict(base), {**config, "runtime.threads": threads})
    start = time.perf_counter()
    # The last pass is reported by the final report: reported here, ASHA would stop the trial at max_t before
    # its test evaluation.
    from sellarec.pipeline import stage3_steps

    last_step = stage3_steps(cfg) if intermediate else 0

    def report(metrics: dict[str, float], step: int) -> None:
        """``on_eval``: a stage-3 validation pass before the last one becomes an ASHA rung."""
        auc = metrics.get("stage3/valid_auc")
        if auc is None or step >= last_step:   # a stage-1 pass, or stage 3's last one
            return
        tune.report({metric_key("valid", "auc"): float(auc),
                     metric_key("train", "loss"): float(metrics.get("stage3/train_loss", math.nan)),
                     STEP_KEY: float(step)})

    # A sweep selects on valid: test is left to `sellarec train` of the chosen configuration (it reuses every stage).
    result = run_pipeline(cfg, Path(tune.get_context().get_trial_dir()) / "run", on_eval=report, evaluate_test=False)
    final = final_metrics(result.metrics)
    final["trial_seconds"] = time.perf_counter() - start
    if fraction > 0 and torch.cuda.is_available():
        final["peak_gpu_mib"] = torch.cuda.max_memory_allocated(0) / 2**20
    final[COMPLETE_KEY] = 1.0
    tune.report(final)
