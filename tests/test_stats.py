"""Mean ± Student-t interval and the paired t-test (pml_anchors.app.stats), against hand-computed values and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from pml_anchors.app.stats import mean_ci, paired_t


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    # mean 2, s = 1, t_{0.975, 2} = 4.302652729911275 (tables), half-width t * s / sqrt(3)
    assert ci.mean == 2.0 and ci.std == pytest.approx(1.0) and ci.n == 3
    assert ci.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert ci.text() == "2.0000 ± 2.4841"
    assert mean_ci([0.5, 0.7], confidence=0.9).half_width == pytest.approx(
        6.313751514675 * math.sqrt(0.02) / math.sqrt(2)
    )


def test_mean_ci_matches_scipy():
    values = [0.81, 0.79, 0.84, 0.80, 0.83]
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=scipy_stats.sem(values))
    ci = mean_ci(values)
    assert (ci.mean - ci.half_width, ci.mean + ci.half_width) == (pytest.approx(low), pytest.approx(high))


def test_one_value_has_no_interval():
    ci = mean_ci([0.9])
    assert ci.half_width is None and ci.std is None and ci.text() == "0.9000"
    assert ci.as_dict() == {"mean": 0.9, "ci": None, "n": 1, "std": None, "confidence": 0.95}


def test_paired_t_by_hand_and_against_scipy():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]
    test = paired_t(a, b)
    # differences 1, 2, 2: mean 5/3, s = sqrt(1/3), t = (5/3) / (s / sqrt 3) = 5; df 2: p = 1 - t / sqrt(t^2 + 2)
    assert test.difference.mean == pytest.approx(5 / 3) and test.t == pytest.approx(5.0)
    assert test.p == pytest.approx(1 - 5 / math.sqrt(27))
    reference = scipy_stats.ttest_rel(a, b)
    assert (test.t, test.p) == (pytest.approx(reference.statistic), pytest.approx(reference.pvalue))


def test_paired_t_undefined_cases():
    assert paired_t([0.5, 0.6], [0.4, 0.5]).p is None  # the differences are all equal: no variance
    assert paired_t([0.5], [0.4]).t is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mean_ci([]), "values is empty"),
        (lambda: mean_ci([1.0, float("nan")]), "values must be finite numbers"),
        (lambda: mean_ci([1.0, "2"]), "values must be finite numbers"),
        (lambda: mean_ci([1.0, 2.0], confidence=95), r"confidence must be a number in \(0, 1\)"),
        (lambda: paired_t([1.0, 2.0], [1.0]), "the same length"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
