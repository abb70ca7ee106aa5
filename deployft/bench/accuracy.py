"""Accuracy beside speed: each variant's task metric on the RUN's eval split.

The parent process turns the eval rows into token-id arrays once (`eval_arrays`), so every variant
scores exactly the same inputs; a worker scores its own variant (`classify_metrics`, `generate_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import first_line
from ..metrics import accuracy_and_macro_f1, perplexity, token_logprobs
from ..prompts import PromptFormat, TokenizerAdapter, example_ids, prompt_ids
from ..tasks import get_task
from ..tokens import pad

AGREEMENT_PROMPTS = 16
"""Eval prompts each generator variant continues greedily for the token-agreement check."""
AGREEMENT_TOKENS = 16
"""Tokens generated per agreement prompt."""


def eval_arrays(rows: list[dict], manifest: dict, tokenizer) -> dict[str, np.ndarray]:
    """Padded token-id arrays of the eval rows for the task's metric (`eval_*` keys of the inputs file).

    Generator rows are encoded as training encoded them (`deployft.prompts.example_ids`), and the targets are
    the tokens training learnt from, so the perplexity here is the RUN's and the bundle's perplexity.
    """
    max_length = int(manifest.get("max_length") or 512)
    pad_id = TokenizerAdapter(tokenizer).ids.pad
    if not get_task(manifest["task"]).generates:
        labels = list(manifest["labels"])
        ids = [tokenizer(r["text"], truncation=True, max_length=max_length)["input_ids"] for r in rows]
        padded, mask = pad(ids, pad_id)
        return {"eval_ids": padded, "eval_mask": mask,
                "eval_labels": np.array([labels.index(str(r["label"])) for r in rows], dtype=np.int64)}
    fmt, encoder = PromptFormat.from_manifest(manifest.get("prompt_format")), TokenizerAdapter(tokenizer)
    pairs = [example_ids(row, fmt, encoder, max_length) for row in rows]
    prompts = [prompt_ids(row["prompt"], fmt, encoder, max_length) if "prompt" in row
               else ids[:max(1, len(ids) // 2)] for row, (ids, _) in zip(rows, pairs)]
    ids, mask = pad([p[0] for p in pairs], pad_id)
    targets, _ = pad([p[1] for p in pairs], 0)
    agree_ids, agree_mask = pad(prompts[:AGREEMENT_PROMPTS], pad_id)
    return {"eval_ids": ids, "eval_mask": mask, "eval_targets": targets,
            "agree_ids": agree_ids, "agree_mask": agree_mask}


def _batches(ids: np.ndarray, mask: np.ndarray, size: int):
    for start in range(0, len(ids), size):
        block_mask = mask[start:start + size]
        width = max(int(block_mask.sum(axis=1).max()), 1)
        yield start, ids[start:start + size, :width], block_mask[:, :width]


def classify_metrics(backend, arrays: dict[str, np.ndarray], batch_size: int = 32) -> dict[str, Any]:
    """Accuracy and macro-F1 of `backend` on the eval arrays."""
    labels = arrays["eval_labels"]
    if not len(labels):
        return {"samples": 0}
    predicted = np.zeros_like(labels)
    for start, ids, mask in _batches(arrays["eval_ids"], arrays["eval_mask"], batch_size):
        logits = backend.forward(ids, mask)
        predicted[start:start + len(ids)] = logits.argmax(axis=-1)
    return {"samples": int(len(labels)), **accuracy_and_macro_f1(predicted, labels),
            "predictions": predicted.tolist()}


def response_perplexity(backend, arrays: dict[str, np.ndarray], batch_size: int = 8) -> float:
    """`deployft.metrics.perplexity` of the eval targets, teacher-forced through `backend.forward`."""
    logprobs, weights = [], []
    targets = arrays["eval_targets"]
    for start, ids, mask in _batches(arrays["eval_ids"], arrays["eval_mask"], batch_size):
        logprobs.append(token_logprobs(backend.forward(ids, mask), ids))
        weights.append(targets[start:start + len(ids), 1:ids.shape[1]] * mask[:, 1:])
    return perplexity(logprobs, weights)


def generate_metrics(backend, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Perplexity on the eval responses and the greedy continuations of the agreement prompts."""
    metrics: dict[str, Any] = {"samples": int(len(arrays["eval_ids"]))}
    try:
        metrics["perplexity"] = response_perplexity(backend, arrays) if len(arrays["eval_ids"]) else None
    except Exception as exc:  # noqa: BLE001 - a variant without full-sequence logits still has agreement
        metrics["perplexity"], metrics["perplexity_error"] = None, f"{type(exc).__name__}: {first_line(exc)}"
    continuations = []
    for ids, mask in zip(arrays["agree_ids"], arrays["agree_mask"]):
        tokens, _ = backend.generate(ids[mask.astype(bool)].tolist(), AGREEMENT_TOKENS, stop_at_eos=True)
        continuations.append(tokens)
    metrics["continuations"] = continuations
    return metrics


def token_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float | None:
    """Fraction of greedy tokens equal to the reference's at the same position (missing ones count as different)."""
    same = total = 0
    for ref, cand in zip(reference, candidate):
        total += max(len(ref), len(cand))
        same += sum(a == b for a, b in zip(ref, cand))
    return same / total if total else None
