"""deployft's int4 generator against onnxruntime-genai's int4 at the same block size, through `deployft bench`.

Export's accuracy guard refuses `--quantize int4` on the default generator (benchmarks/int4_defaults.py: perplexity
+67 % and more, over the 10 % budget), so the bench of the default bundle has no deployft int4 row. This script
exports the default generator RUN of benchmarks/run_defaults.py with `--quantize int4` at block 32 and at block 128
with the budget lifted (`--max-accuracy-drop 1000`: the file is kept whatever its perplexity, for timing only; its
perplexity is reported beside its speed), then runs `deployft bench` on each bundle with two variants, its
deployable int4 file (`model_int4.onnx`) and onnxruntime-genai's int4 of the same RUN at the same block size
(`ort-genai-int4`, `ort-genai-int4-b128`, from the peer cache run_defaults.py leaves), interleaved round by
round at the same threads, prompts and new tokens, in clean rounds (the bench's own /proc/stat judge). Results:
benchmarks/results/int4_vs_genai.{json,md}; with `--head-bits 4` (the LM head at 4 bits too, as onnxruntime-genai
writes its own) int4_vs_genai_head4.{json,md}.

    python benchmarks/int4_vs_genai.py                # RUN: outputs/bench-defaults/run-generate
    python benchmarks/int4_vs_genai.py --head-bits 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from deployft.exporter.config import HEAD_BITS  # noqa: E402  (light: no torch, no onnx)
PEER = {32: "ort-genai-int4", 128: "ort-genai-int4-b128"}
"""onnxruntime-genai's int4 variant built at each block size (deployft/bench/peers.py)."""
BENCH = dict(prompt_lens=(16, 64), new_tokens=(32,), repeats=10, warmup=1, eval_samples=40)
"""benchmarks/run_defaults.py's generator settings."""


def measure(run: Path, work: Path, peer_cache: Path, block: int, threads: int, head_bits: int) -> dict:
    """Export RUN at int4 with `block` and `head_bits`, bench it beside onnxruntime-genai's int4 of the same block;
    the rows."""
    from deployft.bench import BenchConfig, benchmark
    from deployft.exporter import ExportConfig, export
    from deployft.manifest import read_manifest

    label = f"int4-b{block}" + ("" if head_bits == 8 else f"-head{head_bits}")
    bundle = export(ExportConfig(run=run, output=work / f"bundle-{label}", quantize="int4", block_size=block,
                                 head_bits=head_bits, max_accuracy_drop=1000, overwrite=True))
    manifest = read_manifest(bundle, "bundle")
    quantization, ours_name = manifest["quantization"], manifest["model_file"]
    report = benchmark(BenchConfig(run=run, bundle=bundle, report=work / f"report-{label}", threads=threads,
                                   overwrite=True, variants=[ours_name, PEER[block]],
                                   peer_cache=peer_cache, **BENCH))
    variants = report.variants
    rows = []
    for prompt in BENCH["prompt_lens"]:
        ours, peer = ({r["variant"]: r for r in report.results if r["prompt_len"] == prompt}[name]
                      for name in (ours_name, PEER[block]))
        rows.append({"prompt_len": prompt, "deployft_tokens_per_s": ours["decode_tokens_per_s"],
                     "genai_tokens_per_s": peer["decode_tokens_per_s"],
                     "ratio": ours["decode_tokens_per_s"] / peer["decode_tokens_per_s"],
                     "deployft_ttft_ms": ours["ttft"]["p50"] * 1e3, "genai_ttft_ms": peer["ttft"]["p50"] * 1e3})
    return {"block": block, "bundle": str(bundle), "file": ours_name, "report": str(report.path),
            "bits": quantization.get("bits"), "head_bits": quantization.get("head_bits"),
            "guard": (quantization.get("attempts") or [{}])[-1].get("guard"),
            "perplexity": {name: (variants[name].get("accuracy") or {}).get("perplexity")
                           for name in (ours_name, PEER[block])},
            "sizes_mb": {name: (variants[name].get("size_bytes") or 0) / 1e6 for name in (ours_name, PEER[block])},
            "rounds": report.data["rounds"], "machine": report.data["machine"], "rows": rows}


def markdown(record: dict) -> str:
    lines = ["# deployft int4 against onnxruntime-genai int4, same block size", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}; RUN `{record['run']}`; "
             f"{record['threads']} threads; the deployft files were exported with the accuracy guard lifted "
             "(`--max-accuracy-drop 1000`): export refuses them at its default budget (int4_defaults.md).", "",
             "| block | prompt | deployft int4 tok/s | onnxruntime-genai int4 tok/s | deployft / genai "
             "| TTFT ms deployft | TTFT ms genai | perplexity deployft | perplexity genai | MB deployft | MB genai "
             "| rounds kept / rejected |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for block in record["blocks"]:
        peer = PEER[block["block"]]
        for row in block["rows"]:
            lines.append(
                f"| {block['block']} | {row['prompt_len']} | {row['deployft_tokens_per_s']:.1f} | "
                f"{row['genai_tokens_per_s']:.1f} | {row['ratio']:.2f}x | {row['deployft_ttft_ms']:.1f} | "
                f"{row['genai_ttft_ms']:.1f} | {block['perplexity'][block['file']]:.2f} | "
                f"{block['perplexity'][peer]:.2f} | {block['sizes_mb'][block['file']]:.1f} | "
                f"{block['sizes_mb'][peer]:.1f} | {block['rounds']['rounds_kept']} / "
                f"{block['rounds']['rounds_rejected']} |")
    head = ("keeps the LM head and the token embedding at 8 bits (export's default)" if record.get("head_bits", 8) == 8
            else f"has its LM head at {record['head_bits']} bits (`--head-bits {record['head_bits']}`) and the "
                 "token embedding at 8")
    lines += ["", f"deployft's int4 {head}; onnxruntime-genai's quantizes its LM head to 4 bits. Each block size "
              "is one `deployft bench` run: the two files' rounds interleave, so their ratio is measured in one "
              "run.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("deployft.bench").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/bench-defaults/run-generate"))
    parser.add_argument("--work", type=Path, default=Path("outputs/int4-vs-genai"))
    parser.add_argument("--peer-cache", type=Path, default=Path("outputs/bench-defaults/peer-cache"),
                        help="where run_defaults.py built onnxruntime-genai's files (built there if missing)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head-bits", type=int, default=8, choices=HEAD_BITS, help="export's --head-bits")
    args = parser.parse_args(argv)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(args.run),
              "threads": args.threads, "head_bits": args.head_bits,
              "command": "python benchmarks/int4_vs_genai.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "blocks": [measure(args.run, args.work, args.peer_cache, block, args.threads, args.head_bits)
                         for block in (32, 128)]}
    stem = "int4_vs_genai" + ("" if args.head_bits == 8 else f"_head{args.head_bits}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n",
                                                     encoding="utf-8")
    (args.results / f"{stem}.md").write_text(markdown(record), encoding="utf-8")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
