"""Activation smoothing (SmoothQuant) for a classifier's dynamic int8: move activation outliers into the weights.

Dynamic int8 quantizes each MatMul's input with one scale for the whole tensor, so a few channels far larger than
the rest (an encoder's LayerNorm and Gelu outputs carry them) leave the others a handful of levels. For every such
activation X feeding MatMuls with constant weights W, smoothing inserts `X * (1/s)` and scales W's rows by s, per
input channel:

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)        (X_j over the calibration rows, W_j over every reader)

which leaves the fp32 graph's outputs unchanged (to float rounding) and evens out the channels the quantizer
sees. The ranges are measured on padded batches, padded positions included: a deployed file runs padded batches
and dynamic int8 ranges the whole tensor, pads too, so scales measured on the text positions alone would let
the pads' own large channels set the range. The Mul costs one pass over the activation, so only activations whose
largest channel is at least `MIN_OUTLIER_RATIO` times their median channel are smoothed. A fused Attention's packed
q/k/v weight is smoothed like a MatMul's. An activation whose reader shares its weight with another node is left
alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StageError, reraise_as

ALPHA = 0.8
"""How much of each outlier moves into the weights (0: none, 1: all)."""
MIN_OUTLIER_RATIO = 3.0
"""An activation is smoothed when its largest channel's max |x| is at least this many times the median channel's."""
READERS = ("MatMul", "Attention")
"""Ops whose input 0 is the activation and input 1 a constant weight of shape (input channels, outputs)."""


def smooth_activations(src: Path, dst: Path, batches: list[dict[str, np.ndarray]], alpha: float = ALPHA,
                       min_ratio: float | None = None) -> dict[str, Any]:
    """Write `src` with its outlier activations smoothed as `dst` (fp32, same outputs); returns the settings the
    manifest records: which activations were smoothed, alpha, the threshold and the calibration rows.

    Args:
        batches: model feeds (calibration rows) the activation ranges are measured on.
        min_ratio: `MIN_OUTLIER_RATIO` when None.

    Raises:
        StageError: the graph could not be read, run or written.
    """
    import onnx

    from .onnx_export import save_model

    if not batches:
        raise StageError(f"smoothing the activations of {src.name} needs calibration rows and got none")
    min_ratio = MIN_OUTLIER_RATIO if min_ratio is None else min_ratio
    with reraise_as(StageError, f"smoothing the activations of {src.name} failed: {{reason}}"):
        model = onnx.load(str(src))
        readers = _readers(model)
        ranges = _activation_ranges(src, sorted(readers), batches)
        smoothed = []
        for name, nodes in readers.items():
            x_max = ranges[name]
            if float(np.max(x_max)) < min_ratio * max(float(np.median(x_max)), 1e-12):
                continue
            _smooth(model, name, nodes, x_max, alpha)
            smoothed.append(name)
        save_model(model, dst)
    return {"smoothing": {"method": "SmoothQuant (per input channel, folded into the weights)", "alpha": alpha,
                          "min_outlier_ratio": min_ratio,
                          "calibration_rows": sum(next(iter(feed.values())).shape[0] for feed in batches),
                          "activations_smoothed": len(smoothed), "activations_considered": len(readers),
                          "smoothed": smoothed}}


def _readers(model) -> dict[str, list]:
    """Activation name -> the MatMul / Attention nodes that read it with a weight no other node reads."""
    initializers = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    readers: dict[str, list] = {}
    shared: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in READERS or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2:
            continue
        if uses[node.input[1]] > 1:
            shared.add(node.input[0])
        readers.setdefault(node.input[0], []).append(node)
    return {name: nodes for name, nodes in readers.items() if name not in shared and name not in initializers}


def _activation_ranges(src: Path, names: list[str], batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every activation in `names` over `batches`, from one fp32 CPU session of `src` with
    those activations as extra outputs. The probe graph is read without external weights: a file that has them
    (over 2 GB) is probed through a graph-only copy beside it, under a temporary name, that reads the same weight
    file and is deleted once the session has loaded."""
    import onnx
    import onnxruntime as ort

    probe = onnx.load(str(src), load_external_data=False)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in probe.graph.initializer):
        handle, name = tempfile.mkstemp(prefix=f".{src.stem}.", suffix=".probe.onnx", dir=src.parent)
        os.close(handle)
        try:
            onnx.save(probe, name)
            session = ort.InferenceSession(name, options, providers=["CPUExecutionProvider"])
        finally:
            os.unlink(name)
    else:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for feed in batches:
        for name, value in zip(names, session.run(names, {k: v for k, v in feed.items() if k in inputs})):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = channel_max if name not in ranges else np.maximum(ranges[name], channel_max)
    return ranges


def _smooth(model, name: str, nodes: list, x_max: np.ndarray, alpha: float) -> None:
    """Insert `name * (1/s)` just before the first of `nodes` (so after the activation's producer: the graph stays in
    topological order) and scale each one's weight rows by s."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    weights = [numpy_helper.to_array(initializers[n.input[1]]).astype(np.float32) for n in nodes]
    w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
    scale = (np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha))
    scale = np.clip(scale, 1e-4, 1e4).astype(np.float32)
    for node, weight in zip(nodes, weights):
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
    inverse, smoothed = f"{name}/smooth_scale", f"{name}/smoothed"
    graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
    first = min(list(graph.node).index(n) for n in nodes)
    graph.node.insert(first, helper.make_node("Mul", [name, inverse], [smoothed], name=f"{name}/Smooth"))
    for node in nodes:
        node.input[0] = smoothed

