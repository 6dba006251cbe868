"""95% intervals for the figures a user sees: the one home of Wilson and friends.

- `wilson_interval(k, n)`: a proportion k/n (QA accuracy, an error rate). Wilson's score
  interval stays inside [0, 1] and keeps its coverage at small n and near 0 or 1, where
  the normal approximation p ± 1.96·sqrt(p(1-p)/n) fails (2 of 48 gives a negative
  lower bound).
- `newcombe_difference(k1, n1, k2, n2)`: p1 - p2 from the two Wilson intervals
  (Newcombe 1998, method 10). It treats the samples as independent; two models scored
  on the same questions are positively correlated, so for them the interval is wider
  than it needs to be: a claim it supports holds.
- `mean_log_interval(values)`: exp of a mean of per-window NLLs ± Student t: a
  perplexity's interval over the held-out windows drawn (windows taken as independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959964...

# Two-sided 95% Student t quantiles by degrees of freedom (beyond 30: the normal's).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

Interval = tuple[float, float]


def wilson_interval(k: int, n: int) -> Interval | None:
    """The 95% Wilson score interval of the proportion k/n (None when n is 0)."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"a count of {k} out of {n}")
    p = k / n
    denom = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / denom
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / denom
    # at k = 0 or k = n the bound is exactly 0 or 1 (rounding would leave 1e-17)
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def newcombe_difference(k1: int, n1: int, k2: int, n2: int) -> Interval | None:
    """The 95% interval of k1/n1 - k2/n2 (Newcombe's hybrid score interval)."""
    a, b = wilson_interval(k1, n1), wilson_interval(k2, n2)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return (d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p2) ** 2),
            d + math.sqrt((a[1] - p1) ** 2 + (p2 - b[0]) ** 2))


def t_quantile(df: int) -> float:
    """The two-sided 95% Student t quantile for `df` degrees of freedom."""
    if df < 1:
        raise ValueError("at least 2 values are needed for an interval")
    return _T95[df - 1] if df <= len(_T95) else Z


def mean_with_interval(values: Sequence[float]) -> tuple[float, Interval | None]:
    """The mean of `values` and its 95% t interval (None for fewer than 2 values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def mean_log_interval(nlls: Sequence[float]) -> Interval | None:
    """exp of the 95% t interval of the mean of per-window NLLs: a perplexity's interval."""
    _, ci = mean_with_interval(nlls)
    return None if ci is None else (math.exp(ci[0]), math.exp(ci[1]))


def fmt_interval(ci: Interval | None, *, percent: bool = False) -> str:
    """`[37.7, 44.9]` (percent: of a proportion), or "" when there is none."""
    if ci is None:
        return ""
    if percent:
        return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    lo, hi = ci
    digits = 0 if hi >= 1000 else 1 if hi >= 100 else 2
    return f"[{lo:,.{digits}f}, {hi:,.{digits}f}]"


def mean_perplexity_interval(
    perplexities: Sequence[float], nll_ses: Sequence[float | None]
) -> Interval | None:
    """95% interval of a mean of yearly perplexities, each with the standard error of
    its mean NLL over its windows (delta method: se(ppl) = ppl * se(nll); years
    independent). None when a year has no standard error (a single window)."""
    known = [se for se in nll_ses if se is not None]
    if not perplexities or len(known) != len(nll_ses):
        return None
    mean = sum(perplexities) / len(perplexities)
    se = math.sqrt(sum((p * s) ** 2 for p, s in zip(perplexities, known))) / len(perplexities)
    return (mean - Z * se, mean + Z * se)
