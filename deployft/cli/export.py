"""`deployft export RUN --output BUNDLE` and `deployft info BUNDLE`: parse flags, build the config, delegate."""

from __future__ import annotations

import click

from ..configfile import build_config


@click.command("export")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--output", "-o", required=True, type=click.Path(path_type=str), help="BUNDLE folder to write.")
@click.option("--task", type=click.Choice(["classify", "generate"]), default=None,
              help="Task of a plain model folder (a RUN knows its own).")
@click.option("--quantize", default=None, metavar="none|int8|int8-static|fp16",
              help="none (fp32), int8 (CPU: dynamic for classifiers, blockwise for generators), int8-static (calibrated on the RUN's training data), fp16 (CUDA).")
@click.option("--quantize-preset", default=None, metavar="avx512_vnni|avx2|arm64",
              help="Force the int8 preset (default: from this CPU's instruction set).")
@click.option("--per-channel/--no-per-channel", default=None, help="Quantize weights per channel from the start.")
@click.option("--calibration-samples", type=int, default=None, help="Training examples for int8-static (default 100).")
@click.option("--validate-samples", type=int, default=None, help="Eval examples to validate on (default 200).")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Budget vs PyTorch: classify accuracy points (default 1), generate perplexity increase % (default 10).")
@click.option("--device", default=None, metavar="cpu|cuda", help="Target device (default cpu).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: Optimum's choice).")
@click.option("--fuse-attention/--no-fuse-attention", default=None,
              help="Fuse a decoder's attention into GroupQueryAttention + RotaryEmbedding (default: on, CPU).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing output folder.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/TOML/JSON file with these options.")
def export(run: str, config_file: str | None, **flags) -> None:
    """Export a RUN (or a local model folder with --task) to a validated ONNX BUNDLE.

    \b
    deployft export runs/clf --output bundles/clf --quantize int8
    deployft export runs/chat --output bundles/chat --quantize int8 --max-accuracy-drop 30
    """
    import logging

    from ..bundle import info_text
    from ..export import ExportConfig
    from ..export import export as run_export

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = build_config(ExportConfig, config_file, run=run, **flags)
    bundle = run_export(config)
    click.echo(info_text(bundle))


@click.command("info")
@click.argument("bundle", type=click.Path(path_type=str))
def info(bundle: str) -> None:
    """Print a BUNDLE's task, labels, files, fusion, quantization and validation."""
    from ..bundle import info_text

    click.echo(info_text(bundle))
