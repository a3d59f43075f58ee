"""Tune callbacks of every experiment, run in the driver: MLflow child runs per trial and one terminal line per event.

:class:`TrialRuns` mirrors every trial into a child run of the experiment's parent run through
:class:`~sellarec.experiment.tracking.RunTracker` (the driver is the only MLflow writer, so no run is left RUNNING
by a stopped trial; STACK.md §5). :class:`ProgressPrinter` replaces Tune's tables (``verbose=0``).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from sellarec.errors import ConfigError
from sellarec.experiment.labels import params_label
from sellarec.experiment.tracking import FAILED, FINISHED, KILLED, RunTracker
from sellarec.experiment.trial import COMPLETE_KEY, REPLAYED_KEY, TrialConfigs
from sellarec.metrics import COST_TRIAL_SECONDS, TRAIN_STEP, cache_key, metric_key
from sellarec.status import describe, publish_to, read_status, seconds_left

__all__ = ["TrialRuns", "ProgressPrinter", "Heartbeat", "PROGRESS_SECONDS", "progress_seconds", "loggable_metrics",
           "error_reason"]

# A progress line at least this often while trials run, so a newcomer can tell work from a hang; the environment
# variable SELLAREC_PROGRESS_SECONDS sets another period (a long GPU run may want fewer lines).
PROGRESS_SECONDS = 30.0

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


def _run_name(trial: Any, tags: dict[str, str], keys: Sequence[str]) -> str:
    """An ablation run is its cell and seed; a sweep's trial is what it varies (``collab=mlp sem=lowrank r=175``,
    :func:`~sellarec.experiment.labels.params_label`). Made of the trial's parameters alone (never Tune's trial name
    or a clock), so the same trial gets the same name in every invocation; a retry or a resume reopens the run."""
    if "cell" in tags and "seed" in tags:
        return f"{tags['cell']} seed={tags['seed']}"
    return params_label(trial.config, keys) or str(trial)


class TrialRuns(tune.Callback):
    """Mirror every trial into a child run of the parent run: opened when the trial starts (reopened on a retry or a
    resume), metrics logged at the final stage's step, closed FINISHED (ran to the end), KILLED (stopped by the
    scheduler: tag ``stopped_by``) or FAILED (out of retries: tags ``error``, ``failures``).

    Args:
        tracker: the experiment's tracker.
        parent_id: the parent run.
        configs: how a trial's parameters become its configuration and tags (the trainable's own rule).
        keys: a sweep's searched keys, in its space's order: its trials' run names give each key one short name.
            Empty: the names come from each trial's own parameters.

    Attributes:
        finished: trials that ran to the end in this invocation.
        failures: (trial parameters as text, one-line error) of trials that failed in this invocation.
    """

    def __init__(self, tracker: RunTracker, parent_id: str, configs: TrialConfigs, keys: Sequence[str] = ()) -> None:
        self.tracker, self.parent_id, self.configs, self.keys = tracker, parent_id, configs, tuple(keys)
        self.runs: dict[str, str] = {}            # trial id -> MLflow run id
        self.ended: set[str] = set()              # trials whose run had ended FINISHED before this invocation saw them
        self.finished = 0
        self.failures: list[tuple[str, str]] = []

    def _run_of(self, trial: Any) -> str:
        run_id = self.runs.get(trial.trial_id) or self.tracker.find_child(self.parent_id, trial.trial_id)
        if run_id is None:
            resolved = self.configs.resolve(trial.config, trial.placement_group_factory.required_resources)
            keys = getattr(self, "keys", ())   # a callback restored from a sweep saved before run names had keys
            run_id = self.tracker.start_child(self.parent_id, trial.trial_id, str(trial),
                                              _run_name(trial, resolved.tags, keys), resolved.config, resolved.tags,
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


def progress_seconds() -> float:
    """Seconds between progress lines: $SELLAREC_PROGRESS_SECONDS, else :data:`PROGRESS_SECONDS`.

    Raises:
        ConfigError: the variable is not a number of seconds > 0.
    """
    text = os.environ.get("SELLAREC_PROGRESS_SECONDS", str(PROGRESS_SECONDS))
    try:
        every = float(text)
    except ValueError:
        every = math.nan
    if not every > 0:
        raise ConfigError(f"SELLAREC_PROGRESS_SECONDS={text!r} must be a number of seconds > 0 "
                          f"(unset it for the default {PROGRESS_SECONDS:g})")
    return every


class Heartbeat:
    """While the driver itself works (a sweep's shared stages), one line every ``every`` seconds of what it is
    doing, read from the status it publishes to ``path`` (:mod:`sellarec.status`); a context manager.

    Args:
        path: the status file the work publishes to (published to from this process while the block runs).
        who: the line's subject, e.g. ``shared stages``.
        every: seconds between lines (default: :func:`progress_seconds`).
    """

    def __init__(self, path: Path, who: str, every: float | None = None) -> None:
        self.path, self.who, self.every = Path(path), who, progress_seconds() if every is None else every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sellarec-heartbeat", daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> Heartbeat:
        publish_to(self.path, self.who)
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        publish_to(None)
        self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            found = read_status(self.path)
            doing = describe(found, time.time()) if found else "starting"
            print(f"[{time.monotonic() - self._start:6.0f}s] {self.who}: {doing}", flush=True)


class ProgressPrinter(tune.Callback):
    """One terminal line per trial event (Tune's own tables are switched off with ``verbose=0``), and every
    ``every`` seconds one line of where each running trial is (read from its published status, see
    :mod:`sellarec.status`) with an estimate of the time left.

    Args:
        status_dir: the folder the trials publish into (``TrialConfigs.status_dir``); removed when the
            experiment ends. None: progress lines without the trials' stages.
        total: trials the experiment will run in this invocation (a searcher creates them one by one).
        every: seconds between progress lines (default: $SELLAREC_PROGRESS_SECONDS, else :data:`PROGRESS_SECONDS`).
        clock: a monotonic clock (tests pass their own).
        wall: the wall clock the trials' statuses use.
    """

    def __init__(self, status_dir: Path | None = None, total: int | None = None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.status_dir, self.total, self.every = status_dir, total, progress_seconds() if every is None else every
        self._clock, self._wall = clock, wall
        self._start = self._last_line = clock()
        self._started: dict[str, float] = {}     # trial id -> clock at its start
        self._trained: list[float] = []           # seconds of trials that trained at least one stage (not all cached)

    def setup(self, **info: Any) -> None:
        """Start the clock when Tune starts."""
        self._start = self._last_line = self._clock()

    def _say(self, trial: Any, text: str) -> None:
        print(f"[{self._clock() - self._start:6.0f}s] trial {trial.trial_id} {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print the trial's parameters."""
        self._started[trial.trial_id] = self._clock()
        self._say(trial, f"started: {params_label(trial.config, limit=None)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print the outcome: finished with its metrics, or stopped early with its last value."""
        result = trial.last_result or {}
        split = "test" if metric_key("test", "auc") in result else "valid"
        auc = result.get(metric_key(split, "auc"), math.nan)
        if COMPLETE_KEY in result:
            computed = [key for key, value in result.items() if key.startswith(cache_key("")) and value == 0.0]
            if computed and not result.get(REPLAYED_KEY):
                self._trained.append(float(result.get(COST_TRIAL_SECONDS, math.nan)))
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

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Every ``every`` seconds while trials run: the progress line (:meth:`progress_line`)."""
        if self._clock() - self._last_line < self.every:
            return
        self._last_line = self._clock()
        line = self.progress_line(trials)
        if line:
            print(f"[{self._clock() - self._start:6.0f}s] {line}", flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The trials' statuses are of no use once the experiment ends."""
        if self.status_dir is not None:
            shutil.rmtree(self.status_dir, ignore_errors=True)

    def progress_line(self, trials: list) -> str | None:
        """``3/33 done, 2 running: <id> stage3 train 12/40 (6.0 min in, ~14.0 min left) | ...; about 1.2 h left
        (...)``, or None when no trial runs."""
        running = [t for t in trials if t.status == "RUNNING"]
        if not running:
            return None
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        total = max(self.total or 0, len(trials))
        now = self._wall()
        parts, phase_left = [], {}
        for trial in running:
            found = read_status(self.status_dir / f"{trial.trial_id}.json") if self.status_dir else None
            parts.append(f"{trial.trial_id} {describe(found, now) if found else 'starting'}")
            phase_left[trial.trial_id] = (seconds_left(found, now) if found else None) or 0.0
        left = self._time_left(running, done, total, phase_left)
        return f"{done}/{total} done, {len(running)} running: {' | '.join(parts)}; {left}"

    def _time_left(self, running: list, done: int, total: int, phase_left: dict[str, float]) -> str:
        """The experiment's time left: the mean trained trial's seconds for every trial not done, less what the
        running ones have spent (but never less than what their current activity still needs, ``phase_left``), over
        the trials running at once. Trials served wholly by the cache are left out of the mean (they take seconds);
        pending trials that hit the cache end sooner than estimated."""
        trained = [s for s in self._trained if math.isfinite(s)]
        if not trained:
            return "time left known once a trial that trains finishes"
        mean = statistics.fmean(trained)
        now = self._clock()
        work = sum(max(mean - (now - self._started.get(t.trial_id, now)), phase_left.get(t.trial_id, 0.0))
                   for t in running) + max(0, total - done - len(running)) * mean
        return (f"about {_duration(work / len(running))} left (mean of {len(trained)} trained trial"
                f"{'s' * (len(trained) != 1)}: {_duration(mean)}, {len(running)} at a time)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
