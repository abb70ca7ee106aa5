"""What a checkpoint costs against a training step, for the default models: the basis of `--checkpoint-steps`.

Fine-tunes the task's default model on its default data with deployft's own Trainer setup, a checkpoint every
`--every` steps, and times each optimizer step (callback `on_step_begin` -> `on_step_end`) and each checkpoint
write (`Trainer._save_checkpoint`: weights, optimizer state, RNG, trainer state). From the medians it reports,
for a few `--checkpoint-steps` values, the share of training time spent writing checkpoints and the training
time a kill can lose. Results go to benchmarks/results/checkpoint_cost_<task>.{json,md}.

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


def _measure(args) -> dict:
    import torch
    import transformers

    from deployft.tasks import get_task
    from deployft.train import FinetuneConfig
    from deployft.train.engine import build_trainer, prepare

    task = get_task(args.task)
    config = FinetuneConfig(task=args.task, max_samples=args.max_samples, batch_size=args.batch_size,
                            max_steps=args.steps, checkpoint_steps=args.every, seed=0)
    job = prepare(config, task)
    steps, saves, sizes = [], [], []

    class StepClock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - self.start)

    save = transformers.Trainer._save_checkpoint

    def timed_save(self, *a, **k):
        start = time.perf_counter()
        save(self, *a, **k)
        saves.append(time.perf_counter() - start)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        sizes.append(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))

    transformers.Trainer._save_checkpoint = timed_save
    with tempfile.TemporaryDirectory() as work:
        trainer = build_trainer(config, task, job, Path(work), eval_strategy="no", load_best_model_at_end=False,
                                disable_tqdm=True, logging_strategy="no")
        trainer.add_callback(StepClock())
        trainer.train()
    transformers.Trainer._save_checkpoint = save
    step, write = statistics.median(steps), statistics.median(saves)
    return {
        "task": args.task, "base_model": job.base_model, "parameters": sum(p.numel() for p in job.model.parameters()),
        "batch_size": args.batch_size, "max_length": job.max_length, "steps": len(steps), "checkpoints": len(saves),
        "step_seconds": [round(s, 3) for s in steps], "checkpoint_seconds": [round(s, 3) for s in saves],
        "median_step_s": round(step, 3), "median_checkpoint_s": round(write, 3),
        "checkpoint_mb": round(statistics.median(sizes) / 2**20, 1),
        "intervals": [{"checkpoint_steps": n, "overhead_pct": round(100 * write / (n * step + write), 2),
                       "max_loss_min": round(n * step / 60, 1)} for n in INTERVALS],
        "torch_threads": torch.get_num_threads(),
    }


def _markdown(result: dict, command: str) -> str:
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
        "| --checkpoint-steps | time spent writing checkpoints | training a kill can lose (at most) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {row['checkpoint_steps']} | {row['overhead_pct']} % | {row['max_loss_min']} min |"
              for row in result["intervals"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["classify", "generate"], default="classify")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2, help="checkpoint interval while measuring")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=400)
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 2)
    result = _measure(args)
    result.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), load_before=load_before,
                  load_after=round(os.getloadavg()[0], 2),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores, torch threads {result['torch_threads']}")
    command = (f"python benchmarks/checkpoint_cost.py --task {args.task} --steps {args.steps} --every {args.every} "
               f"--batch-size {args.batch_size} --max-samples {args.max_samples}")
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"checkpoint_cost_{args.task}"
    stem.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result, command))
    print(_markdown(result, command))


if __name__ == "__main__":
    main()
