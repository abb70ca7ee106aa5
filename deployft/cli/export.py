"""`deployft export RUN --output BUNDLE` and `deployft info BUNDLE`: parse flags, build the config, delegate."""

from __future__ import annotations

import click

from ..configfile import build_config
from ..exporter.config import (BLOCK_SIZES, DEVICES, HEAD_BITS, OPSETS, PRESETS, PROVIDERS, QUANTIZE_MODES,
                               SELECT_RULES, ExportConfig)
from ..tasks import TASKS
from .options import shown


@click.command("export")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--output", "-o", required=True, type=click.Path(path_type=str), help="BUNDLE folder to write.")
@click.option("--task", type=click.Choice(list(TASKS)), default=None,
              help="Task of a plain model folder (a RUN knows its own).")
@click.option("--quantize", default=None, metavar="|".join(QUANTIZE_MODES),
              show_default=shown(ExportConfig, "quantize"),
              help="none (fp32), int8 (CPU: dynamic for classifiers, blockwise for generators), int4 (generators, "
                   "CPU: 4-bit MatMulNBits, LM head (--head-bits) and embedding at 8 bits), int8-static (calibrated "
                   "on the RUN's training data; with --provider openvino by NNCF, OpenVINO's quantizer), fp16 (CUDA).")
@click.option("--block-size", type=int, default=None, metavar="|".join(map(str, BLOCK_SIZES)),
              show_default="64 for int8, 32 for int4",
              help="Weights per scale of a generator's int4 / blockwise int8 (smaller: closer to fp32, larger file).")
@click.option("--head-bits", type=int, default=None, metavar="|".join(map(str, HEAD_BITS)),
              show_default="8",
              help="Width of the LM head under --quantize int4 (4: fewer bytes per token, as onnxruntime-genai's "
                   "int4; the accuracy guard judges either).")
@click.option("--quantize-preset", default=None, metavar="|".join(PRESETS), show_default="from this CPU",
              help="Force the dynamic int8 preset.")
@click.option("--per-channel/--no-per-channel", default=None, show_default=shown(ExportConfig, "per_channel"),
              help="Quantize weights per channel from the start.")
@click.option("--select", default=None, metavar="|".join(SELECT_RULES), show_default="fastest",
              help="Classifier int8: keep the fastest candidate within the accuracy budget, timed on this machine "
                   "at the bundle's typical shapes, or the smallest file.")
@click.option("--select-seconds", type=float, default=None, show_default=shown(ExportConfig, "select_seconds"),
              help="Classifier int8: time budget for timing the candidates.")
@click.option("--calibration-samples", type=int, default=None, show_default=shown(ExportConfig, "calibration_samples"),
              help="Training examples for int8-static, a classifier's static int8 candidate and its "
                   "activation-smoothing remedy.")
@click.option("--validate-samples", type=int, default=None,
              show_default=", ".join(f"{t.name} {t.validation_rows}" for t in TASKS.values()),
              help="Most eval rows to validate every file on against PyTorch (all of them up to this many).")
@click.option("--max-accuracy-drop", type=float, default=None,
              show_default=", ".join(f"{t.name} {t.default_budget:g}" for t in TASKS.values()),
              help="Budget vs PyTorch, judged on a one-sided 95 % bound over the validation rows. classify: % of "
                   "predictions allowed to flip (a flip is the only way to lose accuracy on a row, so this bounds "
                   "the accuracy drop); generate: % perplexity increase.")
@click.option("--min-agreement", type=float, default=None,
              show_default=", ".join(f"{t.name} {t.min_agreement:g}" for t in TASKS.values()
                                     if t.min_agreement is not None),
              help="Classifier int8: climb the remedy ladder (smoothing, layers in fp32) until a file within the "
                   "budget agrees with PyTorch on this share of the validation rows, then keep the --select one of "
                   "those files; when no rung reaches it, the first rung within the budget is kept and the manifest "
                   "says so. 0: the first rung within the budget.")
@click.option("--device", default=None, metavar="|".join(DEVICES), show_default=shown(ExportConfig, "device"),
              help="Target device.")
@click.option("--provider", default=None, metavar="|".join(PROVIDERS), show_default=shown(ExportConfig, "provider"),
              help="ONNX Runtime provider every file is validated through (openvino: pip install "
                   "\"deployft[openvino]\"); recorded in the manifest's validation.")
@click.option("--opset", type=int, default=None, show_default="Optimum's choice",
              help=f"ONNX opset, {OPSETS[0]} to {OPSETS[-1]}.")
@click.option("--fuse-attention/--no-fuse-attention", default=None, show_default="fused where supported",
              help="Generators: fuse the attention into GroupQueryAttention with its rotary embedding (CPU targets).")
@click.option("--overwrite/--no-overwrite", default=None, show_default=shown(ExportConfig, "overwrite"),
              help="Replace an existing output folder.")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Ed25519 private key (PEM, from deployft keygen): sign the manifest into deployft.json.sig.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/TOML/JSON file with these options.")
def export(run: str, config_file: str | None, **flags) -> None:
    """Export a RUN (or a local model folder with --task) to a validated ONNX BUNDLE.

    \b
    deployft export runs/clf --output bundles/clf --quantize int8
    deployft export runs/chat --output bundles/chat --quantize int8 --max-accuracy-drop 30
    deployft export runs/chat --output bundles/chat-int4 --quantize int4 --block-size 32
    deployft export runs/chat --output bundles/chat-int4 --quantize int4 --head-bits 4
    """
    import logging

    from ..exporter.card import info_text
    from ..exporter import export as run_export
    from ..staging import check_apart

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = build_config(ExportConfig, config_file, run=run, **flags)
    check_apart(config.output, {"--config": config_file})  # --overwrite would delete it with the old BUNDLE
    bundle = run_export(config)
    click.echo(info_text(bundle))


@click.command("info")
@click.argument("bundle", type=click.Path(path_type=str))
def info(bundle: str) -> None:
    """Print a BUNDLE's task, labels, files, fusion, quantization and validation.

    A manifest edited after export is refused, with the line deployft verify gives (it checks every file too).
    """
    from ..exporter.card import info_text

    click.echo(info_text(bundle))
