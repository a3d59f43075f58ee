"""Live progress of experiments: what a trial publishes (sellarec.status), what the stage cache's lock tells a waiter,
and the driver's progress line with its estimate of the time left (hand-computed expectations)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sellarec import status
from sellarec.atomic_files import write_json_atomic
from sellarec.cache import StageCache
from sellarec.errors import ConfigError
from sellarec.experiment.callbacks import Heartbeat, ProgressPrinter
from sellarec.experiment.trial import COMPLETE_KEY
from sellarec.metrics import COST_TRIAL_SECONDS


@pytest.fixture(autouse=True)
def _unpublished():
    yield
    status.publish_to(None)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_nothing_is_written_until_a_file_is_published(tmp_path: Path) -> None:
    status.update("stage3 train", 1, 10)
    assert list(tmp_path.iterdir()) == []


def test_a_published_status_is_read_back_and_throttled(tmp_path: Path, monkeypatch) -> None:
    clock = FakeClock(1000.0)
    monkeypatch.setattr(status.time, "time", clock)
    path = tmp_path / "trial.json"
    status.publish_to(path, "trial t1")
    status.update("stage3 train", 1, 10)
    first = status.read_status(path)
    assert (first.activity, first.done, first.total, first.started) == ("stage3 train", 1, 10, 1000.0)
    clock.now = 1001.0                        # within MIN_WRITE_SECONDS of the last write: not written
    status.update("stage3 train", 2, 10)
    assert status.read_status(path).done == 1
    clock.now = 1000.0 + status.MIN_WRITE_SECONDS
    status.update("stage3 train", 3, 10)
    assert status.read_status(path).done == 3
    clock.now += 0.1                          # the last step is always written
    status.update("stage3 train", 10, 10)
    assert status.read_status(path).done == 10
    clock.now += 0.1                          # so is a new activity, with its own start
    status.update("stage3 valid scoring", 8, 400)
    now = status.read_status(path)
    assert (now.activity, now.done, now.started) == ("stage3 valid scoring", 8, clock.now)
    assert status.label() == "trial t1"


def test_describe_estimates_the_rest_of_the_activity_from_its_rate() -> None:
    running = status.Status("stage3 train", 12, 40, started=100.0, updated=280.0)
    # 12 steps in 180 s: 15 s a step, 28 steps left = 420 s = 7.0 min
    assert status.describe(running, now=280.0) == "stage3 train 12/40 (3.0 min in, ~7.0 min left)"
    assert status.describe(status.Status("stage1 train", 0, 40, 0.0, 0.0), now=30.0) == "stage1 train 0/40 (30 s in)"
    wait = status.Status("waiting for stage1", 0, 0, 10.0, 10.0, note="from trial a_00000")
    assert status.describe(wait, now=70.0) == "waiting for stage1 from trial a_00000 (60 s)"
    # a total that is only a cap (early stopping): no "left" from it (it read "~289 min left" at epoch 2 of 300,
    # for a stage that stops after ~40), the time per unit instead: 90 s over 3 epochs = 30 s each
    capped = status.Status(f"stage2 MF epochs {status.UPPER_BOUND}", 3, 300, started=0.0, updated=90.0)
    assert status.describe(capped, now=90.0) == "stage2 MF epochs (at most) 3/300 (1.5 min in, 30 s each)"
    assert status.seconds_left(capped, 90.0) is None


def test_an_unreadable_status_is_none(tmp_path: Path) -> None:
    (tmp_path / "half.json").write_text('{"activity": "stage')
    (tmp_path / "other.json").write_text(json.dumps({"something": 1}))
    assert status.read_status(tmp_path / "half.json") is None
    assert status.read_status(tmp_path / "other.json") is None
    assert status.read_status(tmp_path / "missing.json") is None


def test_a_process_waiting_on_the_cache_lock_publishes_who_holds_it(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sellarec import status
        from sellarec.cache import StageCache
        status.publish_to(None, "trial holder_00001")
        with StageCache(Path({str(tmp_path / 'cache')!r}))._lock("stage1", "k1"):
            print("locked", flush=True)
            time.sleep(2)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        path = tmp_path / "waiter.json"
        status.publish_to(path, "trial waiter_00002")

        def compute(folder: Path) -> dict:
            (folder / "x.txt").write_text("x")
            return {}

        _, hit = StageCache(tmp_path / "cache").get_or_compute("stage1", "k1", compute)
        assert not hit
        seen = status.read_status(path)
        assert (seen.activity, seen.note) == ("waiting for stage1", "from trial holder_00001")
        # and the lock now names the waiter, which holds it next
        assert (tmp_path / "cache" / "stages" / "stage1" / ".k1.lock").read_text() == "trial waiter_00002"
    finally:
        holder.wait(timeout=30)


def _trial(trial_id: str, state: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=state, config={"job": trial_id}, last_result={})


def test_the_progress_line_names_each_running_trials_activity_and_the_time_left(tmp_path: Path) -> None:
    clock, wall = FakeClock(0.0), FakeClock(5000.0)
    printer = ProgressPrinter(tmp_path, total=5, every=30, clock=clock, wall=wall)
    write_json_atomic(tmp_path / "a.json", {"activity": "stage3 train", "done": 3, "total": 10, "started": 4970.0,
                                            "updated": 4995.0, "note": ""})
    a, b, c, d, e = (_trial("a", "RUNNING"), _trial("b", "RUNNING"), _trial("c", "TERMINATED"),
                     _trial("d", "TERMINATED"), _trial("e", "PENDING"))
    for trial in (a, b, c, d):
        printer.on_trial_start(0, [], trial)
    # c trained (stage 3 computed) in 600 s; d came wholly from the cache in 2 s and does not count in the mean
    c.last_result = {COMPLETE_KEY: 1.0, "cache/stage1": 1.0, "cache/stage3": 0.0, COST_TRIAL_SECONDS: 600.0}
    d.last_result = {COMPLETE_KEY: 1.0, "cache/stage1": 1.0, "cache/stage3": 1.0, COST_TRIAL_SECONDS: 2.0}
    trials = [a, b, c, d, e]
    assert printer.progress_line(trials).endswith("; time left known once a trial that trains finishes")
    printer.on_trial_complete(0, trials, c)
    printer.on_trial_complete(0, trials, d)
    clock.now = 100.0
    # a and b ran 100 s of a mean 600: 2 x 500 left, and e's 600 -> 1600 s of work over 2 at a time = 800 s
    assert printer.progress_line(trials) == (
        "2/5 done, 2 running: a stage3 train 3/10 (30 s in, ~70 s left) | b starting; "
        "about 13 min left (mean of 1 trained trial: 10 min, 2 at a time)")
    assert printer.progress_line([c, d, e]) is None
    # past the mean (900 s of 600), a still needs what its activity needs at its own rate: 7 units of 10 s each;
    # b, also past it, has no estimate: 0. With e's 600 s: (70 + 0 + 600) / 2 = 335 s ("6 min"; without a's 70 s,
    # 300 s would read "5 min")
    clock.now, wall.now = 900.0, 5000.0
    assert printer.progress_line(trials).endswith("; about 6 min left (mean of 1 trained trial: 10 min, 2 at a time)")


def test_a_progress_line_is_printed_every_period_and_the_status_folder_is_removed(tmp_path: Path, capsys) -> None:
    clock = FakeClock(0.0)
    folder = tmp_path / "status"
    folder.mkdir()
    printer = ProgressPrinter(folder, total=1, every=30, clock=clock)
    printer.setup()
    running = [_trial("a", "RUNNING")]
    for now in (10.0, 29.0, 31.0, 45.0, 62.0):
        clock.now = now
        printer.on_step_end(0, running)
    lines = [line for line in capsys.readouterr().out.splitlines() if "running:" in line]
    assert [line.split("]")[0].strip("[ ") for line in lines] == ["31s", "62s"]
    printer.on_experiment_end(running)
    assert not folder.exists()


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_progress_period_is_a_config_error(monkeypatch, value: str) -> None:
    monkeypatch.setenv("SELLAREC_PROGRESS_SECONDS", value)
    with pytest.raises(ConfigError, match="SELLAREC_PROGRESS_SECONDS"):
        ProgressPrinter()


def test_the_drivers_own_work_prints_a_heartbeat_with_its_activity(tmp_path: Path, capsys) -> None:
    path = tmp_path / "status" / "shared.json"
    with Heartbeat(path, "shared stages", every=0.2):
        for step in range(1, 4):
            status.update("stage1 train", step, 8)
            time.sleep(0.25)
    lines = [line for line in capsys.readouterr().out.splitlines() if "shared stages:" in line]
    assert len(lines) >= 2 and any("stage1 train " in line and "/8 (" in line for line in lines)
    assert not path.exists()
    status.update("stage1 train", 4, 8)          # published to nothing once the block has ended
    assert not path.exists()
