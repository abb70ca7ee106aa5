"""The task metrics, one definition each, computed with numpy alone (no torch, no scikit-learn).

Training (the RUN's `metrics`), export validation (the BUNDLE's `validation`) and bench (the REPORT's
accuracy) all call these functions, so one name means one number (docs/folders.md, "Metrics").

- accuracy: share of rows whose top-1 class equals the label.
- macro-F1: the unweighted mean of per-class F1 over every class that occurs in the labels or the
  predictions (a class absent from both is skipped, as scikit-learn's `f1_score(average="macro")` does).
- perplexity: exp of the mean negative log-likelihood per target token, teacher-forced, over the whole set
  (token-weighted, not a mean of per-batch means). Target tokens are the response and its end token for
  prompt/response data, every token after the first for plain text; prompt tokens and padding never count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["accuracy_and_macro_f1", "classification_metrics", "perplexity", "token_logprobs"]

MAX_LOG_PERPLEXITY = 50.0
"""A diverged model reports exp(50), a large number, rather than inf."""


def accuracy_and_macro_f1(predictions, references) -> dict[str, float]:
    """Accuracy and macro-F1 (see the module docstring) of predicted class ids against gold ids."""
    pred, ref = np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1)
    if not len(ref):
        return {"accuracy": 0.0, "macro_f1": 0.0}
    f1s = []
    for c in np.union1d(pred, ref):
        tp = float(np.sum((pred == c) & (ref == c)))
        fp, fn = float(np.sum((pred == c) & (ref != c))), float(np.sum((pred != c) & (ref == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == ref)), "macro_f1": float(np.mean(f1s))}


def classification_metrics(eval_pred: Any) -> dict[str, float]:
    """Trainer `compute_metrics` for classification: accuracy and macro-F1 from the logits."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1), labels)


def token_logprobs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1, from logits (batch, length, vocab): shape (batch, length - 1)."""
    scores = logits[:, :-1].astype(np.float64)
    scores -= scores.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(scores).sum(axis=-1))
    chosen = np.take_along_axis(scores, ids[:, 1:, None].astype(np.int64), axis=-1)[..., 0]
    return chosen - log_norm


def perplexity(logprobs, targets) -> float:
    """Perplexity (see the module docstring) from per-token log-probabilities and a 0/1 target mask.

    Args:
        logprobs: log p of each predicted token, any shape (e.g. `token_logprobs(...)` of several batches,
            concatenated or flattened).
        targets: same shape; 1 where the token is a target, 0 for prompt and padding positions.

    Returns:
        The perplexity; NaN when no token is a target.
    """
    logprobs = np.concatenate([np.ravel(x) for x in logprobs]) if isinstance(logprobs, list) else np.ravel(logprobs)
    targets = np.concatenate([np.ravel(x) for x in targets]) if isinstance(targets, list) else np.ravel(targets)
    count = float(targets.sum())
    if not count:
        return float("nan")
    nll = -float((logprobs * targets).sum()) / count
    return math.exp(min(nll, MAX_LOG_PERPLEXITY))
