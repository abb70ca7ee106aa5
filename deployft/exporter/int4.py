"""Blockwise int4 of a decoder's fused graph: `MatMulNBits` with 4-bit weights, the LM head at 8 bits.

Every constant-weight MatMul becomes `MatMulNBits` (symmetric, one scale per `block_size` weights along K, int8
activations: accuracy level 4), in two passes of ONNX Runtime's `MatMulNBitsQuantizer`: first the nodes kept at
8 bits (the LM head; a remedy adds the first and last layer), then every other weight at 4 bits. The token
embedding stays fp32: the quantizer writes `GatherBlockQuantized` at 4 bits only, and a 4-bit embedding is not
what `--quantize int4` promises (embeddings and LM head at 8 bits). A lookup reads one row per token, so the fp32
embedding costs disk, not speed; the manifest says so in `quantization.embedding`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import StageError, reraise_as
from .quantize import ACCURACY_LEVEL, _quiet, untie_transposed_weights

EMBEDDING_NOTE = ("fp32: ONNX Runtime's MatMulNBitsQuantizer quantizes the embedding Gather (GatherBlockQuantized) "
                  "to 4 bits only, and int4 keeps embeddings at 8 bits or more")
"""What the manifest's `quantization.embedding` says about the token embedding of an int4 file."""
_LAYER = re.compile(r"(?:layers?|h|blocks?)[._/](\d+)[./]")


def weight_matmuls(graph) -> list[str]:
    """The MatMul nodes of `graph` whose second input is a constant (an initializer), by name."""
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def edge_layer_matmuls(path: Path, num_layers: int) -> list[str]:
    """The weight MatMuls of the first and last decoder layer (what an int4 remedy keeps at 8 bits)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    edges = {0, max(num_layers - 1, 0)}
    return [name for name in weight_matmuls(graph)
            if (m := _LAYER.search(name.lower())) and int(m.group(1)) in edges]


def bits_of(path: Path) -> dict[str, int]:
    """`{"4": n, "8": m}`: how many MatMulNBits nodes of the file at `path` carry each weight width."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            counts[str(bits)] = counts.get(str(bits), 0) + 1
    return dict(sorted(counts.items()))


def quantize_int4(src: Path, dst: Path, block_size: int = 32, eight_bit: Iterable[str] = (),
                  nodes_to_exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Blockwise int4 of `src` into `dst`: `eight_bit` MatMuls at 8 bits, `nodes_to_exclude` in fp32, the rest at
    4 bits; returns the settings the manifest records (the bit widths counted from the written file)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .onnx_export import save_model

    excluded = list(nodes_to_exclude)
    with reraise_as(StageError, f"int4 quantization of {src.name} failed: {{reason}}"):
        model = onnx.load(str(src))
        untied = untie_transposed_weights(model)
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
        save_model(model, dst)
    return {"mode": "int4", "method": "blockwise int4 weights (MatMulNBits), int8 compute", "preset": None,
            "per_channel": False, "block_size": block_size, "accuracy_level": ACCURACY_LEVEL, "symmetric": True,
            "op_types": ["MatMul"], "bits": bits_of(dst), "eight_bit_nodes": eight, "embedding": EMBEDDING_NOTE,
            "untied_weights": untied, "nodes_excluded": excluded, "quantized_from": src.name}
