"""ML-1M loader + shared protocol on a hand-made fixture; every expectation below is counted by hand.

Months are counted from April 2000 (UTC): train = months 14-23 (Jun 2001-Mar 2002), valid = 24-28 (Apr-Aug 2002),
test = 29-33 (Sep 2002-Jan 2003); May 2001 (13) and Feb 2003 (34) are outside the window.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

from sellarec.config import DataConfig
from sellarec.data import dataset_stats, load_dataset
from sellarec.errors import DataError

MOVIES = {10: "Toy Story (1995)", 20: "Heat (1995)", 30: "Schindler's List (1993)", 40: "No Way Out (1987)",
          50: "Casino (1995)"}
RATINGS = [  # user, item, rating, (y, m, d)
    (5, 10, 5, (2001, 5, 15)),   # month 13: dropped
    (5, 20, 4, (2001, 6, 10)),   # train
    (5, 30, 2, (2001, 7, 1)),    # train
    (5, 40, 5, (2002, 4, 2)),    # valid
    (5, 50, 3, (2002, 9, 5)),    # test
    (3, 30, 4, (2001, 8, 1)),    # train
    (3, 20, 1, (2002, 5, 1)),    # valid
    (3, 10, 4, (2002, 10, 1)),   # test (item 10's only train-window rating was dropped: cold)
    (3, 50, 5, (2003, 2, 10)),   # month 34: dropped
    (7, 20, 5, (2002, 9, 10)),   # test, user 7 unseen in train: cold
    (7, 30, 4, (2002, 11, 1)),   # test
]


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}::{i}::{r}::{calendar.timegm((y, m, d, 12, 0, 0))}" for u, i, r, (y, m, d) in RATINGS]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (folder / "movies.dat").write_text(
        "\n".join(f"{i}::{t}::Drama" for i, t in MOVIES.items()) + "\n", encoding="latin-1")
    return folder


@pytest.fixture
def ml1m(tmp_path: Path, cache_dir: Path):
    return load_dataset(DataConfig(dataset="ml1m", data_dir=str(write_ml1m(tmp_path / "ml-1m"))), cache_dir)


def test_window_split_and_remap(ml1m) -> None:
    rows = ml1m.interactions
    assert len(rows) == 9                                       # two rows outside months 14-33 dropped
    # users remapped in sorted order 3, 5, 7 -> 1, 2, 3; items by first appearance in (user, time) order
    assert rows["user"].tolist() == [1, 1, 1, 2, 2, 2, 2, 3, 3]
    assert rows["item"].tolist() == [1, 2, 3, 2, 1, 4, 5, 2, 1]
    assert ml1m.titles == ["", "Schindler's List (1993)", "Heat (1995)", "Toy Story (1995)", "No Way Out (1987)",
                           "Casino (1995)"]
    assert rows["split"].tolist() == ["train", "valid", "test", "train", "train", "valid", "test", "test", "test"]
    assert rows["label"].tolist() == [1, 0, 1, 1, 0, 1, 0, 1, 1]


def test_histories_are_earlier_positives_across_splits(ml1m) -> None:
    rows = ml1m.interactions
    assert rows["history"].tolist() == [[], [1], [1], [], [2], [2], [2, 4], [], [2]]
    assert rows["n_prior_pos"].tolist() == [0, 1, 1, 0, 1, 1, 2, 0, 1]


def test_rows_without_history_are_dropped_from_prompt_splits(ml1m) -> None:
    assert len(ml1m.split("train")) == 1 and len(ml1m.split("train", raw=True)) == 3
    assert len(ml1m.split("valid")) == 2
    assert len(ml1m.split("test")) == 3 and len(ml1m.split("test", raw=True)) == 4


def test_warm_and_cold_flags(ml1m) -> None:
    rows = ml1m.interactions
    valid, test = rows[rows["split"] == "valid"], rows[rows["split"] == "test"]
    assert valid["cold"].tolist() == [False, True]               # (u3, Heat) warm; (u5, No Way Out) unseen item
    assert test["cold"].tolist() == [True, True, True, True]
    assert not rows["warm_collm"].any()                          # nobody has > 3 train interactions
    stats = dataset_stats(ml1m)["splits"]
    assert stats["valid"] == {"rows": 2, "users": 2, "items": 2, "positive_rate": 0.5, "raw_rows": 2,
                              "warm_rows": 1, "cold_rows": 1, "warm_share": 50.0}
    assert stats["test"]["warm_rows"] == 0 and stats["test"]["cold_rows"] == 3


def test_cache_hit_returns_the_same_data(tmp_path: Path, cache_dir: Path) -> None:
    cfg = DataConfig(dataset="ml1m", data_dir=str(write_ml1m(tmp_path / "ml-1m")))
    first = load_dataset(cfg, cache_dir)
    entries = list((cache_dir / "data").iterdir())
    assert len(entries) == 1 and entries[0].name == f"ml1m-{first.fingerprint}"
    second = load_dataset(cfg, cache_dir)
    assert second.interactions.equals(first.interactions) and second.titles == first.titles


def test_changed_source_changes_the_fingerprint(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    cfg = DataConfig(dataset="ml1m", data_dir=str(folder))
    before = load_dataset(cfg, cache_dir).fingerprint
    with (folder / "ratings.dat").open("a", encoding="latin-1") as handle:
        handle.write(f"9::10::4::{calendar.timegm((2001, 9, 1, 0, 0, 0))}\n")
    assert load_dataset(cfg, cache_dir).fingerprint != before


def test_malformed_ratings_line(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "ratings.dat").write_text("1::2::3\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings.dat line 1 has 3 fields, expected user::item::rating::timestamp"):
        load_dataset(DataConfig(dataset="ml1m", data_dir=str(folder)), cache_dir)
    assert not (cache_dir / "data").exists() or not any((cache_dir / "data").iterdir())


def test_missing_movies_file(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"movies.dat found in"):
        load_dataset(DataConfig(dataset="ml1m", data_dir=str(folder)), cache_dir)
