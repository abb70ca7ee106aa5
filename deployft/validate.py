"""Check every ONNX file against the PyTorch original on the same inputs.

The PyTorch side runs once (`reference`); each ONNX variant is then compared with it (`compare`):
max |Δlogit|, top-1 agreement and the task metric (accuracy / macro-F1 for classify; perplexity, greedy next-token
agreement and identical greedy continuations for generate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeviceError

BATCH = 16
GREEDY_PROMPTS = 4
GREEDY_TOKENS = 16


@dataclass
class Reference:
    """The PyTorch original's outputs on the validation inputs, computed once."""

    task: str
    """`classify` or `generate`."""
    sequences: list[list[int]]
    """Token ids of each validation example (truncated to max_length)."""
    pad_id: int
    """Padding id for classify batches."""
    logits: list[np.ndarray]
    """classify: one [batch, labels] array per batch; generate: one [tokens, vocab] array per sequence."""
    labels: list[int] | None = None
    """classify: gold class ids (None when the source has no data)."""
    prompts: list[list[int]] = field(default_factory=list)
    """generate: prompts whose greedy continuation is compared."""
    greedy: list[list[int]] = field(default_factory=list)
    """generate: PyTorch's greedy tokens for each prompt."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    """PyTorch's own task metrics."""


def session(path: Path, device: str = "cpu"):
    """An ONNX Runtime session on `device`, refusing a silent fall back from CUDA to CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), options, providers=providers)
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise DeviceError("ONNX Runtime has no working CUDAExecutionProvider (install onnxruntime-gpu with CUDA 13 / "
                          "cuDNN 9); validate on CPU with --device cpu")
    return sess


def _batches(sequences: list[list[int]], pad_id: int):
    for start in range(0, len(sequences), BATCH):
        chunk = sequences[start:start + BATCH]
        width = max(len(s) for s in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def reference(task: str, model, sequences: list[list[int]], pad_id: int, labels: list[int] | None = None,
              prompts: list[list[int]] | None = None) -> Reference:
    """Run the PyTorch model once over the validation inputs."""
    import inspect

    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    with torch.inference_mode():
        if task == "classify":
            logits = [model(**{k: torch.from_numpy(v) for k, v in b.items() if k in accepted}).logits.float().numpy()
                      for b in _batches(sequences, pad_id)]
            ref = Reference(task, sequences, pad_id, logits, labels)
            ref.metrics = classify_metrics(np.concatenate(logits), labels)
            return ref
        logits = [model(input_ids=torch.tensor([s])).logits[0].float().numpy() for s in sequences]
        greedy = [_torch_greedy(model, p) for p in (prompts or [])[:GREEDY_PROMPTS]]
    ref = Reference(task, sequences, pad_id, logits, prompts=(prompts or [])[:GREEDY_PROMPTS], greedy=greedy)
    ref.metrics = {"perplexity": _perplexity(logits, sequences)}
    return ref


def compare(ref: Reference, onnx_path: Path, device: str = "cpu") -> dict[str, Any]:
    """Compare one ONNX file with the PyTorch reference; returns the validation report of that variant."""
    sess = session(onnx_path, device)
    if ref.task == "classify":
        return _compare_classify(ref, sess)
    return _compare_generate(ref, sess)


def _compare_classify(ref: Reference, sess) -> dict[str, Any]:
    names = {i.name for i in sess.get_inputs()}
    logits = [sess.run(["logits"], {k: v for k, v in b.items() if k in names})[0]
              for b in _batches(ref.sequences, ref.pad_id)]
    ours, theirs = np.concatenate(logits), np.concatenate(ref.logits)
    metrics = classify_metrics(ours, ref.labels)
    return {
        "samples": len(ref.sequences),
        "max_abs_logit_diff": float(np.max(np.abs(ours - theirs))),
        "top1_agreement": float(np.mean(ours.argmax(-1) == theirs.argmax(-1))),
        "accuracy_pytorch": ref.metrics["accuracy"], "accuracy": metrics["accuracy"],
        "macro_f1_pytorch": ref.metrics["macro_f1"], "macro_f1": metrics["macro_f1"],
    }


def _compare_generate(ref: Reference, sess) -> dict[str, Any]:
    decoder = OnnxDecoder(sess)
    logits = [decoder.forward(s) for s in ref.sequences]
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(logits, ref.logits)]
    agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(logits, ref.logits)])
    ppl, ppl_ref = _perplexity(logits, ref.sequences), ref.metrics["perplexity"]
    greedy = [decoder.greedy(p, GREEDY_TOKENS) for p in ref.prompts]
    return {
        "samples": len(ref.sequences),
        "max_abs_logit_diff": max(diffs),
        "top1_agreement": float(agree.mean()),
        "perplexity_pytorch": ppl_ref, "perplexity": ppl,
        "perplexity_increase_pct": 100.0 * (ppl - ppl_ref) / ppl_ref,
        "greedy_identical": float(np.mean([a == b for a, b in zip(greedy, ref.greedy)])) if greedy else None,
        "greedy_prompts": len(greedy), "greedy_tokens": GREEDY_TOKENS,
    }


class OnnxDecoder:
    """Runs a `text-generation-with-past` export: a prompt forward pass and a greedy KV-cache loop (batch 1)."""

    def __init__(self, sess) -> None:
        self.sess = sess
        self.inputs = {i.name: i for i in sess.get_inputs()}
        self.outputs = [o.name for o in sess.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        float_type = {"tensor(float16)": np.float16}.get(self.inputs[self.past_names[0]].type, np.float32)
        self.empty = {n: np.zeros((1, self.inputs[n].shape[1], 0, self.inputs[n].shape[3]), dtype=float_type)
                      for n in self.past_names}

    def _run(self, ids: list[int], start: int, past: dict[str, np.ndarray]):
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, start + len(ids)), dtype=np.int64),
                "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None], **past}
        out = dict(zip(self.outputs, self.sess.run(None, {k: v for k, v in feed.items() if k in self.inputs})))
        presents = {n: out[n.replace("past_key_values", "present")] for n in self.past_names}
        return out["logits"][0].astype(np.float32), presents

    def forward(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, 0, self.empty)[0]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        logits, past = self._run(prompt, 0, self.empty)
        tokens = [int(logits[-1].argmax())]
        while len(tokens) < n:
            logits, past = self._run(tokens[-1:], len(prompt) + len(tokens) - 1, past)
            tokens.append(int(logits[-1].argmax()))
        return tokens


def _torch_greedy(model, prompt: list[int]) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    for _ in range(GREEDY_TOKENS):
        next_id = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()


def _perplexity(logits: list[np.ndarray], sequences: list[list[int]]) -> float:
    total, count = 0.0, 0
    for lg, seq in zip(logits, sequences):
        lg = lg[:-1].astype(np.float64)
        shifted = lg - lg.max(-1, keepdims=True)
        logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total -= float(logprobs[np.arange(len(seq) - 1), seq[1:]].sum())
        count += len(seq) - 1
    return float(np.exp(total / max(count, 1)))


def classify_metrics(logits: np.ndarray, labels: list[int] | None) -> dict[str, float | None]:
    """Accuracy and macro-F1 of `logits` against gold `labels` (None when there are no labels)."""
    if not labels:
        return {"accuracy": None, "macro_f1": None}
    pred, gold = logits.argmax(-1), np.asarray(labels)
    f1s = []
    for cls in np.unique(np.concatenate([gold, pred])):
        tp = np.sum((pred == cls) & (gold == cls))
        denom = np.sum(pred == cls) + np.sum(gold == cls)
        f1s.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s))}
