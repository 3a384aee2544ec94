"""Comparing two conversion rates: the uplift, its interval, a p-value, and when to say nothing.

Standard methods, written out so that every figure in docs/reports.md can be checked by hand:

- the interval of one rate is Wilson's score interval (it stays inside [0, 1] and behaves for
  small counts, unlike the textbook p ± z·se);
- the interval of a difference of two rates is Newcombe's hybrid score interval ("method 10",
  Newcombe 1998), built from the two Wilson intervals;
- the p-value is the two-sided two-proportion z-test with the pooled rate.

The normal distribution is the standard library's `statistics.NormalDist`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
# Too small to tell: fewer than this many customers in a group, or fewer than this many
# expected conversions (or non-conversions) in a group under the pooled rate. Below either,
# the normal approximation behind the p-value and the interval is not to be trusted.
MIN_GROUP = 30
MIN_EXPECTED = 5


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Wilson's score interval for a rate of successes / trials; (0, 1) with no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(
    x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the difference x1/n1 - x2/n2."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (max(-1.0, low), min(1.0, high))


def two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test; 1.0 when it cannot be computed."""
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:  # both groups all converted, or none did: no evidence of a difference
        return 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return 2 * (1 - NormalDist().cdf(abs(z)))


@dataclass
class Comparison:
    """A treatment group's conversion against a baseline group's (the holdout)."""

    treatment: str
    baseline: str
    treatment_customers: int
    treatment_converted: int
    baseline_customers: int
    baseline_converted: int
    treatment_rate: float | None
    baseline_rate: float | None
    uplift: float | None  # absolute: treatment rate - baseline rate
    relative_uplift: float | None  # uplift / baseline rate
    interval: tuple[float, float] | None  # of the absolute uplift
    confidence: float
    p_value: float | None
    too_small: bool
    verdict: str

    def as_dict(self) -> dict:
        data = asdict(self)
        data["interval"] = list(self.interval) if self.interval else None
        return data


def too_small_reason(x1: int, n1: int, x2: int, n2: int, names: tuple[str, str]) -> str | None:
    """Why these two groups are too small to tell apart, or None when they are not."""
    for name, n in zip(names, (n1, n2), strict=True):
        if n < MIN_GROUP:
            return f"{name} has {n} customers; at least {MIN_GROUP} are needed"
    pooled = (x1 + x2) / (n1 + n2)
    for name, n in zip(names, (n1, n2), strict=True):
        if n * pooled < MIN_EXPECTED:
            return (
                f"too few conversions: {n * pooled:.1f} expected in {name} at the pooled rate; "
                f"at least {MIN_EXPECTED} are needed"
            )
        if n * (1 - pooled) < MIN_EXPECTED:
            return f"too few customers who did not convert in {name}"
    return None


def compare(
    x1: int,
    n1: int,
    x2: int,
    n2: int,
    names: tuple[str, str] = ("treatment", "holdout"),
    confidence: float = CONFIDENCE,
) -> Comparison:
    """Conversion x1 of n1 (treatment) against x2 of n2 (baseline), with a plain verdict."""
    if not n1 or not n2:
        empty = names[0] if not n1 else names[1]
        verdict = f"too small to tell: {empty} has no customers"
        return Comparison(names[0], names[1], n1, x1, n2, x2, x1 / n1 if n1 else None,
                          x2 / n2 if n2 else None, None, None, None, confidence, None, True,
                          verdict)  # fmt: skip
    rate1, rate2 = x1 / n1, x2 / n2
    uplift = rate1 - rate2
    relative = uplift / rate2 if rate2 else None
    interval = newcombe_interval(x1, n1, x2, n2, confidence)
    p_value = two_proportion_p_value(x1, n1, x2, n2)
    reason = too_small_reason(x1, n1, x2, n2, names)
    level = f"{confidence:.0%}"
    if reason:
        verdict = f"too small to tell: {reason}"
    elif p_value < 1 - confidence and (interval[0] > 0 or interval[1] < 0):
        more = "more" if uplift > 0 else "less"
        verdict = (
            f"{names[0]} converted {more} than {names[1]} ({level} confidence, p = {p_value:.3g})"
        )
    else:
        verdict = f"no clear difference: the {level} interval includes zero (p = {p_value:.3g})"
    return Comparison(names[0], names[1], n1, x1, n2, x2, rate1, rate2, uplift, relative, interval,
                      confidence, p_value, reason is not None, verdict)  # fmt: skip
