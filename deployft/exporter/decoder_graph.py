"""Decode-step passes over a fused decoder graph: packed sibling projections and a last-position LM head.

`pack_projections` turns every group of MatMuls that read the same activation with constant weights of the same
width (a layer's q/k/v projections; its MLP's gate/up projections) into one MatMul over the weights concatenated
along N, followed by a Split back into the original outputs. Each output column is the same dot product as before,
so the graph computes the same numbers; the step runs one kernel instead of three (or two), and a later MatMulNBits
quantization (whose blocks run along K) quantizes every column exactly as it would have unpacked.

`attention_reads_packed_qkv` then hands a layer's packed q/k/v straight to its GroupQueryAttention (the op's packed
QKV input; it rotates q and k itself) when the Split's three outputs feed nothing else: one node fewer per layer.

`add_logits_to_keep` gives the graph an optional input `logits_to_keep` (an overridable initializer, default 0) that
slices the LM head's input to its last k positions: 0 keeps every position (validation, perplexity and Optimum's
ORTModelForCausalLM, which do not feed it), 1 computes the vocabulary projection for the last position only, which
is all a prefill needs for its first token (the LM head is a fifth of a small model's weights). The graph's inputs
and outputs otherwise keep their names, so the KV-cache protocol is unchanged.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

import numpy as np

LOGITS_TO_KEEP = "logits_to_keep"
"""The optional input: how many last positions get logits (0: all)."""
PREFIX = "/deployft/decode"
PACKED_SPLIT = "PackedSplit"
"""Name (last part) of the Split after a packed MatMul: how tools find the packed groups again."""


def pack_projections(model: Any, exclude: set[str] = frozenset()) -> list[list[str]]:
    """Pack sibling constant-weight MatMuls of `model` (an onnx.ModelProto, changed in place).

    Args:
        model: the decoder graph.
        exclude: MatMul node names never packed (the LM head).

    Returns:
        The packed groups, each as the node names it replaced, in graph order.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    nodes = list(graph.node)
    groups: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for index, node in enumerate(nodes):
        if node.op_type != "MatMul" or node.name in exclude:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or node.input[1] in graph_inputs or len(weight.dims) != 2:
            continue
        groups[(node.input[0], int(weight.dims[0]), int(weight.data_type))].append(index)
    packed: list[list[str]] = []
    replacement: dict[int, list] = {}
    for (activation, _, _), members in groups.items():
        if len(members) < 2:
            continue
        weights = [numpy_helper.to_array(initializers[nodes[i].input[1]]) for i in members]
        name = packed_name([nodes[i].name for i in members], len(packed))
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}/weight"))
        graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in weights], dtype=np.int64),
                                                         f"{name}/split_sizes"))
        replacement[members[0]] = [
            helper.make_node("MatMul", [activation, f"{name}/weight"], [f"{name}/MatMul_output"],
                             name=f"{name}/MatMul"),
            helper.make_node("Split", [f"{name}/MatMul_output", f"{name}/split_sizes"],
                             [nodes[i].output[0] for i in members], name=f"{name}/{PACKED_SPLIT}", axis=-1)]
        replacement.update({i: [] for i in members[1:]})
        packed.append([nodes[i].name for i in members])
    if packed:
        _replace_nodes(graph, replacement)
        _drop_unused_initializers(graph)
    return packed


