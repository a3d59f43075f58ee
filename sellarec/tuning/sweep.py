"""The sweep driver: a search space -> Ray Tune (Optuna sampler, ASHA or FIFO) -> MLflow runs and a report.

Order of work: every check that can fail on bad input runs before Ray starts or MLflow is written (one-line
``SellarecError``, exit code 2); then Ray is joined or started, the GPU request is checked against what Ray sees
(a GPU request Ray cannot place would leave trials PENDING forever), the parent MLflow run is opened and Tune runs.
Ctrl-C stops Tune, which saves its state; the sweep's runs are marked KILLED and the resume command is printed.
``--resume`` restores the Tune experiment (searcher and scheduler state included) and finishes it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune.search.optuna import OptunaSearch

from sellarec.arguments import exit_code
from sellarec.atomic_files import write_json_atomic, write_text_atomic
from sellarec.config import from_dict
from sellarec.experiment.resources import (check_local_gpu, check_shared_tracking, cluster_gpus, default_gpus,
                                           start_ray, stop_ray)
from sellarec.experiment.tracking import (FAILED, FINISHED, KILLED, RunTracker, choice_key, default_tracking_uri,
                                         git_commit)
from sellarec.experiment.trial import COMPLETE_KEY, TrialConfigs
from sellarec.runtime import describe_machine, repo_relative
from sellarec.tuning.plan import (SWEEP_FILE, SweepOptions, SweepPlan, check_options, new_plan, rerun_command,
                                  resume_command, resume_plan, study_url)
from sellarec.tuning.space import SearchSpace
from sellarec.tuning.space_file import load_space

# SweepOptions lives in sellarec.tuning.plan; named here too, as run_sweep's argument.
__all__ = ["SweepOptions", "SweepOutcome", "run_sweep", "main", "PruneAwareOptunaSearch"]


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials that did not run to the end.

    Tune hands a scheduler-stopped trial's last (under-trained) result to ``on_trial_complete``, which OptunaSearch
    records as COMPLETE; that biases TPE and the importances towards "stopped early = bad". Here such a trial is
    PRUNED (its intermediate values stay), an errored one FAIL, and a non-finite value FAIL (Optuna refuses NaN).

    A trial that finished after the last state Tune saved, in a driver that was then killed, is COMPLETE in the
    study (its database outlives the driver) but running in the restored searcher: Tune starts it again and it
    reports its kept final report; the study already holds it, so the searcher records nothing more (Optuna
    refuses to update a finished trial, which would crash the resumed sweep).
    """

    def _done_in_study(self, trial_id: str) -> bool:
        """Whether the study already holds this trial's end (recorded by an earlier, killed driver)."""
        earlier = self.__dict__.setdefault("_ended_earlier", set())   # setdefault: a restored searcher is unpickled
        if trial_id in earlier:
            return True
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return False
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            earlier.add(trial_id)
            self._completed_trials.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report an intermediate value to the study, unless the study already holds the trial's end."""
        if not self._done_in_study(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the trial's end in the Optuna study."""
        import optuna

        if self._done_in_study(trial_id):
            return None
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        value = (result or {}).get(self.metric) if isinstance(self.metric, str) else None
        if not error and result and COMPLETE_KEY in result and isinstance(value, (int, float)) \
                and math.isfinite(value):
            return super().on_trial_complete(trial_id, result, error)
        state = optuna.trial.TrialState.PRUNED
        if error or (result and COMPLETE_KEY in result):
            state = optuna.trial.TrialState.FAIL
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)
        return None


@dataclass
class SweepOutcome:
    """What a sweep produced.

    Attributes:
        name: the sweep's name.
        path: its local folder (``sweep.json``, ``optuna.db``; Tune's files when storage is local).
        interrupted: stopped by Ctrl-C; resume with ``resume_command``.
        resume_command: the command that finishes the sweep.
        rows: every trial, ranked best first.
        best_params: the best finished trial's parameters.
        report: the markdown report (None when interrupted).
        parent_run_id: the sweep's MLflow run.
        seconds: wall time of this invocation's Tune run.
    """

    name: str
    path: Path
    interrupted: bool = False
    resume_command: str = ""
    rows: list = field(default_factory=list)
    best_params: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    parent_run_id: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------- Tune wiring


def _sampler(plan: SweepPlan) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if plan.sampler == "tpe":   # group=True: conditional spaces get one density per set of present parameters
        return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=plan.n_startup_trials,
                                          multivariate=True, group=True)
    if plan.sampler == "gp":
        return optuna.samplers.GPSampler(seed=plan.seed, n_startup_trials=plan.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=plan.seed)


