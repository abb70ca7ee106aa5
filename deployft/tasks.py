"""The two tasks deployft knows, and everything that differs between them, in one object each.

Stages ask the task object (`get_task(manifest["task"])`) for the model classes, encoder, collator, metrics,
accuracy budget and int8 remedies, instead of comparing task strings. Importing this module imports neither
torch nor transformers (the runtime uses it): the training pieces are named here and imported when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

__all__ = ["TASKS", "Remedy", "Task", "get_task"]


FP32_PARTS = ("head", "first", "last")
"""What a dynamic int8 remedy can keep in fp32: the head with the embeddings, the first layer, the last layer
(`deployft.exporter.quantize.sensitive_nodes` finds their nodes)."""


@dataclass(frozen=True)
class Remedy:
    """One rung of an int8 / int4 remedy ladder: what the next quantization attempt changes."""

    name: str
    """How the manifest and the error message name it (`per-channel`, `blocks of 16`, ...)."""
    per_channel: bool | None = None
    """Dynamic int8: quantize weights per output channel (None: as --per-channel says)."""
    keep_fp32: tuple[str, ...] = ()
    """Dynamic int8: the parts kept in fp32, of `FP32_PARTS`."""
    smooth: bool = False
    """Dynamic int8: smooth the outlier activations into the weights first (`deployft.exporter.smooth`)."""
    block_size: int | None = None
    """Blockwise int8: weights per scale (None: the default block size)."""
    keep_head: bool = False
    """Blockwise int8: keep the LM head in fp32."""
    eight_bit_edges: bool = False
    """int4: quantize the first and last layer at 8 bits too (the LM head is, unless --head-bits 4)."""

    def __post_init__(self) -> None:
        unknown = set(self.keep_fp32) - set(FP32_PARTS)
        if unknown:
            raise ValueError(f"remedy {self.name!r} keeps unknown parts {sorted(unknown)} in fp32; known: {FP32_PARTS}")


def _resolve(dotted: str) -> Callable[..., Any]:
    module, name = dotted.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Task:
    """What one task needs from every stage."""

    name: str
    """The `--task` value: `classify` or `generate`."""
    generates: bool
    """True for a causal LM that continues prompts (KV-cache decoding), False for a classifier."""
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
    """The column mappings the task accepts, first the default, e.g. `(("text", "label"),)`."""
    input_columns: tuple[str, ...]
    """Columns `deployft predict --input` reads the text from, in order of preference."""
    validation_metric: str
    """The task metric export validation compares with PyTorch (`accuracy`, `perplexity`)."""
    budget_unit: str
    """What the accuracy budget (--max-accuracy-drop) counts, judged on its one-sided 95 % upper bound."""
    default_budget: float
    """The accuracy budget when --max-accuracy-drop is not given."""
    min_agreement: float | None
    """Classifier int8: the top-1 agreement with PyTorch export climbs the remedy ladder for when
    --min-agreement is not given (a goal, not a refusal: `deployft.exporter.select`); None: no such goal."""
    validation_rows: int
    """Rows export validates on when --validate-samples is not given (all eval rows up to this many)."""
    int8_method: str
    """How `--quantize int8` quantizes: `dynamic` (per-tensor activations) or `blockwise` (MatMulNBits)."""
    int8_remedies: tuple[Remedy, ...]
    """The int8 attempts in order: the first is the plain recipe, each next one trades size or speed for accuracy
    (a classifier rebuilds the int8 candidates the remedy changes, `deployft.exporter.select`)."""
    int4_remedies: tuple[Remedy, ...]
    """The `--quantize int4` attempts in order; empty for a task int4 is refused for."""
    encoder: str
    """`module:function` turning normalised rows into training features."""
    collator: str
    """`module:callable` building the batch collator from a tokenizer."""
    trainer_metrics: str | None
    """`module:function` for Trainer's `compute_metrics`, or None when the metrics come from the eval loss."""

    def model_class(self):
        """The transformers auto class (imports transformers)."""
        import transformers

        return getattr(transformers, self.auto_model_class)

    def encode(self, rows: list[dict[str, str]], tokenizer, max_length: int, **kwargs: Any) -> list[dict[str, Any]]:
        """Tokenize normalised rows into model features (see `deployft.train.collate`)."""
        return _resolve(self.encoder)(rows, tokenizer, max_length, **kwargs)

    def build_collator(self, tokenizer):
        """A dynamic-padding collator for this task's features."""
        return _resolve(self.collator)(tokenizer)

    def compute_metrics(self):
        """A Trainer `compute_metrics` callable, or None when the metrics come from the eval loss alone."""
        return _resolve(self.trainer_metrics) if self.trainer_metrics else None

    def default_columns(self, found: list[str]) -> tuple[str, ...]:
        """The column roles to use when no column flag is given: the first mapping whose names are in `found`."""
        return next((roles for roles in self.column_roles if set(roles) <= set(found)), self.column_roles[0])


