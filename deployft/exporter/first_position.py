"""The last encoder layer computed for the one position a classifier's head reads.

A BERT-style classification head reads the first position of the last layer's output (`hidden[:, 0]`, a Gather
at index 0 of the sequence axis) and nothing else, yet the exported graph computes every position of that layer:
its queries, attention output, feed-forward and normalizations for all tokens, only to drop all but one row. Every
op between the last fused attention and that Gather works position by position, so the rows can be cut first:

    x ─► Attention(x, W_qkv) ─► ... per-position ops ... ─► Gather(axis 1, index 0) ─► head

becomes

    x[:, :1] ─► MatMul W_q, Add b_q ─┐
    x ───────► MatMul W_k, Add b_k ─┼─► MultiHeadAttention (1 query over every key, the same mask) ─► ... ─► head
    x ───────► MatMul W_v, Add b_v ─┘                      (the residual reads x[:, :1] too)

The keys and values still see every token, so the logits are the same up to fp32 rounding: the rewritten graph is
run against the original on ragged right-padded batches, and kept only when they agree (`SAME_LOGITS`). An
encoder whose head reads anything else (mean pooling, every position) is left as it is. The q/k/v MatMuls are
named under `FIRST_POSITION` in the layer's own name, so int8 quantizes them and a remedy that keeps the last
layer in fp32 finds them (`quantize.sensitive_nodes`); each bias is an Add after its MatMul rather than
MultiHeadAttention's bias input, so dynamic int8 folds it into the quantized MatMul (DynamicQuantizeMatMul).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StageError, reraise_as

logger = logging.getLogger(__name__)

__all__ = ["FIRST_POSITION", "keep_first_position"]

FIRST_POSITION = "first_position"
"""The name part of every node and tensor the rewrite adds."""
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Relu", "Sigmoid", "Gelu",
                         "FastGelu", "BiasGelu", "QuickGelu", "Cast", "Identity"})
"""Ops whose every output element reads only the same element of their inputs (a constant operand broadcast)."""
NORMALIZATIONS = frozenset({"LayerNormalization", "SkipLayerNormalization"})
"""Ops that normalize over the last axis only (LayerNormalization with its default axis -1)."""
SAME_LOGITS = 1e-4
"""How far the rewritten graph's outputs may be from the original's, as a share of the largest of them (fp32
rounding differs in the 7th digit, while a rewrite that loses the padding mask moves them far more: see
`tests/exporter/test_first_position.py`)."""


@dataclass
class _Index:
    """Who produces and who reads each tensor of a graph, and which tensors are constants (with their shapes)."""

    producer: dict = field(default_factory=dict)
    readers: dict = field(default_factory=dict)
    constants: dict = field(default_factory=dict)
    outputs: set = field(default_factory=set)

    values: dict = field(default_factory=dict)
    """A Constant node's value (any of its attribute forms) by its output name."""

    @classmethod
    def of(cls, graph) -> _Index:
        import numpy as np
        from onnx import numpy_helper

        index = cls(outputs={o.name for o in graph.output})
        index.constants = {t.name: tuple(t.dims) for t in graph.initializer}
        for node in graph.node:
            for name in node.output:
                index.producer[name] = node
            for name in node.input:
                index.readers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.attribute:
                value = _attrs(node)[node.attribute[0].name]  # value, value_int, value_floats, ...
                value = numpy_helper.to_array(value) if hasattr(value, "dims") else np.asarray(value)
                index.values[node.output[0]] = value
                index.constants[node.output[0]] = tuple(value.shape)
        return index

    def scalar_zero(self, graph, name: str) -> bool:
        """Whether `name` is a constant scalar 0 (the index a `hidden[:, 0]` Gather reads)."""
        from onnx import numpy_helper

        tensor = next((t for t in graph.initializer if t.name == name), None)
        value = numpy_helper.to_array(tensor) if tensor is not None else self.values.get(name)
        return value is not None and value.ndim == 0 and value.dtype.kind in "iu" and int(value) == 0


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _per_position(node, index: _Index) -> bool:
    """Whether `node` computes each position from that position alone (its activation inputs [batch, seq, ...])."""
    if node.op_type == "MatMul":
        return len(index.constants.get(node.input[1], ())) == 2 and node.input[0] not in index.constants
    if node.op_type in NORMALIZATIONS:
        return node.op_type != "LayerNormalization" or _attrs(node).get("axis", -1) == -1
    if node.op_type not in ELEMENTWISE or (node.domain not in ("", "ai.onnx", "com.microsoft")):
        return False
    # a constant operand broadcast over [batch, seq, hidden] must not vary along seq: rank 1, or leading dims of 1
    return all(len(index.constants[name]) <= 1 or all(d == 1 for d in index.constants[name][:-1])
               for name in node.input if name in index.constants)


