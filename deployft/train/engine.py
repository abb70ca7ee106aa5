"""The pieces `finetune` assembles: data and model prepared for a task, and the configured Trainer."""

from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """What one fine-tune works on, prepared before any training starts."""

    base_model: str
    tokenizer: Any
    model: Any
    examples: Any
    train_features: list[dict[str, Any]]
    eval_features: list[dict[str, Any]]
    max_length: int
    prompt_format: dict[str, str] | None


def prepare(config, task) -> Job:
    """Load data, tokenizer and model, check their fit, and tokenize. Raises the user-input errors."""
    from transformers import set_seed

    from ..data import load_examples
    from ..prompts import PromptFormat
    from .models import apply_lora, check_max_length, load_model, load_tokenizer, resolve_model

    # the data first: its errors come before the default generator's one-time conversion (tens of seconds)
    examples = load_examples(task.name, config.data, config.eval_data, columns=config.column_flags(),
                             eval_fraction=config.eval_fraction, seed=config.seed,
                             max_samples=config.max_samples, encoding=config.encoding)
    base_model = resolve_model(config.model, task.name)
    tokenizer = load_tokenizer(base_model, task)
    set_seed(config.seed)
    model = load_model(base_model, task, examples.labels, tokenizer)
    max_length = check_max_length(config.max_length, task.default_max_length, model.config, tokenizer,
                                  config.model or base_model)
    prompt_format = (PromptFormat.for_columns(examples.columns, bool(getattr(tokenizer, "chat_template", None)))
                     .to_manifest() if task.generates else None)
    kwargs = {"input_names": set(inspect.signature(model.forward).parameters), "prompt_format": prompt_format,
              "label2id": {label: i for i, label in enumerate(examples.labels or [])}}
    train = task.encode(examples.train, tokenizer, max_length, split="training", **kwargs)
    evals = task.encode(examples.eval, tokenizer, max_length, split="eval", **kwargs)
    if config.lora:
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout)
    return Job(base_model, tokenizer, model, examples, train, evals, max_length, prompt_format)


def training_arguments(config, task, checkpoints: Path, **overrides: Any):
    """Trainer arguments: dynamic padding and length grouping, eval and save each epoch (or once at
    `max_steps`), best kept; the saves every `checkpoint_steps` come from `checkpoints.checkpoint_callback`."""
    import torch
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    schedule = ({"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": config.max_steps,
                 "save_steps": config.max_steps, "max_steps": config.max_steps}
                if config.max_steps else {"eval_strategy": "epoch", "save_strategy": "epoch"})
    args = dict(
        output_dir=str(checkpoints), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, learning_rate=config.lr, weight_decay=0.01,
        seed=config.seed, data_seed=config.seed, group_by_length=True, remove_unused_columns=False,
        load_best_model_at_end=True, metric_for_best_model=task.best_metric,
        greater_is_better=task.greater_is_better, save_total_limit=2, logging_strategy="epoch",
        prediction_loss_only=task.compute_metrics() is None, report_to=[], push_to_hub=False,
        use_cpu=cpu, ddp_backend="gloo" if cpu and distributed else None, dataloader_num_workers=0,
        save_only_model=False, disable_tqdm=False, log_level="warning", ddp_find_unused_parameters=False,
        **schedule,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def build_trainer(config, task, job: Job, checkpoints: Path, **overrides: Any):
    """A transformers Trainer over the job's features with the task's collator and metrics."""
    import warnings

    from .checkpoints import checkpoint_callback

    # Trainer warns on every checkpoint rotation on filesystems with coarse mtimes; its fallback is fine.
    warnings.filterwarnings("ignore", message="mtime may not be reliable")
    return _seeded_trainer_class()(
        model=job.model, args=training_arguments(config, task, checkpoints, **overrides),
        train_dataset=job.train_features, eval_dataset=job.eval_features,
        data_collator=task.build_collator(job.tokenizer), processing_class=job.tokenizer,
        compute_metrics=task.compute_metrics(), callbacks=[checkpoint_callback(config.checkpoint_steps)],
    )


def _seeded_trainer_class():
    """Trainer whose batch order is a function of the seed and the epoch alone.

    Trainer draws each epoch's length-grouped order from torch's global generator, so a run resumed in the
    middle of a later epoch draws it from another state and trains on other batches than the run it continues.
    A generator seeded with `data_seed + epoch` at each epoch (accelerate calls `set_epoch`) gives a resumed
    run the order the uninterrupted one had, and every DDP rank the same order.
    """
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededSampler(LengthGroupedSampler):
        def __init__(self, seed: int, *args: Any, **kwargs: Any):
            super().__init__(*args, generator=torch.Generator(), **kwargs)
            self.seed = seed
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:
            self.generator.manual_seed(self.seed + epoch)

    class SeededTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            if not self.args.group_by_length:  # a caller's override (benchmarks/finetune_throughput.py)
                return super()._get_train_sampler(train_dataset)
            dataset = self.train_dataset if train_dataset is None else train_dataset
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededSampler(seed, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                      dataset=dataset, model_input_name=self.processing_class.model_input_names[0])

    return SeededTrainer


def final_metrics(trainer, task) -> dict[str, float]:
    """Evaluate the kept (best) model: `accuracy`, `macro_f1`, `eval_loss` or `eval_loss`, `perplexity`.

    Perplexity is `deployft.metrics.perplexity` over the eval set, the definition export validation and
    bench use too (token-weighted over the response tokens), not exp of Trainer's mean of batch losses.
    """
    raw = trainer.evaluate()
    metrics = {name: float(raw[f"eval_{name}"]) for name in task.metric_names if f"eval_{name}" in raw}
    metrics["eval_loss"] = float(raw["eval_loss"])
    if "perplexity" in task.metric_names:
        metrics["perplexity"] = eval_perplexity(trainer)
    metrics["eval_samples"] = len(trainer.eval_dataset)
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


def eval_perplexity(trainer) -> float:
    """Perplexity of the trainer's model on its eval set: log-probabilities from torch, the metric from numpy."""
    import torch

    from ..metrics import perplexity
    from .collate import IGNORE_INDEX

    model, logprobs, targets = trainer.model.eval(), [], []
    with torch.inference_mode():
        for batch in trainer.get_eval_dataloader():
            ids, labels = batch["input_ids"].to(model.device), batch["labels"].to(model.device)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(model.device)).logits
            scores = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            logprobs.append(scores.gather(-1, ids[:, 1:, None])[..., 0].cpu().numpy())
            targets.append((labels[:, 1:] != IGNORE_INDEX).cpu().numpy())
    return perplexity(logprobs, targets)
