"""The hardware limit beside the result: the machine's peak matmul rate and each variant's FLOPs.

Peak fp32 is the best square matmul through torch; peak bf16 the same on bfloat16 tensors, measured only where the
CPU has bf16 matmul instructions (AMX or AVX512-BF16), which a variant run with a bf16 precision hint (OpenVINO)
is judged against; peak int8 is the same through ONNX Runtime's MatMulInteger (uint8 x int8 -> int32), the kernel
dynamically quantized models run on. Both are the best of
several sizes and repeated sweeps (one size timed once varies from run to run on a shared machine). A classifier's
achieved fraction of peak is its FLOPs per inference divided by its median latency and that peak (a fused file whose
last layer computes the first position alone is credited with the FLOPs it does: `first_position_saving`); decode, which
reads every weight once per token, is judged against memory bandwidth instead (`roofline.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


SIZES = (512, 1024, 2048)
"""Square matmul sizes the peaks are taken over: the best size differs between machines and kernels."""
SWEEPS = 2
"""Times every size is measured, sweeps interleaved, so one unlucky stretch cannot set the peak."""


def _best_rate(run: Callable[[], Any], flops: float, seconds: float) -> float:
    """Best FLOP/s over repeated calls for about `seconds` (after one untimed warm-up call)."""
    run()
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        run()
        best = max(best, flops / (time.perf_counter() - start))
        if time.perf_counter() > deadline:
            return best


def _sweep(make_run: Callable[[int], Callable[[], Any]], sizes: tuple[int, ...], seconds: float,
           sweeps: int) -> tuple[float, dict[str, float]]:
    """The best rate over `sizes`, each measured `sweeps` times (interleaved), and the best rate per size."""
    runs = {size: make_run(size) for size in sizes}
    by_size = {str(size): 0.0 for size in sizes}
    for _ in range(sweeps):
        for size, run in runs.items():
            by_size[str(size)] = max(by_size[str(size)], _best_rate(run, 2.0 * size**3, seconds))
    return max(by_size.values()), by_size


def peak_matmul(threads: int, sizes: tuple[int, ...] = SIZES, seconds: float = 0.5, device: str = "cpu",
                sweeps: int = SWEEPS, dtype: str = "float32") -> tuple[float, dict[str, float]]:
    """Peak matmul FLOP/s through torch with `threads` intra-op threads (fp32, or `dtype="bfloat16"` for the bf16
    peak), and the best rate per size."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def make_run(size: int):
        kind = getattr(torch, dtype)
        a, b = (torch.randn(size, size, device=device).to(kind) for _ in range(2))

        def run():
            torch.mm(a, b)
            sync()
        return run

    try:
        return _sweep(make_run, sizes, seconds, sweeps)
    finally:
        torch.set_num_threads(previous)


def _matmul_integer_model(size: int) -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node], "peak_int8",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size]),
         helper.make_tensor_value_info("B", TensorProto.INT8, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def peak_int8(threads: int, sizes: tuple[int, ...] = SIZES, seconds: float = 0.5,
              sweeps: int = SWEEPS) -> tuple[float, dict[str, float]]:
    """Peak int8 matmul op/s through ONNX Runtime's MatMulInteger on CPU with `threads` threads, and per size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)

    def make_run(size: int):
        session = ort.InferenceSession(_matmul_integer_model(size), options, providers=["CPUExecutionProvider"])
        feeds = {"A": rng.integers(0, 255, (size, size), dtype=np.uint8),
                 "B": rng.integers(-127, 127, (size, size), dtype=np.int8)}
        return lambda: session.run(None, feeds)

    return _sweep(make_run, sizes, seconds, sweeps)


def measure_peaks(threads: int, device: str = "cpu", seconds: float = 0.5, sizes: tuple[int, ...] = SIZES,
                  sweeps: int = SWEEPS) -> dict[str, Any]:
    """This machine's ceilings: `{"fp32": FLOP/s, "bf16": FLOP/s or None, "int8": op/s or None,
    "read_bytes_per_s", per-size rates, "threads", "method"}`."""
    from ..runtime.openvino import cpu_precision
    from .roofline import read_bandwidth

    fp32, fp32_by_size = peak_matmul(threads, sizes, seconds, device, sweeps)
    peaks: dict[str, Any] = {"threads": threads, "fp32": fp32, "fp32_by_size": fp32_by_size, "bf16": None}
    if device == "cpu" and cpu_precision() == "bf16":
        peaks["bf16"], peaks["bf16_by_size"] = peak_matmul(threads, sizes, seconds, device, sweeps, "bfloat16")
    if device == "cpu":
        peaks["int8"], peaks["int8_by_size"] = peak_int8(threads, sizes, seconds, sweeps)
        peaks["read_bytes_per_s"] = read_bandwidth(threads, seconds=seconds)
    else:
        peaks["int8"], peaks["read_bytes_per_s"] = None, None
    sized = "x".join(str(s) for s in sizes)
    peaks["method"] = (f"best of {sweeps} interleaved sweeps over square matmuls of sizes {sized}, each repeated for "
                       f"{seconds:g} s: fp32 torch.mm, bf16 torch.mm on bfloat16 tensors (CPUs with bf16 matmul only), "
                       "int8 ONNX Runtime MatMulInteger (uint8 x int8); memory: "
                       "best read of a 256 MiB tensor (bytes read per second, a sum)")
    return peaks


def count_flops(model, inputs: dict[str, Any]) -> int:
    """FLOPs of one forward pass of a torch `model` on `inputs` (matmuls and attention, as torch counts them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**inputs)
    return int(counter.get_total_flops())


def classify_flops(model, batch: int, seq: int) -> int:
    """FLOPs of classifying a `batch` × `seq` block of token ids."""
    import torch

    ids = torch.ones(batch, seq, dtype=torch.long)
    return count_flops(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def first_position_saving(config, batch: int, seq: int) -> int | None:
    """FLOPs a classifier file whose last layer computes the first position alone (`exporter.first_position`) does
    not do of `classify_flops`: that layer's q and output projections, feed-forward and attention for the other
    `seq - 1` positions; None when `config` names no hidden and feed-forward width (BERT's `hidden_size` /
    `intermediate_size`, DistilBERT's `dim` / `hidden_dim`)."""
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    if not hidden or not inner:
        return None
    per_position = 2 * (2 * hidden * hidden + 2 * hidden * inner) + 4 * seq * hidden  # q, o, ffn; q.k and p.v
    return batch * (seq - 1) * per_position


def decode_flops(model, prompt_len: int, new_tokens: int) -> dict[str, int]:
    """FLOPs of the prompt pass and of one decode step at the middle of generation (KV cache of that length)."""
    import torch

    prompt = torch.ones(1, prompt_len, dtype=torch.long)
    prefill = count_flops(model, {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)})
    context = prompt_len + new_tokens // 2
    with torch.inference_mode():
        past = model(input_ids=torch.ones(1, context, dtype=torch.long), use_cache=True).past_key_values
    step = torch.ones(1, 1, dtype=torch.long)
    decode = count_flops(model, {"input_ids": step, "attention_mask": torch.ones(1, context + 1, dtype=torch.long),
                                 "past_key_values": past, "use_cache": True})
    return {"prefill": prefill, "decode_token": decode}


def fraction_of_peak(flops: float, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over peak, or None when either is unknown."""
    if not peak or not seconds or not flops:
        return None
    return flops / seconds / peak
