"""How every experiment hands its trials to Ray Tune: the one trainable with its resource request, and the run
configuration with the driver's callbacks (MLflow child runs, progress lines). The planners add only what is theirs:
a sweep its searcher and scheduler, an ablation its grid of jobs."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from sellarec.experiment.callbacks import ProgressPrinter, TrialRuns
from sellarec.experiment.trial import TrialConfigs, run_trial

__all__ = ["watched", "trainable", "run_config"]


def watched(configs: TrialConfigs, total: int | None,
            folder: Path | None = None) -> tuple[TrialConfigs, ProgressPrinter]:
    """``configs`` whose trials publish what they do into ``folder`` on this machine (default: a fresh temporary
    one), and the progress printer that reads it and removes it when the experiment ends; ``total``: trials this
    invocation runs. A resumable experiment passes a fixed folder: Tune restores its printer with the folder it had."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="sellarec-status-"))
    return dataclasses.replace(configs, status_dir=str(folder)), ProgressPrinter(folder, total)


def trainable(configs: TrialConfigs, cpus: float, gpus: float) -> Any:
    """:func:`~sellarec.experiment.trial.run_trial` bound to ``configs``, asking Ray for ``cpus`` and ``gpus``."""
    _quiet_tune()   # also here: a restored sweep gets its run configuration from Tune's saved state
    return tune.with_resources(tune.with_parameters(run_trial, configs=configs), {"cpu": cpus, "gpu": max(0.0, gpus)})


def run_config(name: str, storage: str, runs: TrialRuns, max_failures: int,
               progress: ProgressPrinter | None = None) -> Any:
    """Tune's run configuration: the experiment's folder ``storage/name``, the MLflow callback ``runs``, the
    progress lines of ``progress`` (:func:`watched`; a plain printer without it) with Tune's tables off,
    ``max_failures`` retries per trial."""
    _quiet_tune()
    return tune.RunConfig(name=name, storage_path=storage, callbacks=[runs, progress or ProgressPrinter()], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=max_failures))


def _quiet_tune() -> None:
    """Tune's own console output says nothing our lines do not: at ``verbose=0`` its default reporter still prints a
    configuration box and a TensorBoard hint (a tool we do not install), its legacy one prints nothing; its INFO log
    lines (state saved, results written) go too."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
