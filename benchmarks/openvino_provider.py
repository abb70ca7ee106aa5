"""The bundle's ONNX files under ONNX Runtime's default CPU provider and under the OpenVINO provider (plugin).

For each file (model.onnx, model_optimized.onnx, model_quantized.onnx, and model_int8_static.onnx when the bundle
has it) and each provider (OpenVINO twice: with dynamic shapes, the Predictor's default, and with a session compiled
per (batch, length bucket), `static_shapes=True`), a `Predictor` is loaded with `model_file=` (so the OpenVINO row of the dynamic-int8 file
really runs that file) and the same threads; then, round by round, every (file, provider) pair times `--calls`
back-to-back model calls (`Predictor.forward`, inputs padded to the shape) at each shape, in an order shuffled per
round. A round counts only if the rest of the machine stayed quiet (`deployft.bench.quiet.RoundMeter`); the figure
of a cell is the median over its kept rounds of each round's median call.

Cold start (load + first result, each in a fresh process): the default provider, OpenVINO with an empty model cache
(compiles and fills it), and OpenVINO again with that cache (reads the compiled model back).

A pair that cannot load (the plugin missing, or offering no device on this CPU: it serves Intel hardware only) is
reported with its one-line error, never dropped.

    python benchmarks/openvino_provider.py --bundle /work/bundles/bundle-classify --threads 2 --rounds 15 \\
        --output benchmarks/results/openvino_provider
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = ("model.onnx", "model_optimized.onnx", "model_quantized.onnx", "model_int8_static.onnx")
PROVIDERS = {"default": dict(provider="default"), "openvino": dict(provider="openvino"),
             "openvino-static": dict(provider="openvino", static_shapes=True)}
"""Row label -> `Predictor.load` settings: `openvino` is what the Predictor does by default (one session, dynamic
shapes), `openvino-static` a session compiled per (batch, length bucket) (`deployft/runtime/shapes.py`)."""
COLD = """
import json, sys, time
start = time.perf_counter()
from deployft.runtime import Predictor
p = Predictor.load(sys.argv[1], model_file=sys.argv[2], provider=sys.argv[3], threads=int(sys.argv[4]),
                   cache_dir=sys.argv[5] or None)
loaded = time.perf_counter()
p.predict("a first request")
print(json.dumps({"load_s": loaded - start, "cold_start_s": time.perf_counter() - start}))
"""


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",")]


def _inputs(vocab: int, batch: int, length: int, seed: int = 0):
    import numpy as np

    ids = np.random.default_rng(seed).integers(1000, vocab, size=(batch, length), dtype=np.int64)
    return ids, np.ones_like(ids)


def load_all(bundle: Path, files: list[str], threads: int) -> tuple[dict, dict]:
    """`({(file, provider): Predictor}, {(file, provider): error line})`."""
    from deployft.errors import DeployftError
    from deployft.runtime import Predictor

    loaded, failed = {}, {}
    for name in files:
        for provider, settings in PROVIDERS.items():
            try:
                loaded[(name, provider)] = Predictor.load(bundle, model_file=name, threads=threads, **settings)
            except DeployftError as exc:
                failed[(name, provider)] = str(exc)
    return loaded, failed


def time_rounds(loaded: dict, shapes, vocab: int, rounds: int, calls: int, warmup: int) -> tuple[dict, dict]:
    """Median call (ms) per pair and shape over the kept rounds, and the RoundMeter summary."""
    from deployft.bench.quiet import RoundMeter, kept_rounds

    meter = RoundMeter()
    kept: dict = {(pair, shape): [] for pair in loaded for shape in shapes}
    feeds = {shape: _inputs(vocab, *shape) for shape in shapes}
    for (pair, predictor) in loaded.items():
        for shape in shapes:
            for _ in range(warmup):
                predictor.forward(*feeds[shape])
    order = [(pair, shape) for pair in loaded for shape in shapes]

    def one_cell(pair, shape) -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            loaded[pair].forward(*feeds[shape])
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    for _ in range(rounds):
        random.shuffle(order)
        for pair, shape in order:  # each cell is a round of its own, repeated until the meter keeps one
            kept[(pair, shape)] += kept_rounds(meter, 1, lambda _kept: one_cell(pair, shape))
    return kept, meter.summary()


def cold_starts(bundle: Path, name: str, threads: int) -> dict:
    """Load + first result in a fresh process: default provider, OpenVINO with an empty cache, then with it filled."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, provider in (("default", "default"), ("openvino_no_cache", "openvino"),
                                ("openvino_cached", "openvino")):
            run = subprocess.run([sys.executable, "-c", COLD, str(bundle), name, provider, str(threads), cache],
                                 capture_output=True, text=True, timeout=600)
            lines = run.stdout.strip().splitlines()
            results[label] = json.loads(lines[-1]) if run.returncode == 0 and lines else \
                {"error": (run.stderr.strip().splitlines() or ["failed"])[-1]}
        results["cache_files"] = sum(1 for p in Path(cache).rglob("*") if p.is_file())
    return results


