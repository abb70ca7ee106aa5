"""Every classifier int8 recipe against dynamic int8 of the plain export, timed whatever the guard said.

Export times only the candidates within the accuracy guard, so when `plain` (dynamic int8 of model.onnx, the
deployable file before measured selection) fails the guard, its bundle cannot say how much faster the kept file
is than it. This script rebuilds every dynamic recipe of `deployft.exporter.select.RECIPES` from a bundle's own
model.onnx / model_optimized.onnx with export's functions and the bundle's preset (static QDQ needs the RUN's
calibration rows and is left out), and times them beside the bundle's deployable `model_quantized.onnx` and its
fused fp32 file, at one text of 32 and 128 tokens and 16 texts of 128, with the same threads, in interleaved rounds.
Every file runs in deployft's own CPU session (`create_session`), which keeps residual Add and LayerNormalization
apart; the baseline, `plain (ORT default fusions)`, is the plain recipe's file with every load-time fusion of ONNX
Runtime on, SkipLayerNormalization included: how deployft's sessions ran the deployable file before measured
selection and before they kept that pair apart. Every row, the baseline too, runs with the same threads and no
spin-waiting. A round is kept only when other programs used at most
--max-foreign of a core during it (`deployft.bench.quiet.RoundMeter`: busy time from /proc/stat minus this
process's CPU time); rejected rounds are repeated and counted, and after 5 in a row one is kept and counted dirty. The guard's flips for each recipe come from the bundle's manifest where export built it.

    python benchmarks/int8_recipes.py --bundle outputs/demo/bundle      # the recorded result (after `make demo`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = ((1, 32), (1, 128), (16, 128))
"""The shapes the issue's classifier targets name."""
BASELINE = "plain (ORT default fusions)"
"""The row every ratio is against (see the module's docstring)."""


def recipes() -> dict[str, tuple[str, bool]]:
    """Recipe -> (the graph it quantizes, per-channel weights), for export's dynamic int8 recipes."""
    from deployft.exporter.select import RECIPES

    return {r.name: ("model.onnx" if r.base == "plain" else "model_optimized.onnx", r.per_channel)
            for r in RECIPES if not r.static}


def build(bundle: Path, work: Path) -> dict[str, Path]:
    """Every recipe's file, with the preset export used for the bundle (this CPU's when it recorded none)."""
    from deployft.exporter.quantize import cpu_preset, quantize_dynamic_int8

    preset = (json.loads((bundle / "deployft.json").read_text()).get("quantization") or {}).get("preset") \
        or cpu_preset()
    files = {}
    for name, (source, per_channel) in recipes().items():
        files[name] = work / f"{name}.onnx"
        quantize_dynamic_int8(bundle / source, files[name], preset, per_channel)
    return files


def _ort_default_session(path: Path, threads: int):
    """`path` in a CPU session with every load-time fusion of ONNX Runtime on, threads and spinning as the rest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_all(files: dict[str, Path], threads: int, rounds: int, max_foreign: float,
             vocab_size: int) -> tuple[dict, dict]:
    """Median ms per file and shape over `rounds` kept rounds, each judged by `RoundMeter` (a round where others
    took more than `max_foreign` of a core is repeated; after 5 in a row one is kept as dirty); returns
    `(medians, the meter's summary)`. `files[BASELINE]` runs with ONNX Runtime's default fusions, the rest in
    deployft's session."""
    from deployft.bench.quiet import RoundMeter
    from deployft.runtime.session import SessionOptions, create_session

    sessions = {k: _ort_default_session(p, threads) if k == BASELINE
                else create_session(p, SessionOptions(threads=threads, spinning=False))[0] for k, p in files.items()}
    rng = np.random.default_rng(0)
    feeds = {}
    for batch, length in SHAPES:
        ids = rng.integers(1, vocab_size, size=(batch, length), dtype=np.int64)
        feeds[(batch, length)] = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                  "token_type_ids": np.zeros_like(ids)}
    names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    for key, session in sessions.items():
        for feed in feeds.values():
            for _ in range(2):
                session.run(None, {n: feed[n] for n in names[key]})
    samples = {k: {s: [] for s in SHAPES} for k in sessions}
    keys, meter = list(sessions), RoundMeter(max_share=max_foreign)
    while meter.kept < rounds:
        order = keys[meter.kept % len(keys):] + keys[:meter.kept % len(keys)]
        row = {k: {} for k in keys}
        meter.start()
        for shape, feed in feeds.items():
            for key in order:
                began = time.perf_counter()
                sessions[key].run(None, {n: feed[n] for n in names[key]})
                row[key][shape] = 1000 * (time.perf_counter() - began)
        if not meter.finish():
            continue
        for key in keys:
            for shape in SHAPES:
                samples[key][shape].append(row[key][shape])
    medians = {k: {f"b{b}x{n}": round(statistics.median(v), 2) for (b, n), v in per.items()}
               for k, per in samples.items()}
    return medians, meter.summary()


