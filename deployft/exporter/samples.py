"""The rows validation and calibration feed to the models, read from the RUN's own data and encoded as training
encoded them (the task's encoder, `deployft.prompts` for prompts).

Validation uses the RUN's eval split (its training rows, with a warning and a note in the manifest, when it has
none); int8-static calibration its train split. A plain model folder (no RUN, so no data) and a RUN whose data is
gone are validated on seeded random token sequences: the parity numbers (max |Δlogit|, top-1 agreement) still
hold, the task metric is then absent. Calibration has no such fallback: ranges calibrated on random tokens
would be wrong, so it needs the RUN's data.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, UsageError
from ..prompts import PromptFormat, TokenizerAdapter, example_ids, prompt_ids
from ..tokens import pad
from .source import Source

if TYPE_CHECKING:
    from .state import ExportJob

logger = logging.getLogger(__name__)

RANDOM_LENGTH = 24
GREEDY_PROMPTS = 4
"""Prompts whose greedy continuation is compared token for token."""


@dataclass
class Samples:
    """Encoded examples: what validation and calibration feed to the models."""

    sequences: list[list[int]]
    """Token ids of each example, exactly as training encoded it (truncated to the source's max_length)."""
    labels: list[int] | None = None
    """classify: gold class ids; None without data."""
    targets: list[list[int]] = field(default_factory=list)
    """generate: 0/1 per token of each sequence, 1 where training computed the loss (what perplexity counts)."""
    prompts: list[list[int]] = field(default_factory=list)
    """generate: prompt ids (as the runtime formats and truncates them) whose greedy continuation is compared."""
    origin: str = "eval data"
    """Where the examples came from, in words, recorded in the manifest."""
    source: str = "eval"
    """`eval`, `train` (a RUN without an eval split) or `random` (no data): the manifest's `guard.rows_source`."""


def validation_samples(source: Source, tokenizer, limit: int) -> Samples:
    """Up to `limit` held-out examples from the RUN's eval data (random tokens for a plain folder or gone data)."""
    if not source.is_run:
        return _random_samples(tokenizer, limit, "random tokens (a plain model folder has no data)")
    from ..data import load_run_examples

    try:
        rows, origin, kind = load_run_examples(source.path, "eval", limit), "eval data", "eval"
        if not rows:
            logger.warning("RUN %s has no eval split: validating on its TRAINING rows, which the model has "
                           "seen; the agreement measured there overstates held-out agreement", source.path)
            rows, origin, kind = (load_run_examples(source.path, "train", limit),
                                  "train data (the RUN has no eval split)", "train")
    except DataError as exc:
        logger.warning("validating on random tokens: %s", exc)
        return _random_samples(tokenizer, limit, f"random tokens (RUN data unavailable: {exc})")
    samples = encode(source, tokenizer, rows, origin)
    samples.source = kind
    return samples


def calibration_samples(source: Source, tokenizer, limit: int) -> Samples:
    """`limit` examples of the RUN's training data for int8-static calibration.

    Raises:
        UsageError: the source is a plain model folder (no training data to calibrate on).
        DataError: the RUN's data is gone or changed.
    """
    if not source.is_run:
        raise UsageError(f"--quantize int8-static calibrates on a RUN's training data and {source.path} is not a RUN; "
                         "use --quantize int8, or export the RUN written by deployft finetune")
    from ..data import load_run_examples

    try:
        rows = load_run_examples(source.path, "train", limit)
    except DataError as exc:
        raise DataError(f"--quantize int8-static needs the RUN's training data: {exc}") from exc
    samples = encode(source, tokenizer, rows, "train data")
    samples.source = "train"
    return samples


def encode(source: Source, tokenizer, rows: list[dict[str, Any]], origin: str) -> Samples:
    """Tokenize normalised rows (see docs/folders.md) exactly as training did: the task's encoder for classifiers,
    `deployft.prompts.example_ids` (what the generator's encoder calls) for generators."""
    task = source.spec
    if not task.generates:
        label2id = {name: i for i, name in enumerate(source.labels or [])}
        known = bool(label2id) and all(r.get("label") in label2id for r in rows)
        features = task.encode(rows, tokenizer, source.max_length,
                               label2id=label2id if known else {r["label"]: 0 for r in rows})
        return Samples([f["input_ids"] for f in features], [f["labels"] for f in features] if known else None,
                       origin=origin)
    fmt, encoder = PromptFormat.from_manifest(source.prompt_format), TokenizerAdapter(tokenizer)
    pairs = [pair for pair in (example_ids(r, fmt, encoder, source.max_length) for r in rows) if len(pair[0]) >= 2]
    prompts = [prompt_ids(r["prompt"], fmt, encoder, source.max_length) for r in rows if "prompt" in r]
    return Samples([ids for ids, _ in pairs], targets=[targets for _, targets in pairs],
                   prompts=prompts[:GREEDY_PROMPTS], origin=origin)


def _random_samples(tokenizer, limit: int, origin: str) -> Samples:
    rng = random.Random(0)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    sequences = [[rng.choice(vocab) for _ in range(rng.randint(4, RANDOM_LENGTH))] for _ in range(limit)]
    prompts = [s[: max(2, len(s) // 2)] for s in sequences[:GREEDY_PROMPTS]]
    return Samples(sequences, None, [[1] * len(s) for s in sequences], prompts, origin, "random")


def feeds(samples: Samples, session_inputs: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """One model input dict per example (batch 1), as int8-static calibration reads them."""
    out = []
    for seq in samples.sequences:
        ids = np.array([seq], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
                "position_ids": np.arange(len(seq), dtype=np.int64)[None]}
        for name, meta in session_inputs.items():
            if name.startswith("past_key_values."):
                feed[name] = np.zeros((1, meta.shape[1], 0, meta.shape[3]), dtype=np.float32)
        out.append({k: v for k, v in feed.items() if k in session_inputs})
    return out


def padded_feeds(samples: Samples, pad_id: int, session_inputs: dict[str, Any],
                 size: int) -> list[dict[str, np.ndarray]]:
    """The examples in their order, `size` to a batch right-padded with `pad_id`, as model input dicts: the batches
    a deployed classifier runs (activation smoothing measures its ranges on them, padded positions included)."""
    out = []
    for start in range(0, len(samples.sequences), size):
        ids, mask = pad(samples.sequences[start:start + size], pad_id)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
                "position_ids": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()}
        out.append({k: v for k, v in feed.items() if k in session_inputs})
    return out


def calibration_batches(job: ExportJob, model: Path | None = None, batch_size: int = 0) -> list[dict]:
    """The calibration rows as model feeds of `model` (the plain export by default): its input names and types;
    one row per feed, or `batch_size` rows to a batch, right-padded with the pad id."""
    from ..runtime.session import SessionOptions, create_session

    session, _ = create_session(model or job.plain, SessionOptions())
    inputs = {i.name: i for i in session.get_inputs()}
    if batch_size:
        return padded_feeds(job.calibration, job.reference.special.pad, inputs, batch_size)
    return feeds(job.calibration, inputs)
