"""Content-addressed stage artifacts shared by every run, trial and ablation cell on a machine.

An entry lives at ``<cache>/stages/<stage>/<key>/`` and is complete once its ``meta.json`` exists (written inside the
scratch folder that is renamed into place in one step). Concurrent processes asking for the same key serialise on a
per-key file lock: the first computes, the others wait and reuse. A writer killed mid-way leaves only a scratch
folder, which the next holder of the lock removes; the lock itself dies with its process.

Integrity: ``meta.json`` records every file's size and SHA-256. A hit is checked against them (milliseconds: stage
artifacts are a few MB); an entry whose files were truncated, changed or removed, or whose ``meta.json`` no longer
parses, is moved aside to ``<stage>/.broken-<key>-<time>`` with one warning naming it, and computed again. Entries
written before checksums existed are checked for their ``meta.json`` only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sellarec import status
from sellarec.atomic_files import atomic_dir

__all__ = ["StageCache", "CacheEntry", "file_digests", "entry_problem", "move_aside"]

log = logging.getLogger(__name__)
_META = "meta.json"


def file_digests(folder: Path) -> dict[str, dict[str, int | str]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of every file under ``folder`` but ``meta.json``."""
    out: dict[str, dict[str, int | str]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != _META:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            out[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return out


def entry_problem(folder: Path, checksums: bool = True) -> str | None:
    """Why the complete-looking entry at ``folder`` cannot be trusted, or None (sizes only without ``checksums``).

    An entry is a folder whose ``meta.json`` records its files (:func:`file_digests`) under ``"files"``; one
    written before that was recorded is trusted."""
    try:
        meta = json.loads((folder / _META).read_text())
    except (OSError, ValueError) as exc:
        return f"meta.json unreadable ({type(exc).__name__})"
    recorded = meta.get("files") if isinstance(meta, dict) else None
    if recorded is None:
        return None if isinstance(meta, dict) else "meta.json is not a mapping"
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} recorded"
    if checksums:
        actual = file_digests(folder)
        for name, expected in recorded.items():
            if actual[name]["sha256"] != expected["sha256"]:
                return f"{name} does not match its recorded SHA-256"
    return None


def move_aside(folder: Path, problem: str, what: str = "stage cache entry") -> Path:
    """Rename a broken entry to ``.broken-<name>-<time>`` beside it (kept for a post-mortem, never read again) with
    one warning naming it; the caller computes it again."""
    aside = folder.parent / f".broken-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        folder.rename(aside)
    except FileNotFoundError:   # another process moved it first (and warned)
        return aside
    log.warning("%s %s/%s is broken (%s): moved aside to %s, computing it again", what, folder.parent.name,
                folder.name, problem, aside)
    return aside


@dataclass(frozen=True)
class CacheEntry:
    """One finished artifact: its stage, key, folder, size in bytes, ``meta.json`` content (empty when unreadable)
    and what is wrong with it (None when intact)."""

    stage: str
    key: str
    path: Path
    size: int
    meta: dict
    problem: str | None = None


class StageCache:
    """The stage-artifact store under ``<root>/stages``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "stages"

    def path(self, stage: str, key: str) -> Path:
        """Folder of an entry (whether or not it exists)."""
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        """The entry's folder if it is complete, else None."""
        path = self.path(stage, key)
        return path if (path / _META).is_file() else None

    @contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the entry's lock; the lock file names its holder, which a waiter publishes (:mod:`sellarec.status`:
        a sweep's driver prints "waiting for stage1 from trial X")."""
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{key}.lock", "a+") as handle:   # "a+": opening must not erase the holder's name
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                log.info("waiting for %s %s, computed by %s", stage, key, holder or "another process")
                status.waiting(stage, holder)
                fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
            handle.seek(0)
            handle.truncate()
            handle.write(status.label())
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_compute(self, stage: str, key: str, compute: Callable[[Path], dict]) -> tuple[Path, bool]:
        """Return ``(folder, hit)``; on a miss ``compute(scratch)`` writes the artifact files and returns the meta.

        ``meta.json`` is written by the cache after ``compute`` returns, so an entry is never visible half-written.
        """
        found = self.lookup(stage, key)
        if found is not None and entry_problem(found) is None:
            return found, True
        with self._lock(stage, key):
            found = self.lookup(stage, key)  # computed (or repaired) by another process while we waited
            if found is not None:
                problem = entry_problem(found)
                if problem is None:
                    return found, True
                move_aside(found, problem)
            for stale in (self.root / stage).glob(f".{key}.tmp-*"):  # left by a killed writer
                shutil.rmtree(stale, ignore_errors=True)
            target = self.path(stage, key)
            if target.exists():  # an incomplete folder from an older layout
                shutil.rmtree(target)
            with atomic_dir(target) as scratch:
                meta = compute(scratch)
                meta = {"stage": stage, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta,
                        "files": file_digests(scratch)}
                (scratch / _META).write_text(json.dumps(meta, indent=2))
            return target, False

    def entries(self, checksums: bool = False) -> list[CacheEntry]:
        """Every complete entry, oldest first, each with its problem (sizes checked; SHA-256 too with
        ``checksums``). Never raises on a broken entry: it is listed with what is wrong."""
        found = []
        for meta_path in sorted(self.root.glob(f"*/*/{_META}")):
            folder = meta_path.parent
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            problem = entry_problem(folder, checksums)
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            found.append(CacheEntry(folder.parent.name, folder.name, folder, size,
                                    meta if isinstance(meta, dict) else {}, problem))
        return sorted(found, key=lambda e: str(e.meta.get("created", "")))

    def clear(self, stage: str | None = None) -> int:
        """Delete every entry (of ``stage`` if given); returns how many were removed."""
        removed = 0
        for entry in self.entries():
            if stage is None or entry.stage == stage:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed
