"""Power of the paired test behind the ablation tables (issue 11): exact noncentral-t power against G*Power's
published values and a Monte Carlo simulation, the detectable difference and the seeds needed as its inverses, and
the report's power table against a hand-pooled spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sellarec.ablation.stats import (detectable_difference, paired_power, paired_t_test, pooled_sd, seeds_needed,
                                     summarize)


@pytest.mark.parametrize("effect, n, expected", [
    (0.5, 34, 0.8077775),   # G*Power 3.1, one-sample/paired t, two-tailed, alpha 0.05: "actual power" at n = 34
    (1.0, 10, 0.8030969),   # the same for d = 1 at n = 10
])
def test_power_matches_g_power(effect: float, n: int, expected: float) -> None:
    assert paired_power(effect * 0.02, 0.02, n) == pytest.approx(expected, abs=1e-6)


def test_power_matches_a_simulation() -> None:
    rng = np.random.default_rng(0)
    n, sd, delta, reps = 5, 0.02, 0.025, 40_000
    d = rng.normal(delta, sd, size=(reps, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    simulated = float(np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)))
    assert paired_power(delta, sd, n) == pytest.approx(simulated, abs=0.01)  # MC s.e. ~0.0025


def test_seeds_needed_is_the_first_n_with_enough_power() -> None:
    assert seeds_needed(0.5, 1.0) == 34 and seeds_needed(1.0, 1.0) == 10  # G*Power's total sample sizes
    n = seeds_needed(0.01, 0.03)
    assert paired_power(0.01, 0.03, n) >= 0.8 > paired_power(0.01, 0.03, n - 1)
    assert seeds_needed(0.01, 0.0) == -1


def test_detectable_difference_inverts_the_power() -> None:
    delta = detectable_difference(0.02, 3)
    assert paired_power(delta, 0.02, 3) == pytest.approx(0.8, abs=1e-8)
    assert detectable_difference(0.02, 30) < detectable_difference(0.02, 10) < delta  # more seeds, finer
    assert math.isnan(detectable_difference(0.02, 1)) and math.isnan(detectable_difference(math.nan, 3))


def test_pooled_sd_weights_cells_by_their_degrees_of_freedom() -> None:
    import pandas as pd

    full = [0.70, 0.72, 0.71, 0.69]
    cells = {"a": [0.68, 0.71, 0.70, 0.66], "b": [0.71, 0.74, 0.70, None]}
    records = [{"cell": "full", "seed": s, "m": v} for s, v in enumerate(full)]
    records += [{"cell": c, "seed": s, "m": v} for c, xs in cells.items() for s, v in enumerate(xs) if v is not None]
    summary = summarize(pd.DataFrame(records), ["m"], reference="full")
    diffs = {c: [x - full[s] for s, x in enumerate(xs) if x is not None] for c, xs in cells.items()}
    sds = {c: float(np.std(d, ddof=1)) for c, d in diffs.items()}
    expected = math.sqrt((3 * sds["a"] ** 2 + 2 * sds["b"] ** 2) / 5)  # df 3 and 2
    sd, n = pooled_sd(summary, "m")
    assert sd == pytest.approx(expected, rel=1e-12) and n == 3  # median of 4 and 3 pairs, rounded down
    assert paired_t_test({0: 1.0}, {0: 0.5}).sd_diff != paired_t_test({0: 1.0}, {0: 0.5}).sd_diff  # NaN: one pair
