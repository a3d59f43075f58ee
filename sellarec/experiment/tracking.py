"""The MLflow side of every experiment (sweeps and ablations), used from the driver only: one run tracker, one schema.

Schema. An experiment (``search-<space>``, ``ablations``) holds one parent run per sweep or ablation (tag
``role=parent``) and one child run per trial (:data:`CHILD_TAGS`: ``role=trial``, ``trial_id``, ``trial_name``,
``run_key`` = :func:`~sellarec.config.config_key` of its configuration, ``varied`` = the dotted keys its planner
varied, and ``mlflow.parentRunId``), plus the planner's own tags (a sweep: ``sweep``, ``space``, ``profile``,
``preset``; an ablation: ``ablation``, ``profile``, ``cell``, ``seed``, ...). A child's params are its whole flat
configuration (``to_flat_dict``; lists as ``a,b``), its ``config.yaml`` is an artifact, its metrics are the
vocabulary of :mod:`sellarec.metrics`. Experiments carry :data:`EXPERIMENT_TAGS` (model training, not GenAI).

The driver is the only writer (a Tune callback), so trial processes never touch the store, a sqlite file never sees
concurrent writers, and every run's status is set by whoever knows it: FINISHED (ran to the end), KILLED (stopped
early by the scheduler or by Ctrl-C, or left RUNNING by a driver that was stopped), FAILED (raised after its
retries). A resumed sweep or ablation finds its runs by their tags and reuses them, so nothing is recorded twice.
MLflow is imported inside the functions and Ray not at all, so the reports load without Ray. The UI's link to the
latest sweep or ablation (:func:`latest_view_url`, printed by mlflow/ui.sh) stores that link's view as an
experiment tag, the only other write.

Default store: ``sqlite:///<repo>/mlflow/mlflow.db`` with artifacts in ``<repo>/mlflow/artifacts`` (git-ignored).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlparse

import yaml

from sellarec.config import SellaConfig, config_key, to_dict, to_flat_dict
from sellarec.runtime import repo_root

__all__ = ["default_tracking_uri", "is_local_store", "git_commit", "client_for", "ensure_experiment", "search_runs",
           "latest_run", "log_values", "close_running", "choice_key", "RunTracker", "CHILD_TAGS", "PARENT_ROLE",
           "TRIAL_ROLE", "FINISHED", "KILLED", "FAILED", "RUNNING", "EXPERIMENT_TAGS", "KEY_METRICS",
           "latest_parent", "runs_view_state", "save_runs_view", "runs_view_url", "latest_view_url"]

FINISHED, KILLED, FAILED, RUNNING = "FINISHED", "KILLED", "FAILED", "RUNNING"
PARENT_ROLE, TRIAL_ROLE = "parent", "trial"
CHILD_TAGS = ("mlflow.parentRunId", "role", "trial_id", "trial_name", "run_key", "varied")
_SQLITE = "sqlite:///"
_MAX_PARAM_CHARS = 6000   # MLflow's limit on a param value
_BATCH = {"params": 100, "tags": 100, "metrics": 1000}   # MLflow's limits per log_batch call
# The experiment kind "Machine learning" (not GenAI, whose page opens on Traces), set on creation: MLflow's API and
# UIs built to read it honour it; 3.17.2's UI follows its GenAI/Model-training switch instead, which the link of
# mlflow/ui.sh sets (workflowType=machine_learning; mlflow/README.md).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri(root: Path | None = None) -> str:
    """``sqlite:///<root>/mlflow/mlflow.db`` (MLflow 3 refuses the file store; STACK.md §5); root: the checkout."""
    return f"{_SQLITE}{(Path(root or repo_root()) / 'mlflow' / 'mlflow.db').resolve()}"


def is_local_store(uri: str) -> bool:
    """Whether ``uri`` is a store only this machine can write (sqlite, a file store or a plain path)."""
    return urlparse(uri).scheme in ("", "sqlite", "file")


def _artifact_location(uri: str) -> str | None:
    """``<db folder>/artifacts`` for a sqlite store (MLflow would use ./mlruns of the cwd); None lets a server pick."""
    if urlparse(uri).scheme != "sqlite":
        return None
    return (Path(uri[len(_SQLITE):]).parent / "artifacts").resolve().as_uri()


