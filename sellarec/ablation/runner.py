"""Run an ablation: cells x seeds as Ray Tune trials through the shared stage cache, tracked in MLflow, resumable.

Order of work: expand and check every cell (nothing written on a bad spec), check resources (a GPU request without a
GPU fails here instead of leaving trials PENDING; STACK.md §4), then open the parent run, import the finished runs
another machine exported (:mod:`sellarec.ablation.carryover`), mark children of an older spec ``superseded``, skip
every job whose (cell, seed, run key) already has a FINISHED run, and give the rest to Tune. Jobs of one cell at
different seeds have different stage keys and run side by side; cells that differ only in stage 3 reuse a seed's
stage-1 and stage-2 artifacts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sellarec.ablation.carryover import import_runs, kernel_warnings
from sellarec.ablation.expansion import expand_cells, expand_jobs
from sellarec.ablation.spec import AblationSpec, Job
from sellarec.ablation.tracking import EXPERIMENT, label_rule, open_parent
from sellarec.config import RuntimeConfig, apply_overrides, to_dict
from sellarec.errors import ConfigError
from sellarec.experiment.resources import Resources, start_ray, stop_ray
from sellarec.experiment.tracking import FAILED, FINISHED, KILLED, RunTracker, close_running, git_commit
from sellarec.experiment.trial import TrialConfigs, TrialJob, job_id
from sellarec.runtime import cache_root, describe_machine

__all__ = ["RunSummary", "run_ablation", "plan_jobs"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What :func:`run_ablation` did.

    Attributes:
        jobs: cells x seeds of the expansion.
        skipped: jobs that already had a FINISHED run.
        ran: jobs that finished now.
        failures: (job id, one-line error) of jobs that failed now.
        parent_run_id: the MLflow parent run.
    """

    jobs: int
    skipped: int
    ran: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    parent_run_id: str = ""


def plan_jobs(spec: AblationSpec, *, profile: str | None = None, seeds: int | None = None,
              overrides: Sequence[str] = (), max_cells: int | None = None) -> list[Job]:
    """The checked jobs of ``spec`` (``seeds``: a count overriding the spec's, seeds 0..K-1).

    Raises:
        ConfigError: a bad spec or override, or ``seeds`` < 1.
    """
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds={seeds} must be >= 1")
    cells = expand_cells(spec, profile=profile, overrides=overrides, max_cells=max_cells)
    return expand_jobs(cells, tuple(range(seeds)) if seeds is not None else spec.seeds)


def _job_config(job: Job, cache_dir: Path) -> dict:
    """The job's configuration on this execution's stage cache (not part of the run key); the trial's threads, device
    and progress follow its resources (:meth:`~sellarec.experiment.trial.TrialConfigs.resolve`)."""
    return to_dict(apply_overrides(job.config, {"runtime.cache_dir": str(cache_dir)}))


def _fingerprints(jobs: list[Job]) -> dict[str, str]:
    """Data fingerprint per distinct data config (reads the source files: a missing one fails before any write)."""
    from sellarec.data.dataset import data_fingerprint

    out: dict[str, str] = {}
    for job in jobs:
        key = repr(to_dict(job.config.data))
        if key not in out:
            out[key] = data_fingerprint(job.config.data)
    return out


def _job_tags(spec: AblationSpec, profile: str, job: Job, commit: str, fingerprints: dict[str, str]) -> dict:
    return {"ablation": spec.name, "profile": profile, "cell": job.cell.name, "seed": str(job.seed),
            "cell_kind": job.cell.kind, "cell_index": str(job.cell.index),
            "description": job.cell.description, "data_fingerprint": fingerprints[repr(to_dict(job.config.data))],
            "label_rule": label_rule(job.config), "git_commit": commit}


def _sync_children(tracker: RunTracker, parent_id: str, jobs: list[Job]) -> list[Job]:
    """Tag children that the current spec no longer asks for ``superseded``; return the jobs still to run."""
    wanted = {(j.cell.name, str(j.seed)): j.run_key for j in jobs}
    done = set()
    client = tracker.client
    runs = tracker.children(parent_id)
    close_running(client, runs, KILLED)   # left by a driver that was stopped; their jobs run again now
    for run in runs:
        tags = run.data.tags
        ident = (tags.get("cell"), tags.get("seed"))
        if run.info.status != FINISHED:
            continue
        if wanted.get(ident) == tags.get("run_key"):
            done.add((*ident, tags.get("run_key")))
            if "superseded" in tags:
                client.delete_tag(run.info.run_id, "superseded")
        elif tags.get("superseded") != "true":
            client.set_tag(run.info.run_id, "superseded", "true")
    return [j for j in jobs if (j.cell.name, str(j.seed), j.run_key) not in done]


