"""What the integrity checks cost when a BUNDLE loads, and what `deployft verify` costs.

For each model file of the bundle (default: every .onnx it lists), interleaved round by round:

    check     `deployft.runtime.integrity.check_for_load`: the manifest digest, the names, and the sha256 of every
              file `Predictor.load` reads (the model file, its external weights, tokenizer, configs, template)
    load      `Predictor.load(bundle, model_file=...)` end to end, the check included
    verify    `check_bundle` (what `deployft verify` does): every file the manifest lists

The first round warms the page cache and is dropped: the medians are for a bundle whose files are in memory, as
on a server that has just written or copied them; a cold read from disk adds the disk's read time to both the
check and ONNX Runtime's own read of the model. Wall and CPU seconds are both recorded (CPU: this process, all
threads), with the machine's load average. A timed round counts only if other programs used at most --max-foreign
of a core during it (`deployft.bench.quiet.RoundMeter`: busy time from /proc/stat minus this process's CPU time); a
rejected round is repeated, and after 5 rejections in a row one is kept as dirty and the results say so. The results
record the rounds kept, rejected and dirty and the threshold.

    python benchmarks/bundle_verify.py /tmp/bundle-generate --rounds 5 --output benchmarks/results/bundle_verify
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def _timed(call) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): on a loaded machine the CPU time is the steadier."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(bundle: Path, model_files: list[str], rounds: int, threads: int, max_foreign: float = 0.05) -> dict:
    from deployft.bench.quiet import RoundMeter, kept_rounds
    from deployft.manifest import read_manifest
    from deployft.runtime import Predictor
    from deployft.runtime.integrity import RUNTIME_FILES, check_bundle, check_for_load

    manifest = read_manifest(bundle, "bundle")
    files = manifest["files"]

    def one_round(_kept: int) -> dict[str, tuple[float, float]]:
        timed = {}
        for name in model_files:
            timed[f"check:{name}"] = _timed(lambda: check_for_load(bundle, manifest, name))
            timed[f"load:{name}"] = _timed(lambda: Predictor.load(bundle, model_file=name, threads=threads))
        timed["verify"] = _timed(lambda: check_bundle(bundle, manifest))
        return timed

    one_round(0)  # warms the page cache: not judged, dropped
    meter = RoundMeter(max_share=max_foreign)
    kept = kept_rounds(meter, rounds, one_round)
    times = {key: [round_[key] for round_ in kept] for key in kept[0]}
    rows = []
    for name in model_files:
        external = (manifest["variants"].get(name) or {}).get("external_data") or []
        hashed = sum(files[n]["bytes"] for n in [name, *external, *(f for f in RUNTIME_FILES if f in files)])
        check, load = _median(times[f"check:{name}"]), _median(times[f"load:{name}"])
        rows.append({"model_file": name, "hashed_bytes": hashed, "check_s": check[0], "load_s": load[0],
                     "check_cpu_s": check[1], "load_cpu_s": load[1], "check_share_of_load": check[0] / load[0],
                     "hash_mb_per_s": hashed / 1e6 / check[0], "check_all_wall_cpu_s": times[f"check:{name}"],
                     "load_all_wall_cpu_s": times[f"load:{name}"]})
    total = sum(e["bytes"] for e in files.values())
    verify = _median(times["verify"])[0]
    return {"bundle": str(bundle), "model_type": manifest.get("model_type"), "task": manifest.get("task"),
            "source_model": (manifest.get("source_run") or {}).get("path"),
            "default_model_file": manifest.get("model_file"), "rounds": rounds, "threads": threads,
            "max_foreign": max_foreign, "quiet": meter.summary(),
            "loads": rows, "verify": {"files": len(files), "bytes": total, "seconds": verify,
                                      "mb_per_s": total / 1e6 / verify, "all_wall_cpu_s": times["verify"]}}


def _median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg()}


def markdown(result: dict) -> str:
    from deployft.bench.quiet import rounds_note

    lines = [f"# Integrity checks on load: {result['bundle']}", "",
             f"{result['task']} bundle ({result['model_type']}), default model file `{result['default_model_file']}`; "
             f"median of {result['rounds']} warm rounds (page cache warm), {result['threads']} ONNX Runtime threads.",
             f"Exported from `{result['source_model']}`. {result['note']}".rstrip(),
             f"Machine: {result['machine']['cpus']} CPUs, load average before "
             f"{', '.join(f'{x:.1f}' for x in result['machine']['load_average'])}; after "
             f"{', '.join(f'{x:.1f}' for x in result['load_average_after'])}.", "",
             rounds_note(result["quiet"]), "",
             "| model file | hashed on load | check (s) | Predictor.load (s) | check / load | sha256 MB/s "
             "| check CPU (s) | load CPU (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["loads"]:
        lines.append(f"| `{row['model_file']}` | {row['hashed_bytes'] / 1e6:.1f} MB | {row['check_s']:.3f} | "
                     f"{row['load_s']:.3f} | {row['check_share_of_load']:.0%} | {row['hash_mb_per_s']:.0f} | "
                     f"{row['check_cpu_s']:.3f} | {row['load_cpu_s']:.3f} |")
    verify = result["verify"]
    lines += ["", f"`deployft verify` (every listed file): {verify['files']} files, {verify['bytes'] / 1e6:.1f} MB "
                  f"in {verify['seconds']:.3f} s ({verify['mb_per_s']:.0f} MB/s).", ""]
    return "\n".join(lines)


def write(result: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(markdown(result), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--model-file", action="append", default=None, help="Model file(s) to load (default: all).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bundle_verify"))
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="Largest share of a core other programs may use during a kept round.")
    parser.add_argument("--note", default="", help="How the bundle was made, for the report.")
    args = parser.parse_args()
    from deployft.manifest import read_manifest

    model_files = args.model_file or list(read_manifest(args.bundle, "bundle")["variants"])
    before = machine()
    result = measure(args.bundle, model_files, args.rounds, args.threads, args.max_foreign)
    result["machine"], result["load_average_after"], result["note"] = before, os.getloadavg(), args.note
    write(result, args.output)
    print(markdown(result))


if __name__ == "__main__":
    main()
