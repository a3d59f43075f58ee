"""The sweep report's "run it again from a fresh clone" command, parsed back by tune/search.py's own parser, resolves
to the same sweep: space, base configuration, sampler, seed, scheduler, metric, trials, resources and name (issue 13:
footer commands work from a fresh clone)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from sellarec.runtime import repo_root
from sellarec.tuning.plan import SweepOptions, add_search_arguments, new_plan, options_from_args, rerun_command

_SAME = ("space_name", "space_path", "profile", "preset", "num_samples", "sampler", "seed", "n_startup_trials",
         "scheduler", "metric", "mode", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "smoke_test",
         "stage3_steps", "base", "name")


def _parsed(command: str, storage: Path) -> SweepOptions:
    words = shlex.split(command)
    assert words[:2] == ["python", "tune/search.py"]
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    return replace(options_from_args(parser.parse_args(words[2:])), storage=str(storage))


@pytest.mark.parametrize("options", [
    SweepOptions(space="mf", profile="quick", overrides=("stage2.max_epochs=2",), num_samples=5, seed=3,
                 name="mf-x", report_dir=str(repo_root() / "docs" / "sweeps")),
    SweepOptions(space="projector", profile="tiny", scheduler="asha", sampler="random", cpus_per_trial=0.5,
                 max_concurrent=2, name="p"),
    SweepOptions(space="projector", smoke_test=True, overrides=("stage3.lr=0.002", "eval.score_fn=double_softmax"),
                 name="smoke"),
], ids=["mf-published", "projector-asha", "smoke"])
def test_the_rerun_command_resolves_to_the_same_sweep(tmp_path: Path, options: SweepOptions) -> None:
    first, space = new_plan(replace(options, storage=str(tmp_path / "a")))
    command = rerun_command(first, space)
    assert str(tmp_path) not in command and str(repo_root()) not in command   # nothing of this machine
    again, _ = new_plan(_parsed(command, tmp_path / "b"))
    assert {k: asdict(again)[k] for k in _SAME} == {k: asdict(first)[k] for k in _SAME}
    assert again.overrides == first.overrides
    published = Path(options.report_dir) if options.report_dir else None
    assert Path(again.report_dir) == (published or Path(again.folder))