def run_ablation(spec: AblationSpec, *, storage: Path | str, tracking_uri: str, profile: str | None = None,
                 seeds: int | None = None, overrides: Sequence[str] = (), resources: Resources = Resources(),
                 cache_dir: Path | str | None = None, max_cells: int | None = None, command: str = "",
                 experiment: str = EXPERIMENT, artifact_location: str | None = None,
                 imported_runs: Sequence[Mapping[str, Any]] = (), import_source: str = "") -> RunSummary:
    """Run every unfinished job of ``spec`` on Ray and log it to MLflow under one parent run.

    Args:
        spec: the parsed spec.
        storage: Tune's storage (an absolute path or a URI); trial folders hold each run's config and metrics.
        tracking_uri: the MLflow store (``sqlite:///...`` or a server).
        profile: size profile (default: the spec's).
        seeds: number of seeds (default: the spec's seeds).
        overrides: extra ``key=value`` overrides for every row (part of the run key).
        resources: per-trial resources and the Ray address.
        cache_dir: the shared stage cache (default: ``$SELLAREC_CACHE`` or ``~/.cache/sellarec``).
        max_cells: run only the first this many cells (smoke tests).
        command: the command line, recorded on the parent run for the report's footer.
        experiment: MLflow experiment name.
        artifact_location: the experiment's artifact folder when it is created.
        imported_runs: finished runs exported by a report elsewhere (:func:`~sellarec.ablation.carryover.read_runs`);
            those matching a job are logged as finished and not run again.
        import_source: where ``imported_runs`` came from, kept on each imported run.

    Raises:
        ConfigError: a bad spec, override or option (before anything is written).
        ResourceError: GPUs requested where there are none (before Ray starts, or right after connecting), or a
            cluster at ``resources.address`` that cannot be joined.
    """
    profile = profile or spec.profile
    jobs = plan_jobs(spec, profile=profile, seeds=seeds, overrides=overrides, max_cells=max_cells)
    gpus = resources.plan_gpus()
    fingerprints = _fingerprints(jobs)
    storage = str(storage) if "://" in str(storage) else str(Path(storage).resolve())
    cache = cache_root(RuntimeConfig(cache_dir=str(cache_dir) if cache_dir else None))
    commit = git_commit()
    tracker = RunTracker(tracking_uri, experiment, artifact_location)
    parent_id = open_parent(tracker, spec.name, profile,
                            {"command": command, "git_commit": commit, "machine": describe_machine(),
                             "mode": spec.mode, "jobs": str(len(jobs)), "description": spec.description})
    if imported_runs:
        job_prints = {(j.cell.name, str(j.seed)): fingerprints[repr(to_dict(j.config.data))] for j in jobs}
        count, refused = import_runs(tracker, parent_id, imported_runs, jobs, job_prints, import_source)
        log.info("imported %d finished runs from %s", count, import_source)
        for reason in refused:
            log.warning("not imported from %s: %s", import_source, reason)
        for line in kernel_warnings(imported_runs, describe_machine()):
            log.warning(line)
    pending = _sync_children(tracker, parent_id, jobs)
    summary = RunSummary(jobs=len(jobs), skipped=len(jobs) - len(pending), parent_run_id=parent_id)
    log.info("ablation %s (%s): %d jobs, %d already finished", spec.name, profile, len(jobs), summary.skipped)
    try:
        if pending:
            jobs_by_id = {job_id(i, j.cell.name, j.seed): TrialJob(_job_config(j, cache),
                                                                  _job_tags(spec, profile, j, commit, fingerprints),
                                                                  tuple(sorted(j.cell.overrides)))
                          for i, j in enumerate(pending)}
            _fit(f"{spec.name}-{profile}", TrialConfigs(jobs=jobs_by_id), resources, gpus, storage, tracker,
                 parent_id, summary)
    finally:
        tracker.end(parent_id, FAILED if summary.failures or summary.ran + summary.skipped < len(jobs) else FINISHED)
    return summary


def _fit(name: str, configs: TrialConfigs, resources: Resources, planned_gpus: float | None, storage: str,
         tracker: RunTracker, parent_id: str, summary: RunSummary) -> None:
    """One Tune grid over the pending jobs; the driver-side callbacks write MLflow, print progress and fill
    ``summary``."""
    from ray import tune

    from sellarec.experiment.callbacks import TrialRuns
    from sellarec.experiment.launch import run_config, trainable, watched
    from sellarec.experiment.trial import trial_dirname

    started = start_ray(resources.address)
    try:
        gpus = resources.cluster_gpus(planned_gpus)
        callback = TrialRuns(tracker, parent_id, configs)
        configs, progress = watched(configs, len(configs.jobs))
        tuner = tune.Tuner(
            trainable(configs, resources.cpus_per_trial, gpus),
            param_space={"job": tune.grid_search(list(configs.jobs))},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=resources.max_concurrent,
                                        trial_dirname_creator=trial_dirname),
            run_config=run_config(name, storage, callback, max_failures=0, progress=progress))
        tuner.fit()
        summary.ran, summary.failures = callback.finished, callback.failures
    finally:
        if started:
            stop_ray()
