"""What a benchmark runs on: a RUN and BUNDLE that belong together, the variants to time, and the inputs.

Inputs are real token ids from the RUN's eval rows, cut or repeated to each grid length, written once
to an `.npz` file that every variant's worker reads, so all variants see exactly the same ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, DataError, ModelError, UsageError
from ..manifest import read_json, read_manifest
from ..prompts import PromptFormat, TokenizerAdapter, example_ids
from ..tasks import get_task
from .accuracy import eval_arrays
from .config import TORCH_VARIANTS, BenchConfig

_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}
"""Models whose position ids start after the padding index, so they take fewer tokens than max_position_embeddings."""


def read_pair(config: BenchConfig) -> dict[str, dict[str, Any]]:
    """The RUN and BUNDLE manifests, after checking that the BUNDLE was exported from this RUN."""
    run = read_manifest(config.run, "run")
    bundle = read_manifest(config.bundle, "bundle")
    if bundle.get("task") != run.get("task"):
        raise BundleError(f"BUNDLE {config.bundle} is a '{bundle.get('task')}' model but RUN {config.run} is "
                          f"'{run.get('task')}'; pass the BUNDLE exported from this RUN with --bundle")
    source = bundle.get("source_run") or {}
    if source.get("base_model") not in (None, run.get("base_model")):
        raise BundleError(f"BUNDLE {config.bundle} comes from base model {source['base_model']} but RUN {config.run} "
                          f"from {run.get('base_model')}; pass the BUNDLE exported from this RUN with --bundle")
    if source.get("weights_sha256"):
        _check_weights(config, source)
    return {"run": run, "bundle": bundle}


def _check_weights(config: BenchConfig, source: dict[str, Any]) -> None:
    """The RUN's weights (the files export hashed: `exporter.source.weight_files`, one file or every shard with its
    index) against the hash the BUNDLE recorded."""
    from ..exporter.source import model_weight_files, weights_sha256

    try:
        files = model_weight_files(config.run)
    except ModelError as exc:
        raise BundleError(f"BUNDLE {config.bundle} was exported from weights with sha256 "
                          f"{source['weights_sha256'][:12]}..., but the RUN's cannot be read: {exc}; or pass the "
                          "matching RUN with --run") from None
    if weights_sha256(files) != source["weights_sha256"]:
        shown = files[0].name if len(files) == 1 else f"{len(files)} weight files"
        raise BundleError(f"BUNDLE {config.bundle} was exported from other weights than RUN {config.run} "
                          f"({shown} sha256 differs; exported from {source.get('path')}); "
                          "pass the matching RUN with --run or re-export with deployft export")


def available_variants(bundle_dir: Path, bundle: dict[str, Any]) -> list[str]:
    """The PyTorch variants and every `.onnx` of the bundle (its manifest's variants and the files present)."""
    onnx = set(bundle.get("variants") or {}) | {p.name for p in Path(bundle_dir).glob("*.onnx")}
    return [*TORCH_VARIANTS, *sorted(onnx)]


def select_variants(config: BenchConfig, bundle: dict[str, Any]) -> list[str]:
    """`--variants` checked against what exists (peer groups expanded, see `peers.py`); the RUN's and BUNDLE's own
    variants when it is not given (peers are timed only when asked for)."""
    from . import peers

    known = available_variants(config.bundle, bundle)
    if config.variants is None:
        return known
    task = bundle.get("task")
    wrong = peers.wrong_task(list(config.variants), task)
    if wrong:
        own = [p for p in (*peers.GROUPS, *peers.PEERS) if not peers.wrong_task([p], task)]
        raise UsageError(f"--variants names peer(s) {', '.join(wrong)} that do not run {task} models; "
                         f"peers for this RUN: {', '.join(own)}")
    names = peers.expand(config.variants, task)
    if config.device != "cpu" and any(peers.is_peer(n) for n in names):
        raise UsageError(f"the peer variants are timed on CPU only and --device is {config.device}; "
                         "drop them from --variants or pass --device cpu")
    unknown = [v for v in names if v not in known and not peers.is_peer(v)]
    if unknown:
        raise UsageError(f"--variants names unknown variant(s) {', '.join(unknown)}; this RUN and BUNDLE have: "
                         f"{', '.join(known)}, and the peers {', '.join(peers.GROUPS)}")
    return names


def max_positions(run_dir: Path) -> int | None:
    """Tokens the model can take, from its config.json (None when the config does not say)."""
    config = read_json(Path(run_dir) / "config.json", ModelError)
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    return int(limit) - _OFFSET_POSITIONS.get(config.get("model_type"), 0) if limit else None


def check_grid(config: BenchConfig, task: str) -> None:
    """Refuse grid lengths the model cannot take, naming the flag."""
    limit = max_positions(config.run)
    if limit is None:
        return
    generates = get_task(task).generates
    if not generates and max(config.seq_lens) > limit:
        raise UsageError(f"--seq-lens {max(config.seq_lens)} is longer than the model takes ({limit} tokens); "
                         f"pass lengths up to {limit}")
    if generates and max(config.prompt_lens) + max(config.new_tokens) > limit:
        raise UsageError(f"--prompt-lens {max(config.prompt_lens)} plus --new-tokens {max(config.new_tokens)} is "
                         f"longer than the model takes ({limit} tokens); pass shorter lengths")


def fit(ids: list[int], length: int) -> list[int]:
    """`ids` cut to `length`, or repeated until it reaches `length`."""
    ids = ids or [0]
    repeats = -(-length // len(ids))
    return (ids * repeats)[:length]


def classify_cells(token_rows: list[list[int]], batch_sizes, seq_lens) -> dict[str, np.ndarray]:
    """`cell_{batch}x{seq}` → `[batch, seq]` ids: consecutive eval rows, each cut or repeated to `seq`."""
    cells = {}
    for batch in batch_sizes:
        for seq in seq_lens:
            rows = [fit(token_rows[i % len(token_rows)], seq) for i in range(batch)]
            cells[f"cell_{batch}x{seq}"] = np.array(rows, dtype=np.int64)
    return cells


def generate_prompts(token_rows: list[list[int]], prompt_lens) -> dict[str, np.ndarray]:
    """`prompt_{length}` → one prompt of `length` ids: eval prompts and responses run together, cut or repeated."""
    stream = [t for row in token_rows for t in row]
    return {f"prompt_{length}": np.array(fit(stream, length), dtype=np.int64) for length in prompt_lens}


def build_inputs(config: BenchConfig, manifests: dict[str, dict], path: Path) -> dict[str, Any]:
    """Write the grid inputs and eval arrays to `path` (.npz); return what the report says about them."""
    from transformers import AutoTokenizer

    from ..data import load_run_examples

    manifest = manifests["run"]
    rows = load_run_examples(config.run, split="eval", limit=max(config.eval_samples, 64))
    if not rows:
        raise DataError(f"RUN {config.run} has no eval rows to build benchmark inputs from; "
                        "fine-tune with an eval split (--eval-file or --eval-fraction)")
    tokenizer = AutoTokenizer.from_pretrained(config.run)
    if get_task(manifest["task"]).generates:
        fmt, encoder = PromptFormat.from_manifest(manifest.get("prompt_format")), TokenizerAdapter(tokenizer)
        tokens = [example_ids(r, fmt, encoder, int(manifest.get("max_length") or 512))[0] for r in rows]
        arrays = generate_prompts(tokens, config.prompt_lens)
    else:
        tokens = [tokenizer(r["text"])["input_ids"] for r in rows]
        arrays = classify_cells(tokens, config.batch_sizes, config.seq_lens)
    arrays.update(eval_arrays(rows[:config.eval_samples], manifest, tokenizer))
    np.savez(path, **arrays)
    return {"eval_rows": min(len(rows), config.eval_samples), "source": "RUN eval split, cut or repeated to length"}

