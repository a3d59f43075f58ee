"""The shared interaction protocol of every dataset (METHOD.md §1.1 steps 2-6, §1.3, §1.4).

From the raw frame (:mod:`sellarec.data.readers`) it derives labels, remaps ids 1..N in order of first appearance in
the (user, timestamp)-sorted data (0 = padding), builds each interaction's history of earlier positives across
splits, and flags warm/cold rows under both definitions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_POSITIVE_RATING", "subsample_users", "apply_protocol", "sanitize_title"]

# Label rules of the papers: MovieLens rating >= 4 (CoLLM, SeLLa), Amazon Book rating == 5 (CoLLM).
DEFAULT_POSITIVE_RATING = {"ml100k": 4.0, "ml1m": 4.0, "amazon-book": 5.0, "csv": 4.0}
COLLM_WARM_MIN_TRAIN = 4  # CoLLM's evaluation: warm = user and item each seen > 3 times in train


def sanitize_title(title: str) -> str:
    """Titles go into prompts on one line (the official code strips newlines and carriage returns)."""
    return " ".join(str(title).replace("\r", " ").replace("\n", " ").split())


def subsample_users(raw: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """Keep every interaction of a random subset of ``max_users`` users (all users when None or fewer exist)."""
    users = np.sort(raw["user"].unique())
    if max_users is None or max_users >= len(users):
        return raw
    keep = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return raw[raw["user"].isin(keep)]


def _remap(values: pd.Series) -> tuple[np.ndarray, dict]:
    codes, uniques = pd.factorize(values, sort=False)  # order of first appearance
    return codes + 1, {raw: i + 1 for i, raw in enumerate(uniques)}


def _histories(users: np.ndarray, items: np.ndarray, labels: np.ndarray, history_len: int
               ) -> tuple[list[list[int]], np.ndarray]:
    """For rows sorted by (user, time): last ``history_len`` earlier positive items, and the count of all of them."""
    histories: list[list[int]] = []
    n_prior = np.zeros(len(users), dtype=np.int64)
    positives: list[int] = []
    current = None
    for row, (user, item, label) in enumerate(zip(users, items, labels)):
        if user != current:
            current, positives = user, []
        histories.append(positives[-history_len:])
        n_prior[row] = len(positives)
        if label:
            positives.append(int(item))
    return histories, n_prior


def apply_protocol(raw: pd.DataFrame, positive_rating: float, history_len: int) -> tuple[pd.DataFrame, list[str]]:
    """Derive the processed interactions frame and the item titles.

    Args:
        raw: frame with ``user, item, rating, timestamp, title, split``.
        positive_rating: label = rating >= this.
        history_len: keep the last this-many earlier positives per row.

    Returns:
        ``(interactions, titles)``. ``interactions`` is sorted by (user, timestamp) with columns ``user, item``
        (ints from 1), ``label`` (0/1), ``rating, timestamp, split``, ``history`` (item ids, oldest first),
        ``n_prior_pos`` (earlier positives of the user, all of them), ``user_train_count``, ``item_train_count``
        (interactions in the raw train split), ``cold`` (user or item unseen in train), ``warm_sella``
        (not cold), ``warm_collm`` (both seen more than 3 times in train). ``titles[i]`` is item i's
        sanitised title; ``titles[0] == ""``.
    """
    frame = raw.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    frame["user"], _ = _remap(frame["user"])
    frame["item"], item_map = _remap(frame["item"])
    frame["label"] = (frame["rating"] >= positive_rating).astype(np.int8)

    titles = [""] * (len(item_map) + 1)
    for item, title in zip(frame["item"].to_numpy(), frame["title"].to_numpy()):
        if not titles[item]:
            titles[item] = sanitize_title(title)

    histories, n_prior = _histories(frame["user"].to_numpy(), frame["item"].to_numpy(),
                                    frame["label"].to_numpy(), history_len)
    frame["history"] = histories
    frame["n_prior_pos"] = n_prior

    train = frame[frame["split"] == "train"]
    frame["user_train_count"] = frame["user"].map(train["user"].value_counts()).fillna(0).astype(np.int64)
    frame["item_train_count"] = frame["item"].map(train["item"].value_counts()).fillna(0).astype(np.int64)
    frame["cold"] = (frame["user_train_count"] == 0) | (frame["item_train_count"] == 0)
    frame["warm_sella"] = ~frame["cold"]
    frame["warm_collm"] = ((frame["user_train_count"] >= COLLM_WARM_MIN_TRAIN)
                           & (frame["item_train_count"] >= COLLM_WARM_MIN_TRAIN))
    frame = frame.drop(columns=["title"])
    return frame, titles
