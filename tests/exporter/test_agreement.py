"""The guard's confidence bounds against known values (scipy.stats.beta.ppf(0.95, k + 1, n - k) for the exact
binomial bound), closed forms, and the paired bootstrap's behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deployft.exporter.agreement import binomial_upper_bound, bootstrap_ratio_upper_bound, rows_needed

SCIPY_BETA_PPF_95 = [  # (k, n, scipy.stats.beta.ppf(0.95, k + 1, n - k)), scipy 1.17.1
    (0, 100, 0.029513049607039925), (15, 208, 0.1088740864532869), (6, 120, 0.09629631737693807),
    (10, 300, 0.05588474051455856), (1, 300, 0.01571455489158395), (66, 2000, 0.040351105335312804),
    (5, 20, 0.4555824040017489), (0, 1, 0.95), (1, 2, 0.9746794344808963),
]


@pytest.mark.parametrize(("k", "n", "expected"), SCIPY_BETA_PPF_95)
def test_exact_binomial_upper_bound_matches_scipy(k, n, expected):
    assert binomial_upper_bound(k, n) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [2, 7, 150, 2000])
def test_closed_forms_at_the_ends(n):
    assert binomial_upper_bound(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert binomial_upper_bound(n - 1, n) == pytest.approx(0.95 ** (1 / n), rel=1e-9)
    assert binomial_upper_bound(n, n) == 1.0


def test_bound_grows_with_events_and_shrinks_with_rows():
    assert [binomial_upper_bound(k, 300) for k in range(4)] == sorted(binomial_upper_bound(k, 300) for k in range(4))
    assert binomial_upper_bound(10, 3000) < binomial_upper_bound(1, 300) < binomial_upper_bound(1, 30)
    assert binomial_upper_bound(3, 100, confidence=0.99) > binomial_upper_bound(3, 100)


@pytest.mark.parametrize(("k", "n", "confidence"), [(-1, 10, 0.95), (11, 10, 0.95), (0, 0, 0.95), (1, 10, 1.0)])
def test_bad_arguments_are_refused(k, n, confidence):
    with pytest.raises(ValueError):
        binomial_upper_bound(k, n, confidence)


def test_rows_needed_is_the_first_count_that_can_pass():
    for rate in (0.02, 0.05, 0.117):
        n = rows_needed(rate)
        assert binomial_upper_bound(0, n) <= rate < binomial_upper_bound(0, n - 1)
    assert rows_needed(0.02) == 149 and rows_needed(1.0) == 1 and rows_needed(0.0) is None


def test_bootstrap_ratio_is_the_perplexity_ratio_and_its_bound_is_above_it():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 40, size=200).astype(float)
    reference = tokens * rng.uniform(1.0, 3.0, size=200)
    worse = reference + tokens * rng.normal(0.05, 0.2, size=200)
    ratio, upper = bootstrap_ratio_upper_bound(worse, reference, tokens)
    assert ratio == pytest.approx(math.exp((worse.sum() - reference.sum()) / tokens.sum()))
    assert upper > ratio
    assert bootstrap_ratio_upper_bound(worse, reference, tokens) == (ratio, upper)  # fixed seed: reproducible


def test_bootstrap_bound_narrows_with_more_sequences_and_is_exact_for_identical_models():
    rng = np.random.default_rng(2)

    def width(n):
        tokens = np.full(n, 20.0)
        reference = rng.uniform(20, 60, size=n)
        ratio, upper = bootstrap_ratio_upper_bound(reference + rng.normal(1.0, 4.0, size=n), reference, tokens)
        return upper - ratio

    assert width(1000) < width(20)
    same = rng.uniform(20, 60, size=30)
    assert bootstrap_ratio_upper_bound(same, same, np.full(30, 10.0)) == (1.0, 1.0)


def test_bootstrap_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError):
        bootstrap_ratio_upper_bound([1.0, 2.0], [1.0], [3.0, 3.0])
    with pytest.raises(ValueError):
        bootstrap_ratio_upper_bound([1.0], [1.0], [0.0])
