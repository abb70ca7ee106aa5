"""The serve engine's joins, in place against rebuilt, without HTTP: what writing a joining request into a finished
row's slot of the shared KV cache buys over rebuilding the whole cache through numpy.

Drives `deployft.serve.engine.GenerationEngine` in this process on a generator bundle whose cache may be shared
(deployft's fused CPU decoders), the way `deployft serve` does (2 threads, no spinning): `concurrency` requests are
in flight, each finished one is replaced by the next until `--requests` have run, greedy, up to `--max-tokens` new
tokens each, on serve_load's chat prompts. Two engines take turns round by round: `in-place` (as shipped) and
`rebuild` (the same engine with in-place joins turned off, so every join rebuilds the cache). Both decode greedily;
on an int8 file the two can still end some requests at different lengths (a row's batch neighbours change the
matrix shapes, hence float rounding, hence near-tie tokens), so tokens per round are reported for each. A round
(both engines) is kept only when other programs used at most --max-foreign of a core during it
(`deployft.bench.quiet.RoundMeter`: busy time from /proc/stat minus this process's CPU time); rejected rounds are
repeated and counted, and after 5 in a row one is kept and counted dirty.
Reports tokens/s per engine and concurrency (median of the clean rounds), their ratio, and how many joins each
engine made in place and how many cache rebuilds it did.

    python benchmarks/serve_engine_join.py --bundle outputs/bench-defaults/bundle-generate --rounds 7   # recorded
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MODES = ("in-place", "rebuild")


def engine_for(predictor, mode: str, concurrency: int, total: int):
    """An engine of `mode` whose cache rebuilds and in-place joins are counted in `engine.counts`."""
    from deployft.serve.engine import GenerationEngine

    engine = GenerationEngine(predictor, max_batch_size=concurrency, max_queue=total)
    engine.counts = {"rebuilds": 0, "in_place_joins": 0}
    set_cache, fill = engine._set_cache, engine._fill_free_slots

    def counted_set_cache(arrays):
        engine.counts["rebuilds"] += 1
        set_cache(arrays)

    def counted_fill(joined):
        rest = fill(joined) if mode == "in-place" else joined
        engine.counts["in_place_joins"] += len(joined) - len(rest)
        return rest

    engine._set_cache, engine._fill_free_slots = counted_set_cache, counted_fill
    return engine


def workload(predictor, mode: str, prompts: list[list[int]], concurrency: int, total: int,
             max_tokens: int | list[int]) -> dict:
    """Run `total` requests with `concurrency` in flight (request i: prompt and max_tokens i, cycled); returns
    tokens, wall time and the engine's counts."""
    from deployft.runtime import GenerationOptions
    from deployft.serve.engine import Ticket

    engine = engine_for(predictor, mode, concurrency, total)
    budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens]
    finished: list = []
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        ids, budget = prompts[submitted % len(prompts)], budgets[submitted % len(budgets)]
        engine.submit(Ticket(ids, GenerationOptions(max_new_tokens=budget),
                             lambda chunk: finished.append(chunk) if chunk.finish_reason else None))
        submitted += 1

    for _ in range(min(concurrency, total)):
        submit()
    started, seen = time.perf_counter(), 0
    while len(finished) < total:
        engine.run_once()
        for _ in range(len(finished) - seen):
            if submitted < total:
                submit()
        seen = len(finished)
    wall = time.perf_counter() - started
    errors = [c.error for c in finished if c.error]
    if errors:
        raise SystemExit(f"{mode}: a request failed: {errors[0]}")
    tokens = sum(c.completion_tokens for c in finished)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, **engine.counts}


def measure(predictor, prompts, concurrency: int, args) -> dict:
    """`args.rounds` kept rounds, each running both engines (in turns), judged as one by `RoundMeter`."""
    from deployft.bench.quiet import RoundMeter, kept_rounds

    rounds: dict[str, list[dict]] = {m: [] for m in MODES}
    meter = RoundMeter(max_share=args.max_foreign)
    workload(predictor, "in-place", prompts, concurrency, concurrency, 4)  # warm-up

    def one_round(_kept: int) -> dict:
        order = MODES if (meter.kept + meter.rejected) % 2 == 0 else MODES[::-1]  # a repeated round swaps too
        return {mode: workload(predictor, mode, prompts, concurrency, args.requests, args.max_tokens)
                for mode in order}

    for results in kept_rounds(meter, args.rounds, one_round):
        for mode in MODES:
            rounds[mode].append(results[mode])
    median = {m: statistics.median(r["tokens_per_s"] for r in rounds[m]) for m in MODES}
    return {"concurrency": concurrency, "quiet": meter.summary(),
            "tokens_per_s": {m: round(v, 1) for m, v in median.items()},
            "ratio": round(median["in-place"] / median["rebuild"], 3),
            "tokens_per_round": {m: rounds[m][0]["tokens"] for m in MODES},
            "counts": {m: {k: rounds[m][0][k] for k in ("rebuilds", "in_place_joins")} for m in MODES},
            "rounds": rounds}


def write(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# Serve engine: joins in place against rebuilt (no HTTP)", "",
             f"Command: `python benchmarks/serve_engine_join.py --bundle {result['bundle']} --rounds {result['rounds']}`  ",
             f"Date: {result['created']}  ", f"Machine: {result['machine']}; 2 threads, no spinning; "
             f"{result['requests']} greedy requests per round, up to {result['max_tokens']} new tokens each", "",
             "| concurrency | rounds kept | rejected | tokens per round (in-place / rebuild) | in-place tokens/s | rebuild tokens/s | ratio "
             "| in-place: joins in place / rebuilds | rebuild: rebuilds |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in result["results"]:
        c, q = r["counts"], r["quiet"]
        lines.append(f"| {r['concurrency']} | {q['rounds_kept']} ({q['rounds_dirty']} dirty) | {q['rounds_rejected']} | "
                     f"{r['tokens_per_round']['in-place']} / {r['tokens_per_round']['rebuild']} | "
                     f"{r['tokens_per_s']['in-place']} | {r['tokens_per_s']['rebuild']} | {r['ratio']:.2f}x | "
                     f"{c['in-place']['in_place_joins']} / {c['in-place']['rebuilds']} | {c['rebuild']['rebuilds']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/bench-defaults/bundle-generate"))
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "serve_engine_join")
    args = parser.parse_args()
    from deployft.bench.machine import cpu_info
    from deployft.runtime import Predictor
    from serve_load import PROMPTS, SYSTEM

    from deployft.errors import DeployftError

    try:
        predictor = Predictor.load(args.bundle, threads=2, spinning=False)
    except DeployftError as exc:
        raise SystemExit(f"Error: --bundle {args.bundle}: {exc}") from None
    if predictor.decoder is None:
        raise SystemExit(f"Error: --bundle {args.bundle} is a classifier; pass a generator bundle")
    if not predictor.decoder.shares_cache:
        raise SystemExit(f"{args.bundle}'s decoder does not share its cache: nothing to compare; use a fused CPU bundle")
    prompts = [predictor.prompt_ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}])
               for p in PROMPTS]
    results = []
    for concurrency in args.concurrency:
        results.append(measure(predictor, prompts, concurrency, args))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "rounds"}), flush=True)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bundle": str(args.bundle),
              "machine": f"{cpu_info()['model']}, {os.cpu_count()} cores", "requests": args.requests,
              "max_tokens": args.max_tokens, "rounds": args.rounds, "max_foreign": args.max_foreign,
              "results": results}
    write(result, args.output)
    print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