def _trial_configs(plan: SweepPlan) -> TrialConfigs:
    """A sweep's trials: the searched overrides on the base configuration, scored on valid only (a sweep selects on
    valid; test is left to `sellarec train` of the chosen configuration, which reuses every stage)."""
    tags = {"sweep": plan.name, "space": plan.space_name, "profile": str(plan.profile), "preset": str(plan.preset)}
    return TrialConfigs(base=plan.base, tags=tags, evaluate_test=False, intermediate=plan.scheduler == "asha",
                        final_reports=str(Path(plan.folder) / FINAL_REPORTS))


def _watched(plan: SweepPlan) -> tuple[TrialConfigs, Any]:
    """The trials' configurations publishing their status into the sweep's own folder, and the printer reading it
    (a fixed folder: a resumed sweep's restored printer reads where the new trainable writes)."""
    from sellarec.experiment.launch import watched

    return watched(_trial_configs(plan), plan.num_samples, Path(plan.folder) / STATUS_DIR)


def _trainable(plan: SweepPlan) -> Any:
    from sellarec.experiment.launch import trainable

    return trainable(_watched(plan)[0], plan.cpus_per_trial, plan.gpus_per_trial)


def _tuner(plan: SweepPlan, space: SearchSpace, callback: Any) -> Any:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sellarec.experiment.launch import run_config
    from sellarec.experiment.trial import trial_dirname
    from sellarec.metrics import TRAIN_STEP

    study_storage = optuna.storages.RDBStorage(study_url(plan))
    base_cfg = from_dict(plan.base)
    # The incumbent (the base configuration's own values) is queued once, as the study's first trial.
    fresh = plan.name not in optuna.get_all_study_names(study_storage) \
        or not optuna.load_study(study_name=plan.name, storage=study_storage).trials
    incumbent = [space.point(base_cfg)] if space.incumbent and fresh else None
    searcher = PruneAwareOptunaSearch(space, metric=plan.metric, mode=plan.mode, sampler=_sampler(plan),
                                      study_name=plan.name, storage=study_storage, points_to_evaluate=incumbent)
    every = base_cfg.stage3.eval_every_steps or plan.stage3_steps
    scheduler = (ASHAScheduler(time_attr=TRAIN_STEP, max_t=max(1, plan.stage3_steps), grace_period=max(1, every),
                               reduction_factor=2) if plan.scheduler == "asha" else FIFOScheduler())
    # Reusing a worker saves its imports (~4 s a trial on 2 cores), but only where a trial's thread has surely
    # ended: an ASHA-stopped trial computes on until its next report, and Tune would fail the next trial given
    # that worker; on a GPU a fresh process per trial also returns all of its memory.
    reuse = plan.scheduler == "fifo" and plan.gpus_per_trial <= 0
    return tune.Tuner(
        _trainable(plan),
        tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=plan.num_samples, max_concurrent_trials=plan.max_concurrent,
                                    trial_dirname_creator=trial_dirname, reuse_actors=reuse),
        run_config=run_config(plan.name, plan.storage, callback, plan.max_failures, _watched(plan)[1]),
    )


# --------------------------------------------------------------------------------------------------- results


def _report_lines(plan: SweepPlan, space: SearchSpace, counts: dict[str, int],
                  seconds: float) -> tuple[list[str], list[str]]:
    """The report's header (what was run) and footer (where to look further) bullets."""
    done = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    header = [f"space `{plan.space_name}` ({plan.space_path}), profile `{plan.profile}`, preset "
              f"`{plan.preset or 'none'}`, overrides `{' '.join(plan.overrides) or 'none'}`",
              f"sampler {plan.sampler} (seed {plan.seed}), scheduler {plan.scheduler}, metric {plan.metric} "
              f"({plan.mode}), {plan.cpus_per_trial:g} CPU and {max(0.0, plan.gpus_per_trial):g} GPU per trial",
              f"{sum(counts.values())} trials: {done}; wall time {seconds / 60:.1f} min (every invocation, "
              "resumes and re-reports added)",
              f"git commit `{plan.git_commit}`, started {plan.created}"
              + (f" on {plan.machine} (driver)" if plan.machine else "")]
    footer = [f"MLflow: parent run `{plan.parent_run_id}` in experiment `search-{plan.space_name}` of "
              f"`{plan.tracking_uri}`; open the UI with `mlflow/ui.sh` (see mlflow/README.md)",
              f"Optuna study `{plan.name}`: `make dashboard NAME={plan.name}` (optuna-dashboard on 127.0.0.1:8080; "
              f"for a study outside runs/sweeps: `optuna-dashboard {study_url(plan)}`)",
              f"Tune experiment: `{plan.storage}/{plan.name}`; on the machine that ran it, resume or re-report with "
              f"`{resume_command(plan, None)}`",
              f"Run it again from a fresh clone (the stage cache fills as it goes): `{rerun_command(plan, space)}`"]
    return [repo_relative(line) for line in header], [repo_relative(line) for line in footer]


