"""The weight products of an exported graph, as blockwise quantization sees them: the MatMuls with a constant
weight, the Gemms rewritten as such MatMuls, a tied LM head given its own weight, and the layer each belongs to.

ONNX Runtime's `MatMulNBitsQuantizer` quantizes MatMul only, and an exported `nn.Linear` on a 2-D activation is a
Gemm (OPT's fc1 / fc2 are), so a blockwise file would keep those layers in fp32 while its manifest counted none:
`gemms_as_matmuls` rewrites them first, and `fp32_weight_products` lists whatever still computes in fp32.
"""

from __future__ import annotations

import re

import numpy as np

LAYER_RE = re.compile(r"(?:layers?|h|blocks?)[._/](\d+)[./]")
"""The decoder layer a node belongs to, from its name (`/model/layers.0/mlp/...`, `/transformer/h.3/...`)."""
WEIGHT_PRODUCTS = ("MatMul", "Gemm")


def plain_gemm(node) -> bool:
    """Whether the Gemm `node` is a plain `A @ B (+ C)`: alpha = beta = 1 and A not transposed (transB may be 0
    or 1), the form ONNX Runtime's quantizers rewrite as MatMul + Add."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (attrs.get("alpha", 1.0), attrs.get("beta", 1.0), attrs.get("transA", 0)) == (1.0, 1.0, 0)


def gemm_matmul_name(node) -> str:
    """The name of the MatMul a Gemm becomes (the name ONNX Runtime's quantizers give it too)."""
    return f"{node.name or node.output[0]}_MatMul"


def _weight_gemms(graph) -> list:
    """The plain Gemms whose B is a 2-D initializer."""
    shapes = {i.name: len(i.dims) for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "Gemm" and len(n.input) > 1 and shapes.get(n.input[1]) == 2
            and plain_gemm(n)]


def weight_matmuls(graph) -> list[str]:
    """The MatMul nodes of `graph` whose second input is a constant (an initializer), by name, with every weight
    Gemm under the name of the MatMul `gemms_as_matmuls` makes of it."""
    weights = {i.name for i in graph.initializer}
    gemms = {n.output[0] for n in _weight_gemms(graph)}  # by output name: a protobuf node has no stable identity
    return [gemm_matmul_name(n) if n.output[0] in gemms else n.name for n in graph.node
            if (n.op_type == "MatMul" and n.input[1] in weights) or (n.op_type == "Gemm" and n.output[0] in gemms)]


def layer_of(name: str) -> int | None:
    """The decoder layer of the node called `name`, or None."""
    match = LAYER_RE.search(name.lower())
    return int(match.group(1)) if match else None


def gemms_as_matmuls(model) -> list[str]:
    """Rewrite every weight Gemm of `model` (B a 2-D initializer, `plain_gemm`) as MatMul (+ Add of its bias C), in
    place, so a MatMul-only quantizer quantizes it; returns the new MatMuls' names. A transB weight is stored
    transposed (the original is dropped when nothing else reads it)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    made, replaced = [], set()
    for gemm in _weight_gemms(graph):
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        weight = gemm.input[1]
        if attrs.get("transB", 0):
            replaced.add(weight)
            weight = f"{gemm.input[1]}.transposed"
            if weight not in initializers:
                array = numpy_helper.to_array(initializers[gemm.input[1]])
                initializers[weight] = numpy_helper.from_array(np.ascontiguousarray(array.T), weight)
                graph.initializer.append(initializers[weight])
        name = gemm_matmul_name(gemm)
        biased = len(gemm.input) > 2 and gemm.input[2]
        product = f"{name}_output_0" if biased else gemm.output[0]
        nodes = [helper.make_node("MatMul", [gemm.input[0], weight], [product], name=name)]
        if biased:
            nodes.append(helper.make_node("Add", [product, gemm.input[2]], [gemm.output[0]], name=f"{name}_Add"))
        position = list(graph.node).index(gemm)
        graph.node.remove(gemm)
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)
        made.append(name)
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for name in replaced - read:  # a transposed Gemm weight nothing else reads: one copy in the file, not two
        graph.initializer.remove(initializers[name])
    return made


def fp32_weight_products(graph) -> list[str]:
    """The MatMul / Gemm nodes of a quantized `graph` whose weight is still a float initializer: the weight
    products it computes in fp32, by name (what the manifest's `nodes_excluded` counts)."""
    from onnx import TensorProto

    floats = {i.name for i in graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    return [n.name for n in graph.node if n.op_type in WEIGHT_PRODUCTS and len(n.input) > 1 and n.input[1] in floats]


def untie_transposed_weights(model) -> list[str]:
    """Give every MatMul whose weight is a Transpose of an initializer (a tied LM head) its own transposed copy.

    Returns the initializers that were copied. The Transpose is left for its other users (or pruned when none).
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    transposes = {n.output[0]: n for n in graph.node if n.op_type == "Transpose" and n.input[0] in initializers}
    copied = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in transposes:
            continue
        transpose = transposes[node.input[1]]
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        if weight.ndim != 2 or perm not in (None, [1, 0]):
            continue
        name = f"{transpose.input[0]}.transposed"
        if name not in initializers:
            initializers[name] = numpy_helper.from_array(np.ascontiguousarray(weight.T), name)
            graph.initializer.append(initializers[name])
            copied.append(transpose.input[0])
        node.input[1] = name
    users = {name for n in graph.node for name in n.input}
    dead = [n for n in graph.node
            if n.op_type == "Transpose" and n.output[0] in transposes and n.output[0] not in users]
    for n in dead:
        graph.node.remove(n)
    return copied
