"""Split rules of ml100k and csv (``data.split``): global_time, user_time, random, on hand-counted fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sellarec.config import DataConfig, from_dict, load_config
from sellarec.config.schema import FieldError
from sellarec.data import load_dataset
from sellarec.data.readers import count_by_ratio, read_raw
from sellarec.errors import ConfigError

# File order on purpose: users interleaved, rows out of time order, two ties (a_late/a_tie at t=900, b7/b6 at
# t=60) where the row earlier in the file must come first. A has 10 rows, B 7, C 3 (20 in all).
ROWS = [
    ("A", "a_late", 5, 900), ("B", "b1", 4, 10), ("C", "c2", 5, 1001), ("A", "a1", 4, 100), ("A", "a2", 2, 200),
    ("B", "b2", 5, 20), ("A", "a3", 5, 200), ("C", "c1", 4, 1000), ("B", "b3", 1, 30), ("A", "a4", 4, 300),
    ("B", "b4", 5, 40), ("A", "a5", 3, 400), ("B", "b5", 4, 50), ("C", "c0", 5, 5), ("A", "a6", 5, 500),
    ("B", "b7", 4, 60), ("A", "a7", 4, 600), ("B", "b6", 2, 60), ("A", "a8", 5, 700), ("A", "a_tie", 4, 900),
]
ALL_ITEMS = {row[1] for row in ROWS}

# user_time at 0.1/0.1, by hand (RecBole's rule per user):
#   A, n=10: valid int(1.0)=1, test 1, train 8; no bump (1.0 is not < 1). Time order a1..a8, a_late, a_tie.
#   B, n=7: int(0.7)=0 twice, train 7; test bump (0 < 0.7 < 1, train 7 > 1) -> 6/0/1; valid bump (train 6 > 1)
#           -> 5/1/1. Time order b1..b5, b7, b6 (tie at 60: b7 is earlier in the file).
#   C, n=3: int(0.3)=0 twice; test bump -> 2/0/1; valid bump (train 2 > 1) -> 1/1/1. Time order c0, c1, c2.
USER_TIME = {
    "train": {"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "b1", "b2", "b3", "b4", "b5", "c0"},
    "valid": {"a_late", "b7", "c1"},
    "test": {"a_tie", "b6", "c2"},
}
# global_time at 0.1/0.1 (unchanged rule): 20 rows, round(2.0) = 2 each for valid and test. All rows by time:
# c0 5, b1..b5 10-50, b7 b6 60, a1 100, a2 a3 200, a4..a8 300-700 (16 rows: train), a_late a_tie 900 (valid),
# c1 1000, c2 1001 (test).
GLOBAL_TIME = {
    "train": {"c0", "b1", "b2", "b3", "b4", "b5", "b7", "b6", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"},
    "valid": {"a_late", "a_tie"},
    "test": {"c1", "c2"},
}


def write_csv(path: Path) -> Path:
    pd.DataFrame(ROWS, columns=["user", "item", "rating", "timestamp"]).assign(
        title=lambda f: f["item"].str.upper()).to_csv(path, index=False)
    return path


def _cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(dataset="csv", data_dir=str(path), **kw)


def _items_by_split(frame: pd.DataFrame) -> dict[str, set[str]]:
    return {name: set(frame.loc[frame["split"] == name, "item"]) for name in ("train", "valid", "test")}


# --------------------------------------------------------------------------------------------------- count rule


@pytest.mark.parametrize("n, valid, test, expected", [
    (10, 0.1, 0.1, (8, 1, 1)),
    (7, 0.1, 0.1, (5, 1, 1)),
    (3, 0.1, 0.1, (1, 1, 1)),
    (2, 0.1, 0.1, (1, 0, 1)),     # test bump leaves train at 1, so valid gets none
    (1, 0.1, 0.1, (1, 0, 0)),     # train never bumps below 1 row
    (20, 0.1, 0.1, (16, 2, 2)),
    (5, 0.1, 0.1, (3, 1, 1)),
    (4, 0.2, 0.1, (2, 1, 1)),     # valid int(0.8)=0, test int(0.4)=0, both bumped
    (10, 0.2, 0.1, (7, 2, 1)),
    (100_000, 0.1, 0.1, (80_000, 10_000, 10_000)),
])
def test_count_by_ratio_follows_recbole(n: int, valid: float, test: float, expected: tuple[int, int, int]) -> None:
    train_n, valid_n, test_n = count_by_ratio(np.array([n]), valid, test)
    assert (int(train_n[0]), int(valid_n[0]), int(test_n[0])) == expected


def test_count_by_ratio_is_vectorised_per_group() -> None:
    train_n, valid_n, test_n = count_by_ratio(np.array([10, 7, 3, 2, 1]), 0.1, 0.1)
    assert train_n.tolist() == [8, 5, 1, 1, 1]
    assert valid_n.tolist() == [1, 1, 1, 0, 0]
    assert test_n.tolist() == [1, 1, 1, 1, 0]


# --------------------------------------------------------------------------------------------------- the rules


def test_user_time_split_by_hand(tmp_path: Path) -> None:
    raw = read_raw(_cfg(write_csv(tmp_path / "x.csv"), split="user_time"))
    assert _items_by_split(raw) == USER_TIME


def test_user_time_with_other_fractions(tmp_path: Path) -> None:
    # 0.2/0.1: A (10) -> 7/2/1; B (7) -> valid int(1.4)=1, test int(0.7)=0 bumped -> 5/1/1; C (3) -> 1/1/1.
    raw = read_raw(_cfg(write_csv(tmp_path / "x.csv"), split="user_time", valid_fraction=0.2, test_fraction=0.1))
    assert _items_by_split(raw) == {
        "train": {"a1", "a2", "a3", "a4", "a5", "a6", "a7", "b1", "b2", "b3", "b4", "b5", "c0"},
        "valid": {"a8", "a_late", "b7", "c1"},
        "test": {"a_tie", "b6", "c2"},
    }


@pytest.mark.parametrize("split", [None, "global_time"])
def test_global_time_is_unchanged(tmp_path: Path, split: str | None) -> None:
    raw = read_raw(_cfg(write_csv(tmp_path / "x.csv"), split=split))
    assert _items_by_split(raw) == GLOBAL_TIME


def test_random_split_counts_seed_and_coverage(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv")
    first = read_raw(_cfg(path, split="random", sample_seed=7))
    again = read_raw(_cfg(path, split="random", sample_seed=7))
    other = read_raw(_cfg(path, split="random", sample_seed=8))
    # 20 rows at 0.1/0.1: int(2.0) = 2 valid, 2 test, 16 train
    assert first["split"].value_counts().to_dict() == {"train": 16, "valid": 2, "test": 2}
    assert sorted(first["item"]) == sorted(ALL_ITEMS) and len(first) == len(ROWS)  # every row exactly once
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    assert other["split"].value_counts().to_dict() == {"train": 16, "valid": 2, "test": 2}


def test_random_split_follows_the_documented_permutation(tmp_path: Path) -> None:
    raw = read_raw(_cfg(write_csv(tmp_path / "x.csv"), split="random", sample_seed=3))
    order = np.random.default_rng(3).permutation(len(ROWS))  # file rows in this order: 16 train, 2 valid, 2 test
    items = [ROWS[i][1] for i in order]
    assert _items_by_split(raw) == {"train": set(items[:16]), "valid": set(items[16:18]), "test": set(items[18:])}


def test_processed_dataset_keeps_the_split_and_caches_per_rule(tmp_path: Path, cache_dir: Path) -> None:
    path = write_csv(tmp_path / "x.csv")
    by_user = load_dataset(_cfg(path, split="user_time"), cache_dir)
    by_time = load_dataset(_cfg(path), cache_dir)
    assert by_user.fingerprint != by_time.fingerprint
    for ds, expected in ((by_user, USER_TIME), (by_time, GLOBAL_TIME)):
        frame = ds.interactions.assign(item=[ds.titles[i].lower() for i in ds.interactions["item"]])
        assert _items_by_split(frame) == expected
    # every item of the fixture occurs once, so each valid/test row's item is unseen in train: all cold
    assert by_user.interactions.loc[by_user.interactions["split"] != "train", "cold"].all()


# --------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("dataset", ["ml1m", "amazon-book"])
@pytest.mark.parametrize("split", ["global_time", "user_time", "random"])
def test_split_is_rejected_for_collm_datasets(dataset: str, split: str) -> None:
    with pytest.raises(FieldError, match=rf"^split='{split}' applies to ml100k and csv only; "
                                         rf"data.dataset='{dataset}' uses CoLLM's .*: leave data.split unset "
                                         r"\(--set data.split=null where a profile sets it\)$"):
        DataConfig(dataset=dataset, split=split)


def test_split_rejection_through_the_loader_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides=["data.dataset=ml1m", "data.split=user_time"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("data.split='user_time' applies to ml100k and csv only")


def test_collm_datasets_accept_the_unset_split() -> None:
    assert DataConfig(dataset="ml1m").split is None
    assert DataConfig(dataset="amazon-book", split=None).split is None


@pytest.mark.parametrize("source", ["override", "yaml"])
def test_unknown_split_names_the_choices(source: str) -> None:
    with pytest.raises(ConfigError) as info:
        if source == "override":
            load_config(None, overrides=["data.split=weekly"])
        else:
            from_dict({"data": {"split": "weekly"}})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("data.split='weekly' is not one of global_time, user_time, random")
