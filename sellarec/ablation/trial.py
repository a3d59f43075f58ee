"""The Ray Tune side of an ablation: the function trainable (one cell at one seed) and the driver's MLflow callback.

The trainable runs :func:`sellarec.pipeline.run_pipeline` in its trial folder through the shared stage cache and
reports once, at the end. The callback lives in the driver and is the only MLflow writer: it opens the child run
when a trial starts and closes it FINISHED or FAILED, so no run is left RUNNING by a trial (STACK.md §5).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from sellarec.ablation.tracking import create_child, pipeline_metrics
from sellarec.config import from_dict
from sellarec.experiment.resources import cap_gpu_memory, trial_gpu_fraction
from sellarec.experiment.tracking import FAILED, FINISHED, client_for, log_values

__all__ = ["ERROR_KEY", "JobPayload", "job_id", "trial_dirname", "run_job", "MlflowRunsCallback"]

ERROR_KEY = "ablation/error"         # reported (one line) by a trial that raised, just before it re-raises
_PLAIN_METRICS = ("trainable_params", "compute_seconds", "wall_seconds")


@dataclass(frozen=True)
class JobPayload:
    """What the driver knows about one job.

    Attributes:
        config: the job's configuration as a nested dict (``to_dict``), runtime settings included.
        tags: the child run's tags (cell, seed, run key, ...).
    """

    config: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)


def job_id(index: int, cell: str, seed: int) -> str:
    """A job's id, also its trial folder's prefix: ``003_-warm_token_seed1``."""
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_.+=-]', '_', cell)}_seed{seed}"


def trial_dirname(trial: Any) -> str:
    """Trial folder name: the job id and the trial id (Tune's default embeds every parameter)."""
    return f"{trial.config['job']}_{trial.trial_id}"


def run_job(config: dict[str, Any], configs: dict[str, dict[str, Any]]) -> None:
    """Tune function trainable: run one job's pipeline and report its flat metrics once.

    Args:
        config: ``{"job": job id}`` (the grid-searched parameter).
        configs: job id -> nested configuration (passed with ``tune.with_parameters``).

    Raises:
        Whatever the pipeline raises, after reporting it as one line under ``ablation/error``.
    """
    from sellarec.pipeline import run_pipeline

    cfg = from_dict(configs[config["job"]])
    cap_gpu_memory(trial_gpu_fraction())
    start = time.perf_counter()
    try:
        result = run_pipeline(cfg, Path(tune.get_context().get_trial_dir()) / "run")
    except Exception as exc:
        tune.report({ERROR_KEY: f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        raise
    flat = pipeline_metrics(result.metrics)
    flat["wall_seconds"] = time.perf_counter() - start
    tune.report(flat)


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in _PLAIN_METRICS or ("/" in key and not key.startswith(("config/", "ablation/"))):
            out[key] = float(value)
    return out


class MlflowRunsCallback(tune.Callback):
    """Open a child run per trial in the driver, log its metrics, close it FINISHED or FAILED.

    Args:
        tracking_uri: the MLflow store.
        experiment_id: the ablations experiment (created before ``fit``).
        parent_id: the ablation's parent run.
        jobs: job id -> :class:`JobPayload`.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_id: str, jobs: dict[str, JobPayload]) -> None:
        self.tracking_uri, self.experiment_id, self.parent_id, self.jobs = tracking_uri, experiment_id, parent_id, jobs
        self.runs: dict[str, str] = {}            # trial id -> MLflow run id
        self.failures: list[tuple[str, str]] = []  # (job id, one-line error)
        self.finished = 0
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None   # Tune pickles its run config; a client holds a database engine
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        job = self.jobs[trial.config["job"]]
        self.runs[trial.trial_id] = create_child(self.client, self.experiment_id, self.parent_id,
                                                 from_dict(job.config), job.tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        log_values(self.client, run_id, metrics=_numbers(trial.last_result or {}))
        self.client.set_terminated(run_id, FINISHED)
        self.finished += 1

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = str((trial.last_result or {}).get(ERROR_KEY) or "the trial failed; see its error.txt")
        self.failures.append((trial.config["job"], error))
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            log_values(self.client, run_id, tags={"error": error[:5000]})
            self.client.set_terminated(run_id, FAILED)
