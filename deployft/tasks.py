"""The two tasks deployft knows, and everything that differs between them, in one object each.

Stages ask the task object (`get_task("classify")`) for the model class, collator, metrics and the
Optimum names, instead of branching on the task string. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

__all__ = ["TASKS", "Task", "get_task"]


@dataclass(frozen=True)
class Task:
    """What one task needs from every stage."""

    name: str
    """The `--task` value: `classify` or `generate`."""
    auto_model_class: str
    """The transformers auto class that loads the model (`AutoModelForSequenceClassification`, ...)."""
    export_task: str
    """Optimum's export task name (`text-classification`, `text-generation-with-past`)."""
    ort_model_class: str
    """Optimum ONNX Runtime class that loads the BUNDLE (`ORTModelForSequenceClassification`, ...)."""
    metric_names: tuple[str, ...]
    """The metrics finetune reports in `eval.json` and the RUN manifest."""
    best_metric: str
    """The metric that picks the best checkpoint (Trainer's `metric_for_best_model`)."""
    greater_is_better: bool
    """Whether a larger `best_metric` is better."""
    default_max_length: int
    """Tokens per example when `--max-length` is not given (capped at the model's limit)."""
    column_roles: tuple[tuple[str, ...], ...]
    """The column mappings the task accepts, e.g. `(("text", "label"),)`."""
    _encode: Callable[..., list[dict[str, Any]]]
    _collator: Callable[[Any], Any]
    _metrics: Callable[[Any], dict[str, float]] | None

    def model_class(self):
        """The transformers auto class (imports transformers)."""
        import transformers

        return getattr(transformers, self.auto_model_class)

    def encode(self, rows: list[dict[str, str]], tokenizer, max_length: int, **kwargs: Any) -> list[dict[str, Any]]:
        """Tokenize normalised rows into model features (see `deployft.collate`)."""
        return self._encode(rows, tokenizer, max_length, **kwargs)

    def build_collator(self, tokenizer):
        """A dynamic-padding collator for this task's features."""
        return self._collator(tokenizer)

    def compute_metrics(self):
        """A Trainer `compute_metrics` callable, or None when the metrics come from the eval loss alone."""
        return self._metrics


def _build_tasks() -> dict[str, Task]:
    from . import collate, metrics

    classify = Task(
        name="classify", auto_model_class="AutoModelForSequenceClassification", export_task="text-classification",
        ort_model_class="ORTModelForSequenceClassification", metric_names=("accuracy", "macro_f1", "eval_loss"),
        best_metric="accuracy", greater_is_better=True, default_max_length=128,
        column_roles=(("text", "label"),), _encode=collate.encode_classify,
        _collator=collate.classify_collator, _metrics=metrics.classification_metrics,
    )
    generate = Task(
        name="generate", auto_model_class="AutoModelForCausalLM", export_task="text-generation-with-past",
        ort_model_class="ORTModelForCausalLM", metric_names=("eval_loss", "perplexity"),
        best_metric="eval_loss", greater_is_better=False, default_max_length=256,
        column_roles=(("prompt", "response"), ("text",)), _encode=collate.encode_generate,
        _collator=collate.GenerateCollator, _metrics=None,
    )
    return {"classify": classify, "generate": generate}


TASKS = _build_tasks()
"""Every task by name."""


def get_task(name: str) -> Task:
    """The Task called `name`; raises UsageError naming the choices."""
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; pass --task classify or --task generate") from None
