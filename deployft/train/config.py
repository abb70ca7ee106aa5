"""`FinetuneConfig`: every option of `deployft finetune`; the CLI flags, a --config file and Python fill it alike."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..errors import UsageError
from ..tasks import TASKS, get_task

__all__ = ["FinetuneConfig"]


@dataclass
class FinetuneConfig:
    """Everything `deployft finetune` needs; the CLI flags and a --config file fill the same fields."""

    task: str = "classify"
    """`classify` (sequence classification) or `generate` (causal language model)."""
    model: str | None = None
    """Base model: a local folder or a hub id; None: the task's embedded default."""
    data: str | None = None
    """Training data (CSV, TSV, JSONL, Parquet, saved `datasets` folder); None: the task's default data set."""
    eval_data: str | None = None
    """Evaluation data in the same format; None: hold out `eval_fraction` of `data`."""
    eval_fraction: float = 0.1
    """Share of `data` held out for evaluation when `eval_data` is not given."""
    text_column: str | None = None
    """Column with the text (classify; or plain language modelling for generate). Default `text`."""
    label_column: str | None = None
    """Column with the label (classify). Default `label`."""
    prompt_column: str | None = None
    """Column with the prompt (generate). Default `prompt`."""
    response_column: str | None = None
    """Column with the response (generate). Default `response`."""
    encoding: str = "utf-8"
    """Text encoding of CSV, TSV and JSONL files."""
    max_length: int | None = None
    """Tokens per example; None: 128 (classify) or 256 (generate), capped at the model's limit."""
    epochs: float = 3.0
    """Training epochs."""
    batch_size: int = 16
    """Examples per batch (per process under DDP)."""
    lr: float = 5e-5
    """Peak learning rate (AdamW, linear decay)."""
    seed: int = 42
    """Seed for the data split, sampling, head initialisation and shuffling."""
    max_samples: int | None = None
    """Use at most this many examples (drawn with `seed` before the eval split)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides `epochs`; evaluates once at the end)."""
    checkpoint_steps: int = 50
    """Write a checkpoint every this many optimizer steps (and at each epoch's end): a killed run loses at most
    this many steps with `resume`. On CPU a checkpoint of either default model costs 0.7-0.8 of a step, 1.3-1.6 %
    of training at every 50 steps (benchmarks/results/checkpoint_cost_*.md); where steps are much faster than
    writing, as on a GPU, raise it."""
    output: str | None = None
    """The RUN folder to write; None: runs/<task>."""
    overwrite: bool = False
    """Replace an existing non-empty output folder, and delete the checkpoints of an interrupted run into it."""
    resume: bool = False
    """Continue from the latest complete checkpoint of an interrupted run with the same settings and data."""
    lora: bool = False
    """Train LoRA adapters (generate only), merged into the weights before saving."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        self.output = self.output or f"runs/{self.task}"
        for name in ("model", "data", "eval_data", "output"):  # accept Path objects from Python callers
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        self._check_types()
        self._check_ranges()
        if not 0 < self.eval_fraction < 1:
            raise UsageError(f"--eval-fraction must be between 0 and 1, got {self.eval_fraction}")
        if self.max_length is not None and self.max_length < 8:
            raise UsageError(f"--max-length must be at least 8 tokens, got {self.max_length}")
        if not get_task(self.task).generates and (self.prompt_column or self.response_column or self.lora):
            raise UsageError("--prompt-column, --response-column and --lora apply to --task generate only")

    def _check_types(self) -> None:
        """Whole numbers and numbers, not strings or floats (a Python caller's `max_samples=2.5`)."""
        whole = {"--batch-size": self.batch_size, "--seed": self.seed, "--max-samples": self.max_samples,
                 "--max-steps": self.max_steps, "--max-length": self.max_length, "--lora-r": self.lora_r,
                 "--lora-alpha": self.lora_alpha, "--checkpoint-steps": self.checkpoint_steps}
        for flag, value in whole.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise UsageError(f"{flag} must be a whole number, got {value!r}")
        real = {"--epochs": self.epochs, "--lr": self.lr, "--eval-fraction": self.eval_fraction,
                "--lora-dropout": self.lora_dropout}
        for flag, value in real.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise UsageError(f"{flag} must be a number, got {value!r}")

    def _check_ranges(self) -> None:
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size, "--lr": self.lr,
                    "--max-samples": self.max_samples, "--max-steps": self.max_steps, "--lora-r": self.lora_r,
                    "--lora-alpha": self.lora_alpha, "--checkpoint-steps": self.checkpoint_steps}
        for flag, value in positive.items():
            if value is not None and not value > 0:
                raise UsageError(f"{flag} must be positive, got {value}")
        if not 0 <= self.seed < 2**32:  # what numpy's and torch's seeding accept
            raise UsageError(f"--seed must be between 0 and {2**32 - 1}, got {self.seed}")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora-dropout must be at least 0 and below 1 (a probability), got {self.lora_dropout}")

    def column_flags(self) -> dict[str, str | None]:
        """The column flags by role (`text`, `label`, `prompt`, `response`)."""
        return {"text": self.text_column, "label": self.label_column,
                "prompt": self.prompt_column, "response": self.response_column}