def _attention(node, index: _Index) -> bool:
    """Whether `node` is ONNX Runtime's fused encoder Attention with packed, equal q/k/v weights, no cache, no
    attention bias and no rotary embedding: the form MultiHeadAttention takes apart."""
    if node.op_type != "Attention" or node.domain != "com.microsoft":
        return False
    attrs = _attrs(node)
    sizes = attrs.get("qkv_hidden_sizes")
    weight = index.constants.get(node.input[1], ())
    initializers = set(index.constants) - set(index.values)  # the rewrite splits the weight and bias it reads
    return (len(weight) == 2 and weight[1] % 3 == 0 and {node.input[1], node.input[2]} <= initializers
            and not attrs.get("unidirectional") and not attrs.get("do_rotary")
            and (not sizes or len(set(sizes)) == 1) and not any(node.input[4:]) and not any(node.output[1:]))


def _plan(graph, index: _Index):
    """`(attention, per-position ops)`: the one attention a head's `hidden[:, 0]` Gather reads through
    per-position ops, and those ops; None when no head, or more than one, reads the first position that way."""
    gathers = [n for n in graph.node if n.op_type == "Gather" and _attrs(n).get("axis", 0) == 1
               and n.input[0] not in index.constants and index.scalar_zero(graph, n.input[1])]
    plans = [plan for plan in (_cone(gather, index) for gather in gathers) if plan]
    return plans[0] if len(plans) == 1 else None


def _cone(gather, index: _Index):
    """The nodes between `gather` and the one attention it reads through per-position ops, minus any whose output
    something outside them reads (cutting its rows would change that reader); None without one such attention."""
    nodes, attentions, todo = {}, [], [gather.input[0]]
    while todo:
        node = index.producer.get(todo.pop())
        if node is None or id(node) in nodes:
            continue
        if _attention(node, index):
            nodes[id(node)] = node
            attentions.append(node)
        elif _per_position(node, index):
            nodes[id(node)] = node
            todo += [name for name in node.input if name and name not in index.constants]
    shrinking = True
    while shrinking:  # keep only nodes whose outputs are read inside the set (or by the Gather) alone; an attention
        # reads every position of its input (its keys and values), so it reads from outside
        inside = (set(nodes) - {id(n) for n in attentions}) | {id(gather)}
        leaking = [key for key, node in nodes.items()
                   if any(name in index.outputs or any(id(r) not in inside for r in index.readers.get(name, []))
                          for name in node.output if name)]
        for key in leaking:
            del nodes[key]
        shrinking = bool(leaking)
    kept = [n for n in attentions if id(n) in nodes]
    head_input = index.producer.get(gather.input[0])
    if len(kept) != 1 or head_input is None or id(head_input) not in nodes:
        return None
    return kept[0], [n for n in nodes.values() if n is not kept[0]]


def keep_first_position(path: Path) -> str | None:
    """Rewrite the classifier graph at `path` in place so its last layer computes only the position its head reads;
    returns the fusion note, or None when the graph is left as it is (its head reads more, or the rewritten graph
    did not give the same logits, which is logged).

    Raises:
        StageError: the file could not be read, rewritten or written.
    """
    import onnx

    from .onnx_export import external_files, save_model

    with reraise_as(StageError, f"computing only the first position of the last layer of {path.name} failed: "
                                "{reason}"):
        model = onnx.load(str(path))
        index = _Index.of(model.graph)
        plan = _plan(model.graph, index)
        if plan is None:
            return None
        vocab = _vocabulary(model.graph, index)
        queries = _rewrite(model, *plan, index)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".first-position-") as scratch:
            candidate = Path(scratch) / path.name
            save_model(model, candidate)
            differs = _differs(path, candidate, vocab)
            if differs:
                logger.warning("%s: the last layer keeps every position (%s)", path.name, differs)
                return None
            stale = external_files(path)
            moved = {written.name for written in Path(scratch).iterdir()}
            for name in moved:
                (Path(scratch) / name).replace(path.parent / name)
            for old in stale:
                if old.name not in moved and old.exists():
                    old.unlink()
    return (f"the last layer computes only the first position, the one the classification head reads: "
            f"MultiHeadAttention with that position's query over every key ({queries} heads), its feed-forward "
            "and normalizations on that position alone; same logits as every position (checked when written)")


