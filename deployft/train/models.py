"""Loading the base model and tokenizer a fine-tune starts from, and LoRA adapters around it."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError, first_line

__all__ = ["apply_lora", "check_causal", "is_local_model", "load_model", "load_tokenizer", "merge_lora",
           "position_limit", "resolve_model"]

logger = logging.getLogger(__name__)

_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}
"""Models whose position ids start after the padding index, so two positions are never usable."""


def resolve_model(model: str | None, task: str) -> str:
    """A local model folder (checked for config.json) or a hub id; None means the task's default."""
    if model is None:
        from ..data.defaults import default_model

        return str(default_model(task))
    path = Path(model).expanduser()
    if is_local_model(model):
        if not path.is_dir():
            raise ModelError(f"model folder {path} not found; pass an existing folder or a hub id to --model")
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json; pass a folder written by save_pretrained "
                             "to --model")
        return str(path.resolve())
    return model


def is_local_model(model: str) -> bool:
    """Whether `--model` names a folder (it exists, or is spelled as a path) rather than a hub id."""
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


@contextlib.contextmanager
def _quiet_transformers():
    """Silence load-time chatter (newly initialised heads are expected when fine-tuning a classifier)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _hub_error(model: str, exc: Exception) -> ModelError:
    return ModelError(f"model {model!r} could not be loaded ({type(exc).__name__}: {first_line(exc)}); "
                      "pass a local folder with config.json to --model, or omit --model for the default")


def load_tokenizer(model: str, task):
    """The model's tokenizer; one without a pad token (GPT-2, Llama) pads with its end-of-sequence token.

    Raises:
        ModelError: the tokenizer has neither a pad nor an end-of-sequence token (batches cannot be padded).
    """
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise _hub_error(model, exc) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {model} has no pad token and no end-of-sequence token to pad "
                             f"{task.name} batches with; set tokenizer.pad_token and save it with "
                             "save_pretrained, or pass another --model")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def position_limit(config) -> int | None:
    """How many tokens the model can take, from its config (None when the config sets no limit)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        limit = getattr(config, name, None)
        if isinstance(limit, int) and limit > 0:
            return limit - 2 if config.model_type in _OFFSET_POSITIONS else limit
    return None


def load_model(model: str, task, labels: list[str] | None, tokenizer) -> Any:
    """The base model with the task's head (a new classification head sized to `labels`)."""
    kwargs: dict[str, Any] = {}
    if labels is not None:
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True}
    try:
        with _quiet_transformers():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise _hub_error(model, exc) from exc
    if task.generates:
        check_causal(config, model)
    try:
        with _quiet_transformers():
            loaded = task.model_class().from_pretrained(model, dtype="float32", **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error(model, exc) from exc
    if loaded.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        loaded.config.pad_token_id = tokenizer.pad_token_id
    if task.generates and loaded.generation_config is not None:
        loaded.generation_config.pad_token_id = tokenizer.pad_token_id
    return loaded


CAUSAL_EXAMPLES = "SmolLM2, Qwen2, Llama or GPT-2"


def check_causal(config, model: str) -> None:
    """Refuse a generator base that is not a causal LM: transformers would load an encoder such as BERT into its
    `...LMHeadModel` with attention both ways (it only warns, which `_quiet_transformers` hides).

    Raises:
        ModelError: an encoder-decoder, a type without a causal-LM class, or an encoder not configured as a decoder.
    """
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        found = f"an encoder-decoder ({kind})"
    elif kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        found = f"an encoder ({kind})" if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES else f"not a causal LM ({kind})"
    elif kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        found = f"an encoder ({kind})"  # BERT-like: causal only with is_decoder, else it attends both ways
    else:
        return
    raise ModelError(f"--model {model} is {found}; --task generate needs a causal LM such as {CAUSAL_EXAMPLES}: "
                     "pass one to --model, or use --task classify")


def apply_lora(model, r: int, alpha: int, dropout: float):
    """Wrap a causal LM in LoRA adapters on every linear layer (peft)."""
    from ..errors import require

    peft = require("peft")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                             task_type=peft.TaskType.CAUSAL_LM)
    wrapped = peft.get_peft_model(model, config)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    logger.info("LoRA r=%d: %d trainable parameters", r, trainable)
    return wrapped


def merge_lora(model):
    """Fold LoRA adapters into the base weights, so the RUN folder holds a plain model."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def check_max_length(max_length: int | None, default: int, config, tokenizer, model: str) -> int:
    """The tokens per example to train with; an explicit value above the model's limit is refused."""
    limit = position_limit(config)
    if max_length is not None:
        if limit is not None and max_length > limit:
            raise UsageError(f"--max-length {max_length} is above the position limit of {model} ({limit} tokens); "
                             f"pass --max-length {limit} or less")
        return max_length
    candidates = [default] + ([limit] if limit else [])
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        candidates.append(tok_limit)
    return min(candidates)
