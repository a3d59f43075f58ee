"""What a run is doing right now, published as a small JSON file for a watcher (a sweep's or ablation's driver).

A trial of an experiment runs the whole pipeline inside a Ray worker whose output goes to log files, so its driver
would otherwise see nothing between "started" and "finished" (tens of minutes on a CPU). The trial points this
module at a file (:func:`publish_to`); the training loops, the scorer, the distillation and the stage cache's lock
call :func:`update` or :func:`waiting`, and the driver reads the file (:func:`read_status`) every few tens of
seconds. Without a published file every call is a no-op, so single runs (``sellarec train``) pay nothing.

Writes are atomic and at most one every :data:`MIN_WRITE_SECONDS` within one activity (a new activity and its last
step are always written); a failed write is ignored: a status never stops a run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sellarec.atomic_files import write_json_atomic

__all__ = ["Status", "publish_to", "label", "update", "waiting", "read_status", "describe", "seconds_left", "UPPER_BOUND",
           "MIN_WRITE_SECONDS"]

MIN_WRITE_SECONDS = 2.0


@dataclass(frozen=True)
class Status:
    """One published status.

    Attributes:
        activity: what runs, e.g. ``stage3 train``, ``stage1 valid scoring``, ``waiting for stage1``.
        done: units finished in this activity (optimizer steps, prompts, batches, epochs).
        total: units the activity has (0 when unknown, e.g. a wait).
        started: wall-clock time (``time.time()``) the activity began.
        updated: wall-clock time of this status.
        note: extra words (who a wait is for).
    """

    activity: str
    done: int
    total: int
    started: float
    updated: float
    note: str = ""


_path: Path | None = None
_label = ""
_current: Status | None = None
_last_write = 0.0


def publish_to(path: Path | None, who: str = "") -> None:
    """Publish this process's status to ``path`` from now on as ``who`` (e.g. ``trial 2b86a_00003``); None stops.

    A worker reused for the next trial calls it again, so nothing of the previous trial carries over.
    """
    global _path, _label, _current, _last_write
    _path, _label, _current, _last_write = (Path(path) if path is not None else None), who, None, 0.0


def label() -> str:
    """Who this process is for a waiter (the published name, else the process id)."""
    return _label or f"process {os.getpid()}"


def update(activity: str, done: int, total: int, note: str = "") -> None:
    """Record that ``activity`` has finished ``done`` of ``total`` units (written when due, see the module doc)."""
    global _current, _last_write
    if _path is None:
        return
    now = time.time()
    new = _current is None or _current.activity != activity or _current.note != note
    started = now if new or _current is None else _current.started
    _current = Status(activity, int(done), int(total), started, now, note)
    if new or done >= total > 0 or now - _last_write >= MIN_WRITE_SECONDS:
        try:
            write_json_atomic(_path, asdict(_current))
            _last_write = now
        except OSError:
            pass


def waiting(what: str, holder: str) -> None:
    """Record a wait for ``what`` (a stage another process computes) held by ``holder``."""
    update(f"waiting for {what}", 0, 0, note=f"from {holder}" if holder else "")


def read_status(path: Path) -> Status | None:
    """The status published at ``path``, or None (not yet written, or unreadable)."""
    try:
        values = json.loads(Path(path).read_text())
        return Status(**values)
    except (OSError, ValueError, TypeError):
        return None


UPPER_BOUND = "(at most)"   # in an activity's name: its total is a cap (early stopping), not what it will take


def seconds_left(status: Status, now: float) -> float | None:
    """The activity's remaining seconds at its own rate so far; None before its first unit, without a total, or
    when the total is only a cap (:data:`UPPER_BOUND`)."""
    if status.total <= 0 or status.done <= 0 or UPPER_BOUND in status.activity:
        return None
    return max(0.0, now - status.started) / status.done * max(0, status.total - status.done)


def describe(status: Status, now: float) -> str:
    """One phrase for a terminal: ``stage3 train 12/40 (3.0 min in, ~7.0 min left)`` or
    ``waiting for stage1 from trial X (2.0 min)``; the estimate is the activity's own rate so far."""
    elapsed = max(0.0, now - status.started)
    head = f"{status.activity} {status.note}".strip()
    if status.total <= 0:
        return f"{head} ({_minutes(elapsed)})"
    head = f"{head} {status.done}/{status.total}"
    left = seconds_left(status, now)
    if left is None:
        return f"{head} ({_minutes(elapsed)} in, {_minutes(elapsed / status.done)} each)" if status.done > 0 else \
            f"{head} ({_minutes(elapsed)} in)"
    return f"{head} ({_minutes(elapsed)} in, ~{_minutes(left)} left)"


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
