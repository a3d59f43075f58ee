"""Raw readers: each turns one dataset's files into the common raw frame with its split assigned.

The raw frame has one row per interaction and the columns ``user, item, rating, timestamp, title, split``
(split in {train, valid, test}); rows a protocol drops are already gone. Ids are the source's own; remapping,
labels, histories and warm/cold flags are applied afterwards by :mod:`sellarec.data.protocol` for every dataset alike.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from importlib import resources, util
from pathlib import Path

import numpy as np
import pandas as pd

from sellarec.config import DataConfig
from sellarec.errors import ConfigError, DataError

__all__ = ["source_files", "read_raw", "split_by_time_fraction", "split_by_user_time", "split_at_random",
           "count_by_ratio", "assign_split", "RAW_COLUMNS"]

RAW_COLUMNS = ["user", "item", "rating", "timestamp", "title", "split"]
ML100K_INSTALL = "pip install --no-deps recbole==1.2.1 (or run `make install`)"


def _ml100k_dir() -> Path:
    if util.find_spec("recbole") is None:
        raise DataError(f"dataset 'ml100k' is read from the recbole package, which is not installed: {ML100K_INSTALL}")
    folder = Path(str(resources.files("recbole").joinpath("dataset_example", "ml-100k")))
    if not (folder / "ml-100k.inter").is_file():
        raise DataError(f"{folder}/ml-100k.inter is missing from the installed recbole; reinstall: {ML100K_INSTALL}")
    return folder


def _data_dir(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        raise ConfigError(f"data.dataset={cfg.dataset!r} reads files the user supplies: pass --data-dir PATH "
                          "(or --set data.data_dir=PATH)")
    return Path(cfg.data_dir).expanduser()


def _first_existing(folder: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{what}: none of {', '.join(names)} found in {folder}; point --data-dir at the folder holding it")


def source_files(cfg: DataConfig) -> list[Path]:
    """The files a dataset is read from (their bytes form the data fingerprint)."""
    if cfg.dataset == "ml100k":
        folder = _ml100k_dir()
        return [folder / "ml-100k.inter", folder / "ml-100k.item"]
    if cfg.dataset == "ml1m":
        folder = _data_dir(cfg)
        if not folder.is_dir():
            raise DataError(f"ml1m data folder {folder} does not exist; pass --data-dir with ratings.dat and movies.dat")
        return [_first_existing(folder, ["ratings.dat"], "ml1m ratings"),
                _first_existing(folder, ["movies.dat"], "ml1m movies")]
    if cfg.dataset == "amazon-book":
        folder = _data_dir(cfg)
        if not folder.is_dir():
            raise DataError(f"amazon-book data folder {folder} does not exist; pass --data-dir with Books_5.json(.gz) "
                            "and meta_Books.json(.gz)")
        return [_first_existing(folder, ["Books_5.json.gz", "Books_5.json"], "amazon-book reviews"),
                _first_existing(folder, ["meta_Books.json.gz", "meta_Books.json"], "amazon-book metadata")]
    if cfg.dataset == "csv":
        path = _data_dir(cfg)
        if path.is_dir():
            raise DataError(f"csv data {path} is a folder; pass --data-dir PATH/TO/FILE.csv, the file itself")
        if not path.is_file():
            raise DataError(f"csv file {path} does not exist; pass --data-dir PATH/TO/FILE.csv")
        return [path]
    raise ConfigError(f"unknown dataset {cfg.dataset!r}")  # unreachable: the config's Literal type checks it


def read_raw(cfg: DataConfig) -> pd.DataFrame:
    """Read ``cfg.dataset`` into the raw frame (see module docstring) with the dataset's split protocol applied."""
    readers = {"ml100k": _read_ml100k, "ml1m": _read_ml1m, "amazon-book": _read_amazon_book, "csv": _read_csv}
    frame = readers[cfg.dataset](cfg)
    if frame.empty:
        raise DataError(f"dataset {cfg.dataset!r} has no interactions left after its split protocol")
    return frame[RAW_COLUMNS].reset_index(drop=True)


def split_by_time_fraction(frame: pd.DataFrame, valid_fraction: float, test_fraction: float) -> pd.Series:
    """Global time split: stable sort by timestamp, then the last rows go to test and the ones before to valid.

    Cut points are row counts (``round(n * fraction)``), so ties at a boundary are broken by file order.
    """
    n = len(frame)
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    n_test = int(round(n * test_fraction))
    n_valid = int(round(n * valid_fraction))
    labels = np.empty(n, dtype=object)
    labels[order[: n - n_valid - n_test]] = "train"
    labels[order[n - n_valid - n_test: n - n_test]] = "valid"
    labels[order[n - n_test:]] = "test"
    return pd.Series(labels, index=frame.index)