def measure(args) -> dict:
    from deployft.bench.machine import describe_machine
    from deployft.manifest import read_json, read_manifest
    from deployft.runtime.openvino import cpu_precision

    bundle = Path(args.bundle)
    manifest = read_manifest(bundle, "bundle")
    files = [f for f in (args.files.split(",") if args.files else FILES) if f in manifest.get("variants", {})]
    shapes = _shapes(args.shapes)
    vocab = read_json(bundle / "config.json")["vocab_size"]
    loaded, failed = load_all(bundle, files, args.threads)
    kept, quiet = time_rounds(loaded, shapes, vocab, args.rounds, args.calls, args.warmup)
    cells = []
    for (name, provider), predictor in loaded.items():
        for batch, length in shapes:
            values = kept[((name, provider), (batch, length))]
            cells.append({"file": name, "provider": provider, "batch": batch, "length": length,
                          "median_ms": statistics.median(values), "rounds": len(values),
                          "precision": predictor.runtime.precision, "nodes": predictor.runtime.nodes,
                          "static_shapes": predictor.runtime.static_shapes})
    cold_file = "model_optimized.onnx" if "model_optimized.onnx" in files else files[0]
    return {
        "bundle": str(bundle), "deployable": manifest.get("model_file"), "threads": args.threads,
        "shapes": [f"{b}x{n}" for b, n in shapes], "rounds": args.rounds, "calls_per_round": args.calls,
        "warmup": args.warmup, "openvino_precision_asked": cpu_precision(), "machine": describe_machine("cpu"),
        "quiet": quiet, "cells": cells,
        "unavailable": [{"file": n, "provider": p, "error": e} for (n, p), e in failed.items()],
        "cold_start": {"file": cold_file, **cold_starts(bundle, cold_file, args.threads)},
        "command": " ".join(sys.argv),
    }


def markdown(data: dict) -> str:
    lines = [f"# ONNX Runtime default CPU provider vs OpenVINO provider: {Path(data['bundle']).name}", "",
             f"Threads {data['threads']}, {data['rounds']} interleaved rounds of {data['calls_per_round']} calls, "
             f"model call only (`Predictor.forward`), inputs padded to the shape; ms, median of the kept rounds. "
             f"Quiet rounds: {data['quiet']['rounds_kept']} kept ({data['quiet']['rounds_dirty']} dirty), "
             f"{data['quiet']['rounds_rejected']} rejected. OpenVINO precision asked: "
             f"{data['openvino_precision_asked']}. CPU: {data['machine'].get('cpu', {})}.", "",
             f"Command: `{data['command']}`", ""]
    shapes = data["shapes"]
    base = {(c["batch"], c["length"]): c["median_ms"] for c in data["cells"]
            if c["file"] == data["deployable"] and c["provider"] == "default"}
    lines += ["| file | provider | shapes | " + " | ".join(shapes) + " | vs default-provider deployable |",
              "|---|---|---|" + "---|" * (len(shapes) + 1)]
    pairs = dict.fromkeys((c["file"], c["provider"]) for c in data["cells"])
    for name, provider in pairs:
        row = {f"{c['batch']}x{c['length']}": c for c in data["cells"] if (c["file"], c["provider"]) == (name, provider)}
        ratios = [base[(c["batch"], c["length"])] / c["median_ms"] for c in row.values()
                  if (c["batch"], c["length"]) in base]
        ratio = f"{min(ratios):.2f}x–{max(ratios):.2f}x" if ratios else "n/a"
        mode = "—" if provider == "default" else "static" if next(iter(row.values()))["static_shapes"] else "dynamic"
        lines.append(f"| {name} | {provider} | {mode} | " + " | ".join(f"{row[s]['median_ms']:.2f}" for s in shapes)
                     + f" | {ratio} |")
    for item in data["unavailable"]:
        lines.append(f"| {item['file']} | {item['provider']} | — | " + " | ".join("—" for _ in shapes)
                     + f" | unavailable: {item['error']} |")
    cold = data["cold_start"]
    lines += ["", f"Cold start of {cold['file']} (fresh process, load + first result, s; files in the OpenVINO "
                  f"cache after both runs: {cold['cache_files']}):", ""]
    for label in ("default", "openvino_no_cache", "openvino_cached"):
        entry = cold[label]
        lines.append(f"- {label}: " + (f"{entry['cold_start_s']:.2f} (load {entry['load_s']:.2f})"
                                       if "error" not in entry else f"unavailable: {entry['error']}"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="/work/bundles/bundle-classify")
    parser.add_argument("--shapes", default="1x32,1x128,16x128,1x40,3x100,9x70",
                        help="BATCHxLENGTH, comma-separated (the last three are padded to a longer length bucket)")
    parser.add_argument("--files", default=None, help="comma-separated subset of the bundle's .onnx files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/openvino_provider",
                        help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    data = measure(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
