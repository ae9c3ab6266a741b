"""Statistics over seeds: the mean with its Student-t confidence interval, and the paired t-test of two methods.

Musgrave et al. ("A Metric Learning Reality Check", ECCV 2020) report every loss as a mean over runs with a
confidence interval; with n seeds the interval is ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` (``s`` the sample
standard deviation). Two methods trained on the same seeds are compared by the paired t-test on the per-seed
differences (Student, 1908), which removes what the seed does to both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

__all__ = ["MeanCI", "PairedT", "mean_ci", "paired_t"]


@dataclass(frozen=True)
class MeanCI:
    """``mean ± half_width`` at ``confidence`` over ``n`` values (``half_width`` ``None`` for one value)."""

    mean: float
    half_width: float | None
    n: int
    std: float | None
    confidence: float

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "mean": self.mean,
            "ci": self.half_width,
            "n": self.n,
            "std": self.std,
            "confidence": self.confidence,
        }

    def text(self, digits: int = 4) -> str:
        """``0.8123 ± 0.0120`` (``0.8123`` alone for one value)."""
        mean = f"{self.mean:.{digits}f}"
        return mean if self.half_width is None else f"{mean} ± {self.half_width:.{digits}f}"


@dataclass(frozen=True)
class PairedT:
    """The paired t-test of ``a - b`` over ``n`` pairs: the mean difference with its interval, ``t`` and the
    two-sided ``p`` (``None`` when undefined: one pair, or differences all equal)."""

    difference: MeanCI
    t: float | None
    p: float | None

    def as_dict(self) -> dict[str, object]:
        return {"difference": self.difference.as_dict(), "t": self.t, "p": self.p}


def _check(values: Sequence[float], what: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what} must be finite numbers, got {v!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"{what} is empty: need at least one value")
    return out


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """The mean of ``values`` and the half-width of its Student-t ``confidence`` interval."""
    xs = _check(values, "values")
    confidence = _check_confidence(confidence)
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return MeanCI(mean, None, 1, None, confidence)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    quantile = float(_scipy_stats.t.ppf((1.0 + confidence) / 2.0, n - 1))
    return MeanCI(mean, quantile * std / math.sqrt(n), n, std, confidence)


def paired_t(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedT:
    """The paired t-test of ``a`` against ``b`` (the same seeds, in the same order)."""
    xs, ys = _check(a, "a"), _check(b, "b")
    if len(xs) != len(ys):
        raise ValueError(f"paired values need the same length, got {len(xs)} and {len(ys)}")
    difference = mean_ci([x - y for x, y in zip(xs, ys)], confidence)
    if difference.std is None or difference.std == 0.0:
        return PairedT(difference, None, None)
    t = difference.mean / (difference.std / math.sqrt(difference.n))
    p = float(2.0 * _scipy_stats.t.sf(abs(t), difference.n - 1))
    return PairedT(difference, t, p)
