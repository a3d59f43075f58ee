"""Processes a killed driver leaves behind are found and stopped; a live driver's and reused pids are left alone.

A real driver process (a Python subprocess) starts a child that stands for Ray's agents, records itself, and is
SIGKILLed, as a driver killed mid-sweep is; its child lives on, re-parented, until ``stop_leftovers`` ends it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from sellarec.experiment.leftovers import forget_ray_processes, record_ray_processes, stop_leftovers

DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from sellarec.experiment.leftovers import record_ray_processes
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
    time.sleep(1.0)                      # the child has set up its signal handling
    record_ray_processes(Path(sys.argv[1]))
    print(child.pid, flush=True)
    time.sleep(600)
""")
PLAIN_CHILD = "import time; time.sleep(600)"
STUBBORN_CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def _start_driver(registry: Path, child: str) -> tuple[subprocess.Popen, int]:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(registry), child], stdout=subprocess.PIPE, text=True)
    child_pid = int(driver.stdout.readline())
    return driver, child_pid


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill(driver: subprocess.Popen) -> None:
    driver.kill()
    driver.wait(timeout=30)


@pytest.mark.parametrize("child", [PLAIN_CHILD, STUBBORN_CHILD], ids=["plain", "ignores-sigterm"])
def test_the_processes_of_a_killed_driver_are_stopped_and_its_record_removed(tmp_path: Path, child: str) -> None:
    driver, child_pid = _start_driver(tmp_path, child)
    _kill(driver)
    assert not _gone(child_pid)                      # what a SIGKILLed driver leaves: its child runs on
    stopped = stop_leftovers(tmp_path, grace=1.0)
    assert len(stopped) == 1 and stopped[0].endswith(f" ({child_pid})")
    deadline = time.monotonic() + 10
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child_pid)
    assert list(tmp_path.glob("*.json")) == []


def test_a_running_drivers_processes_are_left_alone(tmp_path: Path) -> None:
    driver, child_pid = _start_driver(tmp_path, PLAIN_CHILD)
    try:
        assert stop_leftovers(tmp_path, grace=1.0) == []
        assert not _gone(child_pid) and len(list(tmp_path.glob("*.json"))) == 1
    finally:
        _kill(driver)
        os.kill(child_pid, signal.SIGKILL)


def test_a_reused_pid_is_not_a_leftover(tmp_path: Path) -> None:
    # A dead driver's record names this test's pid with another start time: the pid now belongs to someone else.
    record = {"driver": {"pid": 2**22 + 12345, "created": 1.0, "name": "gone"},
              "processes": [{"pid": os.getpid(), "created": psutil.Process().create_time() - 100.0, "name": "x"}]}
    (tmp_path / "1.json").write_text(json.dumps(record))
    assert stop_leftovers(tmp_path, grace=0.1) == []
    assert list(tmp_path.glob("*.json")) == []


def test_an_unreadable_record_is_dropped_and_a_driver_forgets_itself(tmp_path: Path) -> None:
    (tmp_path / "7.json").write_text("{not json")
    assert stop_leftovers(tmp_path) == [] and not (tmp_path / "7.json").exists()
    record_ray_processes(tmp_path)
    saved = json.loads((tmp_path / f"{os.getpid()}.json").read_text())
    assert saved["driver"]["pid"] == os.getpid()
    forget_ray_processes(tmp_path)
    assert list(tmp_path.glob("*.json")) == []
