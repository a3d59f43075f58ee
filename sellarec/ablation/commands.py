"""The commands behind ``python -m sellarec ablate`` / ``ablations/run.py`` and ``python -m sellarec report`` /
``ablations/report.py``: their options (declared once here), smoke-test defaults, the one library call, the summary
lines and the exit code (bad input: one line on stderr, exit code 2)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from sellarec import path_checks
from sellarec.arguments import exit_code
from sellarec.config import load_config
from sellarec.errors import ConfigError
from sellarec.experiment.resources import Resources, add_experiment_arguments
from sellarec.experiment.tracking import default_tracking_uri
from sellarec.runtime import repo_root

__all__ = ["SMOKE_DIR", "AblateOptions", "ReportOptions", "add_ablate_arguments", "add_report_arguments",
           "ablate_options", "report_options", "run_command", "report_command"]

SMOKE_DIR = repo_root() / "runs" / "ablation-smoke"   # --smoke-test runs write here, and its report reads here
_SPECS_DIR = repo_root() / "ablations" / "specs"
_SMOKE_URI = f"sqlite:///{SMOKE_DIR / 'mlflow.db'}"
_SPEC_HELP = "spec name in ablations/specs (components, projector, methods) or a YAML path"


@dataclass(frozen=True)
class AblateOptions:
    """Everything an ablation run accepts (None = the spec's, or the platform's default).

    Attributes:
        spec: spec name (``ablations/specs/<name>.yaml``) or a YAML path; None only with ``smoke_test``.
        profile: size profile of every row.
        seeds: seeds 0..K-1.
        overrides: dotted overrides for every row (``--set``).
        storage: Ray Tune storage (default ``<repo>/runs/ablations``).
        tracking_uri: MLflow store (default ``sqlite:///<repo>/mlflow/mlflow.db``).
        address: a Ray cluster to join.
        cpus_per_trial, gpus_per_trial, max_concurrent: what each trial asks of Ray (:class:`Resources`).
        cache_dir: the shared stage cache.
        smoke_test: tiny profile, 2 cells x 2 seeds, a private store under ``runs/ablation-smoke``.
        import_runs: a report's runs file (``docs/ablations/<spec>.runs.jsonl``) whose finished runs are logged
            into the store and not run again (:mod:`sellarec.ablation.carryover`).
    """

    spec: str | None = None
    profile: str | None = None
    seeds: int | None = None
    overrides: tuple[str, ...] = ()
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = Resources.address
    cpus_per_trial: float = Resources.cpus_per_trial
    gpus_per_trial: float | None = Resources.gpus_per_trial
    max_concurrent: int | None = Resources.max_concurrent
    cache_dir: str | None = None
    smoke_test: bool = False
    import_runs: str | None = None


@dataclass(frozen=True)
class ReportOptions:
    """Everything an ablation report accepts.

    Attributes:
        spec: spec name or YAML path; None only with ``smoke_test`` (then ``components``).
        profile: the runs' profile (default: the spec's).
        tracking_uri: MLflow store to read.
        out: the Markdown file (default ``docs/ablations/<spec>.md``; the PNG goes beside it).
        smoke_test: read the smoke-test store.
    """

    spec: str | None = None
    profile: str | None = None
    tracking_uri: str | None = None
    out: str | None = None
    smoke_test: bool = False


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of an ablation run (defaults: :class:`AblateOptions`)."""
    parser.add_argument("--spec", help=_SPEC_HELP)
    parser.add_argument("--profile", help="size profile of every row (default: the spec's)")
    parser.add_argument("--seeds", type=int, help="number of seeds 0..K-1 (default: the spec's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override for every row, repeatable")
    add_experiment_arguments(parser, storage_default="runs/ablations")
    parser.add_argument("--cache-dir", help="shared stage cache (default: $SELLAREC_CACHE or ~/.cache/sellarec)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny profile, 2 cells x 2 seeds, private store")
    parser.add_argument("--import-runs", metavar="RUNS_JSONL",
                        help="finished runs a report published (docs/ablations/<spec>.runs.jsonl, e.g. from another "
                             "machine): those matching a job are logged into the store and not run again")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of an ablation report (defaults: :class:`ReportOptions`)."""
    parser.add_argument("--spec", help=_SPEC_HELP)
    parser.add_argument("--profile", help="profile of the runs (default: the spec's)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<repo>/mlflow/mlflow.db)")
    parser.add_argument("--out", help="Markdown file (default docs/ablations/<spec>.md; the PNG goes beside it)")
    parser.add_argument("--smoke-test", action="store_true", help="read the smoke-test store (ablate --smoke-test)")


def _typed(cls: type, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    if "overrides" in values:
        values["overrides"] = tuple(values["overrides"] or ())
    return cls(**values)


def ablate_options(args: argparse.Namespace) -> AblateOptions:
    """:class:`AblateOptions` from parsed arguments (same names)."""
    return _typed(AblateOptions, args)


def report_options(args: argparse.Namespace) -> ReportOptions:
    """:class:`ReportOptions` from parsed arguments (same names)."""
    return _typed(ReportOptions, args)


def run_command(options: AblateOptions, command: Sequence[str]) -> int:
    """Run the spec and print what ran; 0 all done, 1 a job failed or did not finish, 2 bad input.

    Args:
        options: what to run.
        command: the command line as typed (``python ablations/run.py --spec ...``), recorded on the parent run
            for the report's footer.
    """
    from sellarec.ablation.carryover import read_runs
    from sellarec.ablation.runner import run_ablation
    from sellarec.ablation.spec import load_spec
    from sellarec.experiment.resources import check_shared_storage, check_shared_tracking

    o = options
    if o.smoke_test:
        o = replace(o, spec=o.spec or "components", profile=o.profile or "tiny", seeds=o.seeds or 2,
                    storage=o.storage or str(SMOKE_DIR / "ray"), tracking_uri=o.tracking_uri or _SMOKE_URI)

    def run() -> int:
        if not o.spec:
            raise ConfigError("--spec is required (or --smoke-test); specs: ablations/specs/*.yaml")
        if o.address is not None:   # as for sweeps: every node must reach the trial storage and the store
            check_shared_storage(o.storage)
            check_shared_tracking(o.tracking_uri)
        for value, check in ((o.storage, path_checks.tune_storage), (o.tracking_uri, path_checks.tracking_uri),
                             (o.cache_dir, lambda v: path_checks.writable_folder(v, "--cache-dir"))):
            if value is not None:   # before any work: a bad path found by the first trial fails every job
                check(value)
        imported = read_runs(o.import_runs) if o.import_runs else []
        summary = run_ablation(
            load_spec(o.spec, _SPECS_DIR), profile=o.profile, seeds=o.seeds, overrides=list(o.overrides),
            storage=o.storage or repo_root() / "runs" / "ablations",
            tracking_uri=o.tracking_uri or default_tracking_uri(), cache_dir=o.cache_dir,
            resources=Resources(o.cpus_per_trial, o.gpus_per_trial, o.max_concurrent, o.address),
            max_cells=2 if o.smoke_test else None, command=shlex.join(command), imported_runs=imported,
            import_source=o.import_runs or "")
        print(f"{summary.jobs} jobs: {summary.skipped} already finished, {summary.ran} ran, "
              f"{len(summary.failures)} failed (parent run {summary.parent_run_id})")
        for job, error in summary.failures:
            print(f"failed: {job}: {error}", file=sys.stderr)
        return 1 if summary.failures or summary.ran + summary.skipped < summary.jobs else 0

    return exit_code(run)


def report_command(options: ReportOptions, program: Sequence[str]) -> int:
    """Render the spec's runs from MLflow into Markdown and a PNG; 0 done, 2 bad input.

    Args:
        options: what to render.
        program: the words that start the report command (``python ablations/report.py``), shown in the footer
            with the options that select the runs.
    """
    from sellarec.ablation.report import write_report
    from sellarec.ablation.spec import load_spec

    o = options
    shown = [*program, "--spec", o.spec or "components"]
    shown += [a for flag, v in (("--profile", o.profile), ("--tracking-uri", o.tracking_uri)) if v for a in (flag, v)]
    if o.smoke_test:
        spec = o.spec or "components"
        o = replace(o, spec=spec, profile=o.profile or "tiny", tracking_uri=o.tracking_uri or _SMOKE_URI,
                    out=o.out or str(SMOKE_DIR / f"{spec}.md"))

    def report() -> int:
        if not o.spec:
            raise ConfigError("--spec is required (or --smoke-test); specs: ablations/specs/*.yaml")
        spec = load_spec(o.spec, _SPECS_DIR)
        if o.profile is not None:   # unknown: one line with the profiles, not a suggested command that fails too
            load_config(o.profile)
        if o.out is not None:
            path_checks.writable_file(o.out, "--out")
        if o.tracking_uri is not None:
            path_checks.tracking_uri(o.tracking_uri)
        md, png, runs = write_report(o.tracking_uri or default_tracking_uri(), spec.name, o.profile or spec.profile,
                                     Path(o.out or repo_root() / "docs" / "ablations" / f"{spec.name}.md"),
                                     repo_root() / "ablations" / "published.yaml",
                                     shlex.join(shown + ["--smoke-test"] * o.smoke_test))
        print(f"wrote {md}, {png} and the runs behind them, {runs}")
        return 0

    return exit_code(report)
