"""Generating a file of prompts whose completions end at different steps: a batch that drops its finished rows
against one that runs every row until its last row ends.

`deployft predict` generates a file in batches of `--batch-size` prompts (32 by default), each one left-padded
batch (`Predictor.generate`). A row that reaches its end token early used to stay in the batch, fed padding, until
the batch's longest completion ended; the batch now drops its finished rows once they are
`runtime.generation.DROP_FINISHED_SHARE` of the rows it holds (one copy of the cache each time). This script runs
the same prompts both ways through one Predictor, greedy, interleaved round by round (the order alternates):

    drop      the runtime as it is (DROP_FINISHED_SHARE as shipped, or --share)
    keep      DROP_FINISHED_SHARE set above 1: finished rows are dropped only at the model's position limit, as
              before

The texts of both must be identical (the script fails otherwise). The prompts are the RUN's distinct prompts, its
eval rows' first, then its training rows' (what the model answers as it was taught), or a JSONL file's `prompt`
column. A round counts only if other programs used at
most --max-foreign of a core during it (`deployft.bench.quiet`); a rejected round is repeated.

    python benchmarks/generate_uneven.py outputs/bench-defaults/bundle-generate \\
        --run outputs/bench-defaults/run-generate --prompts-count 64 --rounds 5 \\
        --output benchmarks/results/generate_uneven
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

POLICIES = {"drop": None, "keep": float("inf")}
"""DROP_FINISHED_SHARE for each policy; None: as shipped."""


def _prompts(run: Path | None, prompts_file: Path | None, count: int) -> list[str]:
    if prompts_file is not None:
        rows = [json.loads(line) for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from deployft.data.examples import load_run_examples

        rows = load_run_examples(run, "eval") + load_run_examples(run, "train")
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))[:count]  # each prompt once
    if len(prompts) < count:
        raise SystemExit(f"only {len(prompts)} prompts, --prompts-count {count} asked")
    return prompts


def measure(bundle: Path, prompts: list[str], batch_size: int, max_new_tokens: int, rounds: int, threads: int,
            max_foreign: float, share: float | None = None) -> dict:
    from deployft.bench.quiet import RoundMeter, kept_rounds
    from deployft.runtime import Predictor, generation

    predictor = Predictor.load(bundle, threads=threads)
    shipped = generation.DROP_FINISHED_SHARE
    drop = shipped if share is None else share
    texts: dict[str, list[str]] = {}

    def run(policy: str) -> float:
        share = POLICIES[policy]
        generation.DROP_FINISHED_SHARE = drop if share is None else share
        try:
            start, out = time.perf_counter(), []
            for first in range(0, len(prompts), batch_size):
                out += predictor.generate(prompts[first:first + batch_size], max_new_tokens=max_new_tokens)
            seconds = time.perf_counter() - start
        finally:
            generation.DROP_FINISHED_SHARE = shipped
        if texts.setdefault(policy, out) != out:
            raise SystemExit(f"{policy}: the texts differ between rounds")
        return seconds

    def one_round(k: int) -> dict[str, float]:
        order = ["drop", "keep"] if k % 2 == 0 else ["keep", "drop"]
        return {policy: run(policy) for policy in order}

    for policy in POLICIES:  # warm-up, and the texts every round must repeat
        run(policy)
    if texts["drop"] != texts["keep"]:
        differ = sum(a != b for a, b in zip(texts["drop"], texts["keep"]))
        raise SystemExit(f"{differ} of {len(prompts)} texts differ between the two policies")
    meter = RoundMeter(max_share=max_foreign)
    kept = kept_rounds(meter, rounds, one_round)
    seconds = {policy: [r[policy] for r in kept] for policy in POLICIES}
    medians = {policy: statistics.median(values) for policy, values in seconds.items()}
    lengths = [len(predictor.codec.encode_one(text, add_special_tokens=False)) for text in texts["drop"]]
    return {"bundle": str(bundle), "model_file": predictor.manifest.get("model_file"), "prompts": len(prompts),
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "threads": threads,
            "drop_finished_share": drop, "shipped_share": shipped, "seconds": seconds, "median_s": medians,
            "speedup": medians["keep"] / medians["drop"], "completion_tokens": lengths,
            "identical_texts": True, "quiet": meter.summary()}


def machine() -> dict:
    from deployft.bench.machine import cpu_info

    return {"cpu": cpu_info()["model"], "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_average": os.getloadavg()}


def markdown(result: dict) -> str:
    from deployft.bench.quiet import rounds_note

    medians, lengths = result["median_s"], result["completion_tokens"]
    lines = [f"# Uneven completions: dropping finished rows from a batch ({result['bundle']})", "",
             f"Command: `{result['command']}`  ",
             f"Date: {result['date']}  ",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} logical cores; "
             f"{result['threads']} ONNX Runtime threads; load average before "
             f"{', '.join(f'{x:.2f}' for x in result['machine']['load_average'])}", "",
             f"`{result['model_file']}`, {result['prompts']} prompts (the RUN's) in batches of "
             f"{result['batch_size']}, greedy, max_new_tokens {result['max_new_tokens']}; the texts of both "
             f"policies identical. DROP_FINISHED_SHARE {result['drop_finished_share']} (shipped: "
             f"{result.get('shipped_share', result['drop_finished_share'])}).", "",
             rounds_note(result["quiet"]), ""]
    if lengths:
        lines += [f"Completion lengths (tokens of the returned text): min {min(lengths)}, median "
                  f"{statistics.median(lengths):g}, max {max(lengths)}.", ""]
    lines += ["| policy | median s | rounds (s) |", "| --- | ---: | --- |"]
    for policy in POLICIES:
        lines.append(f"| {policy} | {medians[policy]:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in result['seconds'][policy])} |")
    lines += ["", f"Dropping finished rows: **{result['speedup']:.2f}x** (keep's median over drop's).", ""]
    return "\n".join(lines)


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--run", type=Path, help="The RUN whose eval prompts to generate.")
    parser.add_argument("--prompts", type=Path, help="A JSONL file with a `prompt` column instead of --run.")
    parser.add_argument("--prompts-count", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="Largest share of a core other programs may use during a kept round.")
    parser.add_argument("--share", type=float, help="DROP_FINISHED_SHARE of the drop policy (default: as shipped).")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/generate_uneven"))
    args = parser.parse_args()
    if (args.run is None) == (args.prompts is None):
        parser.error("pass --run or --prompts")
    before = machine()
    prompts = _prompts(args.run, args.prompts, args.prompts_count)
    result = measure(args.bundle, prompts, args.batch_size, args.max_new_tokens, args.rounds, args.threads,
                     args.max_foreign, args.share)
    result.update(machine=before, load_average_after=os.getloadavg(), command="python " + " ".join(sys.argv),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
