"""What the accuracy guard decides for `--quantize int4` (and int8) on the default generator.

Exports the default generator RUN of benchmarks/run_defaults.py with `--quantize int4` at export's default budget
(perplexity at most +10 % at the 95 % upper bound) and records every attempt of the remedy ladder: its perplexity
ratio, upper bound, greedy-token agreement and whether it passed, or the file kept. Results:
benchmarks/results/int4_defaults.{json,md}.

    python benchmarks/int4_defaults.py                    # RUN: outputs/bench-defaults/run-generate
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


def attempt_rows(attempts: list[dict]) -> list[str]:
    rows = ["| remedy | perplexity ratio | 95 % upper bound | greedy-token agreement | passed |", "|---|---|---|---|---|"]
    for a in attempts:
        g = a.get("guard") or {}
        rows.append(f"| {a['remedy']} | {g.get('perplexity_ratio', float('nan')):.3f} | "
                    f"{g.get('perplexity_ratio_upper_95', float('nan')):.3f} | "
                    f"{g.get('greedy_token_agreement', float('nan')):.3f} | {g.get('passed')} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    from deployft.errors import AccuracyBudgetError
    from deployft.exporter import ExportConfig, export
    from deployft.manifest import read_manifest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/bench-defaults/run-generate"))
    parser.add_argument("--work", type=Path, default=Path("outputs/int4-defaults"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(args.run),
              "command": "python benchmarks/int4_defaults.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        bundle = export(ExportConfig(run=args.run, output=args.work / "bundle", quantize="int4", overwrite=True))
        q = read_manifest(bundle, "bundle")["quantization"]
        record.update(outcome="kept", remedy=q["remedy"], attempts=q["attempts"], bits=q.get("bits"))
    except AccuracyBudgetError as exc:
        record.update(outcome="refused", error=str(exc), attempts=exc.attempts, budget=exc.budget)
    lines = ["# `--quantize int4` on the default generator", "", f"Command: `{record['command']}`  ",
             f"Date: {record['date']}; RUN `{record['run']}`", "",
             f"Outcome: **{record['outcome']}**" + (f" ({record.get('error')})" if record["outcome"] == "refused" else
                                                  f", remedy {record.get('remedy')}"), "",
             *attempt_rows(record["attempts"]), ""]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "int4_defaults.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    (args.results / "int4_defaults.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
