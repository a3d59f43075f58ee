"""The shared stage cache: atomic entries, one computation per key under concurrency, recovery after a kill."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from sellarec.cache import StageCache


def _compute_slowly(root: str, counter: str, key: str) -> None:
    def compute(scratch: Path) -> dict:
        with open(counter, "a") as handle:       # one line per actual computation
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (scratch / "weights.bin").write_bytes(b"x" * 100)
        return {"note": "computed"}

    StageCache(Path(root)).get_or_compute("stage1", key, compute)


def test_racing_processes_compute_a_key_once(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_compute_slowly, args=(str(tmp_path), str(counter), "k1")) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    entry = StageCache(tmp_path).lookup("stage1", "k1")
    assert entry is not None and (entry / "weights.bin").read_bytes() == b"x" * 100


def _compute_and_hang(root: str) -> None:
    def compute(scratch: Path) -> dict:
        (scratch / "half.bin").write_bytes(b"partial")
        time.sleep(60)
        return {}

    StageCache(Path(root)).get_or_compute("stage2", "k2", compute)


def test_killed_writer_leaves_no_entry_and_the_next_run_recovers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_compute_and_hang, args=(str(tmp_path),))
    proc.start()
    scratch_glob = tmp_path / "stages" / "stage2"
    deadline = time.time() + 30
    while not list(scratch_glob.glob(".k2.tmp-*/half.bin")) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    store = StageCache(tmp_path)
    assert store.lookup("stage2", "k2") is None and store.entries() == []
    path, hit = store.get_or_compute("stage2", "k2", lambda s: (s / "ok.bin").write_bytes(b"1") and {} or {})
    assert not hit and (path / "ok.bin").exists()
    assert not list(scratch_glob.glob(".k2.tmp-*"))                    # the stale scratch was removed


def test_exception_in_compute_leaves_nothing(tmp_path: Path) -> None:
    store = StageCache(tmp_path)

    def boom(scratch: Path) -> dict:
        (scratch / "x").write_text("1")
        raise RuntimeError("nan loss")

    with pytest.raises(RuntimeError):
        store.get_or_compute("stage3", "k3", boom)
    assert store.entries() == [] and not list((tmp_path / "stages" / "stage3").glob(".k3.tmp-*"))


def test_hit_does_not_recompute_and_clear_removes(tmp_path: Path) -> None:
    store = StageCache(tmp_path)
    calls = []
    for _ in range(2):
        store.get_or_compute("stage1", "a", lambda s: calls.append(1) or {})
    store.get_or_compute("stage2", "b", lambda s: {})
    assert len(calls) == 1
    assert {(e.stage, e.key) for e in store.entries()} == {("stage1", "a"), ("stage2", "b")}
    assert store.clear("stage1") == 1 and [e.stage for e in store.entries()] == ["stage2"]


def test_atomic_text_write_gets_the_mode_of_a_plain_write(tmp_path: Path) -> None:
    import os

    from sellarec.atomic_files import write_text_atomic

    plain, atomic = tmp_path / "plain.md", tmp_path / "atomic.md"
    plain.write_text("x")
    write_text_atomic(atomic, "x")
    assert atomic.read_text() == "x"
    assert os.stat(atomic).st_mode & 0o777 == os.stat(plain).st_mode & 0o777   # not mkstemp's 0600


def test_atomic_dir_gets_the_mode_of_a_plain_mkdir(tmp_path: Path) -> None:
    import os

    from sellarec.atomic_files import atomic_dir

    (tmp_path / "plain").mkdir()
    with atomic_dir(tmp_path / "atomic") as scratch:
        (scratch / "f").write_text("x")
    assert (tmp_path / "atomic" / "f").read_text() == "x"
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777


def _entry(cache: StageCache, calls: list[int], payload: bytes = b"w" * 4096) -> Path:
    def compute(scratch: Path) -> dict:
        calls.append(1)
        (scratch / "weights.safetensors").write_bytes(payload)
        (scratch / "metrics.json").write_text('{"valid": {"auc": 0.7}}')
        return {"note": "computed"}

    return cache.get_or_compute("stage2", "k", compute)[0]


@pytest.mark.parametrize("damage", ["truncate", "scramble", "delete", "truncate-meta"])
def test_a_damaged_entry_is_moved_aside_with_one_warning_and_recomputed(tmp_path: Path, caplog, damage: str) -> None:
    import hashlib
    import json

    cache, calls = StageCache(tmp_path), []
    folder = _entry(cache, calls)
    recorded = json.loads((folder / "meta.json").read_text())["files"]
    assert recorded["weights.safetensors"] == {"size": 4096, "sha256": hashlib.sha256(b"w" * 4096).hexdigest()}
    weights = folder / "weights.safetensors"
    if damage == "truncate":
        weights.write_bytes(b"w" * 100)
    elif damage == "scramble":                                   # same size, other bytes: only the checksum sees it
        weights.write_bytes(os.urandom(4096))
    elif damage == "delete":
        weights.unlink()
    else:
        (folder / "meta.json").write_text('{"stage": "sta')
    (broken,) = [e for e in cache.entries(checksums=True) if e.key == "k"]
    assert broken.problem                                        # listed as broken, never a crash
    with caplog.at_level("WARNING", logger="sellarec.cache"):
        again = _entry(cache, calls)
    assert calls == [1, 1] and again == folder and (again / "weights.safetensors").read_bytes() == b"w" * 4096
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "stage2/k is broken" in warnings[0] and "moved aside" in warnings[0]
    assert len(list((tmp_path / "stages" / "stage2").glob(".broken-k-*"))) == 1
    _entry(cache, calls)
    assert calls == [1, 1]                                       # the recomputed entry is a plain hit again


def test_ls_lists_an_unreadable_meta_as_broken_and_accepts_entries_without_checksums(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    for key, meta in (("bad", "{not json"), ("old", '{"stage": "stage1", "created": "2026-01-01T00:00:00"}')):
        (tmp_path / "stages" / "stage1" / key).mkdir(parents=True)
        (tmp_path / "stages" / "stage1" / key / "meta.json").write_text(meta)
    problems = {e.key: e.problem for e in cache.entries(checksums=True)}
    assert problems["old"] is None and problems["bad"].startswith("meta.json unreadable")
    assert cache.get_or_compute("stage1", "old", lambda scratch: {})[1]   # written before checksums: still a hit
