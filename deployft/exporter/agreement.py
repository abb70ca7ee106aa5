"""Confidence bounds for the accuracy guard, with numpy and the standard library alone (no scipy, no torch).

- `binomial_upper_bound`: the exact (Clopper-Pearson) one-sided upper bound of a rate from `k` events in `n`
  independent trials: the largest rate under which seeing `k` or fewer events still has probability >= 1 - confidence.
  Export counts a flipped top-1 prediction as an event, so `1 - bound` is the one-sided lower bound of agreement.
- `rows_needed`: how many trials a rate bound needs before zero events can bring it under a limit.
- `bootstrap_ratio_upper_bound`: a paired bootstrap (fixed seed) of the perplexity ratio of two models scored on the
  same sequences, resampling whole sequences, so a few long or odd sequences widen the interval as they should.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CONFIDENCE", "binomial_upper_bound", "bootstrap_ratio_upper_bound", "rows_needed"]

CONFIDENCE = 0.95
"""One-sided confidence of every bound the guard records."""
RESAMPLES = 2000
"""Bootstrap resamples of `bootstrap_ratio_upper_bound` (drawn with a fixed seed: the same files give the same
bound)."""


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact for the n of a validation set)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def binomial_upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """The exact one-sided upper confidence bound of a rate, given `k` events in `n` trials.

    Args:
        k: events seen (e.g. flipped predictions), 0 <= k <= n.
        n: trials (rows), n >= 1.
        confidence: one-sided confidence, in (0, 1).

    Returns:
        The rate p with P(X <= k | n, p) = 1 - confidence (1.0 when k == n), found by bisection.

    Raises:
        ValueError: k, n or confidence out of range.
    """
    if n < 1 or not 0 <= k <= n or not 0.0 < confidence < 1.0:
        raise ValueError(f"need 0 <= k <= n, n >= 1 and 0 < confidence < 1; got k={k}, n={n}, {confidence=}")
    if k == n:
        return 1.0
    alpha = 1.0 - confidence
    low, high = k / n, 1.0
    for _ in range(100):  # the CDF falls as p grows; 100 halvings reach float precision
        middle = (low + high) / 2
        if _binomial_cdf(k, n, middle) > alpha:
            low = middle
        else:
            high = middle
    return high


def rows_needed(max_rate: float, confidence: float = CONFIDENCE) -> int | None:
    """The fewest trials for which zero events bound the rate at or under `max_rate`; None when no count can.

    With zero events the bound is 1 - (1 - confidence) ** (1 / n), so n >= log(1 - confidence) / log(1 - max_rate).
    """
    if max_rate >= 1.0:
        return 1
    if max_rate <= 0.0:
        return None
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log1p(-max_rate)))
    while binomial_upper_bound(0, n, confidence) > max_rate:  # guard the float rounding of the closed form
        n += 1
    return n


def bootstrap_ratio_upper_bound(nll: np.ndarray, nll_reference: np.ndarray, tokens: np.ndarray,
                                confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                                seed: int = 0) -> tuple[float, float]:
    """Perplexity ratio of a model over a reference on the same sequences, and its paired bootstrap upper bound.

    Args:
        nll: the model's summed negative log-likelihood of each sequence's target tokens.
        nll_reference: the reference's, on the same sequences in the same order.
        tokens: target tokens per sequence.
        confidence: one-sided confidence of the bound (the percentile of the resampled ratios).
        resamples: bootstrap resamples of whole sequences.
        seed: the resampling seed (fixed, so the same files give the same bound).

    Returns:
        `(ratio, upper)`: exp((sum nll - sum nll_reference) / sum tokens), the perplexity ratio, and the
        `confidence` percentile of the same ratio over sequences resampled with replacement.

    Raises:
        ValueError: the arrays differ in length, are empty, or count no target token.
    """
    nll, ref, tokens = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (nll, nll_reference, tokens))
    if not (len(nll) == len(ref) == len(tokens)) or not len(nll) or tokens.sum() <= 0:
        raise ValueError("need one nll, reference nll and token count per sequence, and at least one target token")
    diff = nll - ref
    ratio = math.exp(diff.sum() / tokens.sum())
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    counts = tokens[picks].sum(axis=1)
    resampled = np.exp(diff[picks].sum(axis=1) / np.maximum(counts, 1.0))
    return ratio, float(np.quantile(resampled, confidence))