def guard_flips(bundle: Path) -> dict[str, str]:
    """Export's guard record per candidate name (first rung: the recipes as they are), and the kept file's."""
    manifest = json.loads((bundle / "deployft.json").read_text())
    out = {}
    for c in (manifest.get("quantization") or {}).get("candidates") or []:
        g = c.get("guard") or {}
        record = f"{g.get('flips')} of {g.get('rows')} ({'pass' if c['passed'] else 'FAIL'})"
        if c["remedy"] == "none":
            out[c["name"]] = record
        if c.get("kept"):
            out["model_quantized.onnx"] = record if c["remedy"] == "none" else f"{record}, {c['name']}"
    return out


def write(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    labels = [f"b{b}x{n}" for b, n in SHAPES]
    lines = ["# Classifier int8 recipes against dynamic int8 of the plain export", "",
             f"Command: `python benchmarks/int8_recipes.py --bundle {result['bundle']}`  ",
             f"Date: {result['created']}  ", f"Machine: {result['machine']}; {result['threads']} threads, "
             f"no spinning; {result['quiet']['rounds_kept']} interleaved rounds kept ({result['quiet']['rounds_dirty']} of "
             f"them dirty), {result['quiet']['rounds_rejected']} rejected (others used more than "
             f"{result['max_foreign']:.0%} of a core)  ",
             f"Kept by export: `{result['kept']}` (its `model_quantized.onnx`)", "",
             f"Ratios are against `{BASELINE}`: the plain recipe's file with ONNX Runtime's default load-time "
             "fusions, which fuse residual Add + LayerNormalization into SkipLayerNormalization. Every other row "
             "runs in deployft's CPU session, which keeps them apart.", "",
             "| file | guard (export's) | " + " | ".join(f"{s} ms" for s in labels) + " | "
             + " | ".join(f"vs baseline {s}" for s in labels) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in labels * 2) + " |"]
    plain = result["medians"][BASELINE]
    for name, ms in result["medians"].items():
        guard = result["guard"].get(name.split(" (")[0], "-")
        lines.append(f"| {name} | {guard} | " + " | ".join(f"{ms[s]:.2f}" for s in labels)
                     + " | " + " | ".join(f"{plain[s] / ms[s]:.2f}x" for s in labels) + " |")
    deployable = result["medians"]["model_quantized.onnx"]
    if "plain" in result["medians"]:
        same = result["medians"]["plain"]
        lines += ["", "The deployable file against `plain` in the same deployft session (the graph's share alone): "
                  + ", ".join(f"{s} {same[s] / deployable[s]:.2f}x" for s in ("b1x128", "b16x128"))]
    lines += ["", f"Target (issue 11): the deployable file >= 1.3x faster than `{BASELINE}` at b1x128 and b16x128: "
              + ", ".join(f"{s} {plain[s] / deployable[s]:.2f}x" for s in ("b1x128", "b16x128"))
              + (" — met" if all(plain[s] / deployable[s] >= 1.3 for s in ("b1x128", "b16x128")) else " — not met"),
              ""]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/demo/bundle"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "int8_recipes")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from deployft.bench.machine import cpu_info

    manifest_path = args.bundle / "deployft.json"
    if not manifest_path.is_file() or json.loads(manifest_path.read_text()).get("task") != "classify":
        raise SystemExit(f"Error: --bundle {args.bundle} is not a classifier bundle (its deployft.json is missing or "
                         "names another task); pass a folder `deployft export` wrote for a classifier")
    with tempfile.TemporaryDirectory() as work:
        files = build(args.bundle, Path(work))
        files |= {BASELINE: files["plain"], "model_quantized.onnx": args.bundle / "model_quantized.onnx",
                  "model_optimized.onnx (fp32)": args.bundle / "model_optimized.onnx"}
        vocab = json.loads((args.bundle / "config.json").read_text())["vocab_size"]
        medians, quiet = time_all(files, args.threads, args.rounds, args.max_foreign, vocab)
    manifest = json.loads((args.bundle / "deployft.json").read_text())
    info = cpu_info()
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bundle": str(args.bundle),
              "machine": f"{info['model']}, {os.cpu_count()} cores, {', '.join(info.get('flags') or [])}",
              "threads": args.threads, "rounds": args.rounds, "quiet": quiet,
              "max_foreign": args.max_foreign,
              "kept": (manifest.get("quantization") or {}).get("recipe"), "guard": guard_flips(args.bundle),
              "medians": medians}
    write(result, args.output)
    print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
