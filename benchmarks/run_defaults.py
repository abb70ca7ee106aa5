"""Reproduce the README's benchmark table on the embedded default models.

Fine-tunes the default classifier (all-MiniLM-L6-v2 on Rotten Tomatoes) and generator (SmolLM2-135M-Instruct
on chatterbot pairs) with short settings, exports each to ONNX (fp32, fused, int8), runs
`deployft bench` at 2 threads with the peer engines (OpenVINO for the classifier, onnxruntime-genai and
llama.cpp for the generator), and copies report.json / report.md of each into benchmarks/results/
(bench_classify.*, bench_generate.*), with a summary (results/bench_defaults.md) of the numbers the README
quotes and the machine they were measured on.

    python benchmarks/run_defaults.py                   # both tasks, work files under outputs/bench-defaults
    python benchmarks/run_defaults.py --task classify   # one task
    python benchmarks/run_defaults.py --reuse           # keep RUN and BUNDLE folders from an earlier run
    python benchmarks/run_defaults.py --no-peers        # without the peer engines (OpenVINO, onnxruntime-genai)
    python benchmarks/run_defaults.py --task classify --reuse --provider openvino [--static-shapes]
        # the classifier through ONNX Runtime's OpenVINO provider (the file it picks; dynamic shapes, or a
        # session compiled per shape) beside PyTorch and optimum-intel's OpenVINO:
        # results/bench_classify_openvino[_static].*
    python benchmarks/run_defaults.py --task classify --reuse --quantize int8-static --provider openvino \
        --static-shapes   # a bundle of its own, int8 by NNCF and validated through OpenVINO:
        # results/bench_classify_openvino_static_int8_static.*
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
FINETUNE = {
    "classify": dict(task="classify", max_samples=5000, eval_fraction=0.4, epochs=1, max_length=128, batch_size=16,
                     lr=1e-4),
    "generate": dict(task="generate", max_samples=240, eval_fraction=0.1, max_steps=30, max_length=64, batch_size=4,
                     lr=5e-5),
}
"""Short settings: minutes on 2 cores, enough to move the models off their starting point. The classifier's are
`make demo`'s (5000 rows, 2000 held out), so the two judge int8 on the same number of rows."""
EXPORT = {
    "classify": {},
    "generate": {},
}
"""Export's defaults (docs/folders.md, "The accuracy guard"): at 95 % confidence, at most 3 % of the classifier's
predictions may flip and the generator's perplexity may rise at most 10 %; a classifier's int8 remedies climb until
a file within that agrees with PyTorch on 99 % of the 2000 eval rows (`--min-agreement`)."""
PEERS = {"classify": ("openvino",), "generate": ("ort-genai", "llama.cpp")}
"""Peer engines timed beside deployft's own variants (`deployft[peers]`); one that cannot be installed or built
is reported as failed with its reason. Peer models are built once into WORK/peer-cache."""
BENCH = {
    "classify": dict(batch_sizes=(1, 16), seq_lens=(32, 128), repeats=10, warmup=2, hot_calls=3, eval_samples=2000),
    "generate": dict(prompt_lens=(16, 64), new_tokens=(32,), repeats=10, warmup=1, eval_samples=40),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(task: str, work: Path, reuse: bool, quantize: str = "int8",
            provider: str = "default") -> tuple[Path, Path]:
    """The RUN and BUNDLE of `task`: fine-tuned and exported now, or kept from an earlier `--reuse` run.
    `--quantize int8-static` exports its own bundle, validated through `provider` (openvino: quantized by NNCF)."""
    from deployft import FinetuneConfig, finetune
    from deployft.exporter import ExportConfig, export

    run = work / f"run-{task}"
    bundle = work / (f"bundle-{task}" if quantize == "int8" else f"bundle-{task}-{quantize}-{provider}")
    if not (reuse and (run / "deployft.json").is_file()):
        log(f"fine-tuning the default {task} model")
        finetune(FinetuneConfig(output=str(run), overwrite=True, **FINETUNE[task]))
    if not (reuse and (bundle / "deployft.json").is_file()):
        log(f"exporting {run} (fp32, fused, {quantize})")
        export(ExportConfig(run=run, output=bundle, quantize=quantize, overwrite=True, **EXPORT[task],
                            **({"provider": provider} if quantize != "int8" else {})))
    return run, bundle


def bench(task: str, run: Path, bundle: Path, work: Path, threads: int, variants: str | None, peers: bool,
          provider: str = "default", static_shapes: bool = False):
    from deployft.bench import BenchConfig, benchmark
    from deployft.bench.inputs import available_variants
    from deployft.manifest import read_manifest
    from deployft.runtime.openvino import pick_model_file

    manifest = read_manifest(bundle, "bundle")
    if variants is None and provider == "openvino":  # the file the provider runs by default, beside the peers
        variants = ["pytorch", pick_model_file(manifest, None)[0] or manifest["model_file"],
                    *(PEERS[task] if peers else ())]
    elif variants is None and peers:
        variants = [*available_variants(bundle, manifest), *PEERS[task]]

    log(f"benchmarking {task} at {threads} threads, provider {provider}")
    config = BenchConfig(run=run, bundle=bundle, report=work / f"report-{bundle.name}-{provider}{'-static' if static_shapes else ''}", threads=threads,
                         overwrite=True, variants=variants, peer_cache=work / "peer-cache", provider=provider,
                         static_shapes=static_shapes, **BENCH[task])
    return benchmark(config)


def _row(report, variant: str, **shape):
    for row in report.results:
        if row["variant"] == variant and all(row[k] == v for k, v in shape.items()):
            return row
    return None


def headline(task: str, report) -> list[str]:
    """The numbers the issue asks about, as Markdown lines."""
    variants = report.variants
    int8 = next((n for n, v in variants.items() if v["source"] == "onnx" and v["precision"] == "int8"), None)
    if task == "classify":
        lines = ["### Classifier: batch 1, sequence 128", ""]
        peers = [n for n, v in variants.items() if v["source"] == "peer"]
        for name in ("pytorch", "pytorch-int8", "pytorch-compile", *[n for n in variants if n.endswith(".onnx")],
                     *peers):
            row, acc = _row(report, name, batch=1, seq=128), (variants.get(name) or {}).get("accuracy") or {}
            if name in variants and row:
                lines.append(f"- `{name}`: p50 {row['p50'] * 1e3:.2f} ms, {row['speedup_p50']:.2f}x pytorch, "
                             f"accuracy {acc.get('accuracy', float('nan')):.4f}, top-1 agreement with pytorch "
                             f"{acc.get('agreement_with_pytorch', float('nan')):.4f}")
            elif name in variants:
                lines.append(f"- `{name}`: {variants[name]['status']} {variants[name].get('error') or ''}")
        ref = _row(report, "pytorch-int8", batch=1, seq=128)
        mine = _row(report, int8, batch=1, seq=128) if int8 else None
        if ref and mine:
            lines.append(f"- `{int8}` vs `pytorch-int8`: {ref['p50'] / mine['p50']:.2f}x")
        return lines + fastest_lines(report) + [""]
    lines = ["### Generator: decode tokens/s (greedy, KV cache)", ""]
    for row in sorted(report.results, key=lambda r: (r["prompt_len"], r["variant"])):
        acc = variants[row["variant"]].get("accuracy") or {}
        rate, speedup = row["decode_tokens_per_s"], row["speedup_decode"]
        lines.append(f"- prompt {row['prompt_len']}, `{row['variant']}`: "
                     f"{'–' if rate is None else f'{rate:.1f}'} decode tokens/s "
                     f"({'–' if speedup is None else f'{speedup:.2f}'}x pytorch), TTFT p50 "
                     f"{row['ttft']['p50'] * 1e3:.1f} ms, perplexity {acc.get('perplexity')}, "
                     f"greedy-token agreement {acc.get('token_agreement')}")
    failed = [f"- `{n}`: failed: {v.get('error')}" for n, v in variants.items() if v["status"] != "ok"]
    return lines + failed + fastest_lines(report) + [""]


def fastest_lines(report) -> list[str]:
    """Per shape, the fastest variant and each deployft file's time as a multiple of it."""
    lines = []
    for shape in report.data.get("fastest") or []:
        where = f"b{shape['batch']}x{shape['seq']}" if "batch" in shape else f"prompt {shape['prompt_len']}"
        own = ", ".join(f"`{n}` {r:.2f}x" for n, r in shape["slower_than_fastest"].items()
                        if report.variants[n]["source"] == "onnx")
        lines.append(f"- {where}: fastest `{shape['fastest']}`" + (f"; deployft's files take {own} its time"
                                                                     if own else ""))
    return lines


def publish(name: str, report, results: Path, command: str) -> None:
    """The bench's report.json and report.md (without its plots) as results/bench_`name`.*, with `command`."""
    results.mkdir(parents=True, exist_ok=True)
    data = json.loads((report.path / "report.json").read_text(encoding="utf-8"))
    (results / f"bench_{name}.json").write_text(json.dumps({"command": command, **data}, indent=2) + "\n",
                                                encoding="utf-8")
    title, _, rest = (report.path / "report.md").read_text(encoding="utf-8").partition("\n")
    body = f"{title}\n\nCommand: `{command}`\n" + rest.split("## Plots")[0].rstrip() + "\n"  # PNGs stay in --work
    (results / f"bench_{name}.md").write_text(body, encoding="utf-8")


def summarize(results: Path) -> None:
    """results/bench_defaults.md: the headline numbers of every task recorded so far, and the machine."""
    from deployft.bench import BenchReport
    from deployft.bench.markdown import machine_line

    parts = ["# Benchmarks on the default models", "",
             "Written by `benchmarks/run_defaults.py`; full tables in the bench_*.md files beside this one, "
             "every raw timing in the JSON files.", ""]
    for name in ("classify", "classify_openvino", "classify_openvino_static", "classify_openvino_int8_static",
                 "classify_openvino_static_int8_static", "generate"):
        path = results / f"bench_{name}.json"
        if path.is_file():
            report = BenchReport(results, json.loads(path.read_text(encoding="utf-8")))
            command = report.data.get("command")
            parts += [f"## `bench_{name}`", "",
                      f"Measured {report.data['created']} on {machine_line(report.data)}"
                      + (f" by `{command}`." if command else " (its command's flags were not recorded)."), ""]
            parts += [f"- **warning:** {w}" for w in report.data["warnings"]] + [""]
            parts += headline(report.data["task"], report)
    (results / "bench_defaults.md").write_text("\n".join(parts), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("deployft.bench").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["classify", "generate", "both"], default="both")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-defaults"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--reuse", action="store_true", help="keep RUN and BUNDLE folders already in --work")
    parser.add_argument("--no-peers", action="store_true", help="time deployft's own variants only")
    parser.add_argument("--provider", choices=["default", "openvino"], default="default",
                        help="ONNX Runtime provider of deployft's files (openvino: classify only)")
    parser.add_argument("--quantize", choices=["int8", "int8-static"], default="int8",
                        help="int8-static: a bundle of its own, validated through --provider (openvino: by NNCF)")
    parser.add_argument("--static-shapes", action="store_true",
                        help="with --provider openvino: a session compiled per input shape")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/run_defaults.py", *(sys.argv[1:] if argv is None else argv)])
    if args.provider == "openvino" and args.task != "classify":
        parser.error("--provider openvino is measured on the classifier: pass --task classify")
    if args.static_shapes and args.provider != "openvino":
        parser.error("--static-shapes compiles per shape on OpenVINO: pass --provider openvino")
    tasks = ["classify", "generate"] if args.task == "both" else [args.task]
    for task in tasks:
        run, bundle = prepare(task, args.work, args.reuse, args.quantize, args.provider)
        report = bench(task, run, bundle, args.work, args.threads, args.variants, not args.no_peers, args.provider,
                       args.static_shapes)
        name = task if args.provider == "default" else f"{task}_{args.provider}"
        name += "_static" if args.static_shapes else ""
        publish(name + ("" if args.quantize == "int8" else f"_{args.quantize.replace('-', '_')}"), report,
                args.results, command)
        log(f"{task}: report {report.path / 'report.html'}")
    summarize(args.results)
    print((args.results / "bench_defaults.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
