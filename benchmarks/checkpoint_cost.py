"""What a checkpoint costs against a training step, for the default models: the basis of `--checkpoint-steps`.

Fine-tunes the task's default model on its default data with deployft's own Trainer setup, a checkpoint every
`--every` steps, and times each optimizer step (callback `on_step_begin` -> `on_step_end`) and each checkpoint
write (`Trainer._save_checkpoint`: weights, optimizer state, RNG, trainer state). From the medians it reports,
for a few `--checkpoint-steps` values, the share of training time spent writing checkpoints and the training
time a kill can lose. Results go to benchmarks/results/checkpoint_cost_<task>.{json,md}.

Every timed step and every timed write is judged by its own `deployft.bench.quiet.RoundMeter`: one during which
other programs used more than --max-foreign of a core (busy time from /proc/stat minus this process's CPU time) is
thrown away, and training goes on until --steps steps and --steps/--every writes were kept (at most 6 times as many
steps: after 5 rejections in a row one is kept as dirty, and the results say so). The results record the steps and
writes kept, rejected and dirty and the threshold.

    python benchmarks/checkpoint_cost.py --task classify --steps 8 --every 2
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
INTERVALS = (25, 50, 100, 200, 500)
STEP, WRITE = "step", "checkpoint write"
"""What the results call a timed round of each meter, in the JSON's warnings and the Markdown's notes alike."""


def _measure(args) -> dict:
    import torch
    import transformers

    from deployft.bench.quiet import RoundMeter
    from deployft.tasks import get_task
    from deployft.train import FinetuneConfig
    from deployft.train.engine import build_trainer, prepare

    step_meter, save_meter = RoundMeter(max_share=args.max_foreign), RoundMeter(max_share=args.max_foreign)
    wanted = max(1, args.steps // args.every)  # checkpoint writes to keep
    # the most steps it can take: every kept step, and every kept write's `every` steps, after a full streak of
    # rejections; training stops at the first write after which enough of both were kept
    bound = max(args.steps, wanted * args.every) * (step_meter.max_rejected + 1)
    task = get_task(args.task)
    config = FinetuneConfig(task=args.task, model=args.model, data=args.data, max_samples=args.max_samples,
                            batch_size=args.batch_size, max_steps=bound, checkpoint_steps=args.every, seed=0)
    job = prepare(config, task)
    steps, saves, sizes = [], [], []

    class StepClock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            step_meter.start()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            seconds = time.perf_counter() - self.start
            if step_meter.finish():
                steps.append(seconds)

        def on_save(self, args_, state, control, **k):
            if len(steps) >= args.steps and len(saves) >= wanted:
                control.should_training_stop = True
            return control

    save = transformers.Trainer._save_checkpoint

    def timed_save(self, *a, **k):
        save_meter.start()
        start = time.perf_counter()
        save(self, *a, **k)
        seconds = time.perf_counter() - start
        if save_meter.finish():
            saves.append(seconds)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        sizes.append(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))

    transformers.Trainer._save_checkpoint = timed_save
    try:
        with tempfile.TemporaryDirectory() as work:
            trainer = build_trainer(config, task, job, Path(work), eval_strategy="no", load_best_model_at_end=False,
                                    disable_tqdm=True, logging_strategy="no")
            trainer.add_callback(StepClock())
            trainer.train()
    finally:
        transformers.Trainer._save_checkpoint = save
    step, write = statistics.median(steps), statistics.median(saves)
    return {
        "task": args.task, "base_model": job.base_model, "parameters": sum(p.numel() for p in job.model.parameters()),
        "batch_size": args.batch_size, "max_length": job.max_length, "steps": len(steps), "checkpoints": len(saves),
        "steps_trained": trainer.state.global_step, "max_foreign": args.max_foreign,
        "quiet": {"steps": step_meter.summary(STEP), "checkpoints": save_meter.summary(WRITE)},
        "step_seconds": [round(s, 3) for s in steps], "checkpoint_seconds": [round(s, 3) for s in saves],
        "median_step_s": round(step, 3), "median_checkpoint_s": round(write, 3),
        "checkpoint_mb": round(statistics.median(sizes) / 2**20, 1),
        "intervals": [{"checkpoint_steps": n, "overhead_pct": round(100 * write / (n * step + write), 2),
                       "max_loss_min": round(n * step / 60, 1)} for n in INTERVALS],
        "torch_threads": torch.get_num_threads(),
    }


def _markdown(result: dict, command: str) -> str:
    from deployft.bench.quiet import rounds_note

    lines = [
        f"# Checkpoint cost: {result['task']}", "",
        f"Command: `{command}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}, load average {result['load_before']} before, {result['load_after']} after "
        "(shared machine: the ratio of the two medians is what to read)", "",
        f"Model {result['base_model']} ({result['parameters'] / 1e6:.1f}M parameters), batch {result['batch_size']}, "
        f"max_length {result['max_length']}: median step {result['median_step_s']} s over {result['steps']} steps, "
        f"median checkpoint {result['median_checkpoint_s']} s over {result['checkpoints']} checkpoints of "
        f"{result['checkpoint_mb']} MB.", "",
        rounds_note(result["quiet"]["steps"], STEP) + "  ",
        rounds_note(result["quiet"]["checkpoints"], WRITE), "",
        "| --checkpoint-steps | time spent writing checkpoints | training a kill can lose (at most) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {row['checkpoint_steps']} | {row['overhead_pct']} % | {row['max_loss_min']} min |"
              for row in result["intervals"]]
    return "\n".join(lines) + "\n"


def write(result: dict, command: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"checkpoint_cost_{result['task']}"
    stem.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result, command))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["classify", "generate"], default="classify")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2, help="checkpoint interval while measuring")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=400)
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="largest share of a core other programs may use during a kept step or write")
    parser.add_argument("--model", default=None, help="model to fine-tune (default: the task's default)")
    parser.add_argument("--data", default=None, help="training data (default: the task's default data)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder the results are written to")
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 2)
    result = _measure(args)
    result.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), load_before=load_before,
                  load_after=round(os.getloadavg()[0], 2),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores, torch threads {result['torch_threads']}")
    command = (f"python benchmarks/checkpoint_cost.py --task {args.task} --steps {args.steps} --every {args.every} "
               f"--batch-size {args.batch_size} --max-samples {args.max_samples} --max-foreign {args.max_foreign}"
               + "".join(f" --{k} {v}" for k, v in (("model", args.model), ("data", args.data)) if v))
    write(result, command, args.results)
    print(_markdown(result, command))


if __name__ == "__main__":
    main()
