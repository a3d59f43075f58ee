"""Statistics of an ablation table: t-intervals over seeds, paired t-tests against the full model, Holm correction.

* Interval: mean ± t_{(1+level)/2, n-1} * s / sqrt(n), with s the sample standard deviation (ddof 1) over seeds.
* Difference to the reference (full model): d_i = x_i(cell) - x_i(full) over the seeds both have (paired by seed:
  the same seed draws the same evaluation rows); two-sided paired t-test, t = mean(d) / (s_d / sqrt(n)) with n - 1
  degrees of freedom. Undefined (NaN) with fewer than 2 pairs or when every d_i is equal (s_d = 0).
* Holm (1979) step-down adjustment across the cells of one metric: with the m defined p-values sorted ascending,
  p_adj(i) = min(1, max_{j <= i} (m - j + 1) p(j)).
* Power of the paired test (per column): with s_d the pooled standard deviation of the paired differences over the
  column's cells, a true difference delta is detected with power P(|T| > t_{1-alpha/2, n-1}), T noncentral t with
  n - 1 degrees of freedom and noncentrality delta sqrt(n) / s_d. The smallest detectable difference solves power =
  0.8 for delta; the seeds needed for a difference solve it for n. Holm's correction is not in it (per comparison).
NaN metric values (a slice with one label class) are left out of every computation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["Interval", "PairedTest", "t_interval", "paired_t_test", "holm", "summarize", "paired_power",
           "detectable_difference", "seeds_needed", "pooled_sd"]


@dataclass(frozen=True)
class Interval:
    """Mean and confidence interval of one metric over seeds.

    Attributes:
        n: finite values used.
        mean: their mean (NaN when n = 0).
        half_width: half the interval's width (NaN when n < 2).
    """

    n: int
    mean: float
    half_width: float


@dataclass(frozen=True)
class PairedTest:
    """Paired difference of a cell to the reference over seeds.

    Attributes:
        n: seeds with a finite value in both.
        mean_diff: mean of cell - reference over those seeds (NaN when n = 0).
        p_value: two-sided paired t-test p-value (NaN when n < 2 or all differences are equal).
        sd_diff: sample standard deviation (ddof 1) of the differences (NaN when n < 2).
    """

    n: int
    mean_diff: float
    p_value: float
    sd_diff: float = math.nan


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean ± Student-t interval of ``values`` (NaNs dropped)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan)
    mean = float(np.mean(x))
    if n < 2:
        return Interval(n, mean, math.nan)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n))
    return Interval(n, mean, half)


def paired_t_test(cell: Mapping[int, float], reference: Mapping[int, float]) -> PairedTest:
    """Two-sided paired t-test of ``cell`` against ``reference``, both ``{seed: value}``."""
    seeds = sorted(s for s in set(cell) & set(reference)
                   if math.isfinite(cell[s]) and math.isfinite(reference[s]))
    d = np.array([cell[s] - reference[s] for s in seeds], dtype=float)
    n = len(d)
    if n == 0:
        return PairedTest(0, math.nan, math.nan)
    mean = float(np.mean(d))
    if n < 2:
        return PairedTest(n, mean, math.nan)
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return PairedTest(n, mean, math.nan, sd)
    t_stat = mean / (sd / math.sqrt(n))
    return PairedTest(n, mean, float(2 * stats.t.sf(abs(t_stat), n - 1)), sd)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values; NaN inputs stay NaN and are not counted in the family size."""
    defined = sorted(((p, k) for k, p in p_values.items() if math.isfinite(p)))
    m = len(defined)
    out = {k: math.nan for k in p_values}
    running = 0.0
    for j, (p, key) in enumerate(defined):
        running = max(running, min(1.0, (m - j) * p))
        out[key] = running
    return out


