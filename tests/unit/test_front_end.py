"""One front end: `python -m sellarec search|ablate|report` and the scripts tune/search.py, ablations/run.py and
ablations/report.py accept the same options with the same defaults, and parse to typed options."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sellarec.ablation.commands import AblateOptions, ReportOptions, ablate_options, report_options
from sellarec.cli import build_parser
from sellarec.tuning.plan import SweepOptions, options_from_args

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"search": "tune/search.py", "ablate": "ablations/run.py", "report": "ablations/report.py"}


def _subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _options(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}


def _script_options(name: str) -> set[str]:
    """Flags in the usage line of the script's own --help, read independently of the parser objects."""
    out = subprocess.run([sys.executable, SCRIPTS[name], "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout
    usage = out.split("\n\n", 1)[0]
    return {w.strip("[]") for w in usage.split() if w.lstrip("[").startswith("--")}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_scripts_and_cli_accept_the_same_options(name: str) -> None:
    flags = {s for a in _subparser(name)._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert flags == _script_options(name)


def test_defaults_come_from_the_typed_options() -> None:
    for name, cls, convert in (("search", SweepOptions, options_from_args), ("ablate", AblateOptions, ablate_options),
                               ("report", ReportOptions, report_options)):
        parsed = convert(_subparser(name).parse_args([]))
        assert parsed == cls(), name                                           # nothing given: the dataclass's defaults
    given = options_from_args(_subparser("search").parse_args(["--space", "mf", "--set", "stage2.lr=0.1",
                                                               "--cpus-per-trial", "2"]))
    assert (given.space, given.overrides, given.cpus_per_trial) == ("mf", ("stage2.lr=0.1",), 2.0)
    ablate = ablate_options(_subparser("ablate").parse_args(["--spec", "methods", "--seeds", "2", "--set", "a=1"]))
    assert (ablate.spec, ablate.seeds, ablate.overrides) == ("methods", 2, ("a=1",))


def test_ablate_and_report_without_a_spec_are_one_line_exit_2(tmp_path: Path) -> None:
    for command in (["ablate"], ["report"]):
        done = subprocess.run([sys.executable, "-m", "sellarec", *command, "--tracking-uri",
                               f"sqlite:///{tmp_path / 'm.db'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
        assert "--spec is required (or --smoke-test)" in done.stderr
    assert not (tmp_path / "m.db").exists()


def test_a_sweep_reports_beside_its_trials_unless_told(tmp_path: Path) -> None:
    from dataclasses import replace

    from sellarec.tuning.plan import new_plan

    options = SweepOptions(space="projector", profile="tiny", overrides=(f"runtime.cache_dir={tmp_path / 'c'}",),
                           name="x", storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    plan, _ = new_plan(options)
    assert Path(plan.report_dir) == Path(plan.folder) == (tmp_path / "s" / "x").resolve()   # never docs/ by default
    published, _ = new_plan(replace(options, report_dir=str(tmp_path / "pub")))
    assert Path(published.report_dir) == (tmp_path / "pub").resolve()
