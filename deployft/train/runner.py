"""`finetune(FinetuneConfig) -> Path`: fine-tune a classifier or a generator with transformers' Trainer.

Dynamic padding, length-grouped batches, evaluation every epoch, the best checkpoint kept, and a RUN
folder (docs/folders.md) written atomically. Checkpoints (every `checkpoint_steps` steps and each epoch's end)
live in a work folder beside the output (`.<name>.work/`, see `checkpoints.py`) so `resume=True` continues a
killed run on the same settings and data; it is removed once the RUN is complete. A fresh start refuses to
delete the checkpoints of an interrupted run unless `overwrite=True`.
Under `torchrun` / `accelerate launch` the same code trains with DDP and rank 0 writes the RUN.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..tasks import get_task
from .config import FinetuneConfig

__all__ = ["finetune"]

logger = logging.getLogger(__name__)


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune and write a RUN folder.

    Returns:
        The RUN folder (absolute).

    Raises:
        DataError, ModelError, OutputExistsError, UsageError: bad input (nothing is written), an output that is or
            holds the data or the base model, a resume on other settings or data, a fresh start over an
            interrupted run's checkpoints without `overwrite`.
        MissingDependencyError: a default model or data package is not installed.
    """
    from ..staging import check_output_free
    from . import checkpoints

    task = get_task(config.task)
    output = Path(config.output).expanduser().resolve()
    _check_inputs_apart(config)
    check_output_free(output, config.overwrite)
    work = checkpoints.work_folder(output)
    checkpoint = checkpoints.resume_point(work) if config.resume else None
    if checkpoint is None and not config.overwrite:
        checkpoints.refuse_to_discard(work, output)
    if checkpoint is not None:  # other flags are refused before the model and data load, where they can be
        checkpoints.check_known_settings(work, _settings(config), RESOLVED)
    from . import engine

    job = engine.prepare(config, task)
    settings = _settings(config, job)
    if checkpoint is None:
        checkpoints.start(work, settings, job.examples.record)
    else:
        checkpoints.check_same_run(work, settings, _flags(config), job.examples.record)
    trainer = engine.build_trainer(config, task, job, work / "checkpoints")
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = engine.final_metrics(trainer, task)
    if trainer.is_world_process_zero():
        _write_run(output, config, job, trainer, metrics)
        shutil.rmtree(work, ignore_errors=True)
    return output


def _check_inputs_apart(config: FinetuneConfig) -> None:
    """Refuse an --output that is, or holds, the data or a local base model: --overwrite would delete them."""
    from ..data.readers import DEFAULT_SOURCES
    from ..staging import check_apart
    from .models import is_local_model

    def path(value: str | None) -> str | None:
        return None if value is None or value in DEFAULT_SOURCES else value

    model = config.model if config.model is not None and is_local_model(config.model) else None
    check_apart(config.output, {"--data": path(config.data), "--eval-data": path(config.eval_data),
                                "--model": model})


_NO_EFFECT = {"epochs": lambda s: s["max_steps"] is not None, "eval_fraction": lambda s: s["eval_data"] is not None,
              **{name: (lambda s: not s["lora"]) for name in ("lora_r", "lora_alpha", "lora_dropout")}}
"""Settings that change nothing under the others: epochs under max_steps, the held-out share beside an eval file,
the LoRA shape without LoRA."""


RESOLVED = ("model", "data", "eval_data", "max_length", "columns")
"""The settings training resolves once the model and data are loaded; the others are known from the flags."""


def _settings(config: FinetuneConfig, job=None) -> dict[str, Any]:
    """The settings a resume must repeat, as training resolved them (`state.json`'s `settings`): the flags of
    `_flags` with the base model, data files, max length and column mapping training used (defaults filled), and
    without the settings that have no effect under the others (`_NO_EFFECT`). `--text-column text` is the same run
    as no --text-column, and `--epochs 1` beside `--max-steps` changes nothing. Without `job` (before the model and
    data load): the settings but those of `RESOLVED`."""
    record = _flags(config)
    for role in config.column_flags():
        record.pop(f"{role}_column")
    if job is not None:
        data = job.examples.record
        record.update(model=job.base_model, data=data["train"]["path"], eval_data=(data["eval"] or {}).get("path"),
                      max_length=job.max_length, columns=job.examples.columns)
    settings = {key: value for key, value in record.items() if not (key in _NO_EFFECT and _NO_EFFECT[key](record))}
    return settings if job is not None else {key: value for key, value in settings.items() if key not in RESOLVED}


def _flags(config: FinetuneConfig) -> dict[str, Any]:
    """The settings as given: every field but `resume`, `overwrite` and `checkpoint_steps` (which changes when
    checkpoints are written, not what is trained), with the output, the data files and a local model folder made
    absolute, so a resume from another directory or spelled `./data.csv` is the same run. Runs started before
    deployft recorded the resolved settings (`_settings`) are compared on these."""
    from ..data.readers import DEFAULT_SOURCES
    from .models import is_local_model

    record = dataclasses.asdict(config)
    for transient in ("resume", "overwrite", "checkpoint_steps"):
        record.pop(transient)
    record["output"] = _absolute(config.output)
    for name in ("data", "eval_data"):
        if record[name] is not None and record[name] not in DEFAULT_SOURCES:
            record[name] = _absolute(record[name])
    if config.model is not None and is_local_model(config.model):
        record["model"] = _absolute(config.model)
    return record


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _write_run(output: Path, config: FinetuneConfig, job, trainer, metrics: dict[str, float]) -> None:
    from ..manifest import library_versions, write_manifest
    from ..staging import atomic_folder
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
