"""Accuracy beside speed: each variant's task metric on the RUN's eval split.

The parent process turns the eval rows into token-id arrays once (`eval_arrays`), so every variant
scores exactly the same inputs; a worker scores its own variant (`classify_metrics`, `generate_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

AGREEMENT_PROMPTS = 16
"""Eval prompts each generator variant continues greedily for the token-agreement check."""
AGREEMENT_TOKENS = 16
"""Tokens generated per agreement prompt."""


def _pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(r) for r in rows), default=1) or 1
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


def format_prompt(tokenizer, prompt_format: dict | None, prompt: str) -> list[int]:
    """Token ids of a prompt as the RUN trained on it (docs/folders.md, `prompt_format`)."""
    style = (prompt_format or {}).get("style", "plain")
    if style == "chat":
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, tokenize=True))
    text = prompt + (prompt_format or {}).get("separator", "\n") if style == "plain" else prompt
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


def eval_arrays(rows: list[dict], manifest: dict, tokenizer) -> dict[str, np.ndarray]:
    """Padded token-id arrays of the eval rows for the task's metric (`eval_*` keys of the inputs file)."""
    max_length = int(manifest.get("max_length") or 512)
    if manifest["task"] == "classify":
        labels = list(manifest["labels"])
        ids = [tokenizer(r["text"], truncation=True, max_length=max_length)["input_ids"] for r in rows]
        padded, mask = _pad(ids, _pad_id(tokenizer))
        return {"eval_ids": padded, "eval_mask": mask,
                "eval_labels": np.array([labels.index(str(r["label"])) for r in rows], dtype=np.int64)}
    sequences, targets, prompts = [], [], []
    for row in rows:
        if "prompt" in row:
            prompt = format_prompt(tokenizer, manifest.get("prompt_format"), row["prompt"])
            answer = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        else:
            whole = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
            prompt, answer = whole[:max(1, len(whole) // 2)], whole[max(1, len(whole) // 2):]
        full = (prompt + answer)[:max_length]
        sequences.append(full)
        targets.append([0] * min(len(prompt), len(full)) + [1] * (len(full) - min(len(prompt), len(full))))
        prompts.append(prompt[:max_length])
    ids, mask = _pad(sequences, _pad_id(tokenizer))
    loss_mask, _ = _pad(targets, 0)
    agree_ids, agree_mask = _pad(prompts[:AGREEMENT_PROMPTS], _pad_id(tokenizer))
    return {"eval_ids": ids, "eval_mask": mask, "eval_targets": loss_mask,
            "agree_ids": agree_ids, "agree_mask": agree_mask}


def _batches(ids: np.ndarray, mask: np.ndarray, size: int):
    for start in range(0, len(ids), size):
        block_mask = mask[start:start + size]
        width = max(int(block_mask.sum(axis=1).max()), 1)
        yield start, ids[start:start + size, :width], block_mask[:, :width]


def macro_f1(truth: np.ndarray, predicted: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or predictions."""
    scores = []
    for label in range(num_labels):
        tp = int(np.sum((predicted == label) & (truth == label)))
        fp = int(np.sum((predicted == label) & (truth != label)))
        fn = int(np.sum((predicted != label) & (truth == label)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def classify_metrics(backend, arrays: dict[str, np.ndarray], batch_size: int = 32) -> dict[str, Any]:
    """Accuracy and macro-F1 of `backend` on the eval arrays."""
    labels = arrays["eval_labels"]
    if not len(labels):
        return {"samples": 0}
    predicted = np.zeros_like(labels)
    num_labels = 0
    for start, ids, mask in _batches(arrays["eval_ids"], arrays["eval_mask"], batch_size):
        logits = backend.forward(ids, mask)
        num_labels = logits.shape[-1]
        predicted[start:start + len(ids)] = logits.argmax(axis=-1)
    return {"samples": int(len(labels)), "accuracy": float(np.mean(predicted == labels)),
            "macro_f1": macro_f1(labels, predicted, num_labels), "predictions": predicted.tolist()}


def perplexity(backend, arrays: dict[str, np.ndarray], batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood of the response tokens), teacher-forced through `backend.forward`."""
    total, count = 0.0, 0
    targets = arrays["eval_targets"]
    for start, ids, mask in _batches(arrays["eval_ids"], arrays["eval_mask"], batch_size):
        logits = backend.forward(ids, mask).astype(np.float64)[:, :-1]
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        nxt = ids[:, 1:]
        chosen = np.take_along_axis(log_probs, nxt[..., None], axis=-1)[..., 0]
        weight = targets[start:start + len(ids), 1:ids.shape[1]] * mask[:, 1:]
        total -= float((chosen * weight).sum())
        count += int(weight.sum())
    return float(np.exp(total / count)) if count else float("nan")


def generate_metrics(backend, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Perplexity on the eval responses and the greedy continuations of the agreement prompts."""
    metrics: dict[str, Any] = {"samples": int(len(arrays["eval_ids"]))}
    try:
        metrics["perplexity"] = perplexity(backend, arrays) if len(arrays["eval_ids"]) else None
    except Exception as exc:  # noqa: BLE001 - a variant without full-sequence logits still has agreement
        metrics["perplexity"], metrics["perplexity_error"] = None, f"{type(exc).__name__}: {exc}".splitlines()[0]
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
