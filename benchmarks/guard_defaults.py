"""The accuracy guard on the default classifier: what export's int8 check records and decides.

Fine-tunes the default classifier (all-MiniLM-L6-v2 on Rotten Tomatoes; 300 held-out rows), exports it with
`--quantize int8` at export's default budget, and records, per file, the rows the guard
judged, the predictions that flipped against PyTorch, the one-sided 95 % lower bound of top-1 agreement, the
accuracies and the guard's decision, plus every int8 attempt of the remedy ladder, into
benchmarks/results/guard_defaults.{json,md} (recorded before the smoothing rungs and the agreement goal). `--run`
exports an existing RUN instead (guard_default_2000.md: run_defaults.py's classifier, guard_default_demo.md: `make
demo`'s, 2000 eval rows each).

    python benchmarks/guard_defaults.py                 # work files under outputs/guard-defaults
    python benchmarks/guard_defaults.py --reuse         # keep the RUN from an earlier run
    python benchmarks/guard_defaults.py --run outputs/bench-defaults/run-classify --max-accuracy-drop 1.5 \
        --output benchmarks/results/xeon-amx/guard_tight   # an existing RUN, a given budget: the ladder it climbs
    python benchmarks/guard_defaults.py --run outputs/bench-defaults/run-classify \
        --output benchmarks/results/guard_default_2000     # an existing RUN (2000 eval rows) at export's default
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
FINETUNE = dict(task="classify", max_samples=1500, eval_fraction=0.2, epochs=1, max_length=128, batch_size=16,
                lr=1e-4)
"""300 held-out rows, 1200 training rows: 25 minutes on 2 busy cores."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def finetuned(work: Path, reuse: bool) -> Path:
    from deployft import FinetuneConfig, finetune

    run = work / "run"
    if not (reuse and (run / "deployft.json").is_file()):
        log("fine-tuning the default classifier")
        finetune(FinetuneConfig(output=str(run), overwrite=True, **FINETUNE))
    return run


def max_flips(rows: int, budget: float) -> int:
    """The most flipped predictions of `rows` that pass `budget` (% flipped, 95 % upper bound); -1: none pass."""
    from deployft.exporter.agreement import binomial_upper_bound

    flips = -1
    while flips + 1 < rows and 100 * binomial_upper_bound(flips + 1, rows) <= budget:
        flips += 1
    return flips


def decision_table(rows_list=(300, 600, 2000), budgets=(1.5, 2.0, 3.0, 5.0)) -> list[dict]:
    """For each rows x budget: the most flips that pass, as a count and a share, and the fewest rows any file needs."""
    from deployft.exporter.agreement import rows_needed

    return [{"rows": rows, "budget": budget, "max_flips": max_flips(rows, budget),
             "max_flip_share": max_flips(rows, budget) / rows, "rows_needed": rows_needed(budget / 100)}
            for rows in rows_list for budget in budgets]


def exported(run: Path, work: Path, budget: float | None = None) -> dict:
    """Export `run` with --quantize int8 at export's default rows and `budget` (export's default when None); the
    manifest, or the refusal and its attempts."""
    from deployft.errors import AccuracyBudgetError
    from deployft.exporter import ExportConfig, export
    from deployft.manifest import read_manifest

    log(f"exporting with --quantize int8 at the default rows, budget {budget if budget is not None else 'default'}")
    try:
        return {"manifest": read_manifest(export(ExportConfig(run=run, output=work / "bundle", quantize="int8",
                                                              max_accuracy_drop=budget, overwrite=True)), "bundle")}
    except AccuracyBudgetError as exc:
        return {"refused": str(exc), "attempts": exc.attempts, "budget": exc.budget}


def summary(outcome: dict) -> dict:
    """What the results keep of the export: the guard, each file's decision, accuracy and own op counts."""
    if "manifest" not in outcome:
        return outcome
    m = outcome["manifest"]
    files = {name: {"precision": v["precision"], "nodes": sum(v["ops"].values()),
                    "attention_ops": {op: n for op, n in v["ops"].items() if "Attention" in op},
                    "guard": v["validation"]["guard"], "accuracy": v["validation"].get("accuracy"),
                    "accuracy_pytorch": v["validation"].get("accuracy_pytorch"),
                    "max_abs_logit_diff": v["validation"]["max_abs_logit_diff"]}
             for name, v in m["variants"].items()}
    return {"model_file": m["model_file"], "accuracy_budget": m["accuracy_budget"], "guard": m["guard"],
            "validation_inputs": m["validation_inputs"], "files": files,
            "attempts": (m["quantization"] or {}).get("attempts"), "remedy": (m["quantization"] or {}).get("remedy"),
            "candidates": (m["quantization"] or {}).get("candidates"),
            "selection": (m["quantization"] or {}).get("selection")}


