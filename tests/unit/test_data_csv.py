"""Generic csv loader: configurable columns, time-fraction split, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from sellarec.config import DataConfig
from sellarec.data import dataset as dataset_module
from sellarec.data import load_dataset
from sellarec.errors import DataError


def write_csv(path: Path) -> Path:
    rows = [("u1", "a", 5, 10, "Alpha"), ("u1", "b", 2, 20, "Beta"), ("u2", "a", 4, 30, "Alpha"),
            ("u1", "c", 4, 40, "Gamma"), ("u2", "b", 5, 50, "Beta"), ("u2", "c", 1, 60, "Gamma"),
            ("u1", "d", 5, 70, "Delta"), ("u2", "d", 4, 80, "Delta"), ("u1", "b", 3, 90, "Beta"),
            ("u2", "a", 5, 100, "Alpha")]
    pd.DataFrame(rows, columns=["who", "what", "stars", "when", "name"]).to_csv(path, index=False)
    return path


def _cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(dataset="csv", data_dir=str(path), csv_user="who", csv_item="what", csv_rating="stars",
                      csv_time="when", csv_title="name", valid_fraction=0.2, test_fraction=0.2, **kw)


def test_csv_split_by_time_fraction(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(_cfg(write_csv(tmp_path / "x.csv")), cache_dir)
    rows = ds.interactions.sort_values("timestamp")
    assert rows["split"].tolist() == ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
    assert set(ds.titles) == {"", "Alpha", "Beta", "Gamma", "Delta"}
    # u1's last row (t=90) has positives a (t=10), c (t=40), d (t=70) before it
    last = rows[rows["timestamp"] == 90].iloc[0]
    assert [ds.titles[i] for i in last["history"]] == ["Alpha", "Gamma", "Delta"]


def test_history_len_keeps_the_most_recent(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(_cfg(write_csv(tmp_path / "x.csv"), history_len=2), cache_dir)
    last = ds.interactions[ds.interactions["timestamp"] == 90].iloc[0]
    assert [ds.titles[i] for i in last["history"]] == ["Gamma", "Delta"]
    assert last["n_prior_pos"] == 3


def test_positive_rating_override(tmp_path: Path, cache_dir: Path) -> None:
    ds = load_dataset(_cfg(write_csv(tmp_path / "x.csv"), positive_rating=5.0), cache_dir)
    assert ds.interactions["label"].sum() == 4


def test_missing_columns_name_them_and_write_nothing(tmp_path: Path, cache_dir: Path) -> None:
    path = write_csv(tmp_path / "x.csv")
    with pytest.raises(DataError, match=r"lacks column\(s\) user, item, rating, timestamp, title .*data.csv_user="):
        load_dataset(DataConfig(dataset="csv", data_dir=str(path)), cache_dir)
    assert not (cache_dir / "data").exists()


def test_missing_file(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist"):
        load_dataset(_cfg(tmp_path / "nope.csv"), cache_dir)


def test_kill_mid_write_leaves_no_partial_cache(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # what a Ctrl-C during the write looks like

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(_cfg(write_csv(tmp_path / "x.csv")), cache_dir)
    assert list((cache_dir / "data").iterdir()) == []


def test_a_process_reads_a_cached_dataset_once(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    cfg = _cfg(write_csv(tmp_path / "x.csv"))
    built = load_dataset(cfg, cache_dir)                       # processes the csv and writes the cache entry
    reads: list[Path] = []
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda path, *a, **kw: reads.append(path) or real(path, *a, **kw))
    first, second = load_dataset(cfg, cache_dir), load_dataset(cfg, cache_dir)
    assert first is second and len(reads) == 1
    pd.testing.assert_frame_equal(first.interactions, built.interactions.reset_index(drop=True))
    # a render-only setting shares the processed data but is a dataset of its own (its config says how to render)
    other = load_dataset(_cfg(tmp_path / "x.csv", warm_definition="collm"), cache_dir)
    assert other is not first and other.config.warm_definition == "collm" and len(reads) == 2


@pytest.mark.parametrize("damage", ["truncate", "scramble"])
def test_a_damaged_cache_entry_is_moved_aside_with_one_warning_and_rebuilt(tmp_path: Path, cache_dir: Path, caplog,
                                                                           damage: str) -> None:
    cfg = _cfg(write_csv(tmp_path / "x.csv"))
    built = load_dataset(cfg, cache_dir)
    (entry,) = (cache_dir / "data").glob("csv-*")
    parquet = entry / "interactions.parquet"
    data = parquet.read_bytes()
    parquet.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-64] + bytes(64))
    dataset_module._LOADED.clear()                              # as a new process would: read the entry again
    with caplog.at_level(logging.WARNING):
        again = load_dataset(cfg, cache_dir)
    pd.testing.assert_frame_equal(again.interactions, built.interactions)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "processed-data cache entry" in warned[0] and entry.name in warned[0]
    assert len(list((cache_dir / "data").glob(f".broken-{entry.name}-*"))) == 1
    dataset_module._LOADED.clear()
    caplog.clear()
    assert load_dataset(cfg, cache_dir).interactions.equals(again.interactions.reset_index(drop=True))
    assert not caplog.records                                   # the rebuilt entry is intact
