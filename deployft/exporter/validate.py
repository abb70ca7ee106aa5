"""Check every ONNX file against the PyTorch original on the same rows.

The PyTorch side runs once (`reference`); each file is then run through the runtime's own code, the session
builder (`deployft.runtime.session.create_session`), the classifier call (`ClassifierHead`) and the KV-cache
decoder (`KVDecoder`) that `Predictor` executes, and compared (`compare`): max |Δlogit|, top-1 agreement and
the task metric (`deployft.metrics`: accuracy and macro-F1; perplexity on the response tokens). What the accuracy
guard (`guard.py`) judges is paired, row by row: for classifiers the number of rows whose top-1 class differs
from PyTorch's (`flips`), for generators the perplexity ratio over PyTorch on the same sequences with its paired
bootstrap upper bound (`agreement.bootstrap_ratio_upper_bound`), and the greedy tokens that match PyTorch's
before the first divergence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import accuracy_and_macro_f1, perplexity, token_logprobs
from .agreement import bootstrap_ratio_upper_bound
from ..tasks import Task
from ..tokens import SpecialIds, pad, special_ids
from .samples import Samples

BATCH = 16
"""Classifier rows per call."""
DECODER_BATCH = 4
"""Generator rows per teacher-forced call: the logits of every position over the vocabulary are large."""
GREEDY_TOKENS = 16


@dataclass
class Reference:
    """The PyTorch original's outputs on the validation rows, computed once."""

    task: Task
    samples: Samples
    special: SpecialIds
    """Pad id (right padding of batches) and end ids of the model."""
    logits: list[np.ndarray]
    """classify: one [batch, labels] array per batch; generate: one [tokens, vocab] array per sequence."""
    greedy: list[list[int]] = field(default_factory=list)
    """generate: PyTorch's greedy tokens for each prompt."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    """PyTorch's own task metrics."""
    max_positions: int | None = None
    """generate: the model's position table (config.json), which greedy continuations stop at as the runtime's do."""
    nll: np.ndarray | None = None
    """generate: PyTorch's summed negative log-likelihood of each sequence's target tokens."""


def _batches(sequences: list[list[int]], pad_id: int, size: int = BATCH):
    for start in range(0, len(sequences), size):
        yield pad(sequences[start:start + size], pad_id)


def reference(source, model, tokenizer, samples: Samples) -> Reference:
    """Run the PyTorch model once over the validation rows."""
    import inspect

    import torch

    from ..manifest import read_json

    config = read_json(source.path / "config.json")
    special = special_ids(config, read_json(source.path / "generation_config.json"))
    if tokenizer.pad_token_id is not None:
        special = SpecialIds(special.bos, special.eos, int(tokenizer.pad_token_id))
    accepted = set(inspect.signature(model.forward).parameters)
    with torch.inference_mode():
        if not source.spec.generates:
            logits = []
            for ids, mask in _batches(samples.sequences, special.pad):
                feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                out = model(**{k: torch.from_numpy(v) for k, v in feeds.items() if k in accepted})
                logits.append(out.logits.float().numpy())
            ref = Reference(source.spec, samples, special, logits)
            ref.metrics = _classify_metrics(np.concatenate(logits), samples.labels)
            return ref
        positions = config.get("max_position_embeddings") or config.get("n_positions")  # as `Predictor` reads it
        logits = [model(input_ids=torch.tensor([s])).logits[0].float().numpy() for s in samples.sequences]
        greedy = [_torch_greedy(model, p, _greedy_tokens(len(p), positions)) for p in samples.prompts]
    ref = Reference(source.spec, samples, special, logits, greedy=greedy, nll=_sequence_nll(logits, samples)[0],
                    max_positions=positions)
    ref.metrics = {"perplexity": _perplexity(logits, samples)}
    return ref


def compare(ref: Reference, onnx_path: Path, device: str = "cpu", provider: str = "default") -> dict[str, Any]:
    """Compare one ONNX file with the PyTorch reference through `provider`; returns the validation report of that
    variant, with what ran it (`provider`, and for openvino its precision and threads)."""
    from ..runtime.session import SessionOptions, create_session

    session, runtime = create_session(onnx_path, SessionOptions(device=device, provider=provider))
    if ref.task.generates:
        report = _compare_generate(ref, session, runtime.device)
    else:
        report = _compare_classify(ref, session)
    return {**report, **_ran_on(runtime)}


def _ran_on(runtime) -> dict[str, Any]:
    if runtime.provider == "default":
        return {"provider": "default"}
    return {"provider": runtime.provider, "precision": runtime.precision, "threads": runtime.threads}


