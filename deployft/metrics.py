"""Evaluation metrics, computed with numpy alone (no scikit-learn needed)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["accuracy_and_macro_f1", "classification_metrics", "perplexity"]


def accuracy_and_macro_f1(predictions, references, num_labels: int | None = None) -> dict[str, float]:
    """Accuracy and the unweighted mean of per-class F1 over every class seen in either array."""
    import numpy as np

    pred, ref = np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1)
    classes = range(num_labels) if num_labels else np.union1d(pred, ref)
    f1s = []
    for c in classes:
        tp = float(np.sum((pred == c) & (ref == c)))
        fp, fn = float(np.sum((pred == c) & (ref != c))), float(np.sum((pred != c) & (ref == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    accuracy = float(np.mean(pred == ref)) if len(ref) else 0.0
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


def classification_metrics(eval_pred: Any) -> dict[str, float]:
    """Trainer `compute_metrics` for classification: accuracy and macro-F1 from the logits."""
    import numpy as np

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1), labels, num_labels=logits.shape[-1])


def perplexity(eval_loss: float) -> float:
    """exp(mean token cross-entropy), capped so a diverged model reports a large number, not inf."""
    return math.exp(min(eval_loss, 50.0))
