"""Generation options and the choice of the next token: greedy, or sampling with temperature / top-k / top-p.

The filters follow transformers' logits warpers in the same order (temperature, top-k, top-p), and each
row of a generation owns its own seeded `numpy.random.Generator`, so a seed reproduces a prompt's text whatever
else shares its batch, and threads never share state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .inputs import stop_strings


@dataclass
class GenerationOptions:
    """How to generate: length, sampling, seed and stop strings."""

    max_new_tokens: int = 64
    """The most tokens to generate after the prompt (at least 1)."""
    temperature: float = 0.0
    """0 decodes greedily; above 0 samples from logits divided by it."""
    top_k: int | None = None
    """Sample only among the k most likely tokens; None or 0 keeps all."""
    top_p: float | None = None
    """Sample only among the most likely tokens whose probabilities add up to top_p, in (0, 1]."""
    seed: int | None = None
    """Seed of the sampler; the same seed and prompt give the same text."""
    stop: tuple[str, ...] = ()
    """Strings that end the generation; the text returned stops before the first one (one string, a list or
    tuple of them, or None; empty strings are dropped)."""

    def __post_init__(self) -> None:
        self.stop = stop_strings(self.stop)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}; "
                             "pass --max-new-tokens 1 or more")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}; "
                             "pass --temperature 0 or a positive number")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float))
                                       or not 0 < self.top_p <= 1):
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p!r}; pass --top-p 0.9 for example")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise UsageError(f"top_k must be an integer >= 0, got {self.top_k!r}; pass --top-k 50 for example")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or self.seed < 0):
            raise UsageError(f"seed must be an integer >= 0, got {self.seed!r}; pass --seed 0 or a larger integer")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the most likely token every step."""
        return self.temperature == 0


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]
    return np.where(logits < kth, -np.inf, logits)


def _top_p(logits: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return logits
    order = np.argsort(logits, axis=-1)  # ascending, as transformers' TopPLogitsWarper
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    probs = softmax(sorted_logits)
    remove_sorted = np.cumsum(probs, axis=-1) <= (1 - p)
    remove_sorted[..., -1] = False  # always keep the most likely token
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis (shifted by the maximum first, so large logits do not overflow)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def next_tokens(logits: np.ndarray, options: GenerationOptions,
                rng: np.random.Generator | Sequence[np.random.Generator]) -> np.ndarray:
    """Pick one token per row of `logits` (batch, vocab).

    `rng`: one generator per row, each row sampled from its own (so a row's tokens do not depend on the rows
    beside it), or one generator that draws for every row in order (one row: the same draw as a list of one).
    """
    if options.greedy:
        return logits.argmax(axis=-1)
    scores = logits.astype(np.float64)
    # shifted first: the best token scores 0 at any temperature, so one near the float limit (5e-324) gives
    # -inf for the others, never inf - inf = nan
    scores = (scores - scores.max(axis=-1, keepdims=True)) / options.temperature
    if options.top_k:
        scores = _top_k(scores, options.top_k)
    if options.top_p is not None:
        scores = _top_p(scores, options.top_p)
    probs = softmax(scores)
    cumulative = np.cumsum(probs, axis=-1)
    if isinstance(rng, np.random.Generator):
        draws = rng.random((probs.shape[0], 1))
    else:
        draws = np.array([[generator.random()] for generator in rng])
    draws = draws * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(axis=-1), probs.shape[-1] - 1)
