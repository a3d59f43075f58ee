"""Amazon Book loader (CoLLM protocol) on a fixture whose counts follow from its construction.

Grid: users A00-A20 x items B00-B20, all in 2017 (21 interactions each, > 20 kept). Row (u, i) falls in December
when (u + i) % 7 == 0: three items per user, 63 rows -> valid = the first 31 by time, test = the last 32.
Distractors that must vanish: user A21 (2016 only), user A22 (20 rows in 2017: not > 20), item B21 (20 users),
item B99 (no metadata title).
"""

from __future__ import annotations

import calendar
import gzip
import json
from pathlib import Path

import pytest

from sellarec.config import DataConfig
from sellarec.data import load_dataset
from sellarec.errors import DataError


def _ts(month: int, day: int, minute: int, year: int = 2017) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0)) + 60 * minute


def _rating(u: int, i: int) -> float:
    return 5.0 if (u * i) % 3 == 0 else (4.0 if (u + i) % 2 else 3.0)


def write_amazon(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    reviews, december = [], []
    for u in range(21):
        for i in range(21):
            minute = u * 21 + i
            if (u + i) % 7 == 0:
                ts = _ts(12, 1, 1000 - minute)           # December, order unrelated to (u, i)
                december.append((ts, f"A{u:02d}", f"B{i:02d}"))
            else:
                ts = _ts(1 + (u + i) % 11, 2, minute)    # January..November
            reviews.append({"reviewerID": f"A{u:02d}", "asin": f"B{i:02d}", "overall": _rating(u, i),
                            "unixReviewTime": ts})
    reviews += [{"reviewerID": "A21", "asin": f"B{i:02d}", "overall": 5.0, "unixReviewTime": _ts(3, 3, i, 2016)}
                for i in range(21)]
    reviews += [{"reviewerID": "A22", "asin": f"B{i:02d}", "overall": 5.0, "unixReviewTime": _ts(3, 3, i)}
                for i in range(20)]
    reviews += [{"reviewerID": f"A{u:02d}", "asin": "B21", "overall": 5.0, "unixReviewTime": _ts(4, 4, u)}
                for u in range(20)]
    reviews += [{"reviewerID": f"A{u:02d}", "asin": "B99", "overall": 5.0, "unixReviewTime": _ts(5, 5, u)}
                for u in range(21)]
    with gzip.open(folder / "Books_5.json.gz", "wt", encoding="utf-8") as handle:
        for rec in reviews:
            handle.write(json.dumps(rec) + "\n")
    meta = [json.dumps({"asin": f"B{i:02d}", "title": f"Book {i}\nVolume"}) for i in range(20)]
    meta.append(str({"asin": "B20", "title": "Book 20"}))   # a 2014-style Python literal line
    meta.append(json.dumps({"asin": "B21", "title": "Book 21"}))
    (folder / "meta_Books.json").write_text("\n".join(meta) + "\n", encoding="utf-8")
    december.sort()
    return {"valid": {(u, i) for _, u, i in december[:31]}, "test": {(u, i) for _, u, i in december[31:]}}


def test_amazon_protocol(tmp_path: Path, cache_dir: Path) -> None:
    expected = write_amazon(tmp_path / "book")
    ds = load_dataset(DataConfig(dataset="amazon-book", data_dir=str(tmp_path / "book")), cache_dir)
    rows = ds.interactions
    assert len(rows) == 441
    assert ds.num_users - 1 == 21 and ds.num_items - 1 == 21
    assert (rows["split"] == "train").sum() == 378
    assert (rows["split"] == "valid").sum() == 31 and (rows["split"] == "test").sum() == 32
    # map remapped ids back through titles ("Book 7 Volume") and first-appearance user order (A00 -> 1, ...)
    item_of = {k: int(t.split()[1]) for k, t in enumerate(ds.titles) if t}
    got_valid = {(f"A{u - 1:02d}", f"B{item_of[i]:02d}") for u, i in
                 rows.loc[rows["split"] == "valid", ["user", "item"]].itertuples(index=False)}
    assert got_valid == expected["valid"]
    assert "Book 0 Volume" in ds.titles and "Book 21" not in ds.titles   # newline sanitised; B21 dropped
    ratings = rows["rating"].to_numpy()
    assert ((ratings == 5.0) == (rows["label"].to_numpy() == 1)).all()   # label: rating == 5, a 4 is negative
    assert (ratings == 4.0).any()


def test_amazon_missing_fields(tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "book"
    write_amazon(folder)
    with gzip.open(folder / "Books_5.json.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"reviewerID": "A", "asin": "B"}) + "\n")
    with pytest.raises(DataError, match=r"record 1 lacks overall, unixReviewTime"):
        load_dataset(DataConfig(dataset="amazon-book", data_dir=str(folder)), cache_dir)