def markdown(record: dict) -> str:
    lines = ["# The accuracy guard on the default classifier", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ", f"Machine: {record['machine']}", "",
             (f"RUN: `{record['run']}` (given with --run)." if record.get("run") else
              f"RUN: default classifier fine-tuned with {record['finetune']}."), ""]
    result = record["export"]
    if "refused" in result:
        lines += [f"Export refused int8: {result['refused']}", ""]
    else:
        lines += [f"Deployable file: `{result['model_file']}` (remedy: {result['remedy']}); rows: "
                  f"{result['guard']['rows']} ({result['guard']['rows_source']}).", "",
                  f"Budget: {result['accuracy_budget']['max_drop']:g} "
                  f"({result['accuracy_budget'].get('origin', '--max-accuracy-drop')}).", "",
                  f"Rule: {result['guard']['rule']}", "",
                  "| file | precision | nodes | attention ops | rows | flips | agreement | 95 % lower bound | "
                  "threshold | decision | accuracy | PyTorch accuracy |", "|" + " --- |" * 12]
        for name, f in result["files"].items():
            g = f["guard"]
            lines.append(f"| {name} | {f['precision']} | {f['nodes']} | {f['attention_ops'] or 'none'} | {g['rows']} | "
                         f"{g['flips']} | {g['agreement']:.4f} | {g['agreement_lower_95']:.4f} | "
                         f"{g['min_agreement']:.4f} | {'pass' if g['passed'] else 'FAIL'} | {f['accuracy']:.4f} | "
                         f"{f['accuracy_pytorch']:.4f} |")
        lines.append("")
    selection = result.get("selection") or {}
    if selection.get("agreement_goal"):
        outcome = ("reached" if selection["agreement_goal_reached"]
                   else "not reached; the first rung within budget kept")
        lines += [f"Agreement goal (--min-agreement): {selection['agreement_goal']:g}, {outcome}.", ""]
    lines += ["Int8 attempts (the int8 candidates, then the remedy ladder until a file within budget reached the "
              "agreement goal):", ""]
    for attempt in result.get("attempts") or []:
        g = attempt["guard"]
        lines.append(f"- {attempt['remedy']}: {g['flips']} of {g['rows']} flipped ({g['agreement']:.2%} agree), upper "
                     f"bound {attempt['drop']:.2f} % -> {'pass' if g['passed'] else 'FAIL'}")
    kept = [c for c in result.get("candidates") or [] if c.get("ms")]
    if kept:
        lines += ["", "Timed by export (the candidates within budget; median ms per shape, `*` kept):", ""]
        for c in kept:
            shapes = ", ".join(f"{shape} {ms:.2f}" for shape, ms in c["ms"].items())
            lines.append(f"- {c['name']}{' *' if c['kept'] else ''}: {shapes}")
    lines += ["", "What the rule allows (computed, no model): the most flipped predictions that pass, and the fewest "
              "rows on which a file that flips nothing can pass.", "",
              "| rows | budget (% flipped, 95 % upper bound) | most flips that pass | share | rows needed |",
              "| --- | --- | --- | --- | --- |"]
    for row in record["decision_table"]:
        lines.append(f"| {row['rows']} | {row['budget']:g} | {row['max_flips']} | {row['max_flip_share']:.2%} | "
                     f"{row['rows_needed']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("outputs/guard-defaults"))
    parser.add_argument("--reuse", action="store_true", help="keep the RUN of an earlier run")
    parser.add_argument("--finetune-only", action="store_true", help="stop after the RUN is written")
    parser.add_argument("--run", type=Path, help="export this RUN instead of fine-tuning one")
    parser.add_argument("--max-accuracy-drop", type=float, default=None, help="export's budget (default: its own)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "guard_defaults")
    args = parser.parse_args(argv)
    if args.run and not (args.run / "deployft.json").is_file():
        raise SystemExit(f"Error: --run {args.run} is not a RUN folder (no deployft.json); pass a folder "
                         "`deployft finetune` wrote")
    run = args.run or finetuned(args.work, args.reuse)
    if args.finetune_only:
        return 0
    import torch

    given = argv if argv is not None else sys.argv[1:]
    record = {"command": " ".join(["python", "benchmarks/guard_defaults.py", *given]),
              "run": str(args.run) if args.run else None,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"load average {os.getloadavg()[0]:.2f}",
              "finetune": None if args.run else FINETUNE,
              "export": summary(exported(run, args.work, args.max_accuracy_drop)), "decision_table": decision_table()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(markdown(record), encoding="utf-8")
    log(f"wrote {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