TASKS: dict[str, Task] = {
    "classify": Task(
        name="classify", generates=False, auto_model_class="AutoModelForSequenceClassification",
        export_task="text-classification", ort_model_class="ORTModelForSequenceClassification",
        metric_names=("accuracy", "macro_f1", "eval_loss"), best_metric="accuracy", greater_is_better=True,
        default_max_length=128, column_roles=(("text", "label"),), input_columns=("text",),
        validation_metric="accuracy", budget_unit="% of predictions flipped vs PyTorch, 95 % upper bound",
        default_budget=3.0, min_agreement=0.99, validation_rows=2000, int8_method="dynamic",
        int8_remedies=(Remedy("none"), Remedy("per-channel", per_channel=True),
                       Remedy("per-channel + activations smoothed", per_channel=True, smooth=True),
                       Remedy("per-channel + activations smoothed + head and embeddings in fp32", per_channel=True,
                              smooth=True, keep_fp32=("head",)),
                       Remedy("per-channel + activations smoothed + first layer in fp32", per_channel=True,
                              smooth=True, keep_fp32=("first",)),
                       Remedy("per-channel + head, embeddings, first and last layer in fp32", per_channel=True,
                              keep_fp32=FP32_PARTS),
                       Remedy("per-channel + activations smoothed + head, embeddings, first and last layer in fp32",
                              per_channel=True, smooth=True, keep_fp32=FP32_PARTS)),
        int4_remedies=(),
        encoder="deployft.train.collate:encode_classify", collator="deployft.train.collate:classify_collator",
        trainer_metrics="deployft.metrics:classification_metrics",
    ),
    "generate": Task(
        name="generate", generates=True, auto_model_class="AutoModelForCausalLM",
        export_task="text-generation-with-past", ort_model_class="ORTModelForCausalLM",
        metric_names=("eval_loss", "perplexity"), best_metric="eval_loss", greater_is_better=False,
        default_max_length=256, column_roles=(("prompt", "response"), ("text",)), input_columns=("prompt", "text"),
        validation_metric="perplexity", budget_unit="% perplexity increase vs PyTorch, 95 % upper bound",
        default_budget=10.0, min_agreement=None, validation_rows=200,
        int8_method="blockwise",
        int8_remedies=(Remedy("none"), Remedy("blocks of 16", block_size=16),
                       Remedy("blocks of 16 + LM head in fp32", block_size=16, keep_head=True)),
        int4_remedies=(Remedy("none"), Remedy("blocks of 16", block_size=16),
                       Remedy("blocks of 16 + first and last layer at 8 bits", block_size=16, eight_bit_edges=True)),
        encoder="deployft.train.collate:encode_generate", collator="deployft.train.collate:GenerateCollator",
        trainer_metrics=None,
    ),
}
"""Every task by name."""


def get_task(name: str) -> Task:
    """The Task called `name`; raises UsageError naming the choices."""
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; pass --task {' or --task '.join(TASKS)}") from None
