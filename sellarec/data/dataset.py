"""Processed datasets: read, apply the protocol, cache by fingerprint, and summarise.

A processed dataset is deterministic given its source files and :class:`~sellarec.config.DataConfig`, so it is
cached under ``<cache>/data/<dataset>-<fingerprint>`` and rebuilt only when either changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sellarec.atomic_files import atomic_dir
from sellarec.cache import entry_problem, file_digests, move_aside
from sellarec.config import DataConfig, to_dict
from sellarec.data.protocol import DEFAULT_POSITIVE_RATING, apply_protocol, subsample_users
from sellarec.data.readers import read_raw, source_files
from sellarec.errors import DataError

__all__ = ["Dataset", "load_dataset", "dataset_stats", "data_fingerprint", "SPLITS", "ITEM_WORDS"]

SPLITS = ("train", "valid", "test")
PROTOCOL_VERSION = 1  # bump when apply_protocol or a reader changes its output
ITEM_WORDS = {"ml100k": "movie", "ml1m": "movie", "amazon-book": "book"}
# Only these fields change the processed data; the rest only change how prompts render it.
_RENDER_ONLY_FIELDS = {"history_placeholder", "warm_definition", "csv_item_word"}
# The last dataset this process read from the cache, by (cache folder, data settings); nothing writes to a Dataset.
_LOADED: dict[tuple[str, str], Dataset] = {}


@dataclass(frozen=True)
class Dataset:
    """A processed dataset.

    Attributes:
        name: the dataset name (``ml100k``, ...).
        item_word: noun prompts use for an item (``movie``, ``book``, ...).
        interactions: every kept interaction (see :func:`~sellarec.data.protocol.apply_protocol` for columns).
        titles: ``titles[i]`` is the title of item ``i``; ``titles[0] == ""`` (padding).
        fingerprint: hash of the source files and the protocol settings.
        config: the data settings it was built with.
    """

    name: str
    item_word: str
    interactions: pd.DataFrame
    titles: list[str]
    fingerprint: str
    config: DataConfig

    @property
    def num_users(self) -> int:
        """Number of user ids including padding id 0."""
        return int(self.interactions["user"].max()) + 1

    @property
    def num_items(self) -> int:
        """Number of item ids including padding id 0."""
        return len(self.titles)

    def split(self, name: str, *, raw: bool = False) -> pd.DataFrame:
        """Rows of split ``name``; unless ``raw``, only rows with at least one earlier positive (METHOD.md §1.3)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        rows = self.interactions[self.interactions["split"] == name]
        return rows if raw else rows[rows["n_prior_pos"] > 0]

    def warm_mask(self, rows: pd.DataFrame, definition: Literal["sella", "collm"] | None = None) -> pd.Series:
        """Boolean mask of warm rows under ``definition`` (default: the config's)."""
        return rows[f"warm_{definition or self.config.warm_definition}"]


def _hash_file(path: Path, digest: "hashlib._Hash") -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def data_fingerprint(cfg: DataConfig) -> str:
    """SHA-256 (hex, 16 chars) of the source files' bytes, the protocol version and the data-shaping settings."""
    digest = hashlib.sha256()
    for path in source_files(cfg):
        digest.update(path.name.encode())
        _hash_file(path, digest)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in _RENDER_ONLY_FIELDS and k != "data_dir"}
    digest.update(json.dumps({"protocol": PROTOCOL_VERSION, **settings}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _build(cfg: DataConfig) -> tuple[pd.DataFrame, list[str]]:
    raw = subsample_users(read_raw(cfg), cfg.max_users, cfg.sample_seed)
    positive = cfg.positive_rating if cfg.positive_rating is not None else DEFAULT_POSITIVE_RATING[cfg.dataset]
    frame, titles = apply_protocol(raw, positive, cfg.history_len)
    if (frame["split"] == "train").sum() == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no train interactions after its split; check the time range")
    return frame, titles


def load_dataset(cfg: DataConfig, cache_dir: Path | None) -> Dataset:
    """Load a processed dataset, from the cache when its fingerprint is there.

    Args:
        cfg: data settings.
        cache_dir: cache root (``<cache_dir>/data/...``); None processes in memory without caching.

    Raises:
        DataError: missing files, wrong columns or an empty split; nothing is written to the cache then.
    """
    fingerprint = data_fingerprint(cfg)
    item_word = ITEM_WORDS.get(cfg.dataset, cfg.csv_item_word)
    target = cache_dir / "data" / f"{cfg.dataset}-{fingerprint}" if cache_dir is not None else None
    if target is not None and (target / "meta.json").is_file() and (str(target), repr(cfg)) not in _LOADED:
        problem = entry_problem(target)   # sizes and SHA-256 of a few MB: milliseconds
        if problem is not None:
            move_aside(target, problem, "processed-data cache entry")
    if target is not None and (target / "meta.json").is_file():
        key = (str(target), repr(cfg))
        if key not in _LOADED:   # one read per process: a trial's planner, its pipeline and stage 3 share it
            frame = pd.read_parquet(target / "interactions.parquet")
            frame["history"] = frame["history"].map(list)
            titles = json.loads((target / "titles.json").read_text(encoding="utf-8"))
            _LOADED.clear()
            _LOADED[key] = Dataset(cfg.dataset, item_word, frame, titles, fingerprint, cfg)
        return _LOADED[key]
    frame, titles = _build(cfg)
    if target is not None:
        with atomic_dir(target) as scratch:
            frame.to_parquet(scratch / "interactions.parquet", index=False)
            (scratch / "titles.json").write_text(json.dumps(titles), encoding="utf-8")
            meta = {"dataset": cfg.dataset, "fingerprint": fingerprint, "protocol": PROTOCOL_VERSION,
                    "config": dataclasses.asdict(cfg), "rows": len(frame), "files": file_digests(scratch)}
            (scratch / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return Dataset(cfg.dataset, item_word, frame, titles, fingerprint, cfg)


def _split_stats(ds: Dataset, name: str) -> dict[str, Any]:
    rows = ds.split(name)
    stats: dict[str, Any] = {
        "rows": int(len(rows)),
        "users": int(rows["user"].nunique()),
        "items": int(rows["item"].nunique()),
        "positive_rate": round(float(rows["label"].mean()), 4) if len(rows) else float("nan"),
        "raw_rows": int(len(ds.split(name, raw=True))),
    }
    if name != "train":
        warm = ds.warm_mask(rows)
        stats["warm_rows"] = int(warm.sum())
        stats["cold_rows"] = int(rows["cold"].sum())
        stats["warm_share"] = round(100 * stats["warm_rows"] / len(rows), 2) if len(rows) else float("nan")
    return stats


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Per-split summary. Counts are prompt-level rows (at least one earlier positive); ``raw_rows`` counts all.

    ``warm_rows`` follow ``data.warm_definition``; ``cold_rows`` (user or item unseen in train) are the same under
    both definitions, so under ``collm`` warm + cold can be fewer than rows. ``warm_share`` is ``warm_rows / rows``
    in percent (2 decimals), for valid and test.
    """
    times = ds.interactions["timestamp"].to_numpy()
    return {
        "dataset": ds.name,
        "fingerprint": ds.fingerprint,
        "warm_definition": ds.config.warm_definition,
        "users": ds.num_users - 1,
        "items": ds.num_items - 1,
        "time_range": [int(np.min(times)), int(np.max(times))],
        "splits": {name: _split_stats(ds, name) for name in SPLITS},
    }
