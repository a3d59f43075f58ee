"""Tune callbacks of a sweep, run in the driver: MLflow child runs per trial and one terminal line per trial event.

:class:`TrialLogger` mirrors every trial into a child run of the sweep's parent run through
:class:`~sellarec.tuning.tracking.SweepTracker` (the driver is the only MLflow writer); :class:`ProgressPrinter`
replaces Tune's tables (``verbose=0``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from sellarec.config import apply_overrides, from_dict, to_dict
from sellarec.experiment.tracking import FAILED, FINISHED, KILLED, choice_key
from sellarec.tuning.tracking import SweepTracker
from sellarec.tuning.trainable import COMPLETE_KEY, STEP_KEY

__all__ = ["TrialLogger", "ProgressPrinter"]

_LOGGED_PREFIXES = ("valid", "test", "train/", "cache", "stage3/")
_LOGGED_KEYS = ("trainable_params", "seconds", "trial_seconds", "peak_gpu_mib")


def _error_reason(trial: Any) -> str:
    """The last line of the trial's error (the exception), or a placeholder."""
    text = None
    try:
        # Tune writes the error into the trial's local folder and syncs it to the storage folder later, and
        # ``get_error`` reads the storage copy: read the local file first, or a busy machine gets no reason.
        local = Path(trial.error_file) if getattr(trial, "error_file", None) else None
        text = local.read_text() if local is not None and local.is_file() else trial.get_error()
    except Exception:  # noqa: BLE001 - a missing/unreadable error file must not break the sweep
        text = None
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]


def _loggable(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if (key.startswith(_LOGGED_PREFIXES) or key in _LOGGED_KEYS) and isinstance(value, (int, float)) \
                and not isinstance(value, bool) and key != COMPLETE_KEY:
            out[key] = float(value)
    return out


class TrialLogger(tune.Callback):
    """Tune callback (driver side) that mirrors every trial into a child run of the sweep's parent run.

    Args:
        tracker: the sweep's tracker.
        parent_run_id: the parent run.
        sweep: the sweep's name (tag of every run).
        base: the sweep's base configuration (``to_dict``); a trial's resolved config is base + its params.
        tags: extra tags for every child (profile, preset, space).
    """

    def __init__(self, tracker: SweepTracker, parent_run_id: str, sweep: str, base: dict[str, Any],
                 tags: dict[str, str]) -> None:
        self.tracker, self.parent_run_id, self.sweep = tracker, parent_run_id, sweep
        self.base, self.tags = base, tags
        self._runs: dict[str, str] = {}

    def _run_of(self, trial: Any) -> str:
        run_id = self._runs.get(trial.trial_id) or self.tracker.find_child(self.parent_run_id, trial.trial_id)
        if run_id is None:
            params = dict(trial.config)
            resolved = apply_overrides(from_dict(self.base), params)
            run_id = self.tracker.start_child(
                self.parent_run_id, self.sweep, trial.trial_id, str(trial), params, self.tags,
                yaml.safe_dump(to_dict(resolved), sort_keys=False))
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Create the trial's run, or reopen it (a retry, or a trial resumed after Ctrl-C)."""
        known = self._runs.get(trial.trial_id) or self.tracker.find_child(self.parent_run_id, trial.trial_id)
        if known is None:
            self._run_of(trial)
        else:
            self._runs[trial.trial_id] = known
            self.tracker.reopen(known)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Log the reported numbers at the stage-3 step."""
        step = int(result.get(STEP_KEY, result.get("training_iteration", 0)) or 0)
        self.tracker.log_metrics(self._run_of(trial), _loggable(result), step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """FINISHED when the final report came, else KILLED (stopped early by the scheduler)."""
        run_id = self._run_of(trial)
        complete = COMPLETE_KEY in (trial.last_result or {})
        if not complete:
            self.tracker.set_tags(run_id, {"stopped_by": "scheduler"})
        self.tracker.end(run_id, FINISHED if complete else KILLED)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failure that Tune will retry: record the reason, keep the run open."""
        self.tracker.set_tags(self._run_of(trial), {"error": _error_reason(trial),
                                                   "failures": str(trial.num_failures)})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Out of retries: FAILED with the reason."""
        run_id = self._run_of(trial)
        self.tracker.set_tags(run_id, {"error": _error_reason(trial), "failures": str(trial.num_failures)})
        self.tracker.end(run_id, FAILED)


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
        auc = result.get("valid/auc", math.nan)
        if COMPLETE_KEY in result:
            low, high = result.get("valid/auc_ci_low", math.nan), result.get("valid/auc_ci_high", math.nan)
            self._say(trial, f"finished: valid/auc {auc:.4f} [{low:.4f}, {high:.4f}] on "
                             f"{result.get('valid/rows', math.nan):.0f} rows, valid/uauc "
                             f"{result.get('valid/uauc', math.nan):.4f} ({result.get('trial_seconds', math.nan):.0f} s)")
        else:
            self._say(trial, f"stopped early at stage-3 step {result.get(STEP_KEY, math.nan):g}: valid/auc {auc:.4f}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a failure that will be retried."""
        self._say(trial, f"failed (attempt {trial.num_failures}), retrying: {_error_reason(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a failure after the last retry."""
        self._say(trial, f"FAILED after {trial.num_failures} attempts: {_error_reason(trial)} "
                         f"(traceback in {trial.path}/error.txt)")