def _incumbent_id(plan: SweepPlan, space: SearchSpace, rows: list) -> str | None:
    """The trial that ran the base configuration's own values (space ``incumbent: true``), if it ran."""
    if not space.incumbent:
        return None
    point = space.point(from_dict(plan.base))
    return next((r.trial_id for r in rows if {k: choice_key(v) for k, v in r.params.items() if k in point} == point),
                None)


FINAL_REPORTS = "final_reports"   # in the sweep's folder: each finished trial's final report (TrialConfigs)
STATUS_DIR = "status"   # in the sweep's folder while trials run: what each one is doing (sellarec.status)
WALL_FILE = "wall.json"   # in the sweep's folder: wall seconds summed over every invocation (run, resumes, re-reports)


def _add_wall_time(plan: SweepPlan, seconds: float) -> float:
    """Add this invocation's wall time to the sweep's total and return the total (a re-report does not reset it)."""
    path = Path(plan.folder) / WALL_FILE
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    write_json_atomic(path, {"seconds": total})
    return total


def _finish(plan: SweepPlan, space: SearchSpace, tracker: RunTracker, seconds: float) -> SweepOutcome:
    """Read the trials back from MLflow, rank them, print the top-k table and the best configuration, write the
    report and log it to the parent run."""
    from sellarec.tuning.report import (format_table, param_importances, rank_rows, rows_from_runs, train_command,
                                         winner, write_report)

    rows = rank_rows(rows_from_runs(tracker.children(plan.parent_run_id), space), plan.metric, plan.mode)
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "stopped", "failed", "unfinished")}
    best = next((r for r in rows if r.status == "finished"), None)
    best_run = f"runs/{plan.name}-best"
    command = repo_relative(train_command(plan.profile, plan.preset, plan.config_file, plan.overrides,
                                          best.params if best else {}, out=best_run))
    command += f"\npython -m sellarec export --run {best_run} --to bundles/{plan.name}-best"
    if best is not None:   # the trial itself: its stages are in this machine's stage cache
        store = "" if plan.tracking_uri == default_tracking_uri() else f" --tracking-uri {plan.tracking_uri}"
        command += (f"\npython -m sellarec predict --mlflow-run {best.run_id}{store} --pairs PAIRS.csv "
                    f"--out SCORES.csv\npython -m sellarec export --mlflow-run {best.run_id}{store} "
                    f"--to bundles/{plan.name}-top-trial")
    print(f"\nsweep {plan.name}: {len(rows)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}) "
          f"in {seconds / 60:.1f} min")
    print(format_table(rows[:plan.top_k], space.keys, plan.metric, markdown=False))
    if best is not None:
        told_apart = winner(rows, plan.metric, plan.mode) is not None
        what = ("best (its interval clears the runner-up's)" if told_apart else
                "no best configuration (the top trial's interval overlaps the runner-up's); top point estimate")
        print(f"\n{what}: trial {best.trial_id}, {plan.metric} = {best.metrics[plan.metric]:.4f}; train and export "
              f"it with:\n{command}")
    importances = param_importances(study_url(plan), plan.name)
    header, footer = _report_lines(plan, space, counts, _add_wall_time(plan, seconds))
    md = Path(plan.report_dir) / f"{plan.name}.md"
    incumbent = _incumbent_id(plan, space, rows)
    pngs = write_report(md, rows, space.keys, plan.metric, plan.mode, importances, header, command, footer,
                        plan.top_k, incumbent, study_storage=study_url(plan), study_name=plan.name)
    summary = {"name": plan.name, "seconds": seconds, "counts": counts, "metric": plan.metric,
               "rows": [asdict(r) for r in rows], "importances": importances}
    (Path(plan.folder) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for path in (md, *pngs):
        tracker.log_artifact(plan.parent_run_id, path)
    best_metric = {f"best/{plan.metric}": float(best.metrics[plan.metric])} if best else {}
    tracker.log_metrics(plan.parent_run_id, {**best_metric, **{f"trials/{k}": float(v) for k, v in counts.items()}}, 0)
    print(f"\nreport: {md}\nplots: {', '.join(map(str, pngs))}\nMLflow parent run: {plan.parent_run_id} "
          f"({plan.tracking_uri})")
    return SweepOutcome(plan.name, Path(plan.folder), rows=rows, best_params=best.params if best else {},
                        report=md, parent_run_id=plan.parent_run_id, seconds=seconds)


# --------------------------------------------------------------------------------------------------- driver


def _open_parent(plan: SweepPlan, tracker: RunTracker) -> None:
    if plan.parent_run_id:
        tracker.reopen(plan.parent_run_id)
        return
    plan.git_commit, plan.machine = git_commit(), describe_machine()
    tags = {"sweep": plan.name, "machine": plan.machine, "space": plan.space_name, "profile": str(plan.profile),
            "preset": str(plan.preset), "sampler": plan.sampler, "scheduler": plan.scheduler,
            "git_commit": plan.git_commit, "smoke_test": str(plan.smoke_test).lower()}
    params = {"space": plan.space_name, "profile": plan.profile, "preset": plan.preset, "sampler": plan.sampler,
              "seed": plan.seed, "scheduler": plan.scheduler, "metric": plan.metric, "mode": plan.mode,
              "num_samples": plan.num_samples, "cpus_per_trial": plan.cpus_per_trial,
              "gpus_per_trial": plan.gpus_per_trial, "max_concurrent": plan.max_concurrent,
              "max_failures": plan.max_failures, "overrides": " ".join(plan.overrides) or "none"}
    texts = {"space.yaml": Path(plan.space_path).read_text(encoding="utf-8"),
             "base_config.yaml": yaml.safe_dump(plan.base, sort_keys=False)}
    plan.parent_run_id = tracker.start_parent(plan.name, tags, params, texts)


def run_sweep(options: SweepOptions) -> SweepOutcome:
    """Run (or, with ``options.resume``, finish) a sweep; see the module docstring.

    Raises:
        ConfigError: a bad option, space or configuration (before anything starts).
        ResourceError: GPUs or CPUs requested that Ray does not have (before ``fit()``).
    """
    check_options(options)
    if options.resume:
        plan = resume_plan(options)
        if options.address is not None:
            check_shared_tracking(plan.tracking_uri)
        check_local_gpu(plan.gpus_per_trial, options.address)
        space = load_space(plan.space_path)
    else:
        check_local_gpu(default_gpus(options.gpus_per_trial, options.address), options.address)
        plan, space = new_plan(options)
    started = start_ray(options.address)
    try:
        plan.gpus_per_trial = cluster_gpus(plan.gpus_per_trial, plan.cpus_per_trial)
        tracker = RunTracker(plan.tracking_uri, f"search-{plan.space_name}")
        _open_parent(plan, tracker)
        try:
            Path(plan.folder).mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(plan.folder) / SWEEP_FILE, json.dumps(asdict(plan), indent=2))
        except BaseException:   # the parent run exists: end it FAILED, never leave it RUNNING
            tracker.end_with_children(plan.parent_run_id, FAILED)
            raise
        return _run(plan, space, tracker, options)
    finally:
        if started:
            stop_ray()


