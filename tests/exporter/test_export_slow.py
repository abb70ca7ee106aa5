"""The real defaults (all-MiniLM-L6-v2 classifier, SmolLM2-135M generator) exported, fused, quantized, validated."""

from __future__ import annotations

import pytest

from deployft.exporter import ExportConfig, export
from deployft.manifest import read_manifest, sha256_file
from deployft.runtime import Predictor

pytestmark = pytest.mark.slow


def test_real_classifier_int8_bundle(real_classify_run, tmp_path):
    # the fixture RUN holds out 33 eval rows: up to 2 flipped predictions pass 20 % (upper bound 17.9 % at 2)
    bundle = export(ExportConfig(run=real_classify_run, output=tmp_path / "clf", quantize="int8", max_accuracy_drop=20))
    manifest = read_manifest(bundle, "bundle")
    after = manifest["fusion"]["after"]
    assert after["Attention"] == 5 and after["MultiHeadAttention"] == 1  # the last layer: the first position only
    assert "SkipLayerNormalization" not in after and after["Gelu"] == 6 and "BiasGelu" not in after
    plain, fused = manifest["validation"]["model.onnx"], manifest["validation"]["model_optimized.onnx"]
    assert plain["max_abs_logit_diff"] <= 1e-4 and fused["max_abs_logit_diff"] <= 1e-4
    assert plain["top1_agreement"] == fused["top1_agreement"] == 1.0
    int8 = manifest["validation"]["model_quantized.onnx"]
    assert manifest["model_file"] == "model_quantized.onnx"
    assert int8["top1_agreement"] >= 0.95 and int8["drop"] <= 20
    assert manifest["guard"]["rows"] == int8["guard"]["rows"] == 33 and manifest["guard"]["rows_source"] == "eval"
    assert int8["guard"]["agreement_lower_95"] <= int8["guard"]["agreement"] and int8["guard"]["passed"] is True
    q = manifest["quantization"]
    kept = next(c for c in q["candidates"] if c["kept"])
    assert kept["score_ms"] == min(c["score_ms"] for c in q["candidates"] if c["passed"]) and kept["passed"]
    ops = manifest["variants"]["model_quantized.onnx"]["ops"]
    assert ("QAttention" in kept["description"]) is ("QAttention" in ops) and q["choice"] == kept["description"]
    assert set(kept["ms"]) == {"b1x64", "b16x64"} | {s for s in kept["ms"] if s.startswith("b1x")}
    tables_fp32 = kept["static"] or "embeddings" in kept["remedy"]  # static QDQ and the head rungs keep them fp32
    shrink = 1.4 if tables_fp32 else 3
    assert (bundle / "model_quantized.onnx").stat().st_size < (bundle / "model.onnx").stat().st_size / shrink
    assert manifest["labels"] == ["fresh", "rotten"] and manifest["validation_inputs"] == "eval data"
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle / name)


def test_real_generator_int8_bundle(real_generate_run, tmp_path, monkeypatch):
    monkeypatch.setattr("deployft.exporter.samples.GREEDY_PROMPTS", 2)  # 16 greedy tokens on 2 prompts: enough, and 2x faster
    bundle = export(ExportConfig(run=real_generate_run, output=tmp_path / "gen", quantize="int8",
                                 validate_samples=6))  # export's default budget: 10 % perplexity
    manifest = read_manifest(bundle, "bundle")
    assert manifest["generation"]["num_layers"] == 30 and manifest["generation"]["num_kv_heads"] == 3
    assert manifest["generation"]["head_dim"] == 64
    fusion = manifest["fusion"]
    assert fusion["after"]["GroupQueryAttention"] == 30 and "RotaryEmbedding" not in fusion["after"]
    assert fusion["after"]["Split"] == 30  # gate/up; attention reads the packed q/k/v
    assert "decoder attention fused by deployft" in fusion["notes"][0]
    assert fusion["after"].get("SkipSimplifiedLayerNormalization", 0) >= 30
    for name in ("model.onnx", "model_optimized.onnx"):
        report = manifest["validation"][name]
        assert report["greedy_identical"] == 1.0 and report["greedy_prompts"] == 2 and report["top1_agreement"] >= 0.999
        assert abs(report["perplexity_increase_pct"]) < 0.1
    int8 = manifest["validation"]["model_quantized.onnx"]
    q = manifest["quantization"]
    assert manifest["model_file"] == "model_quantized.onnx" and q["remedy"] == "none" and q["block_size"] == 64
    fused = manifest["validation"]["model_optimized.onnx"]["guard"]  # exact, so the int8 file is quantized from it
    assert fused["max_abs_logit_diff"] <= fused["max_fp32_logit_diff"] and q["quantized_from"] == "model_optimized.onnx"
    # blockwise int8 (measured: next-token agreement ~0.97, perplexity within +-2 %)
    assert int8["top1_agreement"] >= 0.9 and int8["drop"] <= 10.0
    assert int8["perplexity_ratio_upper_95"] == int8["guard"]["perplexity_ratio_upper_95"] and int8["guard"]["passed"]
    assert (bundle / "model_quantized.onnx").stat().st_size < (bundle / "model.onnx").stat().st_size / 1.8
    # the fused graph masks padding itself: a left-padded batch decodes like single prompts
    prompts = ["What is the capital of France?", "Write a haiku about the sea.", "How many legs does a spider have?"]
    fused = Predictor.load(bundle, model_file="model_optimized.onnx")
    assert fused.generate(prompts, max_new_tokens=16) == [fused.generate(p, max_new_tokens=16) for p in prompts]
    assert all(text.strip() for text in Predictor.load(bundle).generate(prompts, max_new_tokens=16))
