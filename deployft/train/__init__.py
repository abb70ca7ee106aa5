"""Stage 1, `finetune(FinetuneConfig) -> RUN`: fine-tune a classifier or a generator with transformers' Trainer.

    config.py    FinetuneConfig, the one source of the stage's defaults (CLI, Python, config files)
    runner.py    finetune(): checkpoints, resume, the RUN folder written atomically
    engine.py    data + model prepared for a task, the configured Trainer, the final metrics
    models.py    base model and tokenizer loading, LoRA
    collate.py   rows -> features (through `deployft.prompts`), dynamic padding

Importing this package does not import torch; `finetune` does.
"""

from __future__ import annotations

from .config import FinetuneConfig
from .runner import finetune

__all__ = ["FinetuneConfig", "finetune"]
