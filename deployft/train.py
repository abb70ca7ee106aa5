"""`finetune(FinetuneConfig) -> Path`: fine-tune a classifier or a generator with transformers' Trainer.

Dynamic padding, length-grouped batches, evaluation every epoch, the best checkpoint kept, and a RUN
folder (docs/folders.md) written atomically. Checkpoints live in a work folder beside the output
(`.<name>.work/`) so `resume=True` continues a killed run; it is removed once the RUN is complete.
Under `torchrun` / `accelerate launch` the same code trains with DDP and rank 0 writes the RUN.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UsageError
from .tasks import TASKS, get_task

__all__ = ["FinetuneConfig", "finetune"]

logger = logging.getLogger(__name__)


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
    output: str | None = None
    """The RUN folder to write; None: runs/<task>."""
    overwrite: bool = False
    """Replace an existing non-empty output folder."""
    resume: bool = False
    """Continue from the latest checkpoint of an interrupted run with the same output."""
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
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size, "--lr": self.lr,
                    "--max-samples": self.max_samples, "--max-steps": self.max_steps, "--lora-r": self.lora_r}
        for flag, value in positive.items():
            if value is not None and not value > 0:
                raise UsageError(f"{flag} must be positive, got {value}")
        if not 0 < self.eval_fraction < 1:
            raise UsageError(f"--eval-fraction must be between 0 and 1, got {self.eval_fraction}")
        if self.max_length is not None and self.max_length < 8:
            raise UsageError(f"--max-length must be at least 8 tokens, got {self.max_length}")
        if self.task == "classify" and (self.prompt_column or self.response_column or self.lora):
            raise UsageError("--prompt-column, --response-column and --lora apply to --task generate only")

    def column_flags(self) -> dict[str, str | None]:
        """The column flags by role (`text`, `label`, `prompt`, `response`)."""
        return {"text": self.text_column, "label": self.label_column,
                "prompt": self.prompt_column, "response": self.response_column}


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune and write a RUN folder.

    Returns:
        The RUN folder (absolute).

    Raises:
        DataError, ModelError, OutputExistsError, UsageError: bad input (nothing is written).
        MissingDependencyError: a default model or data package is not installed.
    """
    from .manifest import check_output_free

    task = get_task(config.task)
    output = Path(config.output).expanduser().resolve()
    check_output_free(output, config.overwrite)
    work = output.parent / f".{output.name}.work"
    checkpoint = _find_checkpoint(work, config) if config.resume else None
    from . import engine

    job = engine.prepare(config, task)
    if checkpoint is None:
        _start_work(work, config)
    trainer = engine.build_trainer(config, task, job, work / "checkpoints")
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = engine.final_metrics(trainer, task)
    if trainer.is_world_process_zero():
        _write_run(output, config, job, trainer, metrics)
        shutil.rmtree(work, ignore_errors=True)
    return output


def _config_record(config: FinetuneConfig) -> dict[str, Any]:
    record = dataclasses.asdict(config)
    for transient in ("resume", "overwrite"):
        record.pop(transient)
    record["output"] = str(Path(config.output).expanduser().resolve())
    return record


def _find_checkpoint(work: Path, config: FinetuneConfig) -> str:
    """The latest checkpoint of an interrupted run with the same settings."""
    from transformers.trainer_utils import get_last_checkpoint

    saved = work / "config.json"
    last = get_last_checkpoint(str(work / "checkpoints")) if (work / "checkpoints").is_dir() else None
    if last is None or not saved.is_file():
        raise UsageError(f"--resume found no checkpoint in {work}; run again without --resume")
    if json.loads(saved.read_text(encoding="utf-8")) != _config_record(config):
        raise UsageError(f"--resume needs the same settings as the interrupted run (see {saved}); "
                         "repeat its flags or run without --resume")
    return last


def _start_work(work: Path, config: FinetuneConfig) -> None:
    """A fresh work folder for checkpoints (a stale one from an earlier crash is cleared)."""
    if _is_main_process():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "config.json").write_text(json.dumps(_config_record(config), indent=2), encoding="utf-8")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _write_run(output: Path, config: FinetuneConfig, job, trainer, metrics: dict[str, float]) -> None:
    from .manifest import atomic_folder, library_versions, write_manifest
    from .models import merge_lora

    model = merge_lora(trainer.model)
    with atomic_folder(output, overwrite=config.overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        job.tokenizer.save_pretrained(staging)
        (staging / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        write_manifest(staging, {
            "kind": "run", "task": config.task, "base_model": job.base_model,
            "model_type": model.config.model_type, "labels": job.examples.labels,
            "max_length": job.max_length, "prompt_format": job.prompt_format,
            "columns": job.examples.columns, "data": job.examples.record,
            "training": {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                         "seed": config.seed, "steps": trainer.state.global_step, "max_steps": config.max_steps,
                         "world_size": trainer.args.world_size, "device": trainer.args.device.type,
                         "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}
                         if config.lora else None},
            "metrics": metrics, "versions": library_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