def _compare_classify(ref: Reference, session) -> dict[str, Any]:
    from ..runtime.classifier import ClassifierHead

    head = ClassifierHead(session)
    ours = np.concatenate([head.logits(ids, mask) for ids, mask in _batches(ref.samples.sequences, ref.special.pad)])
    theirs = np.concatenate(ref.logits)
    metrics = _classify_metrics(ours, ref.samples.labels)
    flipped = ours.argmax(-1) != theirs.argmax(-1)
    return {
        "samples": len(ref.samples.sequences),
        "max_abs_logit_diff": float(np.max(np.abs(ours - theirs))),
        "flips": int(flipped.sum()),
        "top1_agreement": float(1.0 - flipped.mean()),
        "accuracy_pytorch": ref.metrics["accuracy"], "accuracy": metrics["accuracy"],
        "macro_f1_pytorch": ref.metrics["macro_f1"], "macro_f1": metrics["macro_f1"],
    }


def _compare_generate(ref: Reference, session, device: str) -> dict[str, Any]:
    from ..runtime.generation import KVDecoder

    decoder = KVDecoder(session, device, ref.special.eos, ref.special.pad, ref.max_positions)
    logits = []
    for ids, mask in _batches(ref.samples.sequences, ref.special.pad, DECODER_BATCH):
        full = decoder.full_logits(ids, mask)
        logits += [full[row, :int(n)] for row, n in enumerate(mask.sum(axis=1))]
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(logits, ref.logits)]
    agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(logits, ref.logits)])
    ppl, ppl_ref = _perplexity(logits, ref.samples), ref.metrics["perplexity"]
    nll, tokens = _sequence_nll(logits, ref.samples)
    ratio, upper = bootstrap_ratio_upper_bound(nll, ref.nll, tokens)
    greedy = [_runtime_greedy(decoder, p) for p in ref.samples.prompts]
    return {
        "samples": len(ref.samples.sequences),
        "target_tokens": int(tokens.sum()),
        "max_abs_logit_diff": max(diffs),
        "top1_agreement": float(agree.mean()),
        "perplexity_pytorch": ppl_ref, "perplexity": ppl,
        "perplexity_increase_pct": 100.0 * (ppl - ppl_ref) / ppl_ref,
        "perplexity_ratio": ratio, "perplexity_ratio_upper_95": upper,
        "greedy_identical": float(np.mean([a == b for a, b in zip(greedy, ref.greedy)])) if greedy else None,
        "greedy_token_agreement": greedy_token_agreement(greedy, ref.greedy),
        "greedy_prompts": len(greedy), "greedy_tokens": GREEDY_TOKENS,
    }


def greedy_token_agreement(ours: list[list[int]], theirs: list[list[int]]) -> float | None:
    """Share of PyTorch's greedy tokens that the file reproduced before its first divergence, over all prompts.

    Tokens after a divergence are not counted as matches even when they happen to agree again: from there on the
    two continuations are conditioned on different text.
    """
    total = sum(len(t) for t in theirs)
    if not total:
        return None
    matched = 0
    for a, b in zip(ours, theirs):
        matched += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return matched / total


def _runtime_greedy(decoder, prompt: list[int]) -> list[int]:
    """GREEDY_TOKENS greedy tokens (fewer at the model's position limit) through the runtime's decoding loop (end
    tokens do not stop it)."""
    from ..runtime.sampling import GenerationOptions

    ids = np.asarray([prompt], dtype=np.int64)
    done = np.zeros(1, dtype=bool)
    steps = decoder.iter_batch(ids, np.ones_like(ids), GenerationOptions(GREEDY_TOKENS), done, ignore_eos=True)
    return [int(tokens[0]) for tokens in steps]


def _greedy_tokens(prompt_length: int, max_positions: int | None) -> int:
    """GREEDY_TOKENS, cut where the runtime cuts a generation (`runtime.generation.position_budget`)."""
    from ..runtime.generation import position_budget

    return int(position_budget(prompt_length, GREEDY_TOKENS, max_positions))


def _torch_greedy(model, prompt: list[int], tokens: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    for _ in range(tokens):
        next_id = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()


def _sequence_nll(logits: list[np.ndarray], samples: Samples) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: the summed negative log-likelihood of its target tokens, and how many there are."""
    nll, tokens = [], []
    for lg, seq, targets in zip(logits, samples.sequences, samples.targets):
        mask = np.asarray(targets[1:], dtype=np.float64)
        nll.append(-float((token_logprobs(lg[None], np.asarray([seq]))[0] * mask).sum()))
        tokens.append(mask.sum())
    return np.asarray(nll), np.asarray(tokens)


def _perplexity(logits: list[np.ndarray], samples: Samples) -> float:
    """`deployft.metrics.perplexity` of per-sequence logits over the samples' target tokens."""
    logprobs = [token_logprobs(lg[None], np.asarray([seq]))[0] for lg, seq in zip(logits, samples.sequences)]
    return perplexity(logprobs, [targets[1:] for targets in samples.targets])


def _classify_metrics(logits: np.ndarray, labels: list[int] | None) -> dict[str, float | None]:
    if not labels:
        return {"accuracy": None, "macro_f1": None}
    return accuracy_and_macro_f1(logits.argmax(-1), labels)
