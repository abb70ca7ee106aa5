"""Where a bundle's files spend their time, by op type: ONNX Runtime's own profiler over repeated calls.

Each file runs in a CPU session set up as deployft's (`runtime.session.CPU_DISABLED_OPTIMIZERS`, the same threads,
no spin-waiting), with ONNX Runtime's profiling on, `--calls` times per shape after 3 warm-up calls; the
kernel time of every node of those calls (not of the warm-up ones) is summed by op type. Profiling adds its own
cost to every node, so the shares are the result and the milliseconds only sum what the profiler saw (the wall
time per call, without profiling, is in the bench).

    python benchmarks/op_profile.py --bundle outputs/bench-defaults/bundle-classify \\
        --output benchmarks/results/xeon-amx/op_profile_classify
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = ((1, 128), (16, 128))
FILES = ("model_quantized.onnx", "model_optimized.onnx")
WARMUP = 3
"""Calls before the profiled ones; their nodes are left out of the sums."""
TOP = 8
"""Op types listed per file and shape; the rest are summed as `other`."""


def profile(path: Path, shape: tuple[int, int], threads: int, calls: int, vocab: int) -> dict[str, float]:
    """Kernel ms per call by op type for `path` at `shape` (batch, tokens)."""
    import onnxruntime as ort

    from deployft.runtime.session import CPU_DISABLED_OPTIMIZERS

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
        ids = np.random.default_rng(0).integers(1, vocab, size=shape, dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        for _ in range(WARMUP + calls):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) != WARMUP + calls:
        raise SystemExit(f"Error: ONNX Runtime's profile of {path.name} holds {len(runs)} runs, not {WARMUP + calls}")
    timed_from = runs[WARMUP - 1][1]  # the end of the last warm-up call
    totals: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / calls / 1000, 3) for op, us in totals.most_common()}


def write(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Time by op type: {result['bundle']}", "", f"Command: `{result['command']}`  ",
             f"Date: {result['created']}  ", f"Machine: {result['machine']}; {result['threads']} threads, no spinning, "
             f"{result['calls']} profiled calls per shape after {WARMUP} warm-up calls (left out)", "",
             "Kernel time per call summed by op type, from ONNX Runtime's profiler in a session set up as deployft's; "
             "profiling adds its own cost to every node, so read the shares.", ""]
    for name, shapes in result["profiles"].items():
        for shape, ops in shapes.items():
            total = sum(ops.values())
            lines += [f"## `{name}` at {shape} ({total:.2f} ms of kernels per call)", "",
                      "| op type | ms per call | share |", "| --- | ---: | ---: |"]
            ranked = list(ops.items())
            for op, ms in ranked[:TOP]:
                lines.append(f"| {op} | {ms:.2f} | {ms / total:.1%} |")
            rest = sum(ms for _, ms in ranked[TOP:])
            if rest:
                lines.append(f"| other ({len(ranked) - TOP} op types) | {rest:.2f} | {rest / total:.1%} |")
            lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/demo/bundle"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "op_profile_classify")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from deployft.bench.machine import cpu_info

    manifest = args.bundle / "deployft.json"
    if not manifest.is_file() or json.loads(manifest.read_text()).get("task") != "classify":
        raise SystemExit(f"Error: --bundle {args.bundle} is not a classifier bundle (its deployft.json is missing or "
                         "names another task); pass a folder `deployft export` wrote for a classifier")
    vocab = json.loads((args.bundle / "config.json").read_text())["vocab_size"]
    profiles = {name: {f"b{b}x{n}": profile(args.bundle / name, (b, n), args.threads, args.calls, vocab)
                       for b, n in SHAPES} for name in FILES if (args.bundle / name).is_file()}
    info = cpu_info()
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bundle": str(args.bundle),
              "command": " ".join(["python", "benchmarks/op_profile.py", *sys.argv[1:]]),
              "machine": f"{info['model']}, {os.cpu_count()} cores", "threads": args.threads, "calls": args.calls,
              "profiles": profiles}
    write(result, args.output)
    print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