def attention_reads_packed_qkv(model: Any) -> int:
    """Drop the Split after a packed q/k/v MatMul where its three outputs are a GroupQueryAttention's query, key
    and value and feed nothing else; the op reads the packed tensor (key and value left empty), its weight columns
    put in q, k, v order where the export had the projections in another. Returns the number of layers changed."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            readers[name] += 1
    dropped = set()
    for node in graph.node:
        split = producers.get(node.input[0]) if node.op_type == "GroupQueryAttention" else None
        if (split is None or split.op_type != "Split" or not split.name.endswith(PACKED_SPLIT)
                or sorted(split.output) != sorted(node.input[:3]) or any(readers[o] != 1 for o in split.output)):
            continue
        matmul = producers.get(split.input[0])
        weight = initializers.get(matmul.input[1]) if matmul is not None and matmul.op_type == "MatMul" else None
        if weight is None or split.input[1] not in initializers:
            continue
        bounds = np.cumsum([0, *numpy_helper.to_array(initializers[split.input[1]]).tolist()])
        order = [list(split.output).index(name) for name in node.input[:3]]
        if order != [0, 1, 2]:
            columns = numpy_helper.to_array(weight)
            weight.CopyFrom(numpy_helper.from_array(
                np.concatenate([columns[:, bounds[i]:bounds[i + 1]] for i in order], axis=1), weight.name))
        node.input[0], node.input[1], node.input[2] = split.input[0], "", ""
        dropped.add(split.name)
    if dropped:
        kept = [n for n in graph.node if n.name not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unused_initializers(graph)
    return len(dropped)


def packed_name(members: list[str], index: int) -> str:
    """The name a packed group's nodes share: the members' common folder plus their own joined with '+', so that
    `/model/layers.3/self_attn/q_proj/MatMul`, `.../k_proj/MatMul`, `.../v_proj/MatMul` give
    `/model/layers.3/self_attn/q_proj+k_proj+v_proj` (layer-based exclusions still find it by its layer)."""
    parts = [name.split("/") for name in members]
    if all(len(p) >= 3 for p in parts):
        common = 0
        while all(len(p) > common + 2 and p[common] == parts[0][common] for p in parts):
            common += 1
        leaves = [p[common] for p in parts]
        if common and len(set(leaves)) == len(leaves):
            return "/".join(parts[0][:common]) + "/" + "+".join(leaves)
    return f"{PREFIX}/packed_{index}"


def add_logits_to_keep(model: Any, head: str) -> None:
    """Slice the input of the LM head MatMul `head` to the last `logits_to_keep` positions (0: all).

    Raises:
        ValueError: the graph has no MatMul named `head`, or already has the input.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if any(i.name == LOGITS_TO_KEEP for i in graph.input):
        raise ValueError(f"the graph already has an input {LOGITS_TO_KEEP!r}")
    at = next((i for i, n in enumerate(graph.node) if n.op_type == "MatMul" and n.name == head), None)
    if at is None:
        raise ValueError(f"the graph has no LM head MatMul {head!r}")
    node = graph.node[at]
    hidden, kept = node.input[0], f"{PREFIX}/lm_head_input"
    graph.initializer.extend([
        numpy_helper.from_array(np.array(0, dtype=np.int64), LOGITS_TO_KEEP),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), f"{PREFIX}/slice_end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{PREFIX}/slice_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{PREFIX}/shape_1"),
    ])
    # an initializer that is also a graph input is a default the caller may override (ONNX IR >= 4)
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, []))
    node.input[0] = kept
    # Slice from -k: k = 0 starts at 0 (every position), k = 1 at the last one
    _replace_nodes(graph, {at: [
        helper.make_node("Neg", [LOGITS_TO_KEEP], [f"{PREFIX}/negated"], name=f"{PREFIX}/negate"),
        helper.make_node("Reshape", [f"{PREFIX}/negated", f"{PREFIX}/shape_1"], [f"{PREFIX}/slice_start"],
                         name=f"{PREFIX}/slice_start"),
        helper.make_node("Slice", [hidden, f"{PREFIX}/slice_start", f"{PREFIX}/slice_end", f"{PREFIX}/slice_axis"],
                         [kept], name=f"{PREFIX}/keep_last"),
        node]})
    for output in graph.output:
        if output.name == "logits" and output.type.tensor_type.shape.dim:
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 3:
                dims[1].Clear()
                dims[1].dim_param = "kept_positions"


def lm_head(model: Any) -> str | None:
    """The name of the MatMul that produces the graph's `logits` (directly, or through a final Add/Cast), or None."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get("logits")
    while node is not None and node.op_type != "MatMul":
        if node.op_type not in ("Add", "Cast", "Identity") or not node.input:
            return None
        node = producers.get(node.input[0])
    return node.name if node is not None else None


def _replace_nodes(graph, replacement: dict[int, list]) -> None:
    """Rebuild the node list with node i replaced by `replacement[i]` (a list of nodes, maybe empty)."""
    from onnx import NodeProto

    rebuilt = []
    for index, node in enumerate(graph.node):
        for new in replacement.get(index, [node]):
            copy = NodeProto()
            copy.CopyFrom(new)
            rebuilt.append(copy)
    del graph.node[:]
    graph.node.extend(rebuilt)


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {i.name for i in graph.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def topological(nodes: list) -> list:
    """`nodes` ordered so every input is produced before use (ONNX requires it)."""
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps = [{produced_by[n] for n in node.input if n in produced_by} for node in nodes]
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    remaining = [len(ds) for ds in deps]
    ready = deque(i for i, r in enumerate(remaining) if r == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for u in users.get(i, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise ValueError("the rewritten graph has a cycle")
    return order


def prune(graph) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(n for n in node.input if n)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
