"""Fused decoder attention: rewrite a Llama-family export's attention into ONNX Runtime's fused ops.

Optimum exports each decoder layer's attention as ~100 small nodes (shape arithmetic, rotary halves, KV concat,
repeat-KV, mask handling, softmax guard). At batch 1 decode those nodes cost more than the layer's matrix products.
This pass replaces, per layer, everything between the q/k/v projections and the o projection with

    GroupQueryAttention(q, k, v, past_key, past_value, position_ids)
        (com.microsoft; causal; q and k rotated by the op from the model's own cos/sin tables, `do_rotary`;
         the KV cache appended by the op; heads whose size is not a multiple of 16, which the op cannot rotate,
         get two RotaryEmbedding nodes before it instead)

The graph's inputs and outputs keep their names and shapes, so the KV-cache protocol (attention_mask, position_ids,
past/present) is unchanged. One difference is marked in the model's metadata (`mark_rotary_in_attention`): on a
first step (no past) the op rotates every row by its column, so a left-padded batch's first step must run
right-padded, as deployft's runtime does (`deployft/runtime/padding.py`); decode steps and resumed prompts take
position ids per row. Padding is honoured through
GroupQueryAttention's `attention_bias` (0 for real tokens, -1e4 for padding); every row's cache length is the
batch's full length, so the op appends new keys at the same column for every row, like the unfused graph's Concat.

Only architectures whose attention is exactly "rotary (half rotation) + grouped-query softmax attention scaled by
1/sqrt(head_dim)", optionally with q/k/v bias (Qwen2) or one sliding window (Mistral), are rewritten (SUPPORTED);
anything else is left as exported and the caller reports why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .decoder_graph import prune, topological

SUPPORTED = ("llama", "mistral", "qwen2")
"""model_type values whose exported attention this pass rewrites."""
MASKED = -10000.0
"""Attention bias on padding keys: exp(-1e4) underflows to 0 in fp32, and the sum with a score stays finite."""
MS_DOMAIN = "com.microsoft"
PREFIX = "/deployft/attention"

logger = logging.getLogger("deployft.exporter")


@dataclass
class AttentionShape:
    """What the fused ops need to know about a decoder's attention."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    cos_cache: np.ndarray
    """[max_positions, head_dim // 2] float32: cos of position x inverse frequency, already scaled."""
    sin_cache: np.ndarray
    """[max_positions, head_dim // 2] float32."""
    window: int | None = None
    """Mistral's `sliding_window` (GroupQueryAttention's local_window_size; checked against transformers)."""
    qkv_bias: bool = False
    """The q/k/v projections add a bias (Qwen2, Llama with attention_bias): its Add must be found in every layer."""


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why this model's attention cannot be fused by this pass, or None when it can."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        return f"model type {model_type!r} is not one deployft fuses (supported: {', '.join(SUPPORTED)})"
    if config.get("pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1 splits the projections"
    if model_type == "qwen2" and config.get("use_sliding_window"):
        return "Qwen2 sliding windows differ per layer (max_window_layers)"
    switch = longrope_switch(config)
    if switch is not None:
        return (f"rope_scaling 'longrope' rotates with its short factors up to {switch} tokens and its long factors "
                "beyond (transformers switches per sequence length); one fused rotary table cannot hold both")
    head_dim = _head_dim(config)
    if head_dim is not None and head_dim % 8:
        return f"head size {head_dim} is not a multiple of 8 (GroupQueryAttention)"
    return None


def longrope_switch(config: dict[str, Any]) -> int | None:
    """The sequence length past which a "longrope" model (Phi-3 style) rotates with its long factors, or None for
    any other rotary embedding. Its plain export traced the short-factor branch: longer sequences differ."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if (rope.get("rope_type") or rope.get("type")) != "longrope":
        return None
    original = rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    return int(original or config.get("max_position_embeddings") or 2048)


def _head_dim(config: dict[str, Any]) -> int | None:
    if config.get("head_dim") or not config.get("hidden_size"):
        return config.get("head_dim")
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def attention_window(config: dict[str, Any]) -> int | None:
    """The sliding window a model's attention uses (Mistral's `sliding_window`), or None for full attention."""
    if config.get("model_type") == "mistral" and config.get("sliding_window"):
        return int(config["sliding_window"])
    return None


def attention_shape(config: dict[str, Any], model: Any) -> tuple[AttentionShape | None, str | None]:
    """`(AttentionShape, None)` for a model whose attention this pass can fuse, else `(None, why not)`.

    Args:
        config: the model's config.json.
        model: the PyTorch model (its rotary module gives the cos/sin tables).
    """
    switch = longrope_switch(config)
    if switch is not None:
        logger.warning("rope_scaling 'longrope': past %d tokens (original_max_position_embeddings) model.onnx keeps "
                       "the short factors where transformers switches to the long: its logits differ", switch)
    reason = unsupported_reason(config)
    if reason:
        return None, reason
    heads = int(config["num_attention_heads"])
    try:
        cos, sin = rotary_caches(model, int(config.get("max_position_embeddings") or 2048))
    except (AttributeError, TypeError, ValueError) as exc:
        return None, f"its rotary embedding cannot be tabulated ({exc})"
    head_dim = _head_dim(config)
    if cos.shape[1] * 2 != head_dim:
        return None, f"its rotary embedding covers {cos.shape[1] * 2} of {head_dim} head dimensions (partial rotary)"
    return AttentionShape(
        num_layers=int(config["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=head_dim, cos_cache=cos,
        sin_cache=sin, window=attention_window(config),
        qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias"))), None


def rotary_caches(model: Any, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches [max_positions, head_dim // 2] from the PyTorch model's own rotary module.

    Using the module (instead of re-deriving the frequencies) keeps every rope_scaling variant transformers supports
    (linear, dynamic at its base length, llama3, yarn's attention scaling) exactly as the model computes it.
    """
    import torch

    rotary = model.get_decoder().rotary_emb
    positions = torch.arange(max_positions, dtype=torch.long)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.inference_mode():
        cos, sin = rotary(probe, positions)
    half = cos.shape[-1] // 2
    cos, sin = cos[0].float().numpy(), sin[0].float().numpy()
    if not (np.allclose(cos[:, :half], cos[:, half:]) and np.allclose(sin[:, :half], sin[:, half:])):
        raise ValueError("the rotary embedding is not a half rotation (cos/sin halves differ)")
    return np.ascontiguousarray(cos[:, :half]), np.ascontiguousarray(sin[:, :half])


