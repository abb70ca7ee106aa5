"""Training throughput of the default classifier: deployft's recipe against the usual pad-to-128 recipe.

Both runs use the same Trainer, model (all-MiniLM-L6-v2), data (default Rotten Tomatoes snippets),
batch size, learning rate and number of steps. They differ only in batching:

    deployft   dynamic padding (each batch padded to its longest example) + length-grouped batches
    baseline   every example padded to max_length 128, random batches (the usual recipe)

Rounds alternate between the two so machine load hits both alike. A round (both trainings) counts only if other
programs used at most --max-foreign of a core during it (`deployft.bench.quiet.RoundMeter`: busy time from
/proc/stat minus this process's CPU time); a rejected round is repeated, and after 5 rejections in a row one is kept
as dirty and the results say so. Results go to benchmarks/results/finetune_throughput.{json,md}, with the rounds
kept, rejected and dirty and the threshold.

    python benchmarks/finetune_throughput.py --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _job(args):
    from deployft.train.engine import prepare
    from deployft.tasks import get_task
    from deployft.train import FinetuneConfig

    config = FinetuneConfig(task="classify", max_samples=args.max_samples, max_length=128,
                            batch_size=args.batch_size, lr=5e-5, seed=0, max_steps=args.steps)
    return config, get_task("classify"), prepare(config, get_task("classify"))


def _padded_collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=128)


class _CountingCollator:
    """Wraps a collator to record each batch's padded width (tokens per example actually computed)."""

    def __init__(self, inner):
        self.inner, self.widths = inner, []

    def __call__(self, features):
        batch = self.inner(features)
        self.widths.append(batch["input_ids"].shape[1])
        return batch


def _train_once(config, task, job, recipe: str, work: Path) -> dict:
    """Train `config.max_steps` steps from the same initial weights; return samples/s and tokens per batch."""
    import torch
    from transformers import set_seed

    from deployft.train.engine import build_trainer
    from deployft.train.models import load_model

    set_seed(0)
    job.model = load_model(job.base_model, task, job.examples.labels, job.tokenizer)
    overrides = {"eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False,
                 "disable_tqdm": True, "logging_strategy": "no"}
    if recipe == "baseline":
        overrides["group_by_length"] = False
    trainer = build_trainer(config, task, job, work / recipe, **overrides)
    if recipe == "baseline":
        trainer.data_collator = _padded_collator(job.tokenizer)
    trainer.data_collator = counting = _CountingCollator(trainer.data_collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    samples = config.max_steps * config.batch_size
    return {"recipe": recipe, "seconds": round(seconds, 3), "samples_per_s": round(samples / seconds, 2),
            "mean_tokens_per_example": round(statistics.mean(counting.widths), 1), "threads": torch.get_num_threads()}


def measure(config, task, job, rounds: int, max_foreign: float, work: Path) -> tuple[list[dict], dict]:
    """Every training of `rounds` kept rounds (each both recipes, in alternating order), and the meter's summary.
    Each training's line is printed once its round is judged, a rejected round's marked `"rejected": true` (the
    results hold the kept rounds only)."""
    from deployft.bench.quiet import RoundMeter, kept_rounds

    def one_round(kept: int) -> list[dict]:
        round_ = kept + 1
        order = ("deployft", "baseline") if round_ % 2 else ("baseline", "deployft")
        return [{"round": round_, **_train_once(config, task, job, recipe, work)} for recipe in order]

    def judged(runs: list[dict], kept: bool) -> None:
        for run in runs:
            print(json.dumps(run if kept else {**run, "rejected": True}), flush=True)

    meter = RoundMeter(max_share=max_foreign)
    pairs = kept_rounds(meter, rounds, one_round, on_judged=judged)
    return [run for pair in pairs for run in pair], meter.summary()


def _machine() -> dict:
    import psutil
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_1m_before": round(os.getloadavg()[0], 2),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)}


def _markdown(report: dict) -> str:
    from deployft.bench.quiet import rounds_note

    lines = ["# Fine-tuning throughput: deployft vs pad-to-128", "",
             f"Command: `{report['command']}`  ", f"Date: {report['created']}  ",
             "Machine: {cpu}, {cores} cores, {memory_gb} GB, torch {torch} with {torch_threads} threads, "
             "load average {load_avg_1m_before} before".format(**report["machine"]), "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in report["settings"].items()), "",
             "| recipe | round | samples/s | mean tokens per example | seconds |", "| --- | --- | --- | --- | --- |"]
    for run in report["runs"]:
        lines.append(f"| {run['recipe']} | {run['round']} | {run['samples_per_s']} | "
                     f"{run['mean_tokens_per_example']} | {run['seconds']} |")
    s = report["summary"]
    lines += ["", f"Median samples/s: deployft {s['deployft_samples_per_s']}, baseline {s['baseline_samples_per_s']}"
              f" -> **{s['speedup']}x** (expected at least 2x).", "",
              rounds_note(report["quiet"]), "",
              f"Load average (1 min) after: {report['load_avg_1m_after']} on {report['machine']['cores']} cores "
              "(the machine is shared; ratios from one interleaved run are what to compare)."]
    return "\n".join(lines) + "\n"


def write(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "finetune_throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "finetune_throughput.md").write_text(_markdown(report), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="largest share of a core other programs may use during a kept round")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = _machine()
    config, task, job = _job(args)
    with tempfile.TemporaryDirectory() as work:
        runs, quiet = measure(config, task, job, args.rounds, args.max_foreign, Path(work))
    median = {r: statistics.median(x["samples_per_s"] for x in runs if x["recipe"] == r)
              for r in ("deployft", "baseline")}
    report = {
        "command": "python benchmarks/finetune_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "results"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
        "settings": {"model": job.base_model, "data": "default:rotten_tomatoes",
                     "train_examples": len(job.train_features),
                     "steps": args.steps, "batch_size": args.batch_size, "max_length": 128},
        "runs": runs, "quiet": quiet, "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "summary": {"deployft_samples_per_s": round(median["deployft"], 2),
                    "baseline_samples_per_s": round(median["baseline"], 2),
                    "speedup": round(median["deployft"] / median["baseline"], 2)},
    }
    write(report, args.results)
    print(_markdown(report))


if __name__ == "__main__":
    main()
