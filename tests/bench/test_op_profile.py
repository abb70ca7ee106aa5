"""benchmarks/op_profile.py: kernel time by op type from ONNX Runtime's profiler, in a session set up as deployft's,
and the table written from it."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("op_profile")


def test_profile_sums_kernel_time_by_op_type_and_ranks_it(script, tiny_int8_classifier, tmp_path, monkeypatch):
    bundle = tiny_int8_classifier
    vocab = json.loads((bundle / "config.json").read_text())["vocab_size"]
    fp32 = script.profile(bundle / "model_optimized.onnx", (2, 8), threads=1, calls=2, vocab=vocab)
    # deployft's session keeps residual Add and LayerNormalization apart; the fused graph's attention is one op
    assert "SkipLayerNormalization" not in fp32 and fp32["Attention"] > 0 and fp32["LayerNormalization"] > 0
    assert list(fp32.values()) == sorted(fp32.values(), reverse=True) and all(v >= 0 for v in fp32.values())
    int8 = script.profile(bundle / "model_quantized.onnx", (1, 8), threads=1, calls=2, vocab=vocab)
    assert any(op.startswith(("DynamicQuantize", "MatMulInteger", "QAttention")) for op in int8)
    monkeypatch.setattr(script, "TOP", 2)
    result = {"created": "now", "bundle": str(bundle), "command": "python benchmarks/op_profile.py", "machine": "m",
              "threads": 1, "calls": 2, "profiles": {"model_optimized.onnx": {"b2x8": fp32}}}
    script.write(result, tmp_path / "profile")
    text = (tmp_path / "profile.md").read_text()
    total = sum(fp32.values())
    top = list(fp32.items())[:2]
    assert f"## `model_optimized.onnx` at b2x8 ({total:.2f} ms of kernels per call)" in text
    assert all(f"| {op} | {ms:.2f} | {ms / total:.1%} |" in text for op, ms in top)
    assert f"| other ({len(fp32) - 2} op types) |" in text
    assert json.loads((tmp_path / "profile.json").read_text())["profiles"]["model_optimized.onnx"]["b2x8"] == fp32
