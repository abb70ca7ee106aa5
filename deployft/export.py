"""`export(ExportConfig) -> BUNDLE`: ONNX export, fusion, quantization, validation against PyTorch, accuracy guard.

    RUN ─► model.onnx (Optimum) ─► model_optimized.onnx (ORTOptimizer level 2; decoders: attention fused into
           GroupQueryAttention + RotaryEmbedding by deployft; fusion report)
        ─► model_quantized.onnx (classify: dynamic int8 of model.onnx, measured faster than int8 of the fused
           graph; generate: blockwise int8 MatMulNBits of model_optimized.onnx)
         | model_int8_static.onnx | model_fp16.onnx
        ─► every file validated against the PyTorch original ─► BUNDLE (atomic)

The accuracy guard compares the deployable model with PyTorch. classify: accuracy points lost on the RUN's eval
data (top-1 disagreement points without labels), default budget 1. generate: perplexity increase in percent,
default budget 10. When int8 exceeds the budget, the remedies are tried in order (classify: per-channel; then
per-channel with the head, the embeddings and the first and last layer kept in fp32. generate: blocks of 16; then
blocks of 16 with the LM head in fp32), and the one that met it is recorded; otherwise AccuracyBudgetError, and no
bundle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .errors import AccuracyBudgetError, DeviceError, StageError, UsageError
from .manifest import atomic_folder, check_output_free
from .onnx_export import Source

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "int8", "int8-static", "fp16")
DEVICES = ("cpu", "cuda")
TASKS = ("classify", "generate")
DEFAULT_BUDGET = {"classify": 1.0, "generate": 10.0}
VARIANT_FILES = {"int8": "model_quantized.onnx", "int8-static": "model_int8_static.onnx", "fp16": "model_fp16.onnx"}


@dataclass
class ExportConfig:
    """How to turn a RUN (or a local model folder) into a BUNDLE."""

    run: str | Path
    """The RUN folder written by deployft finetune, or a local Hugging Face model folder (then pass task)."""
    output: str | Path
    """The BUNDLE folder to write."""
    task: str | None = None
    """classify or generate; needed only for a plain model folder (a RUN knows its task)."""
    quantize: str = "none"
    """none, int8 (CPU: dynamic for classify, blockwise MatMulNBits for generate), int8-static (calibrated on the
    RUN's training data, CPU) or fp16 (CUDA)."""
    quantize_preset: str | None = None
    """avx512_vnni, avx2 or arm64; default: picked from this CPU's instruction set."""
    per_channel: bool = False
    """Quantize weights per output channel from the first attempt (otherwise it is the first remedy)."""
    calibration_samples: int = 100
    """Training examples that calibrate int8-static activation ranges."""
    validate_samples: int = 200
    """Held-out eval examples every ONNX file is validated on against PyTorch."""
    max_accuracy_drop: float | None = None
    """Budget: classify accuracy points (default 1), generate perplexity increase in percent (default 10)."""
    device: str = "cpu"
    """Target device: cpu or cuda (fp16 needs cuda; int8 has no CUDA kernels)."""
    opset: int | None = None
    """ONNX opset; default: Optimum's choice for the architecture."""
    fuse_attention: bool = True
    """Fuse a decoder's attention into GroupQueryAttention + RotaryEmbedding (CPU targets, supported models)."""
    overwrite: bool = False
    """Replace an existing output folder."""

    def __post_init__(self) -> None:
        self.run, self.output = Path(self.run), Path(self.output)
        _one_of("--quantize", self.quantize, QUANTIZE_MODES)
        _one_of("--device", self.device, DEVICES)
        if self.task is not None:
            _one_of("--task", self.task, TASKS)
        if self.quantize == "fp16" and self.device != "cuda":
            raise UsageError("--quantize fp16 is for CUDA only (ONNX Runtime's CPU kernels run fp16 slower than fp32); "
                             "pass --device cuda, or use --quantize int8 for CPU")
        if self.quantize.startswith("int8") and self.device == "cuda":
            raise UsageError(f"--device cuda --quantize {self.quantize} is refused: ONNX Runtime has no CUDA kernels "
                             "for int8-quantized MatMuls; use --quantize fp16 on CUDA or --device cpu")
        for flag, value in (("--validate-samples", self.validate_samples),
                            ("--calibration-samples", self.calibration_samples)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value!r}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0, got {self.max_accuracy_drop}")
        if self.quantize_preset is not None:
            from .quantize import PRESETS

            _one_of("--quantize-preset", self.quantize_preset, PRESETS)


def _one_of(flag: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} is {value!r}; expected one of {', '.join(allowed)}")


def export(config: ExportConfig) -> Path:
    """Export, optimize, quantize and validate a RUN into a BUNDLE folder, written atomically.

    Returns:
        The BUNDLE folder.

    Raises:
        ModelError: not a RUN/model folder, unreadable weights, an architecture Optimum cannot export.
        DataError: int8-static calibration on a RUN whose data is gone.
        OutputExistsError: the output folder exists (pass overwrite).
        AccuracyBudgetError: no variant met --max-accuracy-drop (no bundle is written).
    """
    from . import onnx_export, samples, validate

    source = onnx_export.read_source(config.run, config.task)
    onnx_export.check_exportable(source)
    if source.task == "generate" and config.quantize == "int8" and (config.per_channel or config.quantize_preset):
        raise UsageError("--per-channel and --quantize-preset set up classifier int8 (dynamic); generator int8 is "
                         "blockwise (MatMulNBits, one scale per 32 weights) and takes neither: drop the flag")
    check_output_free(config.output, config.overwrite)
    if config.device == "cuda":
        _check_cuda()
    tokenizer = onnx_export.load_tokenizer(source)
    calibration = samples.calibration_samples(source, tokenizer, config.calibration_samples) \
        if config.quantize == "int8-static" else None
    model = onnx_export.load_torch_model(source)
    held_out = samples.validation_samples(source, tokenizer, config.validate_samples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ref = validate.reference(source.task, model, held_out.sequences, pad_id, held_out.labels, held_out.prompts)
    attention = _decoder_attention(config, source, model)
    with atomic_folder(config.output, config.overwrite) as staging:
        result = _build(config, source, staging, ref, calibration, attention)
        result["validation_inputs"] = held_out.origin
        from .bundle import write_bundle

        write_bundle(staging, source, result)
    return config.output.resolve()


def _check_cuda() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError("--device cuda, but this ONNX Runtime has no CUDAExecutionProvider; "
                          "pip install \"deployft[gpu]\" (onnxruntime-gpu, CUDA 13 / cuDNN 9) or pass --device cpu")


def _decoder_attention(config: ExportConfig, source: Source, model) -> tuple[Any, str | None]:
    """`(AttentionShape, None)` when a decoder's attention will be fused, else `(None, why not)`."""
    import json

    from .decoder_fusion import attention_shape

    if source.task != "generate":
        return None, None
    if not config.fuse_attention:
        return None, "--no-fuse-attention was given"
    if config.device == "cuda":
        return None, ("deployft fuses decoder attention for --device cpu only (GroupQueryAttention has no fp32 CUDA "
                      "kernel, and its fp16 CUDA path is not validated here)")
    return attention_shape(json.loads((source.path / "config.json").read_text(encoding="utf-8")), model)


def _build(config: ExportConfig, source: Source, staging: Path, ref, calibration, attention) -> dict[str, Any]:
    """Write every .onnx variant into `staging`, validate each, and pick the deployable one."""
    from .onnx_export import export_onnx, onnx_opset
    from .optimize import optimize

    plain = export_onnx(source, staging, config.opset)
    shape, unfused_reason = attention
    optimized, fusion = optimize(plain, decoder=source.task == "generate", attention=shape,
                                 unfused_reason=unfused_reason)
    result: dict[str, Any] = {"opset": onnx_opset(plain), "fusion": fusion, "variants": {}, "quantization": None,
                              "device": config.device, "budget": _budget(config, source)}
    for path, optimized_flag in ((plain, False), (optimized, True)):
        _add_variant(result, config, ref, path, "fp32", optimized_flag)
    if config.quantize == "none":
        result["model_file"] = _first_within_budget(result, [optimized.name, plain.name], source)
    elif config.quantize == "int8" and source.task == "generate":
        result["model_file"] = _int8_decoder(config, source, staging, ref, result, optimized)
    elif config.quantize == "int8":
        result["model_file"] = _int8(config, source, staging, ref, result, optimized, plain)
    elif config.quantize == "int8-static":
        result["model_file"] = _int8_static(config, source, staging, ref, result, plain, calibration)
    else:
        result["model_file"] = _fp16(config, source, staging, ref, result, optimized)
    return result


def _budget(config: ExportConfig, source: Source) -> dict[str, Any]:
    limit = config.max_accuracy_drop if config.max_accuracy_drop is not None else DEFAULT_BUDGET[source.task]
    unit = "perplexity increase %" if source.task == "generate" else "accuracy points"
    return {"max_drop": limit, "measure": unit}


def _add_variant(result: dict, config: ExportConfig, ref, path: Path, precision: str, optimized: bool) -> dict:
    from .validate import compare

    report = compare(ref, path, config.device)
    report["drop"], report["drop_measure"] = _drop(ref.task, report)
    result["variants"][path.name] = {"precision": precision, "optimized": optimized, "validation": report}
    logger.info("%s: %s", path.name, report)
    return report


def _drop(task: str, report: dict[str, Any]) -> tuple[float, str]:
    """How much worse than PyTorch a variant is, in the guard's unit (negative: better)."""
    if task == "generate":
        return report["perplexity_increase_pct"], "perplexity increase %"
    if report.get("accuracy") is not None:
        return 100.0 * (report["accuracy_pytorch"] - report["accuracy"]), "accuracy points"
    return 100.0 * (1.0 - report["top1_agreement"]), "top-1 disagreement points (no labels)"


def _first_within_budget(result: dict, names: list[str], source: Source) -> str:
    limit = result["budget"]["max_drop"]
    for name in names:
        if result["variants"][name]["validation"]["drop"] <= limit:
            return name
    _refuse(result, names, source)


def _refuse(result: dict, names: list[str], source: Source):
    tried = "; ".join(f"{n}: {result['variants'][n]['validation']['drop']:.2f}" for n in names)
    raise AccuracyBudgetError(
        f"every candidate lost more than --max-accuracy-drop {result['budget']['max_drop']} "
        f"({result['budget']['measure']}) against PyTorch on {source.path.name} ({tried}); no bundle written; "
        "raise --max-accuracy-drop or export with a higher precision (--quantize none)")


INT8_BASE_NOTE = ("dynamic int8 of the plain export: ONNX Runtime fuses its quantized MatMuls when it loads the file "
                  "(DynamicQuantizeMatMul), and on all-MiniLM-L6-v2 (avx512_vnni, 2 threads) that ran 1.4x faster at "
                  "batch 1 than int8 of the ORTOptimizer-fused graph (QAttention)")


def _int8(config: ExportConfig, source: Source, staging: Path, ref, result: dict, optimized: Path,
          plain: Path) -> str:
    """Dynamic int8 of the plain export (the fused graph if that fails), with the remedies when over budget."""
    from .quantize import cpu_preset, quantize_dynamic_int8, sensitive_nodes

    preset = config.quantize_preset or cpu_preset()
    target = staging / VARIANT_FILES["int8"]
    base = plain
    attempts = [("none", config.per_channel, False), ("per-channel", True, False),
                ("per-channel + head, embeddings, first and last layer in fp32", True, True)]
    if config.per_channel:
        attempts.pop(1)
    tried = []
    for remedy, per_channel, exclude in attempts:
        nodes = sensitive_nodes(base, _num_layers(source)) if exclude else []
        try:
            settings = quantize_dynamic_int8(base, target, preset, per_channel, nodes)
        except StageError:
            if base == optimized:
                raise
            logger.warning("quantizing the plain export failed; quantizing the fused graph instead")
            base, nodes = optimized, sensitive_nodes(optimized, _num_layers(source)) if exclude else []
            settings = quantize_dynamic_int8(base, target, preset, per_channel, nodes)
        report = _add_variant(result, config, ref, target, "int8", base == optimized)
        tried.append({"remedy": remedy, "drop": report["drop"]})
        if report["drop"] <= result["budget"]["max_drop"]:
            result["quantization"] = {**settings, "remedy": remedy, "attempts": tried, "choice": INT8_BASE_NOTE}
            return target.name
    _refuse_int8(tried, result)


INT8_DECODER_NOTE = ("blockwise int8 (MatMulNBits, 8-bit weights with one scale per block along K, int8 compute) "
                     "of model_optimized.onnx (attention fused where the fusion note says so): on SmolLM2-135M "
                     "(avx512_vnni, 2 threads) per-tensor dynamic int8 raised perplexity by 53% and took 33 ms per "
                     "decode step; blockwise int8 kept perplexity within 2% at 13 ms per step")


def _int8_decoder(config: ExportConfig, source: Source, staging: Path, ref, result: dict, optimized: Path) -> str:
    """Blockwise int8 of a decoder's optimized graph, with smaller blocks and an fp32 LM head as remedies."""
    from .quantize import BLOCK_SIZE, head_matmuls, quantize_blockwise_int8

    target = staging / VARIANT_FILES["int8"]
    attempts = [("none", BLOCK_SIZE, False), ("blocks of 16", 16, False),
                ("blocks of 16 + LM head in fp32", 16, True)]
    tried = []
    for remedy, block, keep_head in attempts:
        excluded = head_matmuls(optimized) if keep_head else []
        settings = quantize_blockwise_int8(optimized, target, block, excluded)
        report = _add_variant(result, config, ref, target, "int8", True)
        tried.append({"remedy": remedy, "drop": report["drop"]})
        if report["drop"] <= result["budget"]["max_drop"]:
            result["quantization"] = {**settings, "remedy": remedy, "attempts": tried, "choice": INT8_DECODER_NOTE}
            return target.name
    _refuse_int8(tried, result)


def _refuse_int8(tried: list[dict], result: dict) -> NoReturn:
    attempts_text = ", ".join(f"{t['remedy']}: {t['drop']:.2f}" for t in tried)
    raise AccuracyBudgetError(
        f"int8 lost {tried[-1]['drop']:.2f} {result['budget']['measure']} against PyTorch, over "
        f"--max-accuracy-drop {result['budget']['max_drop']} after every remedy ({attempts_text}); "
        "no bundle written; raise --max-accuracy-drop or use --quantize none")


def _int8_static(config: ExportConfig, source: Source, staging: Path, ref, result: dict, plain: Path,
                 calibration) -> str:
    from .quantize import cpu_preset, quantize_static_int8
    from .samples import feeds
    from .validate import session

    target = staging / VARIANT_FILES["int8-static"]
    inputs = {i.name: i for i in session(plain).get_inputs()}
    settings = quantize_static_int8(plain, target, config.quantize_preset or cpu_preset(), config.per_channel,
                                    feeds(calibration, inputs))
    report = _add_variant(result, config, ref, target, "int8-static", False)
    result["quantization"] = {**settings, "remedy": "none", "attempts": [{"remedy": "none", "drop": report["drop"]}]}
    return _first_within_budget(result, [target.name], source)


def _fp16(config: ExportConfig, source: Source, staging: Path, ref, result: dict, optimized: Path) -> str:
    from .quantize import convert_fp16

    target = staging / VARIANT_FILES["fp16"]
    settings = convert_fp16(optimized, target)
    report = _add_variant(result, config, ref, target, "fp16", True)
    result["quantization"] = {**settings, "remedy": "none", "attempts": [{"remedy": "none", "drop": report["drop"]}]}
    return _first_within_budget(result, [target.name], source)


def _num_layers(source: Source) -> int:
    import json

    config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    return int(config.get("num_hidden_layers") or config.get("n_layer") or config.get("n_layers") or 1)
