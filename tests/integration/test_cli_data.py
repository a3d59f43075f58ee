"""`python -m sellarec data stats` on the embedded ML-100K, checked against an independent pandas computation,
and the command line's bad-input contract (one line on stderr, exit 2, nothing partial in the cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELLAREC_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "sellarec", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def independent_ml100k_stats() -> dict:
    """Recomputed here without sellarec: label >= 4, 80/10/10 global time split by row count (stable), keep rows
    with an earlier positive of the same user (any split), warm = user and item present in raw train."""
    folder = resources.files("recbole").joinpath("dataset_example", "ml-100k")
    inter = pd.read_csv(Path(str(folder)) / "ml-100k.inter", sep="\t")
    inter.columns = ["user", "item", "rating", "timestamp"]
    n = len(inter)
    rank = np.empty(n, dtype=int)
    rank[np.argsort(inter["timestamp"].to_numpy(), kind="stable")] = np.arange(n)
    inter["split"] = np.where(rank < 0.8 * n, "train", np.where(rank < 0.9 * n, "valid", "test"))
    return _stats(inter)


def _stats(inter: pd.DataFrame) -> dict:
    """Per-split counts of ``inter`` (columns user, item, rating, timestamp, split) as `data stats --json` has them."""
    inter["label"] = (inter["rating"] >= 4).astype(int)
    inter = inter.sort_values(["user", "timestamp"], kind="stable")
    inter["prior"] = inter.groupby("user")["label"].cumsum() - inter["label"]
    train = inter[inter["split"] == "train"]
    inter["warm"] = inter["user"].isin(train["user"]) & inter["item"].isin(train["item"])
    out = {}
    for name in ("train", "valid", "test"):
        rows = inter[(inter["split"] == name) & (inter["prior"] > 0)]
        out[name] = {"rows": len(rows), "users": rows["user"].nunique(), "items": rows["item"].nunique(),
                     "positive_rate": round(rows["label"].mean(), 4),
                     "raw_rows": int((inter["split"] == name).sum())}
        if name != "train":
            out[name]["warm_rows"] = int(rows["warm"].sum())
            out[name]["cold_rows"] = int((~rows["warm"]).sum())
            out[name]["warm_share"] = round(100 * rows["warm"].mean(), 2)
    return out


def test_data_stats_json_on_embedded_ml100k(tmp_path: Path) -> None:
    result = run_cli("data", "stats", "--dataset", "ml100k", "--set", "data.split=global_time", "--json",
                     cache=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["dataset"] == "ml100k"
    assert stats["users"] == 943 and stats["items"] == 1682
    assert stats["splits"] == independent_ml100k_stats()


def test_data_stats_on_the_embedded_default_has_95_percent_warm_test_rows(tmp_path: Path) -> None:
    """The default profile (quick) splits ML-100K per user by time, so nearly every test user and item is in train."""
    result = run_cli("data", "stats", "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["splits"]["test"]["warm_share"] >= 95.0
    assert stats["splits"]["test"]["users"] > 900  # every user contributes test rows, not only the late arrivals


def test_naming_a_window_split_dataset_drops_the_profiles_split_rule(tmp_path: Path) -> None:
    """quick sets data.split=user_time, which ml1m refuses; --dataset ml1m without --data-dir must then fail on the
    missing folder (the dataset's own problem), not on the profile's split rule."""
    result = run_cli("data", "stats", "--dataset", "ml1m", cache=tmp_path)
    assert result.returncode == 2 and "pass --data-dir" in result.stderr, result.stderr


def test_data_stats_table_mentions_every_split(tmp_path: Path) -> None:
    result = run_cli("data", "stats", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("train", "valid", "test"):
        assert any(line.startswith(name) for line in result.stdout.splitlines())


@pytest.mark.parametrize("args, message", [
    (["data", "stats", "--dataset", "ml2m"], "data.dataset='ml2m' is not one of"),
    (["data", "stats", "--dataset", "ml1m"], "pass --data-dir"),
    (["data", "stats", "--dataset", "ml1m", "--data-dir", "/nonexistent/ml-1m"], "does not exist"),
    (["data", "stats", "--set", "data.histroy_len=3"], "did you mean 'data.history_len'"),
    (["data", "stats", "--set", "data.split=weekly"],
     "data.split='weekly' is not one of global_time, user_time, random"),
    (["data", "stats", "--dataset", "ml1m", "--set", "data.split=user_time"],
     "data.split='user_time' applies to ml100k and csv only"),
    (["data", "stats", "--set", "data.valid_fraction=0.6", "--set", "data.test_fraction=0.5"],
     "data.test_fraction=0.5 plus valid_fraction=0.6 must leave data for train"),
    (["data", "stats", "--profile", "quik"], "unknown profile 'quik'"),
    (["data", "stats", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(*args, cache=tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "cache" / "data").exists()


def test_wrong_csv_columns_exit_2_without_cache(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    result = run_cli("data", "stats", "--dataset", "csv", "--data-dir", str(path), cache=tmp_path / "cache")
    assert result.returncode == 2 and "lacks column(s) user, item, rating, timestamp, title" in result.stderr
    assert not (tmp_path / "cache" / "data").exists()
