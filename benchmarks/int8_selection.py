"""Measured int8 selection on the default classifier: every candidate export builds, its guard record, size and
timing at the bundle's typical shapes, and the file export keeps.

Exports a classifier RUN (default: outputs/bench-defaults/run-classify from benchmarks/run_defaults.py, all-MiniLM-L6-v2
fine-tuned, 2000 eval rows) with
`--quantize int8 --select fastest` at export's default budget and rows, and records `quantization.candidates` and
`quantization.selection` from the bundle's manifest, with the machine and its load before and after, into
benchmarks/results/int8_selection.{json,md}. Run it on a quiet machine: the timing is export's own, interleaved,
but a busy neighbour still moves every number.

    python benchmarks/int8_selection.py                                  # the recorded result
    python benchmarks/int8_selection.py --select-seconds 5 --validate-samples 60 --results /tmp/smoke   # smoke
    python benchmarks/int8_selection.py --bundle outputs/bench-defaults/bundle-classify   # record a bundle's own
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
DEFAULT_RUN = Path("outputs/bench-defaults/run-classify")
"""The default classifier RUN that benchmarks/run_defaults.py fine-tunes (2000 eval rows)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cpu() -> str:
    """The CPU model and the instruction-set extensions that decide int8 speed."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace") if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
    return f"{model}; {', '.join(f for f in wanted if f in flags) or 'no avx2'}"


def export_with_selection(run: Path, work: Path, select: str, seconds: float, rows: int | None) -> dict:
    from deployft.exporter import ExportConfig, export
    from deployft.manifest import read_manifest

    log(f"exporting {run} with --quantize int8 --select {select} --select-seconds {seconds}")
    bundle = export(ExportConfig(run=run, output=work / "bundle", quantize="int8", select=select,
                                 select_seconds=seconds, validate_samples=rows, overwrite=True))
    return read_manifest(bundle, "bundle")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(record: dict) -> str:
    q, selection = record["quantization"], record["quantization"]["selection"]
    shapes = selection.get("shapes") or []
    lines = ["# Measured int8 selection on the default classifier", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ", f"Machine: {record['machine']}  ",
             (f"Load average (1 min) before / after: {record['load_before']:.2f} / {record['load_after']:.2f}"
              if record["load_before"] is not None else
              "Recorded from the bundle's manifest: the timing is the export's own, run when the bundle was exported"),
             "",
             f"RUN: `{record['run']}`; guard: {record['guard']['rows']} {record['guard']['rows_source']} rows, "
             f"{record['guard']['rule']}", "",
             f"Kept: `{q['recipe']}` as model_quantized.onnx by --select {selection['rule']} "
             f"({selection['score']}); {selection.get('rounds')} interleaved rounds in {selection.get('seconds')} s, "
             f"{selection['threads']}.", "", f"Note: {selection['note']}", "",
             "| candidate | quantized from | flips | 95 % bound (% flipped) | guard | MB | "
             + " | ".join(f"{s} ms" for s in shapes) + " | geo-mean ms | vs plain |",
             "|" + " --- |" * (8 + len(shapes))]
    for c in q["candidates"]:
        verdict = "skipped" if c["skipped"] else ("pass" if c["passed"] else "FAIL")
        ms = [_num(c["ms"] and c["ms"][s], "{:.2f}") for s in shapes]
        cells = [f"{c['name']}{' (kept)' if c['kept'] else ''}", c["quantized_from"] or "-",
                 str(c["guard"].get("flips", "-")), _num(c["drop"], "{:.2f}"), verdict,
                 _num(c["bytes"] and c["bytes"] / 1e6, "{:.1f}"), *ms, _num(c["score_ms"], "{:.2f}"),
                 _num(c["vs_plain"], "{:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"Skipped {c['name']}: {c['skipped']}" for c in q["candidates"] if c["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN)
    parser.add_argument("--work", type=Path, default=Path("outputs/int8-selection"))
    parser.add_argument("--select", default="fastest", choices=("fastest", "smallest"))
    parser.add_argument("--select-seconds", type=float, default=60.0)
    parser.add_argument("--validate-samples", type=int, default=None, help="default: export's (all eval rows)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="record the selection an existing bundle's export made instead of exporting again")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    if args.bundle is not None:
        from deployft.manifest import read_manifest

        manifest = read_manifest(args.bundle, "bundle")
        args.run = Path(manifest["source_run"]["path"])
    else:
        manifest = export_with_selection(args.run, args.work, args.select, args.select_seconds, args.validate_samples)
    import onnxruntime

    record = {"command": "python benchmarks/int8_selection.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} logical cores, {cpu()}, "
                         f"onnxruntime {onnxruntime.__version__}",
              "load_before": None if args.bundle else load_before,
              "load_after": None if args.bundle else os.getloadavg()[0], "run": str(args.run),
              "guard": manifest["guard"], "quantization": manifest["quantization"],
              "deployable_ops": manifest["variants"][manifest["model_file"]]["ops"]}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "int8_selection.json").write_text(json.dumps(record, indent=2, default=str) + "\n",
                                                      encoding="utf-8")
    (args.results / "int8_selection.md").write_text(markdown(record), encoding="utf-8")
    log(f"wrote {args.results / 'int8_selection.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