def _rewrite(model, attention, per_position, index: _Index) -> int:
    """Cut the rows of `per_position`'s inputs from outside it and replace `attention` by q/k/v MatMuls and a
    MultiHeadAttention with the first position's query; returns its heads."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    zero, one = f"{FIRST_POSITION}/starts", f"{FIRST_POSITION}/ends_axes"
    graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), zero),
                              numpy_helper.from_array(np.array([1], np.int64), one)])
    added, cut = [], {}

    def first_rows(name: str) -> str:
        if name not in cut:
            cut[name] = f"{name}/{FIRST_POSITION}"
            added.append(helper.make_node("Slice", [name, zero, one, one], [cut[name]], name=f"{cut[name]}/Slice"))
        return cut[name]

    inside = {id(node) for node in per_position} | {id(attention)}
    for node in per_position:
        for k, name in enumerate(node.input):
            if name and name not in index.constants and id(index.producer.get(name)) not in inside:
                node.input[k] = first_rows(name)
    x, weight, bias = attention.input[:3]
    mask = attention.input[3] if len(attention.input) > 3 else ""
    packed, biases = (numpy_helper.to_array(initializers[name]) for name in (weight, bias))
    width = packed.shape[1] // 3
    output = attention.output[0]
    base = f"{output.rsplit('/', 1)[0] if '/' in output else attention.name or output}/{FIRST_POSITION}"
    attrs = {k: v for k, v in _attrs(attention).items() if k in ("num_heads", "mask_filter_value", "scale")}
    for i, part in enumerate("qkv"):  # biases added after each MatMul: int8 folds them into its quantized MatMul
        columns = slice(i * width, (i + 1) * width)
        graph.initializer.extend([numpy_helper.from_array(packed[:, columns].copy(), f"{base}/{part}_weight"),
                                  numpy_helper.from_array(biases[columns].copy(), f"{base}/{part}_bias")])
        added += [helper.make_node("MatMul", [first_rows(x) if part == "q" else x, f"{base}/{part}_weight"],
                                   [f"{base}/{part}_product"], name=f"{base}/{part}/MatMul"),
                  helper.make_node("Add", [f"{base}/{part}_product", f"{base}/{part}_bias"], [f"{base}/{part}"],
                                   name=f"{base}/{part}/Add")]
    added.append(helper.make_node("MultiHeadAttention", [f"{base}/q", f"{base}/k", f"{base}/v", "", mask],
                                  [output], name=f"{base}/MultiHeadAttention", domain="com.microsoft", **attrs))
    graph.node.remove(attention)
    for name in (weight, bias):
        if len(index.readers.get(name, [])) == 1:
            graph.initializer.remove(initializers[name])
    graph.node.extend(added)
    OnnxModel(model).topological_sort()
    return int(attrs["num_heads"])


def _vocabulary(graph, index: _Index) -> int:
    """The rows of the table `input_ids` looks up (2 when no lookup reads it, which keeps made-up ids valid)."""
    for node in graph.node:
        if node.op_type == "Gather" and node.input[1] == "input_ids" and node.input[0] in index.constants:
            return int(index.constants[node.input[0]][0])
    return 2


def _differs(original: Path, rewritten: Path, vocab: int) -> str | None:
    """Why `rewritten` does not give `original`'s outputs on ragged right-padded batches of made-up ids (export's
    own `padded_feeds`), or None when it does."""
    import numpy as np

    from ..runtime.session import SessionOptions, create_session
    from .samples import Samples, padded_feeds

    rng = np.random.default_rng(0)
    sessions = [create_session(path, SessionOptions(threads=1))[0] for path in (original, rewritten)]
    inputs = {spec.name: spec for spec in sessions[0].get_inputs()}
    for lengths in ((11, 6, 1), (5,), (32, 9)):
        rows = Samples([rng.integers(0, vocab, n).tolist() for n in lengths])
        feeds = padded_feeds(rows, 0, inputs, len(lengths))[0]
        outputs = []
        for session, which in zip(sessions, ("original", "rewritten")):
            try:
                outputs.append(session.run(None, feeds))
            except Exception as exc:  # ORT raises its own types for a graph it cannot run
                return f"the {which} graph failed on made-up ids: {str(exc).splitlines()[0]}"
        expected, got = outputs
        worst = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
        scale = max(float(np.abs(a).max()) for a in expected)
        if not worst <= SAME_LOGITS * scale + 1e-6:
            return f"its outputs differ by up to {worst:.3g} (largest {scale:.3g})"
    return None
