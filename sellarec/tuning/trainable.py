"""The Tune function trainable: one trial = the whole SeLLa-Rec pipeline through the shared stage cache.

A trial's parameters are dotted config overrides; the trainable applies them to the sweep's base configuration,
runs :func:`sellarec.pipeline.run_pipeline` in the trial folder and reports through ``ray.tune.report`` only: one
report per stage-3 validation pass (the ASHA rungs; stage-1 passes are never reported, so the scheduler never
compares a stage-1 AUC with a stage-3 one) and a final report with the selected model's metrics. MLflow is written
by the driver (:mod:`sellarec.tuning.tracking`), never from here.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from sellarec.config import SellaConfig, apply_overrides, from_dict
from sellarec.metrics import metric_key

__all__ = ["train_trial", "final_metrics", "stage3_steps", "STEP_KEY", "COMPLETE_KEY", "trial_dirname"]

STEP_KEY = "stage3/step"          # ASHA's time attribute: the stage-3 optimizer step of the evaluation
COMPLETE_KEY = "trial/complete"   # present (1) only in the final report: the pipeline ran to the end
_FINAL_SPLITS = ("valid", "test", "test_warm", "test_cold")


def trial_dirname(trial: Any) -> str:
    """Short trial folder name (Tune's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for Tune and MLflow from ``PipelineResult.metrics`` (stage 3 is the final model).

    Returns:
        ``valid/auc``, ``valid/uauc``, ``test/auc``, ... ``test_cold/uauc``, ``trainable_params``, ``seconds``
        (stage-3 seconds), ``stage3/step`` and ``cache/<stage>`` (1 hit, 0 miss) plus ``cache_hits``.
    """
    stage3 = metrics[metrics["final"]]
    flat: dict[str, float] = {}
    for split in _FINAL_SPLITS:
        for name in ("auc", "uauc"):
            value = stage3.get(split, {}).get(name)
            if value is not None:
                flat[metric_key(split, name)] = float(value)
    for name in ("trainable_params", "seconds"):
        if name in stage3:
            flat[name] = float(stage3[name])
    flat[STEP_KEY] = float(stage3.get("steps", 0))
    cache = metrics.get("cache", {})
    for stage, state in cache.items():
        flat[f"cache/{stage}"] = 1.0 if state == "hit" else 0.0
    flat["cache_hits"] = float(sum(state == "hit" for state in cache.values()))
    return flat


def stage3_steps(cfg: SellaConfig) -> int:
    """Optimizer steps stage 3 will take (as :func:`sellarec.stages.loop.run_loop` counts them).

    Reads the processed dataset from the cache (a fraction of a second) for the number of training prompts.
    """
    from sellarec.data.dataset import load_dataset
    from sellarec.runtime import cache_root

    s3 = cfg.stage3
    rows = len(load_dataset(cfg.data, cache_root(cfg.runtime)).split("train"))
    examples = min(rows, s3.max_train_samples) if s3.max_train_samples is not None else rows
    return s3.epochs * math.ceil(math.ceil(examples / s3.batch_size) / s3.grad_accum)


def _trial_gpu_fraction() -> float:
    from ray import tune

    resources = tune.get_context().get_trial_resources()
    return float(resources.required_resources.get("GPU", 0.0))


def _cap_gpu_memory(fraction: float) -> None:
    """Ray's GPU fractions are logical only: keep this process within its share of the card's memory."""
    import torch

    if fraction > 0 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, fraction), 0)   # Ray maps the assigned GPU to cuda:0
        torch.cuda.reset_peak_memory_stats(0)


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

    torch.set_num_threads(1)   # two threads on two busy cores is 3-40x slower (STACK.md §7)
    fraction = _trial_gpu_fraction()
    _cap_gpu_memory(fraction)
    cfg = apply_overrides(from_dict(base), dict(config))
    start = time.perf_counter()
    # The last pass is reported by the final report: reported here, ASHA would stop the trial at max_t before
    # its test evaluation.
    last_step = stage3_steps(cfg) if intermediate else 0

    def report(metrics: dict[str, float], step: int) -> None:
        """``on_eval``: a stage-3 validation pass before the last one becomes an ASHA rung."""
        auc = metrics.get("stage3/valid_auc")
        if auc is None or step >= last_step:   # a stage-1 pass, or stage 3's last one
            return
        tune.report({metric_key("valid", "auc"): float(auc),
                     metric_key("train", "loss"): float(metrics.get("stage3/train_loss", math.nan)),
                     STEP_KEY: float(step)})

    result = run_pipeline(cfg, Path(tune.get_context().get_trial_dir()) / "run", on_eval=report)
    final = final_metrics(result.metrics)
    final["trial_seconds"] = time.perf_counter() - start
    if fraction > 0 and torch.cuda.is_available():
        final["peak_gpu_mib"] = torch.cuda.max_memory_allocated(0) / 2**20
    final[COMPLETE_KEY] = 1.0
    tune.report(final)
