"""One decode step of a generator BUNDLE, file by file: what attention fusion and each int8 recipe buy.

Times a single KV-cache step (batch 1, one new token, `--past` cached tokens) through ONNX Runtime for

    model.onnx                Optimum's export
    model_optimized.onnx      ORTOptimizer + deployft's fused decoder attention (GroupQueryAttention)
    model_quantized.onnx      the bundle's int8 (blockwise MatMulNBits of the fused graph)
    dynamic-int8.onnx         per-tensor dynamic int8 of model.onnx, written here for comparison (what deployft
                              shipped for generators before blockwise int8)

with the node count of each file and the kernels that take the time (ONNX Runtime's profiler, one extra pass).
Files are interleaved round by round at the same thread count; medians are reported.

    python benchmarks/decoder_step.py outputs/bench-defaults/bundle-generate --threads 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(sess, past: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {"input_ids": np.array([[42]], dtype=np.int64), "attention_mask": np.ones((1, past + 1), dtype=np.int64),
            "position_ids": np.array([[past]], dtype=np.int64)}
    for item in sess.get_inputs():
        if item.name.startswith("past_key_values."):
            feed[item.name] = rng.standard_normal((1, item.shape[1], past, item.shape[3])).astype(np.float32)
    return {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}}


def _top_kernels(path: Path, threads: int, feed: dict, steps: int = 10) -> list[tuple[str, float, int]]:
    """(op type, ms per step, nodes per step) for the five op types that take the most kernel time."""
    with tempfile.TemporaryDirectory() as scratch:
        sess = _session(path, threads, profile=str(Path(scratch) / "profile"))
        for _ in range(steps):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            count[event["args"]["op_name"]] += 1
    return [(op, us / steps / 1e3, count[op] // steps) for op, us in total.most_common(5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=32, help="cached tokens before the timed step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per file per round")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import onnx

    from deployft.exporter.quantize import cpu_preset, quantize_dynamic_int8

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.bundle.parent) as scratch:
        dynamic = Path(scratch) / "dynamic-int8.onnx"
        quantize_dynamic_int8(args.bundle / "model.onnx", dynamic, cpu_preset(), per_channel=False)
        files = {name: args.bundle / name for name in ("model.onnx", "model_optimized.onnx", "model_quantized.onnx")}
        files["dynamic-int8.onnx"] = dynamic
        sessions = {name: _session(path, args.threads) for name, path in files.items()}
        feeds = {name: _feed(sess, args.past) for name, sess in sessions.items()}
        times: dict[str, list[float]] = {name: [] for name in files}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                for _ in range(3):
                    sess.run(None, feeds[name])
                for _ in range(args.steps):
                    start = time.perf_counter()
                    sess.run(None, feeds[name])
                    times[name].append(time.perf_counter() - start)
        rows = {name: {"ms_p50": 1e3 * statistics.median(times[name]),
                       "nodes": len(onnx.load(str(path), load_external_data=False).graph.node),
                       "mb": path.stat().st_size / 1e6,
                       "top_kernels": _top_kernels(path, args.threads, feeds[name])}
                for name, path in files.items()}
    result = {"bundle": str(args.bundle), "threads": args.threads, "past": args.past, "rounds": args.rounds,
              "steps": args.steps, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_before": load_before, "load_after": os.getloadavg()[0], "files": rows}
    base = rows["model.onnx"]["ms_p50"]
    lines = ["# One decode step per file (batch 1, one new token)", "",
             f"`{args.bundle}`, {args.past} cached tokens, {args.threads} threads, {args.rounds} rounds x "
             f"{args.steps} steps, interleaved; load average {load_before:.2f} before, {result['load_after']:.2f} after",
             "", "| file | nodes | MB | ms per step (p50) | vs model.onnx | top kernels (ms per step, nodes) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        kernels = ", ".join(f"{op} {ms:.1f} ({n})" for op, ms, n in row["top_kernels"])
        lines.append(f"| {name} | {row['nodes']} | {row['mb']:.0f} | {row['ms_p50']:.1f} | "
                     f"{base / row['ms_p50']:.2f}x | {kernels} |")
    text = "\n".join(lines) + "\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "decoder_step.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "decoder_step.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
