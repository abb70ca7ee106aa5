"""benchmarks/skip_layernorm.py: both graphs compute the same thing, every cell is timed, the table's ratio is the
fused op's time over the pair's."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("skip_layernorm")


def test_every_graph_hidden_size_and_shape_is_timed(script, monkeypatch):
    monkeypatch.setattr(script, "ROWS", {"b1x4": 4, "b2x4": 8})
    ms, quiet = script.measure(threads=1, rounds=2, calls=1, max_foreign=float("inf"))
    assert (quiet["rounds_kept"], quiet["rounds_rejected"]) == (2, 0)
    expected = {f"{kind}|{hidden}|{shape}" for kind in script.GRAPHS for hidden in script.HIDDEN
                for shape in ("b1x4", "b2x4")}
    assert set(ms) == expected and all(v > 0 for v in ms.values())


def test_the_pair_keeps_apart_in_deployfts_session(script, tmp_path):
    # the baseline of the comparison must really run as two ops, or the script times the fused op twice
    import onnx
    import onnxruntime

    from deployft.runtime.session import CPU_DISABLED_OPTIMIZERS

    path = script._graph(script.GRAPHS[1], 384, tmp_path / "pair.onnx")
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "seen.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
    assert [n.op_type for n in onnx.load(str(tmp_path / "seen.onnx")).graph.node] == ["Add", "LayerNormalization"]


def test_the_table_divides_the_fused_time_by_the_pairs(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "ROWS", {"b1x4": 4})
    monkeypatch.setattr(script, "HIDDEN", (384,))
    result = {"command": "python benchmarks/skip_layernorm.py --threads 2", "created": "now", "machine": "m",
              "onnxruntime": "1.32.0", "threads": 2, "rounds": 3, "calls": 5,
              "max_foreign": 0.05, "quiet": {"rounds_kept": 3, "rounds_dirty": 0, "rounds_rejected": 1},
              "ms_p50": {"SkipLayerNormalization|384|b1x4": 0.3, "Add + LayerNormalization|384|b1x4": 0.1}}
    text = script.write(result, tmp_path / "r")
    assert "| 384 | b1x4 (4) | 0.3000 | 0.1000 | 3.00x |" in text and "1 rejected" in text
    assert "Command: `python benchmarks/skip_layernorm.py --threads 2`" in text
    assert json.loads((tmp_path / "r.json").read_text())["ms_p50"] == result["ms_p50"]