def summarize(records: pd.DataFrame, metrics: Sequence[str], reference: str, level: float = 0.95) -> pd.DataFrame:
    """One row per (cell, metric): interval over seeds and the Holm-corrected paired test against ``reference``.

    Args:
        records: one row per run with columns ``cell``, ``seed`` and one column per metric.
        metrics: metric columns to summarise.
        reference: the cell every other cell is compared with (the full model).
        level: confidence level of the intervals.

    Returns:
        Columns ``cell, metric, n, mean, half_width, n_pairs, diff, p, p_holm`` in the order of first appearance
        of each cell in ``records`` and of ``metrics``; the reference's own test columns are NaN.
    """
    cells = list(dict.fromkeys(records["cell"]))
    values = {(c, m): dict(zip(records.loc[records["cell"] == c, "seed"],
                               records.loc[records["cell"] == c, m].astype(float)))
              for c in cells for m in metrics}
    none = PairedTest(0, math.nan, math.nan)
    tests = {(c, m): none if c == reference or reference not in cells else
             paired_t_test(values[c, m], values[reference, m]) for c in cells for m in metrics}
    adjusted = {m: holm({c: tests[c, m].p_value for c in cells if c != reference}) for m in metrics}
    rows = []
    for cell in cells:
        for metric in metrics:
            interval, test = t_interval(list(values[cell, metric].values()), level), tests[cell, metric]
            rows.append({"cell": cell, "metric": metric, "n": interval.n, "mean": interval.mean,
                         "half_width": interval.half_width, "n_pairs": test.n, "diff": test.mean_diff,
                         "sd_diff": test.sd_diff, "p": test.p_value, "p_holm": adjusted[metric].get(cell, math.nan)})
    return pd.DataFrame(rows)


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` to detect a true mean difference ``delta`` with ``n``
    pairs whose differences have standard deviation ``sd`` (exact, noncentral t)."""
    if n < 2 or not sd > 0:
        return math.nan
    df, noncentrality = n - 1, abs(delta) * math.sqrt(n) / sd
    critical = stats.t.ppf(1 - alpha / 2, df)
    # The wrong-sign tail is below 1e-15 once the noncentrality is large, where scipy's nct.cdf can return NaN.
    wrong_sign = float(stats.nct.cdf(-critical, df, noncentrality))
    return float(stats.nct.sf(critical, df, noncentrality)) + (wrong_sign if math.isfinite(wrong_sign) else 0.0)


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true difference the paired test detects with ``power`` (NaN when n < 2 or sd is not positive)."""
    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    from scipy.optimize import brentq

    high = sd
    while paired_power(high, sd, n, alpha) < power:  # the power grows without bound in delta: bracket the root
        high *= 2
    return float(brentq(lambda delta: paired_power(delta, sd, n, alpha) - power, 0.0, high, xtol=1e-10))


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05, limit: int = 100_000) -> int:
    """Fewest pairs (seeds, at least 2) for which the paired test detects ``delta`` with ``power``; -1 past ``limit``
    or without a positive spread."""
    if not (math.isfinite(sd) and sd > 0) or delta == 0:
        return -1
    low, high = 2, 2
    while paired_power(delta, sd, high, alpha) < power:  # power rises with n: double, then bisect
        if high >= limit:
            return -1
        low, high = high, min(limit, high * 2)
    while low < high:
        middle = (low + high) // 2
        if paired_power(delta, sd, middle, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return high


def pooled_sd(summary: pd.DataFrame, metric: str) -> tuple[float, int]:
    """Pooled standard deviation of the paired differences of ``metric`` over the cells of a :func:`summarize`
    table, and the median pair count of those cells: ``(sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)), n)``;
    ``(nan, 0)`` when no cell has two pairs."""
    rows = summary[(summary["metric"] == metric) & (summary["n_pairs"] >= 2) & np.isfinite(summary["sd_diff"])]
    if rows.empty:
        return math.nan, 0
    dof = rows["n_pairs"] - 1
    return float(math.sqrt((dof * rows["sd_diff"] ** 2).sum() / dof.sum())), int(np.median(rows["n_pairs"]))
