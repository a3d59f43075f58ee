"""The commands behind ``ablations/run.py`` and ``ablations/report.py``: smoke-test defaults, the one library call,
the summary lines and the exit code (bad input: one line on stderr, exit code 2)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from sellarec.arguments import exit_code
from sellarec.experiment.tracking import default_tracking_uri
from sellarec.runtime import repo_root

__all__ = ["SMOKE_DIR", "run_command", "report_command"]

SMOKE_DIR = repo_root() / "runs" / "ablation-smoke"   # run.py --smoke-test writes here, report.py --smoke-test reads
_SPECS_DIR = repo_root() / "ablations" / "specs"
_SMOKE_URI = f"sqlite:///{SMOKE_DIR / 'mlflow.db'}"


def run_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``ablations/run.py``: run the spec, print what ran; 0 all done, 1 a job failed or did not finish, 2 bad input.

    Args:
        args: the script's parsed arguments.
        argv: its command-line arguments, recorded on the parent run for the report's footer.
    """
    from sellarec.ablation.runner import run_ablation
    from sellarec.ablation.spec import load_spec
    from sellarec.experiment.resources import Resources, check_shared_storage, check_shared_tracking

    if args.smoke_test:
        args.spec, args.profile, args.seeds = args.spec or "components", args.profile or "tiny", args.seeds or 2
        args.storage = args.storage or str(SMOKE_DIR / "ray")
        args.tracking_uri = args.tracking_uri or _SMOKE_URI

    def run() -> int:
        if args.address is not None:   # as for sweeps: every node must reach the trial storage and the store
            check_shared_storage(args.storage)
            check_shared_tracking(args.tracking_uri)
        summary = run_ablation(
            load_spec(args.spec, _SPECS_DIR), profile=args.profile, seeds=args.seeds, overrides=args.overrides,
            storage=args.storage or repo_root() / "runs" / "ablations",
            tracking_uri=args.tracking_uri or default_tracking_uri(), cache_dir=args.cache_dir,
            resources=Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.address),
            max_cells=2 if args.smoke_test else None, command=shlex.join(["python", "ablations/run.py", *argv]))
        print(f"{summary.jobs} jobs: {summary.skipped} already finished, {summary.ran} ran, "
              f"{len(summary.failures)} failed (parent run {summary.parent_run_id})")
        for job, error in summary.failures:
            print(f"failed: {job}: {error}", file=sys.stderr)
        return 1 if summary.failures or summary.ran + summary.skipped < summary.jobs else 0

    return exit_code(run)


def report_command(args: argparse.Namespace) -> int:
    """``ablations/report.py``: render the spec's runs from MLflow into Markdown and a PNG; 0 done, 2 bad input."""
    from sellarec.ablation.report import write_report
    from sellarec.ablation.spec import load_spec

    shown = ["python", "ablations/report.py", "--spec", args.spec or "components"]
    shown += [a for flag, v in (("--profile", args.profile), ("--tracking-uri", args.tracking_uri)) if v
              for a in (flag, v)]
    if args.smoke_test:
        args.spec, args.profile = args.spec or "components", args.profile or "tiny"
        args.tracking_uri = args.tracking_uri or _SMOKE_URI
        args.out = args.out or str(SMOKE_DIR / f"{args.spec}.md")

    def report() -> int:
        spec = load_spec(args.spec, _SPECS_DIR)
        md, png = write_report(args.tracking_uri or default_tracking_uri(), spec.name, args.profile or spec.profile,
                               Path(args.out or repo_root() / "docs" / "ablations" / f"{spec.name}.md"),
                               repo_root() / "ablations" / "published.yaml",
                               shlex.join(shown + ["--smoke-test"] * args.smoke_test))
        print(f"wrote {md} and {png}")
        return 0

    return exit_code(report)