def _interrupted(plan: SweepPlan, tracker: RunTracker, resume: str, seconds: float, what: str) -> SweepOutcome:
    _add_wall_time(plan, seconds)
    tracker.end_with_children(plan.parent_run_id, KILLED)
    print(f"\nsweep {plan.name} interrupted{what}; resume with:\n  {resume}", file=sys.stderr)
    return SweepOutcome(plan.name, Path(plan.folder), interrupted=True, resume_command=resume,
                        parent_run_id=plan.parent_run_id, seconds=seconds)


def _shared_stages_first(plan: SweepPlan, space: SearchSpace, address: str | None) -> None:
    """Compute the stages every trial shares (1 and 2, when the space varies stage 3 only) before the trials start,
    with all of this machine's CPUs as torch threads.

    Otherwise the first trial computes them on its own CPU while the others wait on the cache lock with theirs idle.
    Only for a local CPU sweep: on a cluster or a GPU, the trials' machines compute them. The stage keys are those
    the trials will ask for (same config, same cache), so each trial then finds them; test scoring is skipped, as in
    trials.
    """
    import ray

    from sellarec.config import apply_overrides
    from sellarec.data.dataset import data_fingerprint
    from sellarec.experiment.callbacks import Heartbeat
    from sellarec.pipeline import run_pipeline, stage_keys

    if address is not None or plan.gpus_per_trial > 0 or any(not k.startswith("stage3.") for k in space.keys):
        return
    base = apply_overrides(from_dict(plan.base), {"runtime.device": "cpu"})   # as the trials run (TrialConfigs)
    if base.final_stage != "stage3":
        return
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)))
    fingerprint = data_fingerprint(base.data)
    wanted = stage_keys(base, fingerprint)
    for upto in ("stage2", "stage1"):   # stage 2 alone can have another key (a semantic table only stage 3 needs)
        cfg = apply_overrides(base, {"final_stage": upto, "runtime.threads": threads})
        keys = stage_keys(cfg, fingerprint)
        if all(keys[s] == wanted.get(s) for s in keys):
            break
    else:
        return
    print(f"computing the shared {' and '.join(sorted(keys))} once with {threads} threads before the trials "
          "(cached: seconds)", flush=True)
    start = time.perf_counter()
    with Heartbeat(Path(plan.folder) / STATUS_DIR / "shared_stages.json", "shared stages"):
        result = run_pipeline(cfg, Path(plan.folder) / "shared_stages", evaluate_test=False)
    print(f"shared stages ready in {time.perf_counter() - start:.0f} s ("
          + ", ".join(f"{k} {v}" for k, v in result.cache.items()) + ")", flush=True)