def git_commit(root: Path | None = None) -> str:
    """The checkout's commit (``+dirty`` when it has local changes), or 'unknown' outside git.

    ``$SELLAREC_GIT_COMMIT``, when set, wins: a synced copy of the tree on a remote machine may carry a stale
    ``.git``, and its runs must record the commit the files came from.
    """
    if os.environ.get("SELLAREC_GIT_COMMIT"):
        return os.environ["SELLAREC_GIT_COMMIT"]
    root = root or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def client_for(tracking_uri: str) -> Any:
    """An ``MlflowClient`` on ``tracking_uri``; a sqlite file's folder is created first."""
    from mlflow import MlflowClient

    # MLflow draws a progress bar for every artifact it downloads (a one-file config.yaml too): noise in our output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    # "Creating initial MLflow database tables..." on a new store: MLflow's INFO, nothing a user acts on.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if tracking_uri.startswith(_SQLITE):
        Path(tracking_uri[len(_SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name``, created (in the driver, before any trial: no creation race) when missing.

    Without ``artifact_location``, a sqlite store keeps artifacts in ``artifacts/`` beside its database file
    (MLflow's default is ``./mlruns`` under whatever the current folder is). The experiment carries
    :data:`EXPERIMENT_TAGS` (model training, not GenAI), also when it was created without them.
    """
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=artifact_location or _artifact_location(
            client.tracking_uri), tags=EXPERIMENT_TAGS)
    for key, value in EXPERIMENT_TAGS.items():   # a store written before the tag; a kind chosen in the UI stays
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def _tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())


def search_runs(client: Any, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
    """Every run of the experiment that carries all of ``tags`` (any status), page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=_tag_filter(tags), max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_run(client: Any, experiment_id: str, tags: Mapping[str, str]) -> Any | None:
    """The latest run (by start time, then run id) that carries all of ``tags``, or None (resume dedupe)."""
    return max(search_runs(client, experiment_id, tags), key=lambda r: (r.info.start_time or 0, r.info.run_id),
               default=None)


def choice_key(value: Any) -> Any:
    """The storable form of a value (an Optuna choice, an MLflow param): lists become ``"a,b"``; scalars stay."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def _text(value: Any) -> str:
    return str(choice_key(value))[:_MAX_PARAM_CHARS]


def log_values(client: Any, run_id: str, *, params: Mapping[str, Any] | None = None,
               metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None, step: int = 0,
               timestamp_ms: int = 0) -> None:
    """Log params (lists as ``a,b``), metrics (at ``step``; NaN is kept: an AUC with one class present is NaN, not
    missing) and tags, in batches of MLflow's size limits."""
    from mlflow.entities import Metric, Param, RunTag

    items = {"params": [Param(k, _text(v)) for k, v in sorted((params or {}).items())],
             "tags": [RunTag(k, str(v)) for k, v in sorted((tags or {}).items())],
             "metrics": [Metric(k, float(v), timestamp_ms, step) for k, v in sorted((metrics or {}).items())]}
    for kind, values in items.items():
        for start in range(0, len(values), _BATCH[kind]):
            client.log_batch(run_id, **{kind: values[start:start + _BATCH[kind]]})


def close_running(client: Any, runs: Iterable[Any], status: str) -> int:
    """End every run of ``runs`` still RUNNING with ``status`` (never leave a run RUNNING); returns how many."""
    open_runs = [r for r in runs if r.info.status == RUNNING]
    for run in open_runs:
        client.set_terminated(run.info.run_id, status)
    return len(open_runs)


class RunTracker:
    """One experiment's parent and child runs (see the module docstring for the schema).

    Args:
        uri: tracking URI (``sqlite:///...`` or ``http://host:port``).
        experiment: experiment name.
        artifact_location: the experiment's artifact folder when this tracker creates it (default: beside a sqlite
            file, or the server's choice).
    """

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.uri, self.experiment, self.artifact_location = uri, experiment, artifact_location
        self._client: Any = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:   # pickled into Tune's experiment state: no live client
        return {**self.__dict__, "_client": None, "_experiment_id": None}

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
            self._experiment_id = ensure_experiment(self.client, self.experiment, self.artifact_location)
        return self._experiment_id

    def find_parent(self, tags: Mapping[str, str]) -> Any | None:
        """The latest parent run carrying ``tags``, or None."""
        return latest_run(self.client, self.experiment_id, {"role": PARENT_ROLE, **tags})

    def start_parent(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any] | None = None,
                     texts: Mapping[str, str] | None = None) -> str:
        """Create a parent run; ``texts`` are logged as artifacts (file name -> content). Returns its id."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, "role": PARENT_ROLE})
        log_values(self.client, run.info.run_id, params=params)
        for file_name, text in (texts or {}).items():
            self.client.log_text(run.info.run_id, text, file_name)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed sweep, ablation or trial)."""
        self.client.update_run(run_id, status=RUNNING)

    def end(self, run_id: str, status: str) -> None:
        """End a run with FINISHED, KILLED or FAILED."""
        self.client.set_terminated(run_id, status)

    def children(self, parent_id: str) -> list[Any]:
        """Every child run of ``parent_id``, any status."""
        return search_runs(self.client, self.experiment_id, {"mlflow.parentRunId": parent_id})

    def find_child(self, parent_id: str, trial_id: str) -> str | None:
        """The run already recorded for this trial of this parent, if any (a retry or a resume reuses it)."""
        run = latest_run(self.client, self.experiment_id, {"mlflow.parentRunId": parent_id, "trial_id": trial_id})
        return run.info.run_id if run is not None else None

    def start_child(self, parent_id: str, trial_id: str, trial_name: str, run_name: str, cfg: SellaConfig,
                    tags: Mapping[str, str], varied: tuple[str, ...]) -> str:
        """Open a RUNNING child run: the schema's tags plus ``tags``, the whole flat config as params and
        ``config.yaml``; returns its id."""
        schema = {"mlflow.parentRunId": parent_id, "role": TRIAL_ROLE, "trial_id": trial_id,
                  "trial_name": trial_name, "run_key": config_key(cfg), "varied": ",".join(varied)}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, **schema})
        log_values(self.client, run.info.run_id, params=to_flat_dict(cfg))
        self.client.log_text(run.info.run_id, yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log numbers at ``step``, stamped now."""
        log_values(self.client, run_id, metrics=metrics, step=step, timestamp_ms=int(time.time() * 1000))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on a run."""
        log_values(self.client, run_id, tags=tags)

    def log_artifact(self, run_id: str, path: Path) -> None:
        """Attach a local file to a run."""
        self.client.log_artifact(run_id, str(path))

    def end_with_children(self, parent_id: str, status: str) -> int:
        """End the parent run with ``status`` and its child runs still RUNNING with KILLED (never leave a run
        RUNNING); returns how many children were closed."""
        closed = close_running(self.client, self.children(parent_id), KILLED)
        self.end(parent_id, status)
        return closed


# The UI's view of a sweep or an ablation. MLflow 3.17's runs page reads its filter and sort from the URL but its
# columns only from the browser's local storage or from a saved view: an experiment tag
# ``mlflow.sharedViewState.<key>`` that ``?viewStateShareKey=<key>`` opens (and the page's saved-views menu lists).
# ``?workflowType=machine_learning`` keeps the UI on model training: it ignores the experiment's kind tag and
# otherwise follows its GenAI/Machine-learning switch, which starts on GenAI. mlflow/README.md has the evidence.
KEY_METRICS = ("valid/auc", "valid/uauc", "test/auc", "test/uauc")   # the first one logged sorts
_VIEW_TAG = "mlflow.sharedViewState."
_SCOPE_TAGS = ("sweep", "ablation", "profile")   # the parent's tags its children carry too
_MAX_PARAM_COLUMNS = 16


def latest_parent(client: Any, experiment_prefix: str = "search-") -> Any | None:
    """The most recently started parent run of the experiments named ``<experiment_prefix>...``, or None."""
    ids = [e.experiment_id for e in client.search_experiments(max_results=1000) if
           e.name.startswith(experiment_prefix)]
    if not ids:
        return None
    runs = client.search_runs(ids, filter_string=f"tags.role = '{PARENT_ROLE}'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def runs_view_state(parent: Any, children: Iterable[Any]) -> dict[str, Any]:
    """The runs page's state for one parent: its runs (parent and trials), best ``valid/auc`` first, with the
    params the trials varied and the :data:`KEY_METRICS` they logged as columns.

    Sorting by a metric lists the parent and its trials flat: MLflow nests children under a parent only when sorted
    by start time, and then shows them collapsed (which parents are expanded lives in the browser only).
    """
    children = list(children)
    varied = sorted({key for run in children for key in run.data.tags.get("varied", "").split(",") if key})
    metrics = [key for key in KEY_METRICS if any(key in run.data.metrics for run in children)]
    scope = {key: parent.data.tags[key] for key in _SCOPE_TAGS if key in parent.data.tags}
    return {"searchFilter": _tag_filter(scope) if scope else f"attributes.run_id = '{parent.info.run_id}'",
            "orderByKey": f"metrics.`{metrics[0]}`" if metrics else "attributes.start_time", "orderByAsc": False,
            "selectedColumns": [f"params.`{key}`" for key in varied[:_MAX_PARAM_COLUMNS]]
                               + [f"metrics.`{key}`" for key in metrics]}


def save_runs_view(client: Any, experiment_id: str, key: str, name: str, state: Mapping[str, Any]) -> None:
    """Store ``state`` as the experiment's saved view ``key`` (named ``name`` in the UI; replaced if present)."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, _VIEW_TAG + key, json.dumps(envelope))


def runs_view_url(base_url: str, experiment_id: str, view_key: str | None = None,
                  state: Mapping[str, Any] | None = None) -> str:
    """The UI's runs page of an experiment, on model training: with saved view ``view_key``, or else with the
    filter and sort of ``state`` in the URL (a URL with both would ignore the view)."""
    query: dict[str, Any] = {"workflowType": "machine_learning"}
    if view_key:
        query["viewStateShareKey"] = view_key
    elif state:
        query.update({k: str(state[k]).lower() if isinstance(state[k], bool) else state[k]
                      for k in ("searchFilter", "orderByKey", "orderByAsc") if k in state})
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def latest_view_url(client: Any, base_url: str, experiment_prefix: str = "search-") -> str | None:
    """The link to the latest sweep (``search-*``) or ablation (``ablations``): saves its view
    (:func:`runs_view_state`, key = the parent's run id) and returns :func:`runs_view_url`; None without one."""
    parent = latest_parent(client, experiment_prefix)
    if parent is None:
        return None
    experiment_id, run_id = parent.info.experiment_id, parent.info.run_id
    children = search_runs(client, experiment_id, {"mlflow.parentRunId": run_id})
    name = f"{parent.info.run_name} ({client.get_experiment(experiment_id).name})"
    save_runs_view(client, experiment_id, run_id, name, runs_view_state(parent, children))
    return runs_view_url(base_url, experiment_id, view_key=run_id)