def fuse_attention(model: Any, shape: AttentionShape) -> int:
    """Rewrite `model` (an onnx.ModelProto, changed in place); returns the number of layers fused.

    Raises:
        ValueError: the graph does not have the expected projections, cache inputs or outputs for some layer.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    for needed in ("input_ids", "attention_mask", "position_ids"):
        if needed not in inputs:
            raise ValueError(f"the decoder graph has no {needed!r} input")
    subgraph = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(attr.type in subgraph for node in graph.node for attr in node.attribute):
        raise ValueError("the decoder graph has control-flow subgraphs (If/Loop), which this rewrite does not follow")
    new_nodes = _shared_nodes(helper, TensorProto)
    graph.initializer.extend([numpy_helper.from_array(shape.cos_cache.astype(np.float32), f"{PREFIX}/cos_cache"),
                              numpy_helper.from_array(shape.sin_cache.astype(np.float32), f"{PREFIX}/sin_cache")])
    replaced: set[str] = set()
    inside = shape.head_dim % 16 == 0  # ONNX Runtime's CPU GroupQueryAttention rotates heads of 16k only
    for layer in range(shape.num_layers):
        q, k, v = (_projection(graph, layer, p, shape.qkv_bias) for p in ("q_proj", "k_proj", "v_proj"))
        o_node = _matmul(graph, layer, "o_proj")
        attn_out = o_node.input[0]
        past_k, past_v = f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"
        present_k, present_v = f"present.{layer}.key", f"present.{layer}.value"
        for name, pool in ((past_k, inputs), (past_v, inputs), (present_k, outputs), (present_v, outputs)):
            if name not in pool:
                raise ValueError(f"layer {layer}: the graph has no {name!r}")
        p = f"{PREFIX}/layers.{layer}"
        if inside:
            rotated, rotary = (q, k), [f"{PREFIX}/cos_cache", f"{PREFIX}/sin_cache", "position_ids"]
        else:
            rotated, rotary = (f"{p}/q_rot", f"{p}/k_rot"), ["", "", ""]
            new_nodes += [helper.make_node("RotaryEmbedding", [x, "position_ids", f"{PREFIX}/cos_cache",
                                                               f"{PREFIX}/sin_cache"], [out], name=f"{p}/{n}_rotary",
                                           domain=MS_DOMAIN, num_heads=heads, interleaved=0)
                          for x, out, n, heads in ((q, rotated[0], "q", shape.num_heads),
                                                   (k, rotated[1], "k", shape.num_kv_heads))]
        new_nodes.append(helper.make_node(
            "GroupQueryAttention", [*rotated, v, past_k, past_v, f"{PREFIX}/seqlens_k", f"{PREFIX}/total_len",
                                    *rotary, f"{PREFIX}/bias"],
            [attn_out, present_k, present_v], name=f"{p}/GroupQueryAttention", domain=MS_DOMAIN,
            num_heads=shape.num_heads, kv_num_heads=shape.num_kv_heads, do_rotary=int(inside), rotary_interleaved=0,
            causal=1, scale=float(shape.head_dim ** -0.5),
            local_window_size=-1 if shape.window is None else shape.window))
        replaced |= {attn_out, present_k, present_v}
    kept = [node for node in graph.node if not replaced.intersection(node.output)]
    del graph.node[:]
    graph.node.extend(topological(kept + new_nodes))
    prune(graph)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if inside:
        mark_rotary_in_attention(model)
    return shape.num_layers


def mark_shared_cache(model: Any) -> None:
    """Say in the model's metadata that its cache may be one buffer per layer updated in place.

    Every `past_key_values.N` input of a fused graph feeds only its GroupQueryAttention, which writes the step's
    keys and values into `present.N` at column `total - 1`; bound to the same preallocated buffer as `past`, it
    writes them in place (the runtime's `SharedCache`). Unfused graphs concatenate past and new into a fresh
    tensor, so they are never marked.
    """
    from ..runtime.kv_cache import SHARED_CACHE, SHARED_CACHE_KEY

    _set_metadata(model, SHARED_CACHE_KEY, SHARED_CACHE)


def mark_rotary_in_attention(model: Any) -> None:
    """Say in the model's metadata that GroupQueryAttention rotates q and k itself (see the module docstring)."""
    from ..runtime.padding import ROTARY_IN_ATTENTION, ROTARY_KEY

    _set_metadata(model, ROTARY_KEY, ROTARY_IN_ATTENTION)


def _set_metadata(model: Any, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def _shared_nodes(helper, TensorProto) -> list:
    """Once per step: total length, per-row cache length - 1, and the additive padding bias [B, 1, S, T]."""
    P = PREFIX

    def const(name: str, values, dtype) -> Any:
        return helper.make_node("Constant", [], [f"{P}/{name}"], name=f"{P}/{name}",
                                value=helper.make_tensor(f"{P}/{name}_value", dtype, [len(values)], values))

    return [
        const("one_i64", [1], TensorProto.INT64),
        const("one_i32", [1], TensorProto.INT32),
        const("index_0", [0], TensorProto.INT64),
        const("index_1", [1], TensorProto.INT64),
        const("bias_b11t_shape", [0, 1, 1, -1], TensorProto.INT64),
        const("masked_f32", [MASKED], TensorProto.FLOAT),
        const("one_f32", [1.0], TensorProto.FLOAT),
        # Shape + Gather rather than Shape(start, end) and Reshape rather than Unsqueeze(axes input): any opset
        helper.make_node("Shape", ["attention_mask"], [f"{P}/mask_shape"], name=f"{P}/mask_shape"),
        helper.make_node("Shape", ["input_ids"], [f"{P}/ids_shape"], name=f"{P}/ids_shape"),
        helper.make_node("Gather", [f"{P}/mask_shape", f"{P}/index_0"], [f"{P}/batch"], name=f"{P}/batch", axis=0),
        helper.make_node("Gather", [f"{P}/mask_shape", f"{P}/index_1"], [f"{P}/total"], name=f"{P}/total", axis=0),
        helper.make_node("Gather", [f"{P}/ids_shape", f"{P}/index_1"], [f"{P}/new"], name=f"{P}/new", axis=0),
        helper.make_node("Cast", [f"{P}/total"], [f"{P}/total_i32"], name=f"{P}/total_i32", to=TensorProto.INT32),
        helper.make_node("Squeeze", [f"{P}/total_i32"], [f"{P}/total_len"], name=f"{P}/total_len"),
        helper.make_node("Sub", [f"{P}/total_i32", f"{P}/one_i32"], [f"{P}/last"], name=f"{P}/last"),
        helper.make_node("Expand", [f"{P}/last", f"{P}/batch"], [f"{P}/seqlens_k"], name=f"{P}/seqlens_k"),
        helper.make_node("Cast", ["attention_mask"], [f"{P}/mask_f"], name=f"{P}/mask_f", to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{P}/one_f32", f"{P}/mask_f"], [f"{P}/masked"], name=f"{P}/masked"),
        helper.make_node("Mul", [f"{P}/masked", f"{P}/masked_f32"], [f"{P}/bias_bt"], name=f"{P}/bias_bt"),
        helper.make_node("Reshape", [f"{P}/bias_bt", f"{P}/bias_b11t_shape"], [f"{P}/bias_b11t"],
                         name=f"{P}/bias_b11t"),
        helper.make_node("Concat", [f"{P}/one_i64", f"{P}/one_i64", f"{P}/new", f"{P}/one_i64"],
                         [f"{P}/bias_shape"], name=f"{P}/bias_shape", axis=0),
        helper.make_node("Expand", [f"{P}/bias_b11t", f"{P}/bias_shape"], [f"{P}/bias"], name=f"{P}/bias"),
    ]


def _matmul(graph, layer: int, proj: str):
    """The MatMul of `proj` in decoder layer `layer`, found by Optimum's node naming."""
    pattern = re.compile(rf"layers\.{layer}/self_attn/{proj}/MatMul")
    found = [n for n in graph.node if n.op_type == "MatMul" and pattern.search(n.name)]
    if len(found) != 1:
        raise ValueError(f"layer {layer}: expected one {proj} MatMul, found {len(found)}")
    return found[0]


def _projection(graph, layer: int, proj: str, biased: bool) -> str:
    """The tensor a q/k/v projection produces: its MatMul's output, or the output of the bias Add after it."""
    out = _matmul(graph, layer, proj).output[0]
    adds = [n for n in graph.node if n.op_type == "Add" and out in n.input
            and re.search(rf"layers\.{layer}/self_attn/{proj}/Add", n.name)]
    if len(adds) == 1:
        return adds[0].output[0]
    if biased:
        raise ValueError(f"layer {layer}: {proj} has a bias but its Add was not found after the MatMul")
    return out
