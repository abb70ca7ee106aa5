"""`deployft bench`: parse flags, build a BenchConfig, call deployft.bench.benchmark."""

from __future__ import annotations

from pathlib import Path

import click

from ..bench.config import DEVICES, PROVIDERS, BenchConfig
from .options import shown


@click.command("bench")
@click.option("--run", "run", required=True, type=click.Path(path_type=Path),
              help="RUN folder written by deployft finetune (the PyTorch original).")
@click.option("--bundle", required=True, type=click.Path(path_type=Path),
              help="BUNDLE folder written by deployft export from that RUN.")
@click.option("--report", required=True, type=click.Path(path_type=Path),
              help="Output folder for report.json, report.md, report.html and the PNG plots.")
@click.option("--variants", default=None, show_default="all but the peers",
              help="Comma-separated subset: pytorch, pytorch-int8, pytorch-compile, .onnx files of the bundle, and "
                   "peers: openvino (classifiers), ort-genai, llama.cpp (generators) or one of their variants.")
@click.option("--batch-sizes", default=None, show_default=shown(BenchConfig, "batch_sizes"),
              help="Classification batch sizes, comma-separated.")
@click.option("--seq-lens", default=None, show_default=shown(BenchConfig, "seq_lens"),
              help="Classification sequence lengths.")
@click.option("--prompt-lens", default=None, show_default=shown(BenchConfig, "prompt_lens"),
              help="Generation prompt lengths.")
@click.option("--new-tokens", default=None, show_default=shown(BenchConfig, "new_tokens"),
              help="Generation tokens per call, comma-separated.")
@click.option("--threads", type=int, default=None, show_default="min(4, cores)",
              help="Intra-op threads for torch and ONNX Runtime alike.")
@click.option("--repeats", type=int, default=None, show_default=shown(BenchConfig, "repeats"),
              help="Timed runs per variant and cell.")
@click.option("--min-time", type=float, default=None, show_default=shown(BenchConfig, "min_time"),
              help="Keep timing until each cell has run this many seconds per variant.")
@click.option("--warmup", type=int, default=None, show_default=shown(BenchConfig, "warmup"),
              help="Untimed runs per variant and cell.")
@click.option("--settle", type=float, default=None, show_default=shown(BenchConfig, "settle"),
              help="Idle seconds before each timed call, so the previous variant's spinning threads stop.")
@click.option("--hot-calls", type=int, default=None, show_default=shown(BenchConfig, "hot_calls"),
              help="Classification: back-to-back calls after each settled call (the hot latency); 0: settled only.")
@click.option("--eval-samples", type=int, default=None, show_default=shown(BenchConfig, "eval_samples"),
              help="Eval rows scored by every variant; 0 skips accuracy.")
@click.option("--device", type=click.Choice(list(DEVICES)), default=None, show_default=shown(BenchConfig, "device"),
              help="Device.")
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default=None,
              show_default=shown(BenchConfig, "provider"),
              help="ONNX Runtime provider of the .onnx variants (openvino: pip install \"deployft[openvino]\").")
@click.option("--static-shapes/--no-static-shapes", default=None, show_default=shown(BenchConfig, "static_shapes"),
              help="With --provider openvino: a session compiled per input shape (classifiers; Predictor.load).")
@click.option("--peak/--no-peak", default=None, show_default=shown(BenchConfig, "peak"),
              help="Measure the peak matmul rate and count FLOPs (--no-peak skips them).")
@click.option("--plots/--no-plots", default=None, show_default=shown(BenchConfig, "plots"),
              help="Write PNG plots (--no-plots writes none).")
@click.option("--overwrite/--no-overwrite", default=None, show_default=shown(BenchConfig, "overwrite"),
              help="Replace an existing report folder.")
@click.option("--peer-cache", type=click.Path(path_type=Path), default=None, show_default="the run's scratch folder",
              help="Folder where peer models (openvino, ort-genai, llama.cpp) are built once and reused.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="YAML, TOML or JSON file of options (flags given here win).")
def bench(run, bundle, report, variants, batch_sizes, seq_lens, prompt_lens, new_tokens, threads, repeats,
          min_time, warmup, settle, hot_calls, eval_samples, device, provider, static_shapes, peak, plots,
          overwrite, peer_cache, config_file) -> None:
    """Time a BUNDLE's ONNX variants against the RUN's PyTorch model; accuracy beside speed.

    \b
    deployft bench --run runs/clf --bundle bundles/clf --report reports/clf
    deployft bench --run runs/gen --bundle bundles/gen --report reports/gen --prompt-lens 16,64 --new-tokens 32
    """
    import logging

    from ..bench import benchmark
    from ..configfile import build_config

    config = build_config(
        BenchConfig, config_file, run=run, bundle=bundle, report=report, variants=variants,
        batch_sizes=batch_sizes, seq_lens=seq_lens, prompt_lens=prompt_lens, new_tokens=new_tokens,
        threads=threads, repeats=repeats, min_time=min_time, warmup=warmup, settle=settle, hot_calls=hot_calls,
        eval_samples=eval_samples, device=device, provider=provider,
        static_shapes=static_shapes, peak=peak, plots=plots, overwrite=overwrite, peer_cache=peer_cache,
    )
    progress, handler = logging.getLogger("deployft.bench"), logging.StreamHandler()
    handler.setFormatter(logging.Formatter("bench: %(message)s"))
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    try:
        result = benchmark(config)
    finally:
        progress.removeHandler(handler)
    for name, error in result.failed.items():
        click.echo(f"variant {name} failed: {error}", err=True)
    for name, reason in result.quality_errors.items():
        click.echo(f"variant {name}: {reason}", err=True)
    for warning in result.data["warnings"]:
        click.echo(f"Warning: {warning}", err=True)
    click.echo((result.path / "report.md").read_text(encoding="utf-8"))
    click.echo(f"Report: {result.path / 'report.html'}")
