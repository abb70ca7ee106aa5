"""A generator's blockwise int8 at several `--block-size` values: what larger blocks buy in speed and cost in accuracy.

Exports the RUN once per block size (`deployft export RUN --quantize int8 --block-size N`, into WORK/bundle-bN,
kept for later runs of the same RUN's weights) and reads each bundle's accuracy guard record for `model_quantized.onnx` (perplexity ratio
to PyTorch and its 95 % upper bound, next-token agreement, greedy agreement, largest logit difference). Then
times each file the way the runtime and `deployft serve` run it, with the same threads, in interleaved rounds:

    decode b1, decode b8    one step of 1 / 8 rows after 48 cached tokens, the cache bound as past and present
                            (the in-place cache of `SharedCache` and the serve engine)
    prefill 16, prefill 64  a prompt of 16 / 64 tokens on an empty cache, last position's logits only
                            (the model call behind the time to first token; in `deployft serve` also a resumed
                            prompt's new tokens)

A round is kept only when other programs used at most --max-foreign of a core during it
(`deployft.bench.quiet.RoundMeter`); rejected rounds are repeated and counted. Medians of the kept rounds.

    python benchmarks/int8_blocks.py --run outputs/bench-defaults/run-generate     # the recorded result
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CELLS = ("decode b1", "decode b8", "prefill 16", "prefill 64")
CACHED = 48
"""Tokens already in the cache for a decode step."""


def export_all(run: Path, work: Path, blocks: list[int]) -> dict[int, Path]:
    from deployft.exporter import ExportConfig, export
    from deployft.manifest import sha256_file

    weights = sha256_file(run / "model.safetensors")
    bundles = {}
    for block in blocks:
        bundle = work / f"bundle-b{block}"
        manifest = bundle / "deployft.json"
        made = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        if (made.get("source_run") or {}).get("weights_sha256") != weights:  # missing, or another RUN's
            print(f"exporting {run} with --quantize int8 --block-size {block}", flush=True)
            export(ExportConfig(run=run, output=bundle, quantize="int8", block_size=block, overwrite=True))
        bundles[block] = bundle
    return bundles


def accuracy(bundle: Path) -> dict:
    manifest = json.loads((bundle / "deployft.json").read_text(encoding="utf-8"))
    record = manifest["variants"]["model_quantized.onnx"]["validation"]
    keys = ("samples", "target_tokens", "perplexity", "perplexity_pytorch", "perplexity_ratio",
            "perplexity_ratio_upper_95", "top1_agreement", "greedy_token_agreement", "max_abs_logit_diff")
    block = (manifest.get("quantization") or {}).get("block_size")
    return {"block_size": block, **{k: record.get(k) for k in keys}}


def _cells(session) -> dict:
    """One callable per cell, with its inputs made once."""
    from onnxruntime import OrtValue

    inputs = {i.name: i for i in session.get_inputs()}
    past = [n for n in inputs if n.startswith("past_key_values.")]
    heads, width = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
    rng = np.random.default_rng(0)
    cells, keep = {}, []
    for rows in (1, 8):
        buffers = [OrtValue.ortvalue_from_numpy(rng.standard_normal((rows, heads, 128, width)).astype(np.float32))
                   for _ in past]
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", rng.integers(100, 1000, (rows, 1)).astype(np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((rows, CACHED + 1), dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.full((rows, 1), CACHED, dtype=np.int64))
        for name, buffer in zip(past, buffers):
            binding.bind_ortvalue_input(name, buffer)
            binding.bind_ortvalue_output("present" + name[len("past_key_values"):], buffer)
        binding.bind_output("logits", "cpu")
        keep.append(buffers)
        cells[f"decode b{rows}"] = lambda binding=binding: session.run_with_iobinding(binding)
    for length in (16, 64):
        feed = {"input_ids": rng.integers(100, 1000, (1, length)).astype(np.int64),
                "attention_mask": np.ones((1, length), dtype=np.int64),
                "position_ids": np.arange(length, dtype=np.int64)[None],
                "logits_to_keep": np.array(1, dtype=np.int64),
                **{name: np.zeros((1, heads, 0, width), dtype=np.float32) for name in past}}
        cells[f"prefill {length}"] = lambda feed=feed: session.run(["logits"], feed)
    cells["_buffers"] = keep  # the bound buffers live as long as the cells
    return cells


def time_all(files: dict[int, Path], threads: int, rounds: int, max_foreign: float) -> tuple[dict, dict]:
    from deployft.bench.quiet import RoundMeter, kept_rounds
    from deployft.runtime.session import SessionOptions, create_session

    cells = {block: _cells(create_session(path, SessionOptions(threads=threads))[0]) for block, path in files.items()}
    repeats = {"decode b1": 10, "decode b8": 5, "prefill 16": 3, "prefill 64": 2}
    for per in cells.values():
        for cell in CELLS:
            for _ in range(2):
                per[cell]()
    samples = {block: {cell: [] for cell in CELLS} for block in files}
    blocks, meter = list(files), RoundMeter(max_share=max_foreign)

    def one_round(kept: int) -> dict:
        order = blocks[kept % len(blocks):] + blocks[:kept % len(blocks)]
        row = {block: {} for block in blocks}
        for cell in CELLS:
            for block in order:
                began = time.perf_counter()
                for _ in range(repeats[cell]):
                    cells[block][cell]()
                row[block][cell] = 1000 * (time.perf_counter() - began) / repeats[cell]
        return row

    for row in kept_rounds(meter, rounds, one_round):
        for block in blocks:
            for cell in CELLS:
                samples[block][cell].append(row[block][cell])
    medians = {block: {cell: round(statistics.median(v), 2) for cell, v in per.items()} for block, per in
               samples.items()}
    return medians, meter.summary()


def write(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    quiet = result["quiet"]
    base = result["medians"][str(result["blocks"][0])]
    lines = ["# A generator's blockwise int8 by block size", "",
             f"Command: `{result['command']}`  ", f"Date: {result['created']}  ",
             f"Machine: {result['machine']}; {result['threads']} threads; {quiet['rounds_kept']} interleaved rounds "
             f"kept ({quiet['rounds_dirty']} of them dirty), {quiet['rounds_rejected']} rejected (others used more "
             f"than {result['max_foreign']:.0%} of a core)", "",
             "Accuracy: export's guard record of each bundle's `model_quantized.onnx` (the RUN's eval rows). Speed: ms "
             f"per model call, median of the kept rounds; decode after {CACHED} cached tokens.", "",
             "| block | MB | perplexity ratio (95 % upper) | next-token agreement | greedy agreement | max abs Δlogit | "
             + " | ".join(f"{c} ms" for c in CELLS) + " | " + " | ".join(f"{c} vs block {result['blocks'][0]}"
                                                                     for c in CELLS) + " |",
             "| --- | ---: | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in CELLS * 2) + " |"]
    for block in result["blocks"]:
        acc, ms = result["accuracy"][str(block)], result["medians"][str(block)]
        lines.append(
            f"| {block} | {result['megabytes'][str(block)]:.1f} | {acc['perplexity_ratio']:.4f} "
            f"({acc['perplexity_ratio_upper_95']:.4f}) | {acc['top1_agreement']:.3f} | "
            f"{acc['greedy_token_agreement']:.3f} | {acc['max_abs_logit_diff']:.2f} | "
            + " | ".join(f"{ms[c]:.2f}" for c in CELLS) + " | "
            + " | ".join(f"{base[c] / ms[c]:.2f}x" for c in CELLS) + " |")
    first = result["accuracy"][str(result["blocks"][0])]
    lines += ["", f"Accuracy rows: {first['samples']} sequences, {first['target_tokens']} target tokens; PyTorch's "
              f"perplexity {first['perplexity_pytorch']:.4f}.", ""]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/bench-defaults/run-generate"))
    parser.add_argument("--work", type=Path, default=Path("outputs/int8-blocks"))
    parser.add_argument("--blocks", default="32,64,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "int8_blocks")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from deployft.bench.machine import cpu_info

    manifest = args.run / "deployft.json"
    if not manifest.is_file() or json.loads(manifest.read_text()).get("task") != "generate":
        raise SystemExit(f"Error: --run {args.run} is not a generator RUN (its deployft.json is missing or names "
                         "another task); pass a folder `deployft finetune --task generate` wrote")
    blocks = [int(b) for b in args.blocks.split(",")]
    bundles = export_all(args.run, args.work, blocks)
    files = {block: bundle / "model_quantized.onnx" for block, bundle in bundles.items()}
    medians, quiet = time_all(files, args.threads, args.rounds, args.max_foreign)
    info = cpu_info()
    result = {"command": shlex.join(["python", "benchmarks/int8_blocks.py", *sys.argv[1:]]),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(args.run),
              "machine": f"{info['model']}, {os.cpu_count()} cores, {', '.join(info.get('flags') or [])}",
              "threads": args.threads, "rounds": args.rounds, "max_foreign": args.max_foreign, "quiet": quiet,
              "blocks": blocks, "accuracy": {str(b): accuracy(p) for b, p in bundles.items()},
              "megabytes": {str(b): sum(f.stat().st_size for f in p.glob("model_quantized.onnx*")) / 1e6
                            for b, p in bundles.items()},
              "medians": {str(b): m for b, m in medians.items()}}
    write(result, args.output)
    print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
