"""A sweep's MLflow tracker: one parent run per sweep, one child run per trial, written from the driver only.

The store helpers it builds on are :mod:`sellarec.experiment.tracking`. This module's path is pickled into Tune's
experiment state (the callbacks hold a :class:`SweepTracker`), so it stays where it is for ``--resume``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sellarec.experiment.tracking import (FAILED, FINISHED, KILLED, RUNNING, client_for, close_running,
                                          ensure_experiment, latest_run, log_values, search_runs)

__all__ = ["SweepTracker"]


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
            self._client = client_for(self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The experiment's id (:func:`ensure_experiment`)."""
        if self._experiment_id is None:
            self._experiment_id = ensure_experiment(self.client, self.experiment)
        return self._experiment_id

    def start_parent(self, sweep: str, tags: dict[str, str], params: dict[str, Any], texts: dict[str, str]) -> str:
        """Create the sweep's parent run; ``texts`` are logged as artifacts (file name -> content)."""
        run = self.client.create_run(self.experiment_id, run_name=sweep,
                                     tags={"sweep": sweep, "kind": "sweep", **tags})
        log_values(self.client, run.info.run_id, params=params)
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
        run = latest_run(self.client, self.experiment_id, {"sweep_run": parent_id, "trial_id": trial_id})
        return run.info.run_id if run is not None else None

    def start_child(self, parent_id: str, sweep: str, trial_id: str, trial_name: str, params: dict[str, Any],
                    tags: dict[str, str], config_yaml: str) -> str:
        """Create a trial's child run with its searched params and resolved config (``config.yaml`` artifact)."""
        run = self.client.create_run(
            self.experiment_id, run_name=trial_name,
            tags={"mlflow.parentRunId": parent_id, "sweep_run": parent_id, "sweep": sweep, "kind": "trial",
                  "trial_id": trial_id, "trial_name": trial_name, **tags})
        log_values(self.client, run.info.run_id, params=params)
        self.client.log_text(run.info.run_id, config_yaml, "config.yaml")
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Log numbers at ``step``, stamped now."""
        log_values(self.client, run_id, metrics=metrics, step=step, timestamp_ms=int(time.time() * 1000))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on a run."""
        log_values(self.client, run_id, tags=tags)

    def children(self, parent_id: str) -> list[Any]:
        """Every trial run of the sweep whose parent run is ``parent_id``."""
        return search_runs(self.client, self.experiment_id, {"sweep_run": parent_id, "kind": "trial"})

    def close_children(self, parent_id: str, status: str) -> int:
        """End every trial run of the sweep still RUNNING with ``status``; returns how many."""
        return close_running(self.client, self.children(parent_id), status)

    def end_sweep(self, parent_id: str, status: str) -> None:
        """End the sweep's parent run with ``status`` and its trial runs still RUNNING with KILLED."""
        self.close_children(parent_id, KILLED)
        self.end(parent_id, status)

    def log_artifact(self, run_id: str, path: Path) -> None:
        """Attach a local file to a run."""
        self.client.log_artifact(run_id, str(path))

