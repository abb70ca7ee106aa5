"""SkipLayerNormalization against the residual Add + LayerNormalization it replaces, on ONNX Runtime's CPU kernels.

Why an encoder's fused graph keeps its residual Add and LayerNormalization apart, and why deployft's CPU sessions
stop ONNX Runtime from fusing them at load (`deployft.runtime.session.CPU_DISABLED_OPTIMIZERS`): the CPU kernel of
the fused op is a scalar loop per row, the pair runs ONNX Runtime's vectorized kernels. This script times single-op
graphs at an encoder's shapes (rows = texts x tokens, hidden 384 as all-MiniLM-L6-v2 and 768 as bert-base), each
built through deployft's own `create_session`, in interleaved rounds; a round counts only when other programs used
at most --max-foreign of a core during it (`deployft.bench.quiet.RoundMeter`), rejected rounds are repeated and
counted. Reports the median ms per call and how many times slower the fused op is.

    python benchmarks/skip_layernorm.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROWS = {"b1x32": 32, "b1x128": 128, "b16x128": 2048}
HIDDEN = (384, 768)
GRAPHS = ("SkipLayerNormalization", "Add + LayerNormalization")


def _graph(kind: str, hidden: int, path: Path) -> Path:
    """`LayerNorm(x + skip)` over the last axis of [batch, tokens, hidden], as one fused op or as the pair."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims = ["batch", "tokens", hidden]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("x", "skip")]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("gamma", "beta")]
    if kind == GRAPHS[0]:
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "skip"], ["sum"]),
                 helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
                              weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def measure(threads: int, rounds: int, calls: int, max_foreign: float) -> tuple[dict, dict]:
    """Median ms per (graph, hidden, shape) over `rounds` kept rounds, and the round meter's summary."""
    from deployft.bench.quiet import RoundMeter, kept_rounds
    from deployft.runtime.session import SessionOptions, create_session

    with tempfile.TemporaryDirectory() as scratch:
        sessions = {(kind, hidden): create_session(_graph(kind, hidden, Path(scratch) / f"{i}-{hidden}.onnx"),
                                                   SessionOptions(threads=threads, spinning=False))[0]
                    for i, kind in enumerate(GRAPHS) for hidden in HIDDEN}
    rng = np.random.default_rng(1)
    feeds = {(hidden, shape): {n: rng.standard_normal((1, rows, hidden)).astype(np.float32) for n in ("x", "skip")}
             for hidden in HIDDEN for shape, rows in ROWS.items()}
    outputs = {}
    for (kind, hidden), session in sessions.items():
        for shape in ROWS:
            outputs[kind, hidden, shape] = session.run(None, feeds[hidden, shape])[0]
    for kind, hidden, shape in outputs:  # the two graphs compute the same thing
        np.testing.assert_allclose(outputs[kind, hidden, shape], outputs[GRAPHS[0], hidden, shape], atol=1e-4)
    samples: dict[str, list[float]] = {}
    meter = RoundMeter(max_share=max_foreign)

    def one_round(kept: int) -> dict[str, float]:
        row = {}
        for (hidden, shape), feed in feeds.items():
            for kind in (GRAPHS if kept % 2 == 0 else GRAPHS[::-1]):
                session = sessions[kind, hidden]
                began = time.perf_counter()
                for _ in range(calls):
                    session.run(None, feed)
                row[f"{kind}|{hidden}|{shape}"] = 1000 * (time.perf_counter() - began) / calls
        return row

    for row in kept_rounds(meter, rounds, one_round):
        for key, ms in row.items():
            samples.setdefault(key, []).append(ms)
    return {key: round(statistics.median(v), 4) for key, v in samples.items()}, meter.summary()


def write(result: dict, out: Path) -> str:
    """Write `out`.json and `out`.md (the table) and return the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    quiet = result["quiet"]
    lines = ["# SkipLayerNormalization vs residual Add + LayerNormalization (ONNX Runtime CPU kernels)", "",
             f"Command: `{result['command']}`  ",
             f"Date: {result['created']}  ",
             f"Machine: {result['machine']}; onnxruntime {result['onnxruntime']}; {result['threads']} threads, no "
             f"spinning; {quiet['rounds_kept']} interleaved rounds of {result['calls']} calls kept "
             f"({quiet['rounds_dirty']} dirty), {quiet['rounds_rejected']} rejected (others used more than "
             f"{result['max_foreign']:.0%} of a core)", "",
             "Cells: median ms per call. Both graphs are built through deployft's `create_session` (a CPU session "
             "keeps the pair apart).", "",
             "| hidden | shape (rows) | SkipLayerNormalization ms | Add + LayerNormalization ms | fused op slower by |",
             "| ---: | --- | ---: | ---: | ---: |"]
    ms = result["ms_p50"]
    for hidden in HIDDEN:
        for shape, rows in ROWS.items():
            fused, pair = ms[f"{GRAPHS[0]}|{hidden}|{shape}"], ms[f"{GRAPHS[1]}|{hidden}|{shape}"]
            lines.append(f"| {hidden} | {shape} ({rows}) | {fused:.4f} | {pair:.4f} | {fused / pair:.2f}x |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20, help="calls per graph and shape in a round")
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "skip_layernorm")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import onnxruntime

    from deployft.bench.machine import cpu_info

    ms, quiet = measure(args.threads, args.rounds, args.calls, args.max_foreign)
    info = cpu_info()
    result = {"command": shlex.join(["python", "benchmarks/skip_layernorm.py", *sys.argv[1:]]),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{info['model']}, {', '.join(info.get('flags') or [])}",
              "onnxruntime": onnxruntime.__version__, "threads": args.threads, "rounds": args.rounds,
              "calls": args.calls, "max_foreign": args.max_foreign, "quiet": quiet, "ms_p50": ms}
    print(write(result, args.output))


if __name__ == "__main__":
    main()
