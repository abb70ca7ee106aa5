"""What bounds decoding: bytes of weights read per token against the machine's memory bandwidth.

A decode step multiplies one token's activations by every weight matrix, so it does about two operations per weight
byte read and runs at the speed memory delivers weights, not at the matmul peak. Its roofline is
`bandwidth / weight bytes read per token`; a variant's fraction of it is its measured decode rate over that.

Weight bytes read per token count every initializer a matmul-like op reads in full (MatMul, Gemm, MatMulNBits,
MatMulInteger, ...), and nothing for one that only a Gather reads (the token embedding: one row per token). A GGUF
file (llama.cpp) is read the same way by tensor name: every tensor but the lookup tables, and the token embedding
too when no `output.weight` is stored (a tied LM head reads the whole of it).
"""

from __future__ import annotations

import time
from pathlib import Path

READ_BYTES = 256 * 2**20
"""Size of the tensor the read bandwidth is measured on: far larger than any CPU cache."""
LOOKUP_OPS = ("Gather", "GatherBlockQuantized")
"""Ops that read one row of their weight per token."""
GGUF_EMBEDDING = "token_embd.weight"
GGUF_LOOKUPS = (GGUF_EMBEDDING, "position_embd.weight", "token_types.weight")
"""GGUF tensors read one row per token (llama.cpp's names)."""
GGUF_HEAD = "output.weight"
"""The LM head's own tensor; a GGUF without it ties the head to `GGUF_EMBEDDING`."""


def read_bandwidth(threads: int, seconds: float = 0.5, size: int = READ_BYTES) -> float:
    """Best bytes read per second streaming a `size`-byte tensor (a sum: one read per byte, nothing written) with
    `threads` torch threads: the rate a decode step can read weights at. (A copy's read + write rate would
    understate it: a copy also writes every byte it reads.)"""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(size // 4, dtype=torch.float32)
        src.sum()
        best, deadline = 0.0, time.perf_counter() + seconds
        while True:
            start = time.perf_counter()
            src.sum()
            best = max(best, size / (time.perf_counter() - start))
            if time.perf_counter() > deadline:
                return best
    finally:
        torch.set_num_threads(previous)


def onnx_weight_bytes(path: str | Path) -> int:
    """Bytes of the initializers an ONNX graph reads in full per call (lookup-only weights excluded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {init.name: _initializer_bytes(init) for init in graph.initializer}
    full: set[str] = set()
    for node in _all_nodes(graph):
        if node.op_type in LOOKUP_OPS:
            continue
        full.update(name for name in node.input if name in sizes)
    return sum(sizes[name] for name in full)


def gguf_weight_bytes(path: str | Path) -> int:
    """Bytes of the tensors a GGUF file's model reads in full per token (see the module's docstring)."""
    from gguf import GGUFReader

    sizes = {tensor.name: int(tensor.n_bytes) for tensor in GGUFReader(str(path)).tensors}
    tied = GGUF_HEAD not in sizes
    return sum(n for name, n in sizes.items()
               if name not in GGUF_LOOKUPS or (tied and name == GGUF_EMBEDDING))


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _initializer_bytes(init) -> int:
    from onnx import helper

    external = {entry.key: entry.value for entry in init.external_data}
    if "length" in external:
        return int(external["length"])
    if init.raw_data:
        return len(init.raw_data)
    count = 1
    for dim in init.dims:
        count *= dim
    return count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def torch_weight_bytes(model) -> int:
    """Bytes of a causal LM's parameters read per decoded token: all but an input embedding the LM head does not
    share (a lookup reads one row)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    shared = head is not None and head.weight.data_ptr() == embedding.data_ptr()
    seen, total = set(), 0
    for parameter in model.parameters():
        if parameter.data_ptr() in seen or (parameter is embedding and not shared):
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel() * parameter.element_size()
    return total


def fraction_of_bandwidth(tokens_per_s: float | None, weight_bytes: int | None,
                          bytes_per_s: float | None) -> float | None:
    """Weight bytes streamed per second while decoding over the measured bandwidth, or None when unknown."""
    if not tokens_per_s or not weight_bytes or not bytes_per_s:
        return None
    return tokens_per_s * weight_bytes / bytes_per_s
