"""The sweep driver: a search space -> Ray Tune (Optuna sampler, ASHA or FIFO) -> MLflow runs and a report.

Order of work: every check that can fail on bad input runs before Ray starts or MLflow is written (one-line
``SellarecError``, exit code 2); then Ray is joined or started, the GPU request is checked against what Ray sees
(a GPU request Ray cannot place would leave trials PENDING forever), the parent MLflow run is opened and Tune runs.
Ctrl-C stops Tune, which saves its state; the sweep's runs are marked KILLED and the resume command is printed.
``--resume`` restores the Tune experiment (searcher and scheduler state included) and finishes it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from ray.tune.search.optuna import OptunaSearch

from sellarec.config import SellaConfig, apply_overrides, from_dict, load_config, to_dict
from sellarec.errors import ConfigError, ResourceError, SellarecError
from sellarec.metrics import metric_key
from sellarec.tuning.space import METRICS, SAMPLERS, SearchSpace, load_space, repo_root

__all__ = ["SweepOptions", "SweepOutcome", "run_sweep", "main", "options_from_args", "PruneAwareOptunaSearch",
           "SCHEDULERS", "SMOKE_SAMPLES"]

SCHEDULERS = ("asha", "fifo")
SMOKE_SAMPLES = 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_META = "sweep.json"


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials that did not run to the end.

    Tune hands a scheduler-stopped trial's last (under-trained) result to ``on_trial_complete``, which OptunaSearch
    records as COMPLETE; that biases TPE and the importances towards "stopped early = bad". Here such a trial is
    PRUNED (its intermediate values stay), an errored one FAIL, and a non-finite value FAIL (Optuna refuses NaN).
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the trial's end in the Optuna study."""
        import optuna

        from sellarec.tuning.trainable import COMPLETE_KEY

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


@dataclass(frozen=True)
class SweepOptions:
    """Everything ``tune/search.py`` accepts (None = the space's or the machine's default).

    Attributes:
        space: space name (``tune/spaces/<name>.yaml``) or a YAML path.
        profile: size profile of the base configuration.
        preset: method preset.
        config_file: YAML file with config sections, applied after profile and preset.
        overrides: ``key=value`` overrides of the base configuration (``--set``).
        num_samples: trials (default: the space's).
        sampler: 'tpe', 'gp' or 'random' (default: the space's).
        scheduler: 'asha' (stops weak trials at stage-3 evaluations; when ``stage3.eval_every_steps`` is unset it
            becomes half of stage 3, so there is one rung at the midpoint) or 'fifo' (every trial runs to the end).
        metric: 'valid/auc' or 'valid/uauc' (default: the space's).
        seed: sampler seed (default: the space's).
        cpus_per_trial: CPUs Ray reserves per trial (fractions allowed).
        gpus_per_trial: GPU fraction per trial (default 0.25 when a GPU is present, else 0).
        max_concurrent: cap on trials running at once (default: as many as resources allow).
        max_failures: retries of a trial that raised.
        name: sweep name (default ``<space>-<date>-<time>``); with ``resume`` the sweep to finish.
        storage: Tune storage: a path or a URI (default ``<repo>/runs/sweeps``); shared when ``address`` is set.
        tracking_uri: MLflow tracking URI (default ``sqlite:///<repo>/mlflow/mlflow.db``).
        address: join this Ray cluster instead of starting one.
        resume: finish the interrupted sweep ``name`` found in ``storage``; everything else comes from its
            ``sweep.json`` (only ``address`` may change).
        report_dir: folder of ``<name>.md`` and ``<name>.png`` (default ``<repo>/docs/sweeps``; the sweep's folder
            for smoke tests).
        top_k: rows of the top-k table.
        smoke_test: tiny profile and at most 4 trials (a quick end-to-end check).
    """

    space: str = "projector"
    profile: str | None = None
    preset: str | None = None
    config_file: str | None = None
    overrides: tuple[str, ...] = ()
    num_samples: int | None = None
    sampler: str | None = None
    scheduler: str = "asha"
    metric: str | None = None
    seed: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 1
    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    resume: bool = False
    report_dir: str | None = None
    top_k: int = 5
    smoke_test: bool = False


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


