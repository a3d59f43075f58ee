"""How every experiment hands its trials to Ray Tune: the one trainable with its resource request, and the run
configuration with the driver's callbacks (MLflow child runs, progress lines). The planners add only what is theirs:
a sweep its searcher and scheduler, an ablation its grid of jobs."""

from __future__ import annotations

from typing import Any

from ray import tune

from sellarec.experiment.callbacks import ProgressPrinter, TrialRuns
from sellarec.experiment.trial import TrialConfigs, run_trial

__all__ = ["trainable", "run_config"]


def trainable(configs: TrialConfigs, cpus: float, gpus: float) -> Any:
    """:func:`~sellarec.experiment.trial.run_trial` bound to ``configs``, asking Ray for ``cpus`` and ``gpus``."""
    return tune.with_resources(tune.with_parameters(run_trial, configs=configs), {"cpu": cpus, "gpu": max(0.0, gpus)})


def run_config(name: str, storage: str, runs: TrialRuns, max_failures: int) -> Any:
    """Tune's run configuration: the experiment's folder ``storage/name``, the MLflow callback ``runs`` and one
    progress line per trial event (Tune's tables off), ``max_failures`` retries per trial."""
    return tune.RunConfig(name=name, storage_path=storage, callbacks=[runs, ProgressPrinter()], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=max_failures))
