"""Processes that a killed driver's private Ray leaves behind, found and stopped by the next experiment.

A driver that starts a local Ray (``ray.init(address="local")``) owns its GCS, raylet, agents and workers. SIGKILLed,
it cannot stop them: Ray's ``DashboardAgent`` and ``RuntimeEnvAgent`` live on, re-parented to init, and survive
SIGTERM. So each driver records its Ray's processes (pid and start time, which tells a process from a later one
that reuses the pid) in a per-user folder of this machine once Ray runs, and removes the record when it shuts Ray
down. The next sweep or ablation on the machine reads the records of drivers that are gone and stops what is left
of theirs (SIGTERM, then SIGKILL after a grace period). A running driver's processes are never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psutil

from sellarec.atomic_files import write_json_atomic

__all__ = ["REGISTRY", "record_ray_processes", "forget_ray_processes", "stop_leftovers"]

REGISTRY = Path(tempfile.gettempdir()) / f"sellarec-ray-drivers-{os.getuid()}"


def _identity(process: psutil.Process) -> dict[str, float | int | str]:
    return {"pid": process.pid, "created": process.create_time(), "name": process.name()}


def _same(entry: dict) -> psutil.Process | None:
    """The live process ``entry`` recorded, or None (gone, or its pid reused by another process)."""
    try:
        process = psutil.Process(int(entry["pid"]))
        return process if abs(process.create_time() - float(entry["created"])) < 1e-3 else None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def record_ray_processes(registry: Path = REGISTRY) -> None:
    """Record this driver and the processes it started (its local Ray's), to be stopped if it dies without
    shutting them down."""
    me = psutil.Process()
    children = []
    for child in me.children(recursive=True):
        try:
            children.append(_identity(child))
        except psutil.Error:   # ended between listing and reading
            continue
    write_json_atomic(registry / f"{me.pid}.json", {"driver": _identity(me), "processes": children})


def forget_ray_processes(registry: Path = REGISTRY) -> None:
    """Drop this driver's record (its Ray was shut down)."""
    (registry / f"{os.getpid()}.json").unlink(missing_ok=True)


def stop_leftovers(registry: Path = REGISTRY, grace: float = 5.0) -> list[str]:
    """Stop the recorded processes of every driver that is gone; returns ``name (pid)`` of each process stopped.

    A record whose driver still runs is left alone; an unreadable record is removed.
    """
    stopped: list[str] = []
    for record in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        try:
            data = json.loads(record.read_text())
            driver_alive = _same(data["driver"]) is not None
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if driver_alive:
            continue
        targets: dict[int, psutil.Process] = {}
        for entry in data.get("processes", []):
            process = _same(entry)
            if process is None:
                continue
            targets[process.pid] = process
            try:   # workers started after the record are children of a recorded raylet
                targets.update({child.pid: child for child in process.children(recursive=True)})
            except psutil.Error:
                pass
        names = {}
        for process in targets.values():
            try:
                names[process.pid] = f"{process.name()} ({process.pid})"
                process.terminate()
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(list(targets.values()), timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=grace)
        stopped += list(names.values())
        record.unlink(missing_ok=True)
    return stopped