def _run(plan: SweepPlan, space: SearchSpace, tracker: RunTracker, options: SweepOptions) -> SweepOutcome:
    from ray import tune

    print(f"sweep {plan.name}: space {plan.space_name}, {plan.num_samples} trials, sampler {plan.sampler}, "
          f"scheduler {plan.scheduler}, {plan.cpus_per_trial:g} CPU / {plan.gpus_per_trial:g} GPU per trial\n"
          f"  storage {plan.storage}/{plan.name}\n  MLflow {plan.tracking_uri} (parent run {plan.parent_run_id})",
          flush=True)
    resume = resume_command(plan, options.address)
    # Tune saves its state at most every 10+ s by default: a driver killed in between loses every trial that started
    # since, and the resumed sweep samples new ones in their place. Once a second costs milliseconds per save.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    start = time.perf_counter()
    try:
        if options.resume and _all_trials_ended(plan, tracker):   # a re-report: nothing left for Tune to run
            return _report(plan, space, tracker, time.perf_counter() - start)
        if not options.resume:   # a resume's trials find their shared stages in the cache, or compute them once
            _shared_stages_first(plan, space, options.address)   # there, under its lock: never ahead of need
        path = f"{plan.storage}/{plan.name}"
        if options.resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=_trainable(plan), resume_unfinished=True,
                                       resume_errored=True)
        else:   # a new sweep, or one interrupted before Tune saved anything: start it under the same name
            from sellarec.experiment.callbacks import TrialRuns

            tuner = _tuner(plan, space, TrialRuns(tracker, plan.parent_run_id, _trial_configs(plan), space.keys))
        results = tuner.fit()
    except KeyboardInterrupt:   # a second Ctrl-C while Tune was saving
        return _interrupted(plan, tracker, resume, time.perf_counter() - start, "")
    except BaseException:
        tracker.end_with_children(plan.parent_run_id, FAILED)
        raise
    seconds = time.perf_counter() - start
    if results.num_terminated + results.num_errors < plan.num_samples:   # Ctrl-C: Tune saved and returned
        return _interrupted(plan, tracker, resume, seconds, f" after {results.num_terminated} finished trials")
    return _report(plan, space, tracker, seconds)


def _all_trials_ended(plan: SweepPlan, tracker: RunTracker) -> bool:
    """Whether MLflow holds an ended run for every trial of the sweep (finished, failed or stopped by the scheduler;
    a run KILLED by Ctrl-C has more to do)."""
    ended = [r for r in tracker.children(plan.parent_run_id) if r.info.status in (FINISHED, FAILED)
             or (r.info.status == KILLED and r.data.tags.get("stopped_by") == "scheduler")]
    return len(ended) >= plan.num_samples


def _report(plan: SweepPlan, space: SearchSpace, tracker: RunTracker, seconds: float) -> SweepOutcome:
    """Write the report of an ended sweep and close its parent run (FAILED if reporting fails)."""
    try:
        outcome = _finish(plan, space, tracker, seconds)
    except BaseException:
        tracker.end_with_children(plan.parent_run_id, FAILED)
        raise
    tracker.end_with_children(plan.parent_run_id, FINISHED)   # no trial run expected open; never leave one RUNNING
    return outcome


def main(options: SweepOptions) -> int:
    """Run a sweep from the command line: 0 done, 2 bad input (one line on stderr), 130 interrupted."""
    return exit_code(lambda: 130 if run_sweep(options).interrupted else 0)
