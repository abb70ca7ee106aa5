"""Quantization of an exported graph: dynamic int8 (CPU), static int8 from calibration data, fp16 (CUDA).

Dynamic int8 takes its settings from Optimum's preset for the CPU's instruction set (`avx512_vnni`, `avx2`,
`arm64`), read from /proc/cpuinfo, and is applied through `onnxruntime.quantization.quantize_dynamic` with
`DefaultTensorType=FLOAT`, so the same call also quantizes an ORTOptimizer-fused graph (ORTQuantizer fails on its
contrib ops, whose outputs have no inferred type). `export` quantizes the plain export by default: measured faster.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import StageError, UsageError

PRESETS = ("avx512_vnni", "avx2", "arm64")
STATIC_OP_TYPES = ("MatMul", "Gemm")
"""Static int8 quantizes the ops that carry weights; the preset's long list (Reshape, Where, ...) breaks KV-cache graphs."""
HEAD_KEYWORDS = ("classifier", "score", "lm_head", "pooler", "pre_classifier", "embed_tokens", "wte", "word_embeddings")
QUANTIZABLE = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")


def cpu_preset(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The Optimum preset that fits this CPU: avx512_vnni, avx2 or arm64 (avx2 is the generic x86 fallback)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = set(re.findall(r"[a-z0-9_]+", " ".join(
        line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith("flags") and ":" in line)))
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def preset_config(preset: str, static: bool, per_channel: bool, nodes_to_exclude: Iterable[str] = ()):
    """Optimum's QuantizationConfig for `preset`."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if preset not in PRESETS:
        raise UsageError(f"--quantize-preset is '{preset}'; expected one of {', '.join(PRESETS)}")
    return getattr(AutoQuantizationConfig, preset)(is_static=static, per_channel=per_channel,
                                                    nodes_to_exclude=list(nodes_to_exclude))


def _op_names(operators) -> list[str]:
    return [getattr(op, "value", op) for op in operators]


def quantize_dynamic_int8(src: Path, dst: Path, preset: str, per_channel: bool,
                          nodes_to_exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Dynamic int8 of `src` into `dst` with `preset`'s settings; returns the settings it used."""
    from onnx import TensorProto
    from onnxruntime.quantization import quantize_dynamic

    qc = preset_config(preset, False, per_channel, nodes_to_exclude)
    extra = {"WeightSymmetric": qc.weights_symmetric, "ActivationSymmetric": qc.activations_symmetric,
             "DefaultTensorType": TensorProto.FLOAT}
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=_op_names(qc.operators_to_quantize), per_channel=per_channel,
                         reduce_range=qc.reduce_range, weight_type=qc.weights_dtype,
                         nodes_to_exclude=list(qc.nodes_to_exclude), extra_options=extra)
    except Exception as exc:
        raise StageError(f"dynamic int8 quantization of {src.name} failed: {_first_line(exc)}") from exc
    return {"mode": "int8", "preset": preset, "per_channel": per_channel, "reduce_range": qc.reduce_range,
            "weights_dtype": str(qc.weights_dtype), "op_types": _op_names(qc.operators_to_quantize),
            "nodes_excluded": list(qc.nodes_to_exclude), "quantized_from": src.name}


def quantize_static_int8(src: Path, dst: Path, preset: str, per_channel: bool, batches: list[dict]) -> dict[str, Any]:
    """Static int8 (QDQ) of `src` into `dst`, activation ranges calibrated (min/max) on `batches` of model inputs."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self):
            return next(self._items, None)

    qc = preset_config(preset, True, per_channel)
    extra = {"WeightSymmetric": qc.weights_symmetric, "ActivationSymmetric": qc.activations_symmetric}
    try:
        quantize_static(src, dst, _Reader(), quant_format=qc.format, op_types_to_quantize=list(STATIC_OP_TYPES),
                        per_channel=per_channel, reduce_range=qc.reduce_range, activation_type=qc.activations_dtype,
                        weight_type=qc.weights_dtype, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    except Exception as exc:
        raise StageError(f"static int8 quantization of {src.name} failed: {_first_line(exc)}") from exc
    return {"mode": "int8-static", "preset": preset, "per_channel": per_channel, "format": str(qc.format),
            "op_types": list(STATIC_OP_TYPES), "calibration_samples": len(batches), "calibration_method": "minmax",
            "nodes_excluded": [], "quantized_from": src.name}


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and activations for CUDA, fp32 inputs and outputs kept so callers feed the same arrays."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
    except Exception as exc:
        raise StageError(f"fp16 conversion of {src.name} failed: {_first_line(exc)}") from exc
    return {"mode": "fp16", "preset": None, "per_channel": False, "nodes_excluded": [], "quantized_from": src.name}


def sensitive_nodes(path: Path, num_layers: int) -> list[str]:
    """Quantizable nodes that most often carry the int8 error: the head, the embeddings, the first and last layer."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type in QUANTIZABLE]
    edge = {0, max(num_layers - 1, 0)}
    layer_re = re.compile(r"(?:layers?|h|blocks?)[._/](\d+)[./]")
    picked = []
    for node in nodes:
        name = node.name.lower()
        match = layer_re.search(name)
        if any(k in name for k in HEAD_KEYWORDS) or (match and int(match.group(1)) in edge):
            picked.append(node.name)
    fused = [n.name for n in nodes if n.op_type == "Attention"]
    picked += [name for name in (fused[:1] + fused[-1:]) if name not in picked]
    picked += [n.name for n in nodes[-1:] if n.name not in picked]  # the op that produces the logits
    # the quantizer rewrites Gemm as MatMul + Add, naming the MatMul "<gemm>_MatMul"; exclude it under that name
    gemms = {n.name for n in nodes if n.op_type == "Gemm"}
    return [f"{name}_MatMul" if name in gemms else name for name in picked]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
