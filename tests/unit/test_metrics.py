"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from sellarec.metrics import auc, bootstrap_ci, evaluate_slices, gauc, metric_key, uauc


def test_auc_matches_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels * 0.5
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_auc_by_hand_with_a_tie() -> None:
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4), (0.9>0.1), (0.4=0.4 -> 1/2), (0.4>0.1) = 3.5/4
    assert auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_uauc_by_hand() -> None:
    users = [1, 1, 1, 2, 2, 3, 4, 4]
    labels = [1, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.9, 0.5, 0.95, 0.8, 0.2, 0.5, 0.1, 0.3]
    # user 1: pos 0.9 vs negs 0.5 (win), 0.95 (loss) -> 0.5; user 2: pos 0.2 < neg 0.8 -> 0.0
    # user 3: one row (skipped); user 4: one class (skipped)
    result = uauc(users, labels, scores)
    assert result.value == pytest.approx(0.25)
    assert (result.n_users, result.n_single_row, result.n_single_class) == (2, 1, 1)


def test_uauc_is_unweighted_and_gauc_is_positive_weighted() -> None:
    users = [1, 1, 1, 1, 2, 2]
    labels = [1, 1, 1, 0, 1, 0]
    scores = [0.9, 0.8, 0.1, 0.5, 0.1, 0.9]
    # user 1: 3 positives vs 1 negative, wins 2 of 3 -> 2/3; user 2: 0
    assert uauc(users, labels, scores).value == pytest.approx((2 / 3 + 0) / 2)
    assert gauc(users, labels, scores) == pytest.approx((2 / 3 * 3 + 0 * 1) / 4)


def test_uauc_matches_a_groupby_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"u": rng.integers(0, 30, 600), "y": rng.integers(0, 2, 600), "s": rng.random(600)})
    per_user = [roc_auc_score(g["y"], g["s"]) for _, g in frame.groupby("u") if g["y"].nunique() == 2]
    assert uauc(frame["u"], frame["y"], frame["s"]).value == pytest.approx(np.mean(per_user))


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_users() -> None:
    rng = np.random.default_rng(1)

    def data(n_users: int):
        users = np.repeat(np.arange(n_users), 10)
        labels = rng.integers(0, 2, len(users))
        return users, labels, rng.normal(size=len(users)) + labels

    small, large = data(20), data(400)
    for metric, fn in (("auc", lambda d: auc(d[1], d[2])), ("uauc", lambda d: uauc(*d).value)):
        lo_s, hi_s = bootstrap_ci(*small, metric=metric, n_samples=300)
        lo_l, hi_l = bootstrap_ci(*large, metric=metric, n_samples=300)
        assert lo_s <= fn(small) <= hi_s and lo_l <= fn(large) <= hi_l
        assert hi_l - lo_l < (hi_s - lo_s) / 2           # width ~ 1/sqrt(users): 20x users -> ~4.5x narrower


def test_bootstrap_ci_is_deterministic_under_a_seed() -> None:
    users, labels, scores = np.repeat(np.arange(10), 4), np.tile([0, 1, 0, 1], 10), np.linspace(0, 1, 40)
    assert bootstrap_ci(users, labels, scores, seed=5) == bootstrap_ci(users, labels, scores, seed=5)


def test_evaluate_slices_splits_warm_and_cold() -> None:
    frame = pd.DataFrame({
        "user": [1, 1, 2, 2, 3, 3],
        "label": [1, 0, 1, 0, 1, 0],
        "score": [0.9, 0.1, 0.2, 0.8, 0.7, 0.3],
        "warm_sella": [True, True, False, False, True, True],
        "cold": [False, False, True, True, False, False],
    })
    out = evaluate_slices(frame, prefix="test")
    assert out[metric_key("test_warm", "uauc")] == pytest.approx(1.0)     # users 1 and 3 rank perfectly
    assert out[metric_key("test_cold", "uauc")] == pytest.approx(0.0)     # user 2 is reversed
    assert out["test/uauc"] == pytest.approx(2 / 3)
    assert out["test/auc"] == pytest.approx(roc_auc_score(frame["label"], frame["score"]))
    assert out["test_warm/rows"] == 4 and out["test_cold/uauc_users"] == 1


def test_uauc_handles_ties_like_sklearn() -> None:
    rng = np.random.default_rng(7)
    users = rng.integers(0, 20, 400)
    labels = rng.integers(0, 2, 400)
    scores = rng.integers(0, 4, 400) / 4.0                                   # many ties
    frame = pd.DataFrame({"u": users, "y": labels, "s": scores})
    per_user = [roc_auc_score(g["y"], g["s"]) for _, g in frame.groupby("u") if g["y"].nunique() == 2]
    assert uauc(users, labels, scores).value == pytest.approx(np.mean(per_user))
    assert uauc([1, 1], [1, 0], [0.4, 0.4]).value == pytest.approx(0.5)
