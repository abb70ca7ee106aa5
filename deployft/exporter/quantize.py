"""Quantization of an exported graph: dynamic int8 (CPU), static int8 from calibration data, fp16 (CUDA).

Dynamic int8 takes its settings from Optimum's preset for the CPU's instruction set (`avx512_vnni`, `avx2`,
`arm64`), read from /proc/cpuinfo, and is applied through `onnxruntime.quantization.quantize_dynamic` with
`DefaultTensorType=FLOAT`, so the same call also quantizes an ORTOptimizer-fused graph (ORTQuantizer fails on its
contrib ops, whose outputs have no inferred type). Which graph a classifier's int8 file is quantized from, plain
or fused, `export` decides by timing the candidates (`select.py`).
"""

from __future__ import annotations

import contextlib
import platform
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, StageError, UsageError, reraise_as
from ..tasks import FP32_PARTS
from .config import PRESETS
from .first_position import FIRST_POSITION
from .matmuls import fp32_weight_products, gemms_as_matmuls, layer_of, plain_gemm, untie_transposed_weights

STATIC_OP_TYPES = ("MatMul", "Gemm")
"""Static int8 quantizes the ops that carry weights; the preset's long list (Reshape, Where, ...) breaks KV-cache
graphs."""
HEAD_KEYWORDS = ("classifier", "score", "lm_head", "pooler", "pre_classifier")
"""Names of the head's nodes; the embedding tables are found by what their lookups read (`sensitive_nodes`)."""


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
    with reraise_as(StageError, f"dynamic int8 quantization of {src.name} failed: {{reason}}"), _no_advice():
        quantize_dynamic(src, dst, op_types_to_quantize=_op_names(qc.operators_to_quantize), per_channel=per_channel,
                         reduce_range=qc.reduce_range, weight_type=qc.weights_dtype,
                         nodes_to_exclude=list(qc.nodes_to_exclude), extra_options=extra)
    return {"mode": "int8", "preset": preset, "per_channel": per_channel, "reduce_range": qc.reduce_range,
            "weights_dtype": str(qc.weights_dtype), "op_types": _op_names(qc.operators_to_quantize),
            "nodes_excluded": list(qc.nodes_to_exclude), "quantized_from": src.name}


BLOCK_SIZE = 64
"""Weights per int8 scale in a generator's blockwise int8 when `--block-size` is not given (smaller blocks: closer
to fp32, larger files). 64 rather than 32: on the default generator, blocks of 64 ran 1.07-1.15x faster per decode
step (batch 1 and 8) and per 16-token prefill than blocks of 32, in a smaller file, with next-token agreement
unchanged under the same perplexity guard (benchmarks/int8_blocks.py, results/int8_blocks*.md)."""
ACCURACY_LEVEL = 4
"""MatMulNBits accuracy level 4: int8 activations x int8 weights (VNNI/AVX2 integer kernels)."""


def quantize_blockwise_int8(src: Path, dst: Path, block_size: int = BLOCK_SIZE,
                            nodes_to_exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Blockwise int8 of `src` into `dst`: every constant-weight MatMul, and every weight Gemm rewritten as one
    (`matmuls.gemms_as_matmuls`), becomes MatMulNBits (8 bits, symmetric, one scale per `block_size` weights along
    K, int8 compute); `nodes_excluded` records every weight product left in fp32. The token embedding stays fp32
    (ONNX Runtime quantizes Gather to 4 bits only); a lookup reads one row per token, so it costs disk, not speed.

    This is the int8 for decoders. Dynamic int8 quantizes activations per tensor, which costs a small LM much of
    its quality, and its MatMulInteger kernels are slow at one token per step; blockwise scales keep the outliers
    local and MatMulNBits is built for batch-1 decode (benchmarks/results/decoder_step.md has the measured steps).
    A tied LM head (MatMul on a Transpose of the embedding) gets its own transposed weight first so it is quantized.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .onnx_export import save_model

    with reraise_as(StageError, f"blockwise int8 quantization of {src.name} failed: {{reason}}"):
        model = onnx.load(str(src))
        untied = untie_transposed_weights(model)
        gemms = gemms_as_matmuls(model)
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                         accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=list(nodes_to_exclude),
                                         op_types_to_quantize=("MatMul",))
        _quiet(quantizer.process)
        quantizer.model.topological_sort()
        save_model(quantizer.model.model, dst, external=True)
    return {"mode": "int8", "method": "blockwise int8 weights (MatMulNBits), int8 compute", "preset": None,
            "per_channel": False, "block_size": block_size, "accuracy_level": ACCURACY_LEVEL, "symmetric": True,
            "op_types": ["MatMul", "Gemm"], "untied_weights": untied, "gemms_as_matmuls": gemms,
            "nodes_excluded": kept_in_fp32(quantizer.model.model.graph, nodes_to_exclude), "quantized_from": src.name}


def kept_in_fp32(graph, excluded: Iterable[str]) -> list[str]:
    """What a blockwise file's manifest records as `nodes_excluded`: the nodes excluded on purpose, then every
    other weight product the quantized `graph` still computes in fp32 (`matmuls.fp32_weight_products`)."""
    excluded = list(excluded)
    return excluded + [name for name in fp32_weight_products(graph) if name not in excluded]


def head_matmuls(path: Path) -> list[str]:
    """The MatMul nodes of a decoder's LM head (the one that produces the logits), by name."""
    import onnx

    from .decoder_graph import lm_head

    model = onnx.load(str(path), load_external_data=False)
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name.lower()]
    head = None if names else lm_head(model)
    return names or ([head] if head else [])


@contextlib.contextmanager
def _no_advice() -> Iterator[None]:
    """Hold back ONNX Runtime's generic advice to pre-process a model before quantizing it, logged on the root logger
    for every file quantized (tens of lines an export): export quantizes both the plain and the fused graph and
    keeps the candidate it measures best."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("Please consider") and "onnxruntime" in record.pathname)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _quiet(fn) -> None:
    """Run `fn` with ONNX Runtime's quantization logger (one INFO line per node) held at WARNING."""
    import logging

    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        fn()
    finally:
        log.setLevel(level)


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
    with reraise_as(StageError, f"static int8 quantization of {src.name} failed: {{reason}}"), _no_advice():
        quantize_static(src, dst, _Reader(), quant_format=qc.format, op_types_to_quantize=list(STATIC_OP_TYPES),
                        per_channel=per_channel, reduce_range=qc.reduce_range, activation_type=qc.activations_dtype,
                        weight_type=qc.weights_dtype, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    return {"mode": "int8-static", "preset": preset, "per_channel": per_channel, "format": str(qc.format),
            "op_types": list(STATIC_OP_TYPES), "calibration_samples": len(batches), "calibration_method": "minmax",
            "nodes_excluded": [], "quantized_from": src.name}


NNCF_INSTALL = 'pip install "deployft[openvino-export]"'


def quantize_nncf_int8(src: Path, dst: Path, batches: list[dict]) -> dict[str, Any]:
    """Static int8 (QDQ) of `src` into `dst` by NNCF, OpenVINO's own post-training quantizer, with its transformer
    preset (SmoothQuant and fast bias correction on NNCF 3.4), activation ranges calibrated on `batches`. The file
    is made for the OpenVINO provider, which runs its QDQ pairs as int8 kernels.

    Raises:
        MissingDependencyError: NNCF cannot be imported.
        StageError: NNCF failed on the graph.
    """
    from ..telemetry import decline_openvino_telemetry

    decline_openvino_telemetry()  # NNCF reports usage at import unless the user's consent file says otherwise
    try:
        import nncf
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(f"--quantize int8-static --provider openvino quantizes with NNCF, which could not "
                                     f"be imported (missing module {exc.name}); install it with: {NNCF_INSTALL}, "
                                     "or pass --provider default") from exc
    with reraise_as(StageError, f"NNCF int8 quantization of {src.name} failed: {{reason}}"):
        quantized = nncf.quantize(onnx.load(str(src)), nncf.Dataset(batches), subset_size=len(batches),
                                  model_type=nncf.ModelType.TRANSFORMER)
        onnx.save(quantized, str(dst))
    float_nodes = _float_matmuls(quantized.graph)
    return {"mode": "int8-static", "method": f"NNCF {nncf.__version__} post-training quantization, transformer "
            "preset (QDQ)", "quantizer": "nncf", "calibration_samples": len(batches),
            "nodes_excluded": float_nodes, "quantized_from": src.name,
            "choice": f"static int8 (QDQ) of {src.name} by NNCF (OpenVINO's quantizer, transformer preset), "
                      f"activation ranges calibrated on {len(batches)} training rows, for the OpenVINO provider"}


def _float_matmuls(graph) -> list[str]:
    """MatMul / Gemm nodes no input of which comes from a DequantizeLinear: the ones a QDQ file runs in float."""
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and not dequantized & set(n.input)]


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and activations for CUDA, fp32 inputs and outputs kept so callers feed the same arrays."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with reraise_as(StageError, f"fp16 conversion of {src.name} failed: {{reason}}"):
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
    return {"mode": "fp16", "preset": None, "per_channel": False, "nodes_excluded": [], "quantized_from": src.name}


def sensitive_nodes(path: Path, num_layers: int, parts: tuple[str, ...] = FP32_PARTS) -> list[str]:
    """The nodes dynamic int8 would quantize that most often carry its error, of the `parts` asked for: the head
    and every embedding table (`head`: the word, position and token-type lookups alike), the first layer (`first`),
    the last layer (`last`). A node the quantizer leaves in fp32 anyway (a Gather of a shape, a MatMul of two
    activations) is never listed, so the list's length is the number of nodes kept in fp32 by the exclusion."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    nodes = [n for n in graph.node if _quantizable(n, weights)]
    edge = ({0} if "first" in parts else set()) | ({max(num_layers - 1, 0)} if "last" in parts else set())
    picked = []
    for node in nodes:
        name = node.name.lower()
        head = any(k in name for k in HEAD_KEYWORDS) or node.op_type in ("Gather", "EmbedLayerNormalization")
        if ("head" in parts and head) or layer_of(name) in edge:
            picked.append(node.name)
    fused = [n.name for n in nodes if n.op_type == "Attention"]
    # a last layer computed for its first position (`first_position`) has q/k/v MatMuls instead of an Attention
    last = [n.name for n in nodes if FIRST_POSITION in n.name] or fused[-1:]
    edges = (fused[:1] if "first" in parts else []) + (last if "last" in parts else [])
    picked += [name for name in edges if name not in picked]
    if "head" in parts:
        picked += [n.name for n in nodes[-1:] if n.name not in picked]  # the op that produces the logits
    # the quantizer rewrites Gemm as MatMul + Add, naming the MatMul "<gemm>_MatMul"; exclude it under that name
    gemms = {n.name for n in nodes if n.op_type == "Gemm"}
    return [f"{name}_MatMul" if name in gemms else name for name in picked]


def _quantizable(node, weights: set[str]) -> bool:
    """Whether `quantize_dynamic_int8` would quantize `node` (ONNX Runtime's IntegerOps rules): a MatMul, Gemm or
    Attention whose weight is a float initializer, a Gather that looks up an initializer (an embedding table, not
    a shape), an EmbedLayerNormalization."""
    if node.op_type == "Gemm" and not plain_gemm(node):  # rewritten as MatMul + Add first, and only in this form
        return False
    if node.op_type in ("MatMul", "Gemm", "Attention"):
        return len(node.input) > 1 and node.input[1] in weights
    if node.op_type == "Gather":
        return node.input[0] in weights
    return node.op_type == "EmbedLayerNormalization" and len(node.output) <= 2
