"""A sweep's options, their checks and its resolved plan (``sweep.json``): everything decided before Ray starts.

Every check that can fail on bad input runs here, before Ray starts or MLflow is written (one-line
``SellarecError``, exit code 2). The plan is stored so that ``--resume`` needs only the sweep's name and storage.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sellarec import path_checks
from sellarec.config import SellaConfig, apply_overrides, load_config, to_dict
from sellarec.errors import ConfigError
from sellarec.experiment.resources import (Resources, add_experiment_arguments, check_request,
                                           check_shared_storage, check_shared_tracking, default_gpus)
from sellarec.experiment.tracking import default_tracking_uri
from sellarec.metrics import metric_key
from sellarec.runtime import repo_relative, repo_root
from sellarec.tuning.space import METRICS, SAMPLERS, SCHEDULERS, SearchSpace
from sellarec.tuning.space_file import load_space

__all__ = ["SweepOptions", "SweepPlan", "SCHEDULERS", "SMOKE_SAMPLES", "SWEEP_FILE", "check_options", "new_plan",
           "resume_plan", "options_from_args", "add_search_arguments", "study_url", "resume_command"]

SMOKE_SAMPLES = 4
SWEEP_FILE = "sweep.json"   # the sweep's plan, written once into its folder; --resume reads it back
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
        report_dir: folder of ``<name>.md`` and ``<name>.png`` (default: the sweep's folder under ``storage``;
            ``docs/sweeps`` publishes a report).
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
    scheduler: str | None = None
    metric: str | None = None
    seed: int | None = None
    cpus_per_trial: float = Resources.cpus_per_trial
    gpus_per_trial: float | None = Resources.gpus_per_trial
    max_concurrent: int | None = Resources.max_concurrent
    max_failures: int = 1
    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = Resources.address
    resume: bool = False
    report_dir: str | None = None
    top_k: int = 5
    smoke_test: bool = False


@dataclass
class SweepPlan:
    """The resolved sweep, stored as ``sweep.json`` so that ``--resume`` needs only the name and storage.

    ``gpus_per_trial`` is None until Ray runs when the cluster decides it (``--address`` without a request); the
    stored file always holds the number.
    """

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
    gpus_per_trial: float | None
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
    machine: str = ""    # the driver's; with --address the trials may run on other nodes
    created: str = ""



def _is_uri(text: str) -> bool:
    return "://" in text


def check_options(o: SweepOptions) -> None:
    """Values that are wrong whatever the space: one-line ConfigError naming the option."""
    if o.num_samples is not None and o.num_samples < 1:
        raise ConfigError(f"--num-samples={o.num_samples} must be >= 1")
    if o.sampler is not None and o.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler={o.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if o.scheduler is not None and o.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler={o.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if o.metric is not None and o.metric not in METRICS:
        raise ConfigError(f"--metric={o.metric!r} is not one of {', '.join(METRICS)} (model selection never "
                          "uses test metrics)")
    check_request(o.cpus_per_trial, o.gpus_per_trial, o.max_concurrent)
    if o.max_failures < 0:
        raise ConfigError(f"--max-failures={o.max_failures} must be >= 0")
    if o.top_k < 1:
        raise ConfigError(f"--top-k={o.top_k} must be >= 1")
    if o.name is not None and not _NAME.match(o.name):
        raise ConfigError(f"--name={o.name!r} may only use letters, digits, '.', '_' and '-'")
    if o.resume and o.name is None:
        raise ConfigError("--resume needs --name NAME (the sweep to finish; see the folders in the storage)")
    if o.address is not None:
        check_shared_storage(o.storage)
        if not o.resume:   # a resumed sweep keeps its tracking URI: checked in run_sweep
            check_shared_tracking(o.tracking_uri)
    # Every path and URI before any work: a bad one found after the sweep has run would waste it.
    if o.storage is not None:
        path_checks.tune_storage(o.storage)
    if o.tracking_uri is not None:
        path_checks.tracking_uri(o.tracking_uri)
    if o.report_dir is not None:
        path_checks.writable_folder(o.report_dir, "--report-dir")
    if o.config_file is not None:
        path_checks.readable_file(o.config_file, "--config")


# Searching any of these gives trials different stage-3 step counts (ASHA's time axis).
STEP_COUNT_KEYS = {"stage3.max_train_samples", "stage3.epochs", "stage3.batch_size", "stage3.grad_accum"}


def _stage3_eval_cadence(cfg: SellaConfig, scheduler: str) -> tuple[list[str], int]:
    """ASHA needs several stage-3 evaluations: without one set, evaluate at the midpoint and at the end.

    Returns:
        the override that sets it (empty if none is needed) and stage 3's number of optimizer steps.
    """
    from sellarec.pipeline import stage3_steps

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


def resume_plan(o: SweepOptions) -> SweepPlan:
    """The stored plan of the sweep ``o.name`` in ``o.storage``.

    Raises:
        ConfigError: no such sweep.
    """
    storage = _storage(o)
    meta = _folder(storage, o.name) / SWEEP_FILE
    if not meta.is_file():
        raise ConfigError(f"no sweep '{o.name}' to resume in {_folder(storage, o.name).parent} ({SWEEP_FILE} missing); "
                          "check --name and --storage")
    return SweepPlan(**json.loads(meta.read_text()))


def new_plan(o: SweepOptions) -> tuple[SweepPlan, SearchSpace]:
    """Resolve a new sweep: space, base configuration, sampler, scheduler, name and folders.

    Raises:
        ConfigError: a bad space, configuration or option combination, or a name already taken.
    """
    space = load_space(o.space)
    profile = "tiny" if o.smoke_test else (o.profile or "quick")
    overrides = [*space.fixed_overrides, *o.overrides, "runtime.progress=false"]
    cfg = load_config(profile, o.preset, overrides, o.config_file)
    space.validate(cfg)
    if space.incumbent:
        space.point(cfg)   # the incumbent must lie inside the space: fail before anything runs
    metric = o.metric or space.metric
    scheduler = o.scheduler or space.scheduler
    if scheduler == "asha" and cfg.final_stage != "stage3":
        raise ConfigError(f"ASHA stops trials at stage-3 evaluations and these trials end at {cfg.final_stage}; "
                          "pass --scheduler fifo (or set scheduler: fifo in the space)")
    if scheduler == "asha" and metric != metric_key("valid", "auc"):
        raise ConfigError(f"--scheduler asha needs --metric {metric_key('valid', 'auc')} (the only metric of the "
                          f"intermediate stage-3 evaluations); use --scheduler fifo for {metric}")
    step_keys = sorted(set(space.keys) & STEP_COUNT_KEYS)
    if scheduler == "asha" and step_keys:
        raise ConfigError(f"space {space.name} searches {step_keys[0]}, which changes the number of stage-3 steps; "
                          "ASHA compares trials at common steps: pass --scheduler fifo")
    cadence, steps = _stage3_eval_cadence(cfg, scheduler)
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
    # a user's sweep reports beside its trials; docs/sweeps/ holds only reports published with --report-dir
    report_dir = folder if o.report_dir is None else Path(o.report_dir).expanduser().resolve()
    n_startup = space.sampler.n_startup_trials
    return SweepPlan(
        name=name, storage=storage, folder=str(folder), space_path=str(space.path), space_name=space.name,
        profile=profile, preset=o.preset, overrides=[*space.fixed_overrides, *o.overrides, *cadence],
        num_samples=num_samples,
        config_file=str(Path(o.config_file).resolve()) if o.config_file else None,
        sampler=o.sampler or space.sampler.kind, seed=space.sampler.seed if o.seed is None else o.seed,
        n_startup_trials=n_startup if n_startup is not None else min(10, max(1, num_samples // 2)),
        scheduler=scheduler, metric=metric, mode=space.mode, cpus_per_trial=float(o.cpus_per_trial),
        gpus_per_trial=default_gpus(o.gpus_per_trial, o.address), max_concurrent=o.max_concurrent,
        max_failures=o.max_failures,
        tracking_uri=o.tracking_uri or default_tracking_uri(), report_dir=str(report_dir), top_k=o.top_k,
        smoke_test=o.smoke_test, stage3_steps=steps, base=to_dict(cfg), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    ), space


def study_url(plan: SweepPlan) -> str:
    """The Optuna study's storage: ``sqlite:///<sweep folder>/optuna.db``."""
    return f"sqlite:///{Path(plan.folder) / 'optuna.db'}"


