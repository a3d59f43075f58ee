"""The one Tune trainable of sweeps and ablations: a trial is the whole pipeline through the shared stage cache.

A planner describes its trials with :class:`TrialConfigs`: a sweep's trial parameters are dotted overrides on one
base configuration (``{"stage3.lr": 1e-3}``), an ablation's are ``{"job": id}`` naming one of its jobs. The trainable
and the driver's MLflow callback resolve a trial through the same :meth:`TrialConfigs.resolve`, so the child run
records exactly the configuration that trained. The trainable reports through ``ray.tune.report`` only (the driver
writes MLflow): one report per stage-3 validation pass before the last when ``intermediate`` (ASHA's rungs), then one
final report in the vocabulary of :mod:`sellarec.metrics` with ``trial/complete``. A trial that raises reports
nothing more (a report without the sweep's metric would break Tune's metric check): Tune writes the traceback to
the trial's ``error.txt``, whose last line the driver records.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sellarec.atomic_files import write_json_atomic
from sellarec.config import SellaConfig, apply_overrides, from_dict
from sellarec.metrics import COST_PEAK_GPU_MIB, COST_TRIAL_SECONDS, TRAIN_LOSS, TRAIN_STEP, metric_key

__all__ = ["COMPLETE_KEY", "REPLAYED_KEY", "TrialJob", "TrialConfigs", "ResolvedTrial", "job_id", "trial_dirname",
           "threads_for", "run_trial"]

COMPLETE_KEY = "trial/complete"   # present (1) only in the final report: the pipeline ran to the end
REPLAYED_KEY = "trial/replayed"   # present (1) when the final report is a kept one (TrialConfigs.final_reports)


@dataclass(frozen=True)
class TrialJob:
    """One planned run of an ablation (a cell at a seed).

    Attributes:
        config: its configuration as a nested dict (``to_dict``).
        tags: its child run's planner tags (cell, seed, run key, ...).
        varied: the dotted keys the run changes from the reference (the full model's overrides of the cell).
    """

    config: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    varied: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedTrial:
    """A trial's configuration, its child run's planner tags and the keys its planner varied."""

    config: SellaConfig
    tags: dict[str, str]
    varied: tuple[str, ...]


@dataclass(frozen=True)
class TrialConfigs:
    """How a planner's trial parameters become configurations (one rule for the trainable and the driver).

    Attributes:
        base: a sweep's base configuration (nested dict); a trial's parameters are dotted overrides on it.
        jobs: an ablation's jobs by id; a trial's parameters are ``{"job": id}``.
        tags: tags every child run of the experiment carries (profile, preset, space or ablation, ...).
        evaluate_test: score test too (ablations); sweeps select on valid and leave test to the chosen config.
        intermediate: report each stage-3 validation pass before the last (a sweep under ASHA).
        final_reports: a folder that outlives Ray sessions (a sweep's folder) where each finished trial keeps its
            final report as ``<trial id>.json``. Tune saves its state every few seconds, so a trial can finish after
            the last save of a driver that is then killed; restored, Tune starts it again, and it reports the kept
            report instead of training. None: no such folder (a trial's own folder lives in the Ray session).
        status_dir: a folder of the driver's machine where each running trial publishes what it is doing as
            ``<trial id>.json`` (:mod:`sellarec.status`), read by the driver's progress lines. None: nothing.
    """

    base: dict[str, Any] | None = None
    jobs: Mapping[str, TrialJob] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    evaluate_test: bool = True
    intermediate: bool = False
    final_reports: str | None = None
    status_dir: str | None = None

    def resolve(self, params: Mapping[str, Any], resources: Mapping[str, float]) -> ResolvedTrial:
        """The configuration of the trial with Tune parameters ``params`` on its resource request ``resources``
        (``{"CPU": 1.0, "GPU": 0.0}``): torch threads = its CPUs (:func:`threads_for`), the CPU device when it has
        no GPU share (Ray hides the cards from it), no progress bars (trial output goes to log files)."""
        if "job" in params:
            job = self.jobs[params["job"]]
            cfg, tags, varied = from_dict(job.config), dict(job.tags), job.varied
        else:
            if self.base is None:
                raise ValueError("a sweep's TrialConfigs needs its base configuration")
            cfg, tags, varied = apply_overrides(from_dict(self.base), dict(params)), {}, tuple(sorted(params))
        runtime = {"runtime.threads": threads_for(resources), "runtime.progress": False}
        if resources.get("GPU", 0.0) <= 0:
            runtime["runtime.device"] = "cpu"
        return ResolvedTrial(apply_overrides(cfg, runtime), {**self.tags, **tags}, varied)


def job_id(index: int, cell: str, seed: int) -> str:
    """An ablation job's id, also its trial folder's prefix: ``003_-warm_token_seed1``."""
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_.+=-]', '_', cell)}_seed{seed}"


def trial_dirname(trial: Any) -> str:
    """Trial folder name: the job id (ablations) and Tune's trial id (Tune's default embeds every parameter)."""
    job = trial.config.get("job")
    return f"{job}_{trial.trial_id}" if job else f"trial_{trial.trial_id}"


def threads_for(resources: Mapping[str, float]) -> int:
    """Torch threads of a trial: the CPUs its resource request holds, at least one (more threads than CPUs on shared
    cores is 3-40x slower, STACK.md §7)."""
    return max(1, int(resources.get("CPU", 1)))


def run_trial(params: dict[str, Any], configs: TrialConfigs) -> None:
    """Tune function trainable (wrap with ``tune.with_parameters(run_trial, configs=...)``); see the module docstring.

    Raises:
        Whatever the pipeline raises (out of memory, NaN, a data or config error): Tune records it and retries up to
        ``FailureConfig.max_failures`` times.
    """
    import torch
    from ray import tune

    from sellarec import status
    from sellarec.experiment.resources import cap_gpu_memory, trial_gpu_fraction
    from sellarec.pipeline import flat_metrics, run_pipeline

    context = tune.get_context()
    trial_id = context.get_trial_id()
    # From here on this trial's status is what the worker publishes (a reused worker drops the previous trial's).
    status.publish_to(Path(configs.status_dir) / f"{trial_id}.json" if configs.status_dir else None,
                      f"trial {trial_id}")
    status.update("starting: data, backbone and cached stages", 0, 0)
    kept = Path(configs.final_reports) / f"{trial_id}.json" if configs.final_reports else None
    if kept is not None and kept.is_file():   # finished before its driver was killed: report, never train again
        tune.report({**json.loads(kept.read_text()), REPLAYED_KEY: 1.0})
        return
    fraction = trial_gpu_fraction()
    cap_gpu_memory(fraction)
    cfg = configs.resolve(params, context.get_trial_resources().required_resources).config
    start = time.perf_counter()

    def report(stage: str, metrics: dict[str, float], step: int, total: int) -> None:
        """A stage-3 validation pass before the last becomes an ASHA rung (the last one is in the final report:
        reported here, ASHA would stop the trial at max_t before it finished; stage-1 passes are never reported, so
        the scheduler never compares a stage-1 AUC with a stage-3 one)."""
        auc = metrics.get(metric_key("valid", "auc"))
        if stage != "stage3" or auc is None or step >= total:
            return
        tune.report({metric_key("valid", "auc"): float(auc), TRAIN_LOSS: float(metrics.get(TRAIN_LOSS, math.nan)),
                     TRAIN_STEP: float(step)})

    result = run_pipeline(cfg, Path(context.get_trial_dir()) / "run", on_eval=report if configs.intermediate else None,
                          evaluate_test=configs.evaluate_test)
    final = flat_metrics(result.metrics)
    final[COST_TRIAL_SECONDS] = time.perf_counter() - start
    if fraction > 0 and torch.cuda.is_available():
        final[COST_PEAK_GPU_MIB] = torch.cuda.max_memory_allocated(0) / 2**20
    final[COMPLETE_KEY] = 1.0
    if kept is not None:
        write_json_atomic(kept, final)
    tune.report(final)
