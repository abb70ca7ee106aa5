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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..manifest import read_json
from ..tasks import get_task
from .config import FinetuneConfig

__all__ = ["finetune"]

logger = logging.getLogger(__name__)


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune and write a RUN folder.

    Returns:
        The RUN folder (absolute).

    Raises:
        DataError, ModelError, OutputExistsError, UsageError: bad input (nothing is written).
        MissingDependencyError: a default model or data package is not installed.
    """
    from ..manifest import check_output_free

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
    if read_json(saved, UsageError) != _config_record(config):
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
    from ..manifest import atomic_folder, library_versions, write_manifest
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
