"""MLflow records of a sweep: one parent run per sweep, one child run per trial, written from the Tune driver.

The driver is the only writer (a Tune callback), so trial processes never touch the store, a sqlite file never sees
concurrent writers, and every run's status is set by whoever knows it: FINISHED (the pipeline ran to the end),
KILLED (stopped early by the scheduler or by Ctrl-C), FAILED (raised after its retries). A resumed sweep finds a
trial's run by its ``trial_id`` tag and reuses it, so no trial is recorded twice.

Default store: ``sqlite:///<repo>/mlflow/mlflow.db`` with artifacts in ``<repo>/mlflow/artifacts`` (git-ignored).
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from ray import tune

from sellarec.config import apply_overrides, from_dict, to_dict
from sellarec.tuning.space import label, repo_root
from sellarec.tuning.trainable import COMPLETE_KEY, STEP_KEY

__all__ = ["default_tracking_uri", "is_local_store", "git_commit", "SweepTracker", "TrialLogger",
           "ProgressPrinter", "FINISHED", "KILLED", "FAILED", "RUNNING"]

FINISHED, KILLED, FAILED, RUNNING = "FINISHED", "KILLED", "FAILED", "RUNNING"
_LOGGED_PREFIXES = ("valid", "test", "train/", "cache", "stage3/")
_LOGGED_KEYS = ("trainable_params", "seconds", "trial_seconds", "peak_gpu_mib")


def default_tracking_uri() -> str:
    """``sqlite:///<repo>/mlflow/mlflow.db``."""
    return f"sqlite:///{repo_root() / 'mlflow' / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    """Whether ``uri`` is a store only this machine can write (sqlite, a file store or a plain path)."""
    return urlparse(uri).scheme in ("", "sqlite", "file")


def _artifact_location(uri: str) -> str | None:
    """``<db folder>/artifacts`` for a sqlite store (MLflow would use ./mlruns of the cwd); None lets a server pick."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent / "artifacts").resolve().as_uri()


def git_commit(root: Path | None = None) -> str:
    """The checkout's commit (``+dirty`` when it has local changes), or 'unknown' outside git."""
    root = root or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _param_value(value: Any) -> str:
    return str(label(value))


class SweepTracker:
    """The MLflow side of one sweep: its experiment, the parent run and the trials' child runs.

    Args:
        uri: tracking URI (``sqlite:///...`` or ``http://host:port``).
        experiment: experiment name (one per search space: ``search-<space>``).
    """

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self._client: Any = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:   # pickled into Tune's experiment state: no live client
        return {"uri": self.uri, "experiment": self.experiment, "_client": None, "_experiment_id": None}

    @property
    def client(self) -> Any:
        """A lazily created ``MlflowClient``."""
        if self._client is None:
            from mlflow import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The experiment's id; created here, in the driver, before any trial starts (no creation race)."""
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found is not None else self.client.create_experiment(
                self.experiment, artifact_location=_artifact_location(self.uri))
        return self._experiment_id

    def start_parent(self, sweep: str, tags: dict[str, str], params: dict[str, Any], texts: dict[str, str]) -> str:
        """Create the sweep's parent run; ``texts`` are logged as artifacts (file name -> content)."""
        run = self.client.create_run(self.experiment_id, run_name=sweep,
                                     tags={"sweep": sweep, "kind": "sweep", **tags})
        self._log_params(run.info.run_id, params)
        for name, text in texts.items():
            self.client.log_text(run.info.run_id, text, name)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed sweep or trial)."""
        self.client.update_run(run_id, status=RUNNING)

    def end(self, run_id: str, status: str) -> None:
        """End a run with FINISHED, KILLED or FAILED."""
        self.client.set_terminated(run_id, status)

    def find_child(self, parent_id: str, trial_id: str) -> str | None:
        """The run already recorded for this trial of this sweep, if any (resume dedupe)."""
        runs = self.client.search_runs([self.experiment_id], max_results=1,
                                       filter_string=f"tags.sweep_run = '{parent_id}' and tags.trial_id = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def start_child(self, parent_id: str, sweep: str, trial_id: str, trial_name: str, params: dict[str, Any],
                    tags: dict[str, str], config_yaml: str) -> str:
        """Create a trial's child run with its searched params and resolved config (``config.yaml`` artifact)."""
        run = self.client.create_run(
            self.experiment_id, run_name=trial_name,
            tags={"mlflow.parentRunId": parent_id, "sweep_run": parent_id, "sweep": sweep, "kind": "trial",
                  "trial_id": trial_id, "trial_name": trial_name, **tags})
        self._log_params(run.info.run_id, params)
        self.client.log_text(run.info.run_id, config_yaml, "config.yaml")
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Log numbers at ``step`` (NaN is kept: an AUC with one class present is NaN, not missing)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on a run."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def children(self, parent_id: str) -> list[Any]:
        """Every trial run of the sweep whose parent run is ``parent_id``."""
        return self.client.search_runs([self.experiment_id], max_results=10_000,
                                       filter_string=f"tags.sweep_run = '{parent_id}' and tags.kind = 'trial'")

    def close_children(self, parent_id: str, status: str) -> int:
        """End every trial run of the sweep still RUNNING with ``status``; returns how many."""
        open_runs = [r for r in self.children(parent_id) if r.info.status == RUNNING]
        for run in open_runs:
            self.end(run.info.run_id, status)
        return len(open_runs)

    def log_artifact(self, run_id: str, path: Path) -> None:
        """Attach a local file to a run."""
        self.client.log_artifact(run_id, str(path))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if params:
            self.client.log_batch(run_id, params=[Param(k, _param_value(v)[:6000]) for k, v in params.items()])


def _error_reason(trial: Any) -> str:
    """The last line of the trial's error (the exception), or a placeholder."""
    try:
        text = trial.get_error()
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
                           f"{k.replace('stage', 's', 1)}={label(v)}" for k, v in trial.config.items())
        self._say(trial, f"started: {params}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print the outcome: finished with its metrics, or stopped early with its last value."""
        result = trial.last_result or {}
        auc = result.get("valid/auc", math.nan)
        if COMPLETE_KEY in result:
            self._say(trial, f"finished: valid/auc {auc:.4f}, valid/uauc {result.get('valid/uauc', math.nan):.4f}, "
                             f"test/auc {result.get('test/auc', math.nan):.4f} "
                             f"({result.get('trial_seconds', math.nan):.0f} s)")
        else:
            self._say(trial, f"stopped early at stage-3 step {result.get(STEP_KEY, math.nan):g}: valid/auc {auc:.4f}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a failure that will be retried."""
        self._say(trial, f"failed (attempt {trial.num_failures}), retrying: {_error_reason(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Print a failure after the last retry."""
        self._say(trial, f"FAILED after {trial.num_failures} attempts: {_error_reason(trial)} "
                         f"(traceback in {trial.path}/error.txt)")
