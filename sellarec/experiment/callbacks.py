"""Tune callbacks of every experiment, run in the driver: MLflow child runs per trial and one terminal line per event.

:class:`TrialRuns` mirrors every trial into a child run of the experiment's parent run through
:class:`~sellarec.experiment.tracking.RunTracker` (the driver is the only MLflow writer, so no run is left RUNNING
by a stopped trial; STACK.md §5). :class:`ProgressPrinter` replaces Tune's tables (``verbose=0``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from sellarec.experiment.tracking import FAILED, FINISHED, KILLED, RunTracker, choice_key
from sellarec.experiment.trial import COMPLETE_KEY, REPLAYED_KEY, TrialConfigs
from sellarec.metrics import COST_TRIAL_SECONDS, TRAIN_STEP, metric_key

__all__ = ["TrialRuns", "ProgressPrinter", "loggable_metrics", "error_reason"]

_LOGGED_PREFIXES = ("valid", "test", "train/", "cost/", "cache/")


def loggable_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a Tune result that belong to the metric vocabulary (:mod:`sellarec.metrics`); Tune's own
    bookkeeping (``training_iteration``, ``time_this_iter_s``, ...) and ``trial/complete`` stay out."""
    return {key: float(value) for key, value in result.items()
            if key.startswith(_LOGGED_PREFIXES) and isinstance(value, (int, float)) and not isinstance(value, bool)}


def error_reason(trial: Any) -> str:
    """The last line of the trial's error (its exception's class and message), or a placeholder."""
    text = None
    try:
        # Tune writes the error into the trial's local folder and syncs it to the storage folder later, and
        # ``get_error`` reads the storage copy: read the local file first, or a busy machine gets no reason.
        local = Path(trial.error_file) if getattr(trial, "error_file", None) else None
        text = local.read_text() if local is not None and local.is_file() else trial.get_error()
    except Exception:  # noqa: BLE001 - a missing/unreadable error file must not break the experiment
        text = None
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]


def _run_name(trial: Any, tags: dict[str, str]) -> str:
    return f"{tags['cell']} seed={tags['seed']}" if "cell" in tags and "seed" in tags else str(trial)