def resume_command(plan: SweepPlan, address: str | None) -> str:
    """The command that finishes (or re-reports) the sweep."""
    cmd = f"python tune/search.py --resume --name {plan.name} --storage {plan.storage}"
    return cmd + (f" --address {address}" if address else "")


def rerun_command(plan: SweepPlan, space: SearchSpace) -> str:
    """The command that runs the sweep again from a fresh clone: the same space, base configuration, sampler and
    seed, scheduler, metric, trial count and resources under the same name, its report into the same folder when
    that is in the checkout. The trials it samples match the first run's only as far as their metrics do (TPE
    conditions on them), so on other hardware the search may take another path."""
    default_space = repo_root() / "tune" / "spaces" / f"{plan.space_name}.yaml"
    words = ["python", "tune/search.py", "--space",
             plan.space_name if Path(plan.space_path) == default_space else repo_relative(plan.space_path)]
    words += ["--smoke-test"] if plan.smoke_test else ["--profile", str(plan.profile)]
    if plan.preset:
        words += ["--preset", plan.preset]
    if plan.config_file:
        words += ["--config", repo_relative(plan.config_file)]
    fixed = list(space.fixed_overrides)
    user = plan.overrides[len(fixed):] if plan.overrides[:len(fixed)] == fixed else plan.overrides
    for override in user:
        words += ["--set", override]
    words += ["--num-samples", str(plan.num_samples), "--sampler", plan.sampler, "--seed", str(plan.seed),
              "--scheduler", plan.scheduler, "--metric", plan.metric, "--cpus-per-trial", f"{plan.cpus_per_trial:g}"]
    if plan.gpus_per_trial:
        words += ["--gpus-per-trial", f"{plan.gpus_per_trial:g}"]
    if plan.max_concurrent:
        words += ["--max-concurrent", str(plan.max_concurrent)]
    words += ["--name", plan.name]
    report_dir = Path(plan.report_dir)
    if report_dir != Path(plan.folder) and report_dir.is_relative_to(repo_root()):
        words += ["--report-dir", repo_relative(str(report_dir))]
    return " ".join(shlex.quote(w) for w in words)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m sellarec search`` and ``tune/search.py``, declared once (defaults:
    :class:`SweepOptions`)."""
    d = SweepOptions()
    parser.add_argument("--space", default=d.space, help="projector, tokens, lora, training, mf, full, or a YAML path")
    parser.add_argument("--profile", default=d.profile, help="size profile (default quick; tiny with --smoke-test)")
    parser.add_argument("--preset", default=d.preset, help="method preset (sella, collm-style, ...)")
    parser.add_argument("--config", dest="config_file", default=d.config_file, metavar="FILE",
                        help="YAML file of config sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--num-samples", type=int, default=d.num_samples, help="trials (default: the space's)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=d.sampler, help="default: the space's")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler,
                        help="asha stops weak trials at stage-3 evals (default: the space's, else asha)")
    parser.add_argument("--metric", default=d.metric, help="valid/auc or valid/uauc (default: the space's)")
    parser.add_argument("--seed", type=int, default=d.seed, help="sampler seed (default: the space's)")
    add_experiment_arguments(parser, storage_default="runs/sweeps")
    parser.add_argument("--max-failures", type=int, default=d.max_failures,
                        help=f"retries of a trial that raised (default {d.max_failures})")
    parser.add_argument("--name", default=d.name, help="sweep name (default <space>-<date>-<time>)")
    parser.add_argument("--resume", action="store_true", help="finish the interrupted sweep --name")
    parser.add_argument("--report-dir", default=d.report_dir,
                        help="folder of <name>.md and .png (default: the sweep's folder, runs/sweeps/<name>)")
    parser.add_argument("--top-k", type=int, default=d.top_k, help=f"rows of the top-k table (default {d.top_k})")
    parser.add_argument("--smoke-test", action="store_true", help="tiny profile, at most 4 trials")


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """:class:`SweepOptions` from the parsed arguments of ``tune/search.py`` (same names)."""
    values = {k: v for k, v in vars(args).items() if k in SweepOptions.__dataclass_fields__}
    values["overrides"] = tuple(values.get("overrides") or ())
    return replace(SweepOptions(), **values)