def count_by_ratio(n: np.ndarray, valid_fraction: float, test_fraction: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/valid/test sizes of groups of ``n`` rows by RecBole 1.2.1's ``Dataset._calcu_split_ids``.

    valid and test get ``int(fraction * n)`` rows (rounded down) and train the rest; then, test first and valid
    second, a part whose ``fraction * n`` lies strictly between 0 and 1 takes one row from train while train keeps
    more than one, so a small group still reaches every split (n=3 at 0.1/0.1 gives 1/1/1, n=2 gives 1/0/1).
    RecBole first divides its ratios by their sum, where float rounding can move a row at some fractions; at the
    default 0.8/0.1/0.1 the sum is exactly 1.0 and the counts agree (checked for n < 3000).

    Args:
        n: rows per group, shape (G,) (a scalar works too).
        valid_fraction: share of valid.
        test_fraction: share of test.

    Returns:
        ``(train, valid, test)`` int64 arrays of n's shape that sum to ``n``.
    """
    n = np.asarray(n, dtype=np.int64)
    valid = np.asarray(valid_fraction * n).astype(np.int64)  # truncation, as Python's int()
    test = np.asarray(test_fraction * n).astype(np.int64)
    train = n - valid - test
    bump = (train > 1) & (test_fraction * n > 0) & (test_fraction * n < 1)  # RecBole walks the parts last to first
    test, train = test + bump, train - bump
    bump = (train > 1) & (valid_fraction * n > 0) & (valid_fraction * n < 1)
    valid, train = valid + bump, train - bump
    return train, valid, test


def _labels_by_position(position: np.ndarray, size: np.ndarray | np.int64, valid_fraction: float,
                        test_fraction: float) -> np.ndarray:
    """Label each row train/valid/test from its 0-based position within its group of ``size`` rows."""
    train, valid, _ = count_by_ratio(size, valid_fraction, test_fraction)
    return np.where(position < train, "train", np.where(position < train + valid, "valid", "test")).astype(object)


def split_by_user_time(frame: pd.DataFrame, valid_fraction: float, test_fraction: float) -> pd.Series:
    """Per-user chronological split: each user's rows sorted by timestamp, first ones train, then valid, then test.

    Sizes follow :func:`count_by_ratio` per user (RecBole's ``split_by_ratio`` with ``group_by`` user and time
    order). The sort is stable, so rows with equal timestamps keep their file order.
    """
    codes = pd.factorize(frame["user"])[0]
    by_time = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    order = by_time[np.argsort(codes[by_time], kind="stable")]  # by user, then time, then file order
    grouped = codes[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, sizes)
    labels = np.empty(len(order), dtype=object)
    labels[order] = _labels_by_position(position, np.repeat(sizes, sizes), valid_fraction, test_fraction)
    return pd.Series(labels, index=frame.index)


def split_at_random(frame: pd.DataFrame, valid_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """RecBole-style random split: rows in the order of ``numpy.random.default_rng(seed).permutation``, cut with
    :func:`count_by_ratio` on the total (8:1:1 by default). The seed is ``data.sample_seed``."""
    n = len(frame)
    order = np.random.default_rng(seed).permutation(n)
    labels = np.empty(n, dtype=object)
    labels[order] = _labels_by_position(np.arange(n), np.int64(n), valid_fraction, test_fraction)
    return pd.Series(labels, index=frame.index)


def assign_split(frame: pd.DataFrame, cfg: DataConfig) -> pd.Series:
    """The split of ml100k and csv rows under ``cfg.split`` (None = their own rule, ``global_time``)."""
    rule = cfg.split or "global_time"
    if rule == "user_time":
        return split_by_user_time(frame, cfg.valid_fraction, cfg.test_fraction)
    if rule == "random":
        return split_at_random(frame, cfg.valid_fraction, cfg.test_fraction, cfg.sample_seed)
    return split_by_time_fraction(frame, cfg.valid_fraction, cfg.test_fraction)


def _read_ml100k(cfg: DataConfig) -> pd.DataFrame:
    inter_path, item_path = source_files(cfg)
    inter = pd.read_csv(inter_path, sep="\t")
    items = pd.read_csv(item_path, sep="\t", dtype=str, keep_default_na=False)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items.columns = [c.split(":")[0] for c in items.columns]
    # ML-1M style "Title (Year)": recbole keeps the year in its own column.
    items["title"] = np.where(items["release_year"] != "", items["movie_title"] + " (" + items["release_year"] + ")",
                              items["movie_title"])
    title = dict(zip(items["item_id"].astype(int), items["title"]))
    frame = pd.DataFrame({"user": inter["user_id"], "item": inter["item_id"], "rating": inter["rating"].astype(float),
                          "timestamp": inter["timestamp"].astype(np.int64)})
    frame["title"] = frame["item"].map(title).fillna("")
    frame["split"] = assign_split(frame, cfg)
    return frame


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    rows = [line.rstrip("\r\n").split("::") for line in path.read_text(encoding="latin-1").splitlines() if line]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(names)), None)
    if bad is not None:
        raise DataError(f"{path.name} line {bad + 1} has {len(rows[bad])} fields, expected {'::'.join(names)}")
    return pd.DataFrame(rows, columns=names)


def _months_since_april_2000(timestamps: np.ndarray) -> np.ndarray:
    dates = pd.to_datetime(timestamps, unit="s", utc=True)
    return ((dates.year - 2000) * 12 + (dates.month - 4)).to_numpy()


def _read_ml1m(cfg: DataConfig) -> pd.DataFrame:
    """CoLLM protocol (METHOD.md §1.1): months 14-33 since April 2000 (UTC); train 14-23, valid 24-28, test 29-33."""
    ratings_path, movies_path = source_files(cfg)
    ratings = _read_dat(ratings_path, ["user", "item", "rating", "timestamp"])
    movies = _read_dat(movies_path, ["item", "title", "genres"])
    try:
        frame = pd.DataFrame({"user": ratings["user"].astype(int), "item": ratings["item"].astype(int),
                              "rating": ratings["rating"].astype(float),
                              "timestamp": ratings["timestamp"].astype(np.int64)})
        title = dict(zip(movies["item"].astype(int), movies["title"]))
    except ValueError as exc:
        raise DataError(f"ml1m files hold a non-numeric id, rating or timestamp ({exc}); expected "
                        "user::item::rating::timestamp and item::title::genres") from None
    frame["title"] = frame["item"].map(title).fillna("")
    month = _months_since_april_2000(frame["timestamp"].to_numpy())
    frame["split"] = np.select([(month >= 14) & (month <= 23), (month >= 24) & (month <= 28),
                                (month >= 29) & (month <= 33)], ["train", "valid", "test"], default="")
    return frame[frame["split"] != ""]


def _json_lines(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                try:  # the 2014 Amazon dumps are Python dict literals, not JSON
                    yield ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise DataError(f"{path.name} line {number} is neither JSON nor a Python dict literal") from None


def _read_amazon_book(cfg: DataConfig) -> pd.DataFrame:
    """CoLLM protocol (METHOD.md §1.2): 2017 only, users and items with > 20 interactions (one pass), Jan-Nov train,
    December sorted by time and cut in halves (valid, then test). Reviews without a metadata title are dropped."""
    reviews_path, meta_path = source_files(cfg)
    need = ("reviewerID", "asin", "overall", "unixReviewTime")
    rows = []
    for number, rec in enumerate(_json_lines(reviews_path), 1):
        missing = [k for k in need if k not in rec]
        if missing:
            raise DataError(f"{reviews_path.name} record {number} lacks {', '.join(missing)}; expected the Amazon 2018 "
                            "5-core review format (reviewerID, asin, overall, unixReviewTime)")
        rows.append((rec["reviewerID"], rec["asin"], float(rec["overall"]), int(rec["unixReviewTime"])))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    titles = {rec["asin"]: str(rec["title"]) for rec in _json_lines(meta_path) if rec.get("asin") and rec.get("title")}
    frame["title"] = frame["item"].map(titles)
    frame = frame[frame["title"].notna()]
    dates = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    frame = frame[(dates.dt.year == 2017).to_numpy()].copy()
    user_count = frame["user"].map(frame["user"].value_counts())
    item_count = frame["item"].map(frame["item"].value_counts())
    frame = frame[(user_count > 20) & (item_count > 20)].copy()
    month = pd.to_datetime(frame["timestamp"], unit="s", utc=True).dt.month.to_numpy()
    frame["split"] = np.where(month <= 11, "train", "")
    december = frame.index[month == 12]
    order = december[np.argsort(frame.loc[december, "timestamp"].to_numpy(), kind="stable")]
    half = len(order) // 2
    frame.loc[order[:half], "split"] = "valid"
    frame.loc[order[half:], "split"] = "test"
    return frame


def _read_csv(cfg: DataConfig) -> pd.DataFrame:
    (path,) = source_files(cfg)
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"csv file {path} cannot be parsed: {str(exc).splitlines()[0]}") from None
    wanted = {"user": cfg.csv_user, "item": cfg.csv_item, "rating": cfg.csv_rating, "timestamp": cfg.csv_time,
              "title": cfg.csv_title}
    missing = [col for col in wanted.values() if col not in table.columns]
    if missing:
        raise DataError(f"csv file {path.name} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))}); "
                        "name them with --set data.csv_user=... data.csv_item=... data.csv_rating=... "
                        "data.csv_time=... data.csv_title=...")
    frame = pd.DataFrame({key: table[col] for key, col in wanted.items()})
    if not pd.api.types.is_numeric_dtype(frame["rating"]):
        raise DataError(f"csv column {cfg.csv_rating!r} must be numeric (ratings)")
    if frame[["user", "item", "rating", "timestamp"]].isna().any().any():
        raise DataError(f"csv file {path.name} has empty user, item, rating or timestamp cells")
    frame["rating"] = frame["rating"].astype(float)
    frame["title"] = frame["title"].fillna("").astype(str)
    frame["split"] = assign_split(frame, cfg)
    return frame