class TrialRuns(tune.Callback):
    """Mirror every trial into a child run of the parent run: opened when the trial starts (reopened on a retry or a
    resume), metrics logged at the final stage's step, closed FINISHED (ran to the end), KILLED (stopped by the
    scheduler: tag ``stopped_by``) or FAILED (out of retries: tags ``error``, ``failures``).

    Args:
        tracker: the experiment's tracker.
        parent_id: the parent run.
        configs: how a trial's parameters become its configuration and tags (the trainable's own rule).

    Attributes:
        finished: trials that ran to the end in this invocation.
        failures: (trial parameters as text, one-line error) of trials that failed in this invocation.
    """

    def __init__(self, tracker: RunTracker, parent_id: str, configs: TrialConfigs) -> None:
        self.tracker, self.parent_id, self.configs = tracker, parent_id, configs
        self.runs: dict[str, str] = {}            # trial id -> MLflow run id
        self.ended: set[str] = set()              # trials whose run had ended FINISHED before this invocation saw them
        self.finished = 0
        self.failures: list[tuple[str, str]] = []

    def _run_of(self, trial: Any) -> str:
        run_id = self.runs.get(trial.trial_id) or self.tracker.find_child(self.parent_id, trial.trial_id)
        if run_id is None:
            resolved = self.configs.resolve(trial.config, trial.placement_group_factory.required_resources)
            run_id = self.tracker.start_child(self.parent_id, trial.trial_id, str(trial),
                                              _run_name(trial, resolved.tags), resolved.config, resolved.tags,
                                              resolved.varied)
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Create the trial's run, or reopen it (a retry, or a trial resumed after Ctrl-C); a run that already
        ended FINISHED (a trial restarted after its driver was killed) is left as it is."""
        known = self.runs.get(trial.trial_id) or self.tracker.find_child(self.parent_id, trial.trial_id)
        if known is None:
            self._run_of(trial)
            return
        self.runs[trial.trial_id] = known
        if self.tracker.client.get_run(known).info.status == FINISHED:
            self.ended.add(trial.trial_id)
        else:
            self.tracker.reopen(known)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Log the reported numbers at the final stage's step (never twice for a run that had ended)."""
        if trial.trial_id in self.ended:
            return
        step = int(result.get(TRAIN_STEP, result.get("training_iteration", 0)) or 0)
        run_id, metrics = self._run_of(trial), loggable_metrics(result)
        if result.get(REPLAYED_KEY) and set(metrics) <= set(self.tracker.client.get_run(run_id).data.metrics):
            return   # a kept final report the killed driver had already logged (it died before ending the run)
        self.tracker.log_metrics(run_id, metrics, step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """FINISHED when the final report came, else KILLED (stopped early by the scheduler)."""
        if trial.trial_id in self.ended:
            return
        run_id = self._run_of(trial)
        complete = COMPLETE_KEY in (trial.last_result or {})
        if not complete:
            self.tracker.set_tags(run_id, {"stopped_by": "scheduler"})
        self.tracker.end(run_id, FINISHED if complete else KILLED)
        self.finished += complete

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failure that Tune will retry: record the reason, keep the run open."""
        self.tracker.set_tags(self._run_of(trial), {"error": error_reason(trial), "failures": str(trial.num_failures)})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Out of retries: FAILED with the reason."""
        run_id, reason = self._run_of(trial), error_reason(trial)
        self.tracker.set_tags(run_id, {"error": reason, "failures": str(trial.num_failures)})
        self.tracker.end(run_id, FAILED)
        self.failures.append((trial.config.get("job") or str(trial.config), reason))


class ProgressPrinter(tune.Callback):
    """One terminal line per trial event (Tune's own tables are switched off with ``verbose=0``)."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def setup(self, **info: Any) -> None:
        """Start the clock when Tune starts."""
        self._start = time.monotonic()

    def _say(self, trial: Any, text: str) -> None:
        print(f"[{time.monotonic() - self._start:6.0f}s] trial {trial.trial_id} {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print the trial's parameters."""
        params = ", ".join(f"{k.replace('stage', 's', 1)}={v:.3g}" if isinstance(v, float) else
                           f"{k.replace('stage', 's', 1)}={choice_key(v)}" for k, v in trial.config.items())
        self._say(trial, f"started: {params}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print the outcome: finished with its metrics, or stopped early with its last value."""
        result = trial.last_result or {}
        split = "test" if metric_key("test", "auc") in result else "valid"
        auc = result.get(metric_key(split, "auc"), math.nan)
        if COMPLETE_KEY in result:
            low = result.get(metric_key(split, "auc_ci_low"), math.nan)
            high = result.get(metric_key(split, "auc_ci_high"), math.nan)
            self._say(trial, f"finished: {split}/auc {auc:.4f} [{low:.4f}, {high:.4f}] on "
                             f"{result.get(metric_key(split, 'rows'), math.nan):.0f} rows, {split}/uauc "
                             f"{result.get(metric_key(split, 'uauc'), math.nan):.4f} "
                             f"({result.get(COST_TRIAL_SECONDS, math.nan):.0f} s)")
        else:
            self._say(trial, f"stopped early at stage-3 step {result.get(TRAIN_STEP, math.nan):g}: valid/auc "
                             f"{auc:.4f}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a failure that will be retried."""
        self._say(trial, f"failed (attempt {trial.num_failures}), retrying: {error_reason(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a failure after the last retry."""
        self._say(trial, f"FAILED after {trial.num_failures} attempts: {error_reason(trial)} "
                         f"(traceback in {trial.path}/error.txt)")
