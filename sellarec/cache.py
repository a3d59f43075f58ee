"""Content-addressed stage artifacts shared by every run, trial and ablation cell on a machine.

An entry lives at ``<cache>/stages/<stage>/<key>/`` and is complete once its ``meta.json`` exists (written inside the
scratch folder that is renamed into place in one step). Concurrent processes asking for the same key serialise on a
per-key file lock: the first computes, the others wait and reuse. A writer killed mid-way leaves only a scratch
folder, which the next holder of the lock removes; the lock itself dies with its process.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sellarec.atomic_files import atomic_dir

__all__ = ["StageCache", "CacheEntry"]


@dataclass(frozen=True)
class CacheEntry:
    """One finished artifact: its stage, key, folder, size in bytes and ``meta.json`` content."""

    stage: str
    key: str
    path: Path
    size: int
    meta: dict


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
        return path if (path / "meta.json").is_file() else None

    @contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_compute(self, stage: str, key: str, compute: Callable[[Path], dict]) -> tuple[Path, bool]:
        """Return ``(folder, hit)``; on a miss ``compute(scratch)`` writes the artifact files and returns the meta.

        ``meta.json`` is written by the cache after ``compute`` returns, so an entry is never visible half-written.
        """
        found = self.lookup(stage, key)
        if found is not None:
            return found, True
        with self._lock(stage, key):
            found = self.lookup(stage, key)  # computed by another process while we waited
            if found is not None:
                return found, True
            for stale in (self.root / stage).glob(f".{key}.tmp-*"):  # left by a killed writer
                shutil.rmtree(stale, ignore_errors=True)
            target = self.path(stage, key)
            if target.exists():  # an incomplete folder from an older layout
                shutil.rmtree(target)
            with atomic_dir(target) as scratch:
                meta = compute(scratch)
                meta = {"stage": stage, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
                (scratch / "meta.json").write_text(json.dumps(meta, indent=2))
            return target, False

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        found = []
        for meta_path in sorted(self.root.glob("*/*/meta.json")):
            folder = meta_path.parent
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            found.append(CacheEntry(folder.parent.name, folder.name, folder, size, json.loads(meta_path.read_text())))
        return sorted(found, key=lambda e: e.meta.get("created", ""))

    def clear(self, stage: str | None = None) -> int:
        """Delete every entry (of ``stage`` if given); returns how many were removed."""
        removed = 0
        for entry in self.entries():
            if stage is None or entry.stage == stage:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed
