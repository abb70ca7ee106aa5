"""Blockwise int4 of a decoder's fused graph: `MatMulNBits` with 4-bit weights, the LM head (by default) and the
embedding at 8 bits.

Every constant-weight MatMul (and weight Gemm, rewritten as one first: `matmuls.gemms_as_matmuls`) becomes
`MatMulNBits` (symmetric, one scale per `block_size` weights along K, int8 activations: accuracy level 4), in two
passes of ONNX Runtime's `MatMulNBitsQuantizer`: first the nodes kept at 8 bits (the LM head unless `--head-bits 4`;
a remedy adds the first and last layer), then every other weight at 4 bits; `nodes_excluded` records every weight
product left in fp32. The token embedding lookup becomes an 8-bit `GatherBlockQuantized`, written here: the
quantizer writes that op at 4 bits only, while the kernel of ONNX Runtime >= 1.32 reads 8-bit blocks. When no block
size of 16..`block_size` divides the hidden size the embedding stays fp32; the manifest's `quantization.embedding`
says which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import StageError, reraise_as
from .matmuls import gemms_as_matmuls, layer_of, untie_transposed_weights, weight_matmuls
from .quantize import ACCURACY_LEVEL, _quiet, kept_in_fp32

EMBEDDING_FP32 = "fp32: no block size of 16 or more up to --block-size divides the hidden size"
"""What the manifest's `quantization.embedding` says when the token embedding could not be blocked."""


def edge_layer_matmuls(path: Path, num_layers: int) -> list[str]:
    """The weight MatMuls of the first and last decoder layer (what an int4 remedy keeps at 8 bits); a weight Gemm
    by the name of the MatMul it becomes (`matmuls.weight_matmuls`)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    edges = {0, max(num_layers - 1, 0)}
    return [name for name in weight_matmuls(graph) if layer_of(name) in edges]


def _widths(path: Path) -> list[tuple[str, int]]:
    """`(name of the MatMul it replaced, weight bits)` of every MatMulNBits node of the file at `path` (the quantizer
    names each `<name>_Q<bits>`)."""
    import onnx

    return [(node.name.rsplit("_Q", 1)[0], next((a.i for a in node.attribute if a.name == "bits"), 4))
            for node in onnx.load(str(path), load_external_data=False).graph.node if node.op_type == "MatMulNBits"]


def bits_of(path: Path) -> dict[str, int]:
    """`{"4": n, "8": m}`: how many MatMulNBits nodes of the file at `path` carry each weight width."""
    counts = Counter(str(bits) for _, bits in _widths(path))
    return dict(sorted(counts.items()))


def width_of(path: Path, matmuls: Iterable[str]) -> int | None:
    """The weight width of the MatMulNBits nodes that replaced `matmuls` in the file at `path`; None when they are
    not all MatMulNBits of one width."""
    names = {name for name in matmuls if name}  # an unnamed MatMul's MatMulNBits is unnamed too: no match by name
    widths = [bits for name, bits in _widths(path) if name in names]
    return widths[0] if names and len(widths) == len(names) and len(set(widths)) == 1 else None


INT4_BLOCK_SIZE = 32
"""Weights per 4-bit scale when `--block-size` is not given."""


def quantize_int4(src: Path, dst: Path, block_size: int = INT4_BLOCK_SIZE, eight_bit: Iterable[str] = (),
                  nodes_to_exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Blockwise int4 of `src` into `dst`: `eight_bit` MatMuls at 8 bits, `nodes_to_exclude` in fp32, the rest at
    4 bits, the token embedding at 8 bits (unless its Gather is excluded by name); returns the settings the manifest
    records (the bit widths counted from the written file)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .onnx_export import save_model

    excluded = list(nodes_to_exclude)
    with reraise_as(StageError, f"int4 quantization of {src.name} failed: {{reason}}"):
        model = onnx.load(str(src))
        untied = untie_transposed_weights(model)
        gemms = gemms_as_matmuls(model)
        weights = weight_matmuls(model.graph)
        eight = [n for n in eight_bit if n in weights and n not in excluded]
        for bits, skip in ((8, [n for n in weights if n not in eight]), (4, excluded)):
            if bits == 8 and not eight:
                continue
            quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                             accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=skip,
                                             op_types_to_quantize=("MatMul",))
            _quiet(quantizer.process)
            quantizer.model.topological_sort()
            model = quantizer.model.model
        embedding = quantize_embedding(model.graph, block_size, excluded)
        save_model(model, dst, external=True)
    return {"mode": "int4", "method": "blockwise int4 weights (MatMulNBits), int8 compute", "preset": None,
            "per_channel": False, "block_size": block_size, "accuracy_level": ACCURACY_LEVEL, "symmetric": True,
            "op_types": ["MatMul", "Gemm"], "bits": bits_of(dst), "eight_bit_nodes": eight, "embedding": embedding,
            "untied_weights": untied, "gemms_as_matmuls": gemms, "nodes_excluded": kept_in_fp32(model.graph, excluded),
            "quantized_from": src.name}


def quantize_embedding(graph, block_size: int, nodes_to_exclude: Iterable[str] = ()) -> str:
    """Rewrite the token embedding lookup (the Gather of a weight by `input_ids`) as an 8-bit `GatherBlockQuantized`
    (symmetric: uint8 around a zero point of 128, one scale per block along the hidden size); returns what the
    manifest's `quantization.embedding` records."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    node = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers
                 and n.input[1] == "input_ids"), None)
    if node is None:
        return "fp32: no Gather of a weight by input_ids found"
    if node.name in nodes_to_exclude:
        return f"fp32: {node.name} excluded"
    weight = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
    block = next((b for b in (block_size, 64, 32, 16) if b <= block_size and weight.shape[1] % b == 0), None)
    if weight.ndim != 2 or block is None:
        return EMBEDDING_FP32
    blocks = weight.reshape(weight.shape[0], -1, block)
    scales = np.maximum(np.abs(blocks).max(axis=-1), 1e-12) / 127.0
    data = (np.clip(np.round(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8).reshape(weight.shape)
    name = node.input[0]
    tensors = [numpy_helper.from_array(data, f"{name}_Q8"), numpy_helper.from_array(scales.astype(np.float32),
               f"{name}_scales"), numpy_helper.from_array(np.full(scales.shape, 128, np.uint8), f"{name}_zero_points")]
    graph.initializer.extend(tensors)
    quantized = helper.make_node("GatherBlockQuantized", [tensors[0].name, node.input[1], tensors[1].name,
                                                          tensors[2].name], list(node.output), name=f"{node.name}_Q8",
                                 domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block, bits=8)
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, quantized)
    if not any(name in n.input for n in graph.node):
        graph.initializer.remove(initializers[name])
    return f"8-bit GatherBlockQuantized, block {block}"
