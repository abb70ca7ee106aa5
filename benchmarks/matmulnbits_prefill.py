"""MatMulNBits against fp32 MatMul at one token (decode) and at prompt lengths (prefill), on this CPU.

Why a generator's int8 / int4 file can prefill slower than its fused fp32 file: each of its MatMuls is a
MatMulNBits, whose accuracy level 4 quantizes the activations to int8 and runs an integer kernel (VNNI where the
CPU has it; on AVX2 alone, 16-bit multiply-adds), while level 1 dequantizes the weights and runs an fp32 GEMM.
At M = 1 the weights' bytes bound the time, so fewer bits win; at M = 64 or 256 the arithmetic does. This script
times single-node graphs at the default generator's projection shapes (SmolLM2-135M: hidden 576, MLP 1536, 3
key/value heads of 64) for fp32 MatMul and MatMulNBits 8 / 4 bits at accuracy levels 1 and 4, rounds interleaved,
and reports the median ms per call and the speed against fp32 MatMul.

    python benchmarks/matmulnbits_prefill.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"q/o 576x576": (576, 576), "k/v 576x192": (576, 192), "gate/up 576x1536": (576, 1536),
          "down 1536x576": (1536, 576)}
"""(K, N) of each projection of one SmolLM2-135M layer."""
KERNELS = ("fp32", "int8-acc4", "int8-acc1", "int4-acc4", "int4-acc1")


def _graph(k: int, n: int, kernel: str, block: int, folder: Path) -> Path:
    """A one-node model `Y = X @ W` with W random, written as fp32 MatMul or as MatMulNBits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(weight, "W")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = folder / f"{k}x{n}-{kernel}.onnx"
    if kernel != "fp32":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        bits, level = int(kernel[3]), int(kernel[-1])
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True,
                                         accuracy_level=level, op_types_to_quantize=("MatMul",))
        quantizer.process()
        model = quantizer.model.model
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 64, 256], help="M: tokens per call")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per graph, M and round")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        sessions = {(shape, kernel): ort.InferenceSession(str(_graph(k, n, kernel, args.block_size, Path(scratch))),
                                                          options, providers=["CPUExecutionProvider"])
                    for shape, (k, n) in SHAPES.items() for kernel in KERNELS}
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for m in args.rows:
            for (shape, kernel), sess in sessions.items():
                x = np.random.default_rng(m).standard_normal((m, SHAPES[shape][0])).astype(np.float32)
                sess.run(None, {"X": x})
                for _ in range(args.calls):
                    start = time.perf_counter()
                    sess.run(None, {"X": x})
                    times.setdefault(f"{shape}|{kernel}|{m}", []).append(time.perf_counter() - start)
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    result = {"threads": args.threads, "block_size": args.block_size, "rounds": args.rounds, "calls": args.calls,
              "rows": args.rows, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "onnxruntime": ort.__version__, "load_before": load_before, "load_after": os.getloadavg()[0],
              "ms_p50": ms}
    text = _markdown(result)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "matmulnbits_prefill.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "matmulnbits_prefill.md").write_text(text)
    print(text)


def _markdown(result: dict) -> str:
    ms = result["ms_p50"]
    lines = ["# MatMulNBits vs fp32 MatMul by tokens per call (one SmolLM2-135M layer's projections)", "",
             f"onnxruntime {result['onnxruntime']}, {result['threads']} threads, block {result['block_size']}, "
             f"{result['rounds']} rounds x {result['calls']} calls, interleaved; load average "
             f"{result['load_before']:.2f} before, {result['load_after']:.2f} after. Cells: ms per call (p50), "
             "speed vs fp32 MatMul in brackets; acc4 = int8 activations, acc1 = fp32 compute.", "",
             "| projection | M | " + " | ".join(KERNELS) + " |", "|" + " --- |" * (len(KERNELS) + 2)]
    for shape in SHAPES:
        for m in result["rows"]:
            base = ms[f"{shape}|fp32|{m}"]
            cells = [f"{ms[f'{shape}|{k}|{m}']:.3f} ({base / ms[f'{shape}|{k}|{m}']:.2f}x)" for k in KERNELS]
            lines.append(f"| {shape} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
