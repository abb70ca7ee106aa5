"""Memory an ONNX Runtime session of each bundle file holds, with its weights inside the .onnx file or beside it.

For every .onnx file of a BUNDLE, writes two copies to a scratch folder, one with every weight inside the protobuf
and one with the weights in `<name>_data` (what `deployft export` writes for blockwise-quantized decoders), and
creates a CPU session of each in a fresh process, `--repeats` times, interleaved: the resident memory the session
added (RSS after minus before, median) and its load time.

    python benchmarks/session_memory.py outputs/bench-defaults/bundle-generate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = """
import json, sys, time
import psutil, onnxruntime as ort
process = psutil.Process()
before = process.memory_info().rss
options = ort.SessionOptions()
options.intra_op_num_threads, options.log_severity_level = int(sys.argv[2]), 3
start = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(json.dumps({"rss_mb": (process.memory_info().rss - before) / 2**20, "load_s": time.perf_counter() - start}))
"""


def _copies(path: Path, scratch: Path) -> dict[str, Path]:
    import onnx

    model = onnx.load(str(path))
    inside, beside = scratch / f"inside-{path.name}", scratch / f"beside-{path.name}"
    onnx.save(model, str(inside))
    onnx.save(model, str(beside), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{beside.name}_data")
    return {"weights inside the .onnx": inside, "weights in <name>_data": beside}


def _size_mb(path: Path) -> float:
    """The .onnx file and its `_data` file, in MB."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


def _probe(path: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(threads)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory(dir=args.bundle.parent) as scratch:
        files = {(path.name, form): copy for path in sorted(args.bundle.glob("*.onnx"))
                 for form, copy in _copies(path, Path(scratch)).items()}
        samples: dict[tuple[str, str], list[dict]] = {key: [] for key in files}
        for _ in range(args.repeats):
            for key, path in files.items():
                samples[key].append(_probe(path, args.threads))
        for (name, form), values in samples.items():
            rows.setdefault(name, {})[form] = {
                "rss_mb": statistics.median(v["rss_mb"] for v in values),
                "load_s": statistics.median(v["load_s"] for v in values),
                "file_mb": _size_mb(files[(name, form)])}
    from deployft.bench.machine import cpu_info

    result = {"command": shlex.join(["python", "benchmarks/session_memory.py", *sys.argv[1:]]),
              "bundle": str(args.bundle), "threads": args.threads, "repeats": args.repeats,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpu": cpu_info()["model"] or platform.machine(), "cores": os.cpu_count(), "files": rows}
    lines = ["# Session memory by weight storage", "", f"Command: `{result['command']}`  ",
             f"Machine: {result['cpu']}, {result['cores']} cores", "",
             f"`{args.bundle}`, CPU sessions at {args.threads} threads, each in a fresh process, {args.repeats} "
             f"repeats interleaved (medians); measured {result['created']}.", "",
             "| file | weights | size MB | session RSS MB | load s |", "| --- | --- | ---: | ---: | ---: |"]
    for name, forms in rows.items():
        for form, row in forms.items():
            lines.append(f"| {name} | {form} | {row['file_mb']:.0f} | {row['rss_mb']:.0f} | {row['load_s']:.2f} |")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "session_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "session_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