@dataclass
class _Plan:
    """The resolved sweep, stored as ``sweep.json`` so that ``--resume`` needs only the name and storage."""

    name: str
    storage: str
    folder: str
    space_path: str
    space_name: str
    profile: str | None
    preset: str | None
    config_file: str | None
    overrides: list[str]
    num_samples: int
    sampler: str
    seed: int
    n_startup_trials: int
    scheduler: str
    metric: str
    mode: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    max_failures: int
    tracking_uri: str
    report_dir: str
    top_k: int
    smoke_test: bool
    stage3_steps: int
    base: dict[str, Any]
    parent_run_id: str = ""
    git_commit: str = ""
    created: str = ""


# --------------------------------------------------------------------------------------------------- checks


def _is_uri(text: str) -> bool:
    return "://" in text


def _check_options(o: SweepOptions) -> None:
    """Values that are wrong whatever the space: one-line ConfigError naming the option."""
    if o.num_samples is not None and o.num_samples < 1:
        raise ConfigError(f"--num-samples={o.num_samples} must be >= 1")
    if o.sampler is not None and o.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler={o.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if o.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler={o.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if o.metric is not None and o.metric not in METRICS:
        raise ConfigError(f"--metric={o.metric!r} is not one of {', '.join(METRICS)} (model selection never "
                          "uses test metrics)")
    if not o.cpus_per_trial > 0:
        raise ConfigError(f"--cpus-per-trial={o.cpus_per_trial} must be > 0")
    if o.gpus_per_trial is not None and (o.gpus_per_trial < 0 or (o.gpus_per_trial > 1
                                                                   and o.gpus_per_trial != int(o.gpus_per_trial))):
        raise ConfigError(f"--gpus-per-trial={o.gpus_per_trial} must be a fraction in [0, 1] or a whole number")
    if o.max_concurrent is not None and o.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent={o.max_concurrent} must be >= 1")
    if o.max_failures < 0:
        raise ConfigError(f"--max-failures={o.max_failures} must be >= 0")
    if o.top_k < 1:
        raise ConfigError(f"--top-k={o.top_k} must be >= 1")
    if o.name is not None and not _NAME.match(o.name):
        raise ConfigError(f"--name={o.name!r} may only use letters, digits, '.', '_' and '-'")
    if o.resume and o.name is None:
        raise ConfigError("--resume needs --name NAME (the sweep to finish; see the folders in the storage)")
    if o.address is not None and o.storage is None:
        raise ConfigError("--address needs --storage PATH|URI on storage every node can reach (NFS path or "
                          "s3://...); see docs/distributed.md")
    if o.address is not None and not o.resume:   # a resumed sweep keeps its tracking URI: checked in run_sweep
        _check_shared_tracking(o.tracking_uri)


def _check_shared_tracking(uri: str | None) -> None:
    """With --address the tracking store must be a server, not a file only this machine sees."""
    from sellarec.tuning.tracking import is_local_store

    if uri is None or is_local_store(uri):
        raise ConfigError(f"--address needs --tracking-uri of a server every node can reach (http://host:port), "
                          f"not {uri or 'the local sqlite default'}; see docs/distributed.md")


def _default_gpus(o: SweepOptions) -> float:
    """0.25 when this machine has CUDA (the cluster's GPUs are checked after joining it), else 0."""
    if o.gpus_per_trial is not None:
        return float(o.gpus_per_trial)
    if o.address is not None:
        return -1.0   # decided from the cluster's resources once joined
    import torch

    return 0.25 if torch.cuda.is_available() else 0.0


def _check_local_gpu(gpus: float, address: str | None) -> None:
    """Refuse a GPU request before Ray starts when this machine has no CUDA (Ray would wait forever)."""
    import ray

    if gpus <= 0 or address is not None or ray.is_initialized():
        return
    import torch

    if not torch.cuda.is_available():
        raise ResourceError(f"--gpus-per-trial={gpus:g} but this machine has no CUDA GPU; pass --gpus-per-trial 0, "
                            "or --address of a Ray cluster with GPUs")


def _check_cluster(gpus: float, cpus: float) -> None:
    """Compare the request with what Ray sees (``ray.cluster_resources()``), before ``fit()``."""
    import ray

    have = ray.cluster_resources()
    if gpus > 0 and have.get("GPU", 0.0) < gpus:
        raise ResourceError(f"trial asks for {gpus:g} GPU but Ray sees {have.get('GPU', 0.0):g} GPUs; pass "
                            "--gpus-per-trial 0 or start Ray on a GPU node")
    if have.get("CPU", 0.0) < cpus:
        raise ResourceError(f"trial asks for {cpus:g} CPUs but Ray sees {have.get('CPU', 0.0):g}; lower "
                            "--cpus-per-trial")


# --------------------------------------------------------------------------------------------------- planning


def _stage3_eval_cadence(cfg: SellaConfig, scheduler: str) -> tuple[list[str], int]:
    """ASHA needs several stage-3 evaluations: without one set, evaluate at the midpoint and at the end.

    Returns:
        the override that sets it (empty if none is needed) and stage 3's number of optimizer steps.
    """
    from sellarec.tuning.trainable import stage3_steps

    steps = stage3_steps(cfg)
    if scheduler == "asha" and cfg.stage3.eval_every_steps == 0 and steps >= 2:
        return [f"stage3.eval_every_steps={math.ceil(steps / 2)}"], steps
    return [], steps


def _storage(o: SweepOptions) -> str:
    if o.storage is None:
        return str(repo_root() / "runs" / "sweeps")
    return o.storage if _is_uri(o.storage) else str(Path(o.storage).expanduser().resolve())


def _folder(storage: str, name: str) -> Path:
    """The sweep's local folder: inside the storage when it is a path, else under ``<repo>/runs/sweeps``."""
    base = Path(storage) if not _is_uri(storage) else repo_root() / "runs" / "sweeps"
    return base / name


def _resume_plan(o: SweepOptions) -> _Plan:
    storage = _storage(o)
    meta = _folder(storage, o.name) / _META
    if not meta.is_file():
        raise ConfigError(f"no sweep '{o.name}' to resume in {_folder(storage, o.name).parent} ({_META} missing); "
                          "check --name and --storage")
    return _Plan(**json.loads(meta.read_text()))


def _new_plan(o: SweepOptions) -> tuple[_Plan, SearchSpace]:
    space = load_space(o.space)
    profile = "tiny" if o.smoke_test else (o.profile or "quick")
    overrides = [*o.overrides, "runtime.progress=false"]
    cfg = load_config(profile, o.preset, overrides, o.config_file)
    space.validate(cfg)
    metric = o.metric or space.metric
    if o.scheduler == "asha" and metric != metric_key("valid", "auc"):
        raise ConfigError(f"--scheduler asha needs --metric {metric_key('valid', 'auc')} (the only metric of the "
                          f"intermediate stage-3 evaluations); use --scheduler fifo for {metric}")
    cadence, steps = _stage3_eval_cadence(cfg, o.scheduler)
    cfg = apply_overrides(cfg, cadence) if cadence else cfg
    num_samples = o.num_samples or space.num_samples
    if o.smoke_test:
        num_samples = min(num_samples, SMOKE_SAMPLES)
    name = o.name or f"{space.name}-{'smoke-' if o.smoke_test else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    storage = _storage(o)
    folder = _folder(storage, name)
    if folder.exists():
        raise ConfigError(f"sweep '{name}' already exists in {folder.parent}; pass --resume to finish it or choose "
                          "another --name")
    from sellarec.tuning.tracking import default_tracking_uri

    report_dir = (folder if o.smoke_test else repo_root() / "docs" / "sweeps") if o.report_dir is None \
        else Path(o.report_dir).expanduser().resolve()
    n_startup = space.sampler.n_startup_trials
    return _Plan(
        name=name, storage=storage, folder=str(folder), space_path=str(space.path), space_name=space.name,
        profile=profile, preset=o.preset, overrides=[*o.overrides, *cadence], num_samples=num_samples,
        config_file=str(Path(o.config_file).resolve()) if o.config_file else None,
        sampler=o.sampler or space.sampler.kind, seed=space.sampler.seed if o.seed is None else o.seed,
        n_startup_trials=n_startup if n_startup is not None else min(10, max(1, num_samples // 2)),
        scheduler=o.scheduler, metric=metric, mode=space.mode, cpus_per_trial=float(o.cpus_per_trial),
        gpus_per_trial=_default_gpus(o), max_concurrent=o.max_concurrent, max_failures=o.max_failures,
        tracking_uri=o.tracking_uri or default_tracking_uri(), report_dir=str(report_dir), top_k=o.top_k,
        smoke_test=o.smoke_test, stage3_steps=steps, base=to_dict(cfg), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    ), space


# --------------------------------------------------------------------------------------------------- Tune wiring


def _sampler(plan: _Plan) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if plan.sampler == "tpe":   # group=True: conditional spaces get one density per set of present parameters
        return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=plan.n_startup_trials,
                                          multivariate=True, group=True)
    if plan.sampler == "gp":
        return optuna.samplers.GPSampler(seed=plan.seed, n_startup_trials=plan.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=plan.seed)


def _study_url(plan: _Plan) -> str:
    return f"sqlite:///{Path(plan.folder) / 'optuna.db'}"


def _trainable(plan: _Plan) -> Any:
    from ray import tune

    from sellarec.tuning.trainable import train_trial

    fn = tune.with_parameters(train_trial, base=plan.base, intermediate=plan.scheduler == "asha")
    return tune.with_resources(fn, {"cpu": plan.cpus_per_trial, "gpu": max(0.0, plan.gpus_per_trial)})


def _tuner(plan: _Plan, space: SearchSpace, callback: Any) -> Any:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sellarec.tuning.tracking import ProgressPrinter
    from sellarec.tuning.trainable import STEP_KEY, trial_dirname

    study_storage = optuna.storages.RDBStorage(_study_url(plan))
    searcher = PruneAwareOptunaSearch(space, metric=plan.metric, mode=plan.mode, sampler=_sampler(plan),
                                      study_name=plan.name, storage=study_storage)
    base_cfg = from_dict(plan.base)
    every = base_cfg.stage3.eval_every_steps or plan.stage3_steps
    scheduler = (ASHAScheduler(time_attr=STEP_KEY, max_t=max(1, plan.stage3_steps), grace_period=max(1, every),
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
        run_config=tune.RunConfig(name=plan.name, storage_path=plan.storage, callbacks=[callback, ProgressPrinter()],
                                  verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=plan.max_failures)),
    )


# --------------------------------------------------------------------------------------------------- results


def _resume_command(plan: _Plan, address: str | None) -> str:
    cmd = f"python tune/search.py --resume --name {plan.name} --storage {plan.storage}"
    return cmd + (f" --address {address}" if address else "")


def _report_lines(plan: _Plan, counts: dict[str, int], seconds: float) -> tuple[list[str], list[str]]:
    """The report's header (what was run) and footer (where to look further) bullets."""
    done = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    header = [f"space `{plan.space_name}` ({plan.space_path}), profile `{plan.profile}`, preset "
              f"`{plan.preset or 'none'}`, overrides `{' '.join(plan.overrides) or 'none'}`",
              f"sampler {plan.sampler} (seed {plan.seed}), scheduler {plan.scheduler}, metric {plan.metric} "
              f"({plan.mode}), {plan.cpus_per_trial:g} CPU and {max(0.0, plan.gpus_per_trial):g} GPU per trial",
              f"{sum(counts.values())} trials: {done}; wall time of the last run {seconds / 60:.1f} min",
              f"git commit `{plan.git_commit}`, started {plan.created}"]
    footer = [f"MLflow: parent run `{plan.parent_run_id}` in experiment `search-{plan.space_name}` of "
              f"`{plan.tracking_uri}`; open the UI with `mlflow/ui.sh` (see mlflow/README.md)",
              f"Optuna study `{plan.name}`: `optuna-dashboard {_study_url(plan)}`",
              f"Tune experiment: `{plan.storage}/{plan.name}`; resume or re-report with "
              f"`{_resume_command(plan, None)}`"]
    return header, footer


def _finish(plan: _Plan, space: SearchSpace, results: Any, tracker: Any, seconds: float) -> SweepOutcome:
    """Rank, print the top-k table and the best configuration, write the report and log it to the parent run."""
    from sellarec.tuning.report import (format_table, param_importances, rank_rows, rows_from_results,
                                         train_command, write_report)

    rows = rank_rows(rows_from_results(results, space.keys), plan.metric, plan.mode)
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "stopped", "failed", "unfinished")}
    best = next((r for r in rows if r.status == "finished"), None)
    command = train_command(plan.profile, plan.preset, plan.config_file, plan.overrides, best.params if best else {})
    print(f"\nsweep {plan.name}: {len(rows)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}) "
          f"in {seconds / 60:.1f} min")
    print(format_table(rows[:plan.top_k], space.keys, plan.metric, markdown=False))
    if best is not None:
        print(f"\nbest: trial {best.trial_id}, {plan.metric} = {best.metrics[plan.metric]:.4f}; train it with:\n"
              f"{command}")
    importances = param_importances(_study_url(plan), plan.name)
    header, footer = _report_lines(plan, counts, seconds)
    md = Path(plan.report_dir) / f"{plan.name}.md"
    png = write_report(md, rows, space.keys, plan.metric, plan.mode, importances, header, command, footer,
                       plan.top_k)
    summary = {"name": plan.name, "seconds": seconds, "counts": counts, "metric": plan.metric,
               "rows": [asdict(r) for r in rows], "importances": importances}
    (Path(plan.folder) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for path in (md, png):
        tracker.log_artifact(plan.parent_run_id, path)
    best_metric = {f"best/{plan.metric}": float(best.metrics[plan.metric])} if best else {}
    tracker.log_metrics(plan.parent_run_id, {**best_metric, **{f"trials/{k}": float(v) for k, v in counts.items()}}, 0)
    print(f"\nreport: {md}\nplot: {png}\nMLflow parent run: {plan.parent_run_id} ({plan.tracking_uri})")
    return SweepOutcome(plan.name, Path(plan.folder), rows=rows, best_params=best.params if best else {},
                        report=md, parent_run_id=plan.parent_run_id, seconds=seconds)


# --------------------------------------------------------------------------------------------------- driver


def _open_parent(plan: _Plan, space: SearchSpace, tracker: Any) -> None:
    from sellarec.tuning.tracking import git_commit

    if plan.parent_run_id:
        tracker.reopen(plan.parent_run_id)
        return
    plan.git_commit = git_commit()
    tags = {"space": plan.space_name, "profile": str(plan.profile), "preset": str(plan.preset),
            "sampler": plan.sampler, "scheduler": plan.scheduler, "git_commit": plan.git_commit,
            "smoke_test": str(plan.smoke_test).lower()}
    params = {"space": plan.space_name, "profile": plan.profile, "preset": plan.preset, "sampler": plan.sampler,
              "seed": plan.seed, "scheduler": plan.scheduler, "metric": plan.metric, "mode": plan.mode,
              "num_samples": plan.num_samples, "cpus_per_trial": plan.cpus_per_trial,
              "gpus_per_trial": plan.gpus_per_trial, "max_concurrent": plan.max_concurrent,
              "max_failures": plan.max_failures, "overrides": " ".join(plan.overrides) or "none"}
    texts = {"space.yaml": Path(plan.space_path).read_text(encoding="utf-8"),
             "base_config.yaml": yaml.safe_dump(plan.base, sort_keys=False)}
    plan.parent_run_id = tracker.start_parent(plan.name, tags, params, texts)


def _start_ray(address: str | None) -> bool:
    """Join ``address`` or start a local Ray; returns whether this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        # Trial output stays in the trial's log files; the driver prints one line per trial event (ProgressPrinter).
        # Without --address always a new local Ray: a bare ray.init() would join whatever cluster the last
        # `ray start` on this machine recorded in /tmp/ray/ray_current_cluster (even a stopped one).
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise ResourceError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}; start it with "
                            "'ray start --head' or check --address") from None
    return True


def run_sweep(options: SweepOptions) -> SweepOutcome:
    """Run (or, with ``options.resume``, finish) a sweep; see the module docstring.

    Raises:
        ConfigError: a bad option, space or configuration (before anything starts).
        ResourceError: GPUs or CPUs requested that Ray does not have (before ``fit()``).
    """
    from sellarec.tuning.tracking import SweepTracker, TrialLogger

    _check_options(options)
    if options.resume:
        plan = _resume_plan(options)
        if options.address is not None:
            _check_shared_tracking(plan.tracking_uri)
        _check_local_gpu(plan.gpus_per_trial, options.address)
        space = load_space(plan.space_path)
    else:
        _check_local_gpu(_default_gpus(options), options.address)
        plan, space = _new_plan(options)
    started = _start_ray(options.address)
    try:
        import ray

        if plan.gpus_per_trial < 0:
            plan.gpus_per_trial = 0.25 if ray.cluster_resources().get("GPU", 0.0) > 0 else 0.0
        _check_cluster(plan.gpus_per_trial, plan.cpus_per_trial)
        tracker = SweepTracker(plan.tracking_uri, f"search-{plan.space_name}")
        _open_parent(plan, space, tracker)
        Path(plan.folder).mkdir(parents=True, exist_ok=True)
        (Path(plan.folder) / _META).write_text(json.dumps(asdict(plan), indent=2))
        return _run(plan, space, tracker, options, TrialLogger)
    finally:
        if started:
            import ray

            ray.shutdown()


def _run(plan: _Plan, space: SearchSpace, tracker: Any, options: SweepOptions, logger_cls: Any) -> SweepOutcome:
    from ray import tune

    from sellarec.tuning.tracking import FAILED, FINISHED, KILLED

    print(f"sweep {plan.name}: space {plan.space_name}, {plan.num_samples} trials, sampler {plan.sampler}, "
          f"scheduler {plan.scheduler}, {plan.cpus_per_trial:g} CPU / {plan.gpus_per_trial:g} GPU per trial\n"
          f"  storage {plan.storage}/{plan.name}\n  MLflow {plan.tracking_uri} (parent run {plan.parent_run_id})",
          flush=True)
    resume = _resume_command(plan, options.address)
    start = time.perf_counter()
    try:
        path = f"{plan.storage}/{plan.name}"
        if options.resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=_trainable(plan), resume_unfinished=True,
                                       resume_errored=True)
        else:   # a new sweep, or one interrupted before Tune saved anything: start it under the same name
            logger = logger_cls(tracker, plan.parent_run_id, plan.name, plan.base,
                                {"space": plan.space_name, "profile": str(plan.profile), "preset": str(plan.preset)})
            tuner = _tuner(plan, space, logger)
        results = tuner.fit()
    except KeyboardInterrupt:   # a second Ctrl-C while Tune was saving
        tracker.close_children(plan.parent_run_id, KILLED)
        tracker.end(plan.parent_run_id, KILLED)
        print(f"\nsweep {plan.name} interrupted; resume with:\n  {resume}", file=sys.stderr)
        return SweepOutcome(plan.name, Path(plan.folder), interrupted=True, resume_command=resume,
                            parent_run_id=plan.parent_run_id, seconds=time.perf_counter() - start)
    except BaseException:
        tracker.close_children(plan.parent_run_id, KILLED)
        tracker.end(plan.parent_run_id, FAILED)
        raise
    seconds = time.perf_counter() - start
    if results.num_terminated + results.num_errors < plan.num_samples:   # Ctrl-C: Tune saved and returned
        tracker.close_children(plan.parent_run_id, KILLED)
        tracker.end(plan.parent_run_id, KILLED)
        print(f"\nsweep {plan.name} interrupted after {results.num_terminated} finished trials; resume with:\n"
              f"  {resume}", file=sys.stderr)
        return SweepOutcome(plan.name, Path(plan.folder), interrupted=True, resume_command=resume,
                            parent_run_id=plan.parent_run_id, seconds=seconds)
    try:
        outcome = _finish(plan, space, results, tracker, seconds)
    except BaseException:
        tracker.close_children(plan.parent_run_id, KILLED)
        tracker.end(plan.parent_run_id, FAILED)
        raise
    tracker.close_children(plan.parent_run_id, KILLED)   # none expected; never leave a run RUNNING
    tracker.end(plan.parent_run_id, FINISHED)
    return outcome


def main(options: SweepOptions) -> int:
    """Run a sweep from the command line: 0 done, 2 bad input (one line on stderr), 130 interrupted."""
    try:
        outcome = run_sweep(options)
    except SellarecError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 130 if outcome.interrupted else 0


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """:class:`SweepOptions` from the parsed arguments of ``tune/search.py`` (same names)."""
    values = {k: v for k, v in vars(args).items() if k in SweepOptions.__dataclass_fields__}
    values["overrides"] = tuple(values.get("overrides") or ())
    return replace(SweepOptions(), **values)
