"""`export(ExportConfig)`: every model through every quantization mode, the accuracy guard, and bad input."""

from __future__ import annotations

import json
import logging
import re
import shutil

import onnx
import pytest

from deployft.errors import AccuracyBudgetError, DataError, DeviceError, ModelError, OutputExistsError, UsageError
from deployft.exporter import ExportConfig, export
from deployft.exporter.card import info_text
from deployft.manifest import read_manifest, write_manifest

FAST = {"validate_samples": 40}
CALIBRATION = {"calibration_samples": 16}
"""For the modes that calibrate (a classifier's int8, int8-static); the others refuse the flag."""
pytestmark = pytest.mark.usefixtures("no_agreement_goal")  # the goal's own tests pass --min-agreement
ANY_FLIPS = 100.0
"""A classifier budget every file meets: for tests about what export writes, not about the guard (a tiny RUN holds
out 24 eval rows, too few for the default budget; tests/exporter/test_guard.py covers that)."""
TINY_BUDGET = 25.0
"""Up to 2 flipped predictions of the tiny RUN's 24 eval rows pass (upper bound 23.98 %), 3 or more do not (29.23 %)."""
MODEL_FILES = {"none": "model_optimized.onnx", "int8": "model_quantized.onnx", "int8-static": "model_int8_static.onnx"}


def _export(run, tmp_path, **flags):
    mode = flags.get("quantize")
    calibrated = mode == "int8-static" or (mode == "int8" and _task(run, flags) == "classify")
    return export(ExportConfig(run=run, output=tmp_path / "bundle", **{**FAST, **(CALIBRATION if calibrated else {}),
                                                                       **flags}))


def _task(run, flags):
    manifest = run / "deployft.json"
    return flags.get("task") or (json.loads(manifest.read_text())["task"] if manifest.is_file() else None)


def _no_bundle(tmp_path):
    return not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".bundle.deployft-*"))


@pytest.mark.parametrize("mode", ["none", "int8", "int8-static"])
@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "gpt2", "llama"])
def test_every_mode_writes_a_validated_bundle(tiny_run, tmp_path, arch, mode):
    budget = {"max_accuracy_drop": ANY_FLIPS} if arch in ("bert", "distilbert", "roberta") else {}
    bundle = _export(tiny_run(arch), tmp_path, quantize=mode, **budget)
    manifest = read_manifest(bundle, "bundle")
    assert manifest["model_file"] == MODEL_FILES[mode]
    assert set(manifest["variants"]) == {"model.onnx", "model_optimized.onnx", *([MODEL_FILES[mode]])}
    for name, variant in manifest["variants"].items():
        assert (bundle / name).is_file()
        report = variant["validation"]
        assert report["samples"] > 0
        if variant["precision"] == "fp32":
            assert report["max_abs_logit_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
            if manifest["task"] == "generate":
                assert report["greedy_identical"] == 1.0
    assert manifest["validation"] == {n: v["validation"] for n, v in manifest["variants"].items()}
    assert manifest["validation_inputs"] == "eval data"
    if mode == "none":
        assert manifest["quantization"] is None
    else:
        assert manifest["quantization"]["mode"] == mode and manifest["quantization"]["remedy"] == "none"
        assert manifest["variants"][MODEL_FILES[mode]]["precision"] == mode
        attempt = manifest["quantization"]["attempts"][-1]  # every mode records its attempts alike (docs/folders.md)
        assert set(attempt) == {"remedy", "drop", "guard"} and attempt["guard"]["passed"] is True
        assert attempt["guard"] == manifest["validation"][MODEL_FILES[mode]]["guard"]


def test_int8_keeps_top1_on_a_trained_classifier(tiny_run, tmp_path):
    bundle = _export(tiny_run("bert"), tmp_path, quantize="int8", validate_samples=200, max_accuracy_drop=TINY_BUDGET)
    manifest = read_manifest(bundle, "bundle")
    report = manifest["validation"]["model_quantized.onnx"]
    assert report["samples"] == 24 and report["flips"] <= 1 and report["top1_agreement"] >= 0.95
    assert report["accuracy_pytorch"] >= 0.9  # the RUN learnt its task, so agreement means something
    assert report["drop"] <= TINY_BUDGET and manifest["accuracy_budget"] == {
        "max_drop": TINY_BUDGET, "measure": "% of predictions flipped vs PyTorch, 95 % upper bound",
        "origin": "--max-accuracy-drop"}
    q = manifest["quantization"]
    kept = next(c for c in q["candidates"] if c["kept"])
    assert q["recipe"] == kept["name"] and q["quantized_from"] == kept["quantized_from"]
    assert manifest["variants"]["model_quantized.onnx"]["optimized"] is (kept["quantized_from"] != "model.onnx")


def _inject(monkeypatch, overrides):
    """The successive int8 attempts report `overrides[i]` (flipped predictions for a classifier, the perplexity
    ratio's upper bound for a generator) before the guard judges them; fp32 files keep their real report.
    A classifier's attempts are its int8 candidates (in `select.RECIPES` order), then its remedies."""
    import deployft.exporter.validate as module

    real, queue = module.compare, list(overrides)

    def fake(ref, path, device="cpu", provider="default"):
        report = real(ref, path, device, provider)
        quantized = path.name == "model_quantized.onnx" or path.parent.name == "candidates.tmp"
        if quantized and queue:
            key = "perplexity_ratio_upper_95" if ref.task.generates else "flips"
            report[key] = queue.pop(0)
            if not ref.task.generates:
                report["top1_agreement"] = 1 - report["flips"] / report["samples"]
        return report

    monkeypatch.setattr(module, "compare", fake)


RUNGS = 5, 1, 2, 2, 2, 2, 2
"""Int8 files a classifier's rungs build: five candidates; per-channel rebuilds only the static one (the plain and
fused files with per-channel weights were built on the first rung); smoothing, smoothing with the head and
embeddings in fp32, smoothing with the first layer in fp32, the head, embeddings, first and last layer in fp32,
then smoothing with those: the plain and the fused one (static takes none of them)."""


def _kept_at_rung(rung, tiny_run, tmp_path, monkeypatch):
    """Export the tiny classifier with every candidate of the rungs before `rung` over the budget (5 of 24 flipped)
    and activations smoothed wherever a rung smooths; the bundle and its `quantization` record."""
    monkeypatch.setattr("deployft.exporter.smooth.MIN_OUTLIER_RATIO", 1.0)  # the tiny model's activations are tame
    _inject(monkeypatch, [5] * sum(RUNGS[:rung]))
    bundle = _export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET)
    return bundle, read_manifest(bundle, "bundle")["quantization"]


def test_guard_refuses_when_no_candidate_or_remedy_meets_the_budget(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("deployft.exporter.smooth.MIN_OUTLIER_RATIO", 1.0)  # the tiny model's activations are tame
    # of 24 rows: upper bounds 60.32 (10), 52.14 (8), 43.47 (6), 34.18 (4) % and 5's
    _inject(monkeypatch, [10, 10, 8, 8, 8, 8, 6, 6, 6, 6, 6, 6, 4, 5, 6, 6])
    with pytest.raises(AccuracyBudgetError) as info:
        _export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET)
    message = str(info.value)
    assert "int8 reached 34.18 at best" in message and "over --max-accuracy-drop 25 " in message
    assert "pass --max-accuracy-drop 34.2 or more (the closest attempt's bound)" in message
    assert "plain: 60.32" in message and "fused-qattention: 52.14" in message
    assert "static-qdq; per-channel: 52.14" in message and "plain; per-channel + activations smoothed:" in message
    assert "fused-qattention; per-channel + head" in message
    assert "fused-qattention; per-channel + activations smoothed + head" in message
    assert "plain; per-channel + activations smoothed + head and embeddings in fp32: 43.47" in message
    assert "plain; per-channel + activations smoothed + first layer in fp32: 43.47" in message
    assert "after every remedy" in message and "no bundle written" in message and len(info.value.attempts) == sum(RUNGS)
    assert "\n" not in message
    assert _no_bundle(tmp_path)


def test_guard_records_the_remedy_that_met_the_budget(tiny_run, tmp_path, monkeypatch):
    _inject(monkeypatch, [5] * RUNGS[0])
    manifest = read_manifest(_export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET),
                             "bundle")
    q = manifest["quantization"]
    assert q["remedy"] == "per-channel" and q["per_channel"] is True
    names = [a["remedy"] for a in q["attempts"]]
    assert names[RUNGS[0]:] == ["static-qdq; per-channel"]
    assert all(a["guard"]["flips"] == 5 and not a["guard"]["passed"] for a in q["attempts"][:RUNGS[0]])
    kept = next(c for c in q["candidates"] if c["kept"])
    assert kept["remedy"] == "per-channel" and kept["passed"] and q["selection"]["kept"] == kept["name"]
    assert all(c["ms"] is None for c in q["candidates"][:RUNGS[0]])


def test_guard_smooths_the_activations_before_it_keeps_nodes_in_fp32(tiny_run, tmp_path, monkeypatch):
    bundle, q = _kept_at_rung(2, tiny_run, tmp_path, monkeypatch)
    assert q["remedy"] == "per-channel + activations smoothed" and q["per_channel"] is True
    assert not q["nodes_excluded"] and q["smoothing"]["calibration_rows"] == 16
    assert q["smoothing"]["activations_smoothed"] == q["smoothing"]["activations_considered"] > 0
    assert q["quantized_from"] in ("model.onnx", "model_optimized.onnx")
    assert [a["remedy"] for a in q["attempts"]][-2:] == [f"{name}; per-channel + activations smoothed"
                                                        for name in ("plain", "fused-qattention")]
    smooth_muls = sum(1 for n in onnx.load(str(bundle / "model_quantized.onnx")).graph.node
                      if n.op_type == "Mul" and n.name.endswith("/Smooth"))
    assert smooth_muls == q["smoothing"]["activations_smoothed"] == len(q["smoothing"]["smoothed"])
    assert "activations smoothed into the weights" in (bundle / "README.md").read_text()
    assert sorted(p.name for p in bundle.iterdir() if "smoothed" in p.name or "probe" in p.name) == []


def test_smoothing_rung_without_outliers_or_rows_is_skipped_and_the_fp32_layers_remedy_still_runs(
        tiny_run, tiny_model, tmp_path, monkeypatch):
    # tame activations: nothing to smooth, so the rung would rebuild the per-channel files; it is skipped instead
    monkeypatch.setattr("deployft.exporter.smooth.MIN_OUTLIER_RATIO", 1e9)
    _inject(monkeypatch, [5] * (RUNGS[0] + RUNGS[1]))
    q = read_manifest(_export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET),
                      "bundle")["quantization"]
    smoothing = [c for c in q["candidates"] if c["remedy"] == "per-channel + activations smoothed"]
    assert len(smoothing) == RUNGS[2] and all(c["skipped"].startswith("not built: none of the ")
                                              and "has a channel at least 1e+09x its median one" in c["skipped"]
                                              and c["guard"] == {} for c in smoothing)
    assert q["remedy"] == "per-channel + head, embeddings, first and last layer in fp32" and "smoothing" not in q
    # a plain model folder has no training rows: smoothing is skipped with that reason, the fp32 nodes rung runs
    _inject(monkeypatch, [10] * 4)  # 10 of the 40 random rows: over the budget
    folder = tiny_model("bert")
    bundle = export(ExportConfig(run=folder, task="classify", output=tmp_path / "plain", quantize="int8",
                                 validate_samples=40, max_accuracy_drop=TINY_BUDGET))
    q = read_manifest(bundle, "bundle")["quantization"]
    skipped = {c["name"]: c["skipped"] for c in q["candidates"] if c["skipped"]}
    assert skipped["plain; per-channel + activations smoothed"] == (
        "not built: a plain model folder has no training rows to calibrate on")
    assert q["remedy"] == "per-channel + head, embeddings, first and last layer in fp32"


def test_without_outliers_the_last_remedy_is_skipped_and_export_refuses(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("deployft.exporter.smooth.MIN_OUTLIER_RATIO", 1e9)  # the smoothing rungs have nothing to do
    built = RUNGS[0] + RUNGS[1] + RUNGS[5]
    _inject(monkeypatch, [5] * built)
    with pytest.raises(AccuracyBudgetError) as info:
        _export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET)
    names = [a["remedy"] for a in info.value.attempts]
    assert len(names) == built and not any("smoothed" in name for name in names)
    assert names[-2:] == [f"{name}; per-channel + head, embeddings, first and last layer in fp32"
                          for name in ("plain", "fused-qattention")]
    assert "after every remedy" in str(info.value) and _no_bundle(tmp_path)


def test_remedies_climb_past_files_within_budget_for_the_agreement_goal(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("deployft.exporter.smooth.MIN_OUTLIER_RATIO", 1.0)  # the tiny model's activations are tame
    _inject(monkeypatch, [1] * sum(RUNGS[:2]))  # 1 of 24 flipped: within the 25 % budget, 95.8 % agreement
    bundle = _export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET, min_agreement=0.99)
    q = read_manifest(bundle, "bundle")["quantization"]
    assert q["remedy"] == "per-channel + activations smoothed"  # its files flip nothing (not injected)
    assert q["selection"]["agreement_goal"] == 0.99 and q["selection"]["agreement_goal_reached"] is True
    note = q["selection"]["note"]
    assert note.endswith("within budget and the agreement goal") or "faster than dynamic int8 of the plain" in note
    assert all(c["passed"] and c["ms"] is None for c in q["candidates"][:sum(RUNGS[:2])] if not c["skipped"])
    assert [c["name"] for c in q["candidates"] if c["ms"]] == [
        f"{name}; per-channel + activations smoothed" for name in ("plain", "fused-qattention")]
    assert "agreeing with PyTorch on at least 99.00% of the rows (--min-agreement 0.99)" in info_text(bundle)


def test_without_a_rung_reaching_the_goal_the_first_rung_within_budget_is_kept(tiny_run, tmp_path, monkeypatch,
                                                                              caplog):
    monkeypatch.setattr("deployft.exporter.smooth.MIN_OUTLIER_RATIO", 1.0)  # the tiny model's activations are tame
    _inject(monkeypatch, [1] * sum(RUNGS))
    run = tiny_run("bert")
    with caplog.at_level(logging.WARNING):
        bundle = _export(run, tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET, min_agreement=0.99)
    q = read_manifest(bundle, "bundle")["quantization"]
    assert q["remedy"] == "none" and len(q["candidates"]) == sum(RUNGS)
    assert q["selection"]["agreement_goal_reached"] is False and "reached --min-agreement 0.99" in caplog.text
    assert f"kept {next(c['name'] for c in q['candidates'] if c['kept'])} of the first rung" in caplog.text
    assert [c["name"] for c in q["candidates"] if c["ms"]] == [c["name"] for c in q["candidates"][:RUNGS[0]]
                                                              if c["passed"]]
    assert "no rung reached the goal of 99.00% agreement with PyTorch" in info_text(bundle)
    # --min-agreement 0: the fastest file within the budget, on the first rung, nothing more built
    _inject(monkeypatch, [1] * RUNGS[0])
    q = read_manifest(_export(run, tmp_path / "fast", quantize="int8", max_accuracy_drop=TINY_BUDGET,
                              min_agreement=0), "bundle")["quantization"]
    assert q["remedy"] == "none" and len(q["candidates"]) == RUNGS[0] and q["selection"]["agreement_goal"] == 0
    assert q["selection"]["agreement_goal_reached"] is True


def test_a_file_at_the_agreement_goal_exactly_meets_it(tiny_run, tmp_path, monkeypatch):
    # 93 of 100 rows agree: exactly --min-agreement 0.93, though 1 - 7/100 is 0.9299999999999999 in floats
    import deployft.exporter.validate as module

    real, queue = module.compare, [7] * RUNGS[0]

    def fake(ref, path, device="cpu", provider="default"):
        report = real(ref, path, device, provider)
        if path.parent.name == "candidates.tmp" and queue:
            report.update(samples=100, flips=queue.pop(0), top1_agreement=1 - 7 / 100)
        return report

    monkeypatch.setattr(module, "compare", fake)
    bundle = _export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET, min_agreement=0.93)
    q = read_manifest(bundle, "bundle")["quantization"]
    assert q["remedy"] == "none" and len(q["candidates"]) == RUNGS[0]  # no rung climbed past the goal
    assert q["selection"]["agreement_goal_reached"] is True


def test_guard_keeps_the_head_and_embeddings_in_fp32_after_smoothing(tiny_run, tmp_path, monkeypatch):
    bundle, q = _kept_at_rung(3, tiny_run, tmp_path, monkeypatch)
    assert q["remedy"] == "per-channel + activations smoothed + head and embeddings in fp32"
    assert q["smoothing"]["activations_smoothed"] > 0 and q["per_channel"] is True
    excluded = q["nodes_excluded"]
    assert any("classifier" in name for name in excluded) and any("word_embeddings" in name for name in excluded)
    assert not any("layer." in name or name.startswith("Attention") for name in excluded), excluded
    fp32, int8_tables = _weight_nodes(bundle / "model_quantized.onnx")
    assert int8_tables == [] and fp32 == set(excluded)
    assert len(q["candidates"]) == sum(RUNGS[:4]) and sum(c["kept"] for c in q["candidates"]) == 1


def test_guard_keeps_the_first_layer_in_fp32_after_smoothing(tiny_run, tmp_path, monkeypatch):
    bundle, q = _kept_at_rung(4, tiny_run, tmp_path, monkeypatch)
    assert q["remedy"] == "per-channel + activations smoothed + first layer in fp32"
    assert q["smoothing"]["activations_smoothed"] > 0 and q["nodes_excluded"]
    assert all("layer.0/" in name or name == "Attention_0" for name in q["nodes_excluded"]), q["nodes_excluded"]
    graph = onnx.load(str(bundle / "model_quantized.onnx")).graph
    float_nodes = {n.name for n in graph.node if n.op_type in ("MatMul", "Attention")}
    assert set(q["nodes_excluded"]) <= float_nodes
    assert not any("layer.1/" in n or n == "Attention_1" or "classifier" in n for n in float_nodes)
    assert len(q["candidates"]) == sum(RUNGS[:5]) and sum(c["kept"] for c in q["candidates"]) == 1
    fused = next(c for c in q["candidates"] if c["name"] == f"fused-qattention; {q['remedy']}")
    # layer 0's Attention kept in fp32; layer 1, the last, computes its first position over int8 projections
    assert fused["description"].endswith("its fused attention kept in fp32 (Attention ×1), the last layer's first "
                                         "position in MultiHeadAttention ×1 over int8 q/k/v projections")


def _weight_nodes(path) -> tuple[set[str], list[str]]:
    """`(fp32 nodes that read a weight, Gathers that read an int8 table)` of an int8 file."""
    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer if not t.name.endswith("_quantized")}
    fp32 = {n.name for n in graph.node if n.op_type in ("MatMul", "Attention", "Gather")
            and n.input[0 if n.op_type == "Gather" else 1] in weights}
    return fp32, [n.name for n in graph.node if n.op_type == "Gather" and n.input[0].endswith("_quantized")]


def test_guard_keeps_sensitive_nodes_in_fp32_without_smoothing(tiny_run, tmp_path, monkeypatch):
    bundle, q = _kept_at_rung(5, tiny_run, tmp_path, monkeypatch)
    assert q["remedy"] == "per-channel + head, embeddings, first and last layer in fp32" and q["nodes_excluded"]
    assert any("classifier" in name for name in q["nodes_excluded"]) and "smoothing" not in q
    assert len(q["candidates"]) == sum(RUNGS[:6]) and sum(c["kept"] for c in q["candidates"]) == 1
    # every embedding table (word, position, token type) stays fp32, and the count is of nodes really kept in fp32
    fp32, int8_tables = _weight_nodes(bundle / "model_quantized.onnx")
    assert int8_tables == [] and len(fp32) == len(q["nodes_excluded"])
    assert f"{len(q['nodes_excluded'])} nodes kept in fp32" in (bundle / "README.md").read_text()
    fused = next(c for c in q["candidates"] if c["name"] == f"fused-qattention; {q['remedy']}")
    assert fused["description"].endswith(  # no QAttention left to claim
        "its fused attention kept in fp32 (Attention ×1), the last layer's first position in MultiHeadAttention ×1 "
        "over fp32 q/k/v projections")


def test_last_remedy_smooths_and_keeps_sensitive_nodes_in_fp32(tiny_run, tmp_path, monkeypatch):
    import deployft.exporter.smooth as smooth

    real, smoothed = smooth.smooth_activations, []
    monkeypatch.setattr(smooth, "smooth_activations",
                        lambda src, *args, **kwargs: smoothed.append(src.name) or real(src, *args, **kwargs))
    bundle, q = _kept_at_rung(6, tiny_run, tmp_path, monkeypatch)
    assert sorted(smoothed) == ["model.onnx", "model_optimized.onnx"]  # once per graph for the four smoothing rungs
    assert q["remedy"] == "per-channel + activations smoothed + head, embeddings, first and last layer in fp32"
    assert q["per_channel"] is True and any("classifier" in name for name in q["nodes_excluded"])
    assert q["smoothing"]["activations_smoothed"] > 0
    graph = onnx.load(str(bundle / "model_quantized.onnx")).graph
    assert sum(1 for n in graph.node if n.op_type == "Mul" and n.name.endswith("/Smooth")) == (
        q["smoothing"]["activations_smoothed"])
    fp32, int8_tables = _weight_nodes(bundle / "model_quantized.onnx")
    assert fp32 and fp32 == set(q["nodes_excluded"]) and int8_tables == []
    assert len(q["candidates"]) == sum(RUNGS) and sum(c["kept"] for c in q["candidates"]) == 1


def test_generator_int8_is_blockwise_on_the_attention_fused_graph(tiny_run, tmp_path):
    # the int8 recipe is under test; a random tiny llama's perplexity is not what blockwise int8 keeps within budget
    manifest = read_manifest(_export(tiny_run("llama"), tmp_path, quantize="int8", max_accuracy_drop=1000),
                             "bundle")
    q = manifest["quantization"]
    assert manifest["model_file"] == "model_quantized.onnx" and q["quantized_from"] == "model_optimized.onnx"
    assert "MatMulNBits" in q["method"] and q["block_size"] == 64 and "blockwise" in q["choice"]
    assert manifest["fusion"]["after"]["GroupQueryAttention"] == 2
    assert manifest["variants"]["model_quantized.onnx"]["optimized"] is True


def test_generator_guard_tries_smaller_blocks_then_an_fp32_head(tiny_run, tmp_path, monkeypatch):
    run = tiny_run("llama")
    _inject(monkeypatch, [1.30, 1.20, 1.12])
    with pytest.raises(AccuracyBudgetError, match=r"none: 30.00, blocks of 16: 20.00, blocks of 16 \+ LM head in "
                                                  r"fp32: 12.00.*no bundle written"):
        _export(run, tmp_path / "refused", quantize="int8", max_accuracy_drop=10.0)
    assert _no_bundle(tmp_path / "refused")
    monkeypatch.undo()
    _inject(monkeypatch, [1.30, 1.20])
    manifest = read_manifest(_export(run, tmp_path / "head", quantize="int8", max_accuracy_drop=25.0),
                             "bundle")
    q = manifest["quantization"]
    assert q["remedy"] == "blocks of 16" and q["block_size"] == 16
    assert [a["drop"] for a in q["attempts"]] == [pytest.approx(30.0), pytest.approx(20.0)]


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_qwen2_and_mistral_export_fused_and_blockwise(arch, tmp_path):
    from conftest import build_tiny_model

    model = build_tiny_model(arch, tmp_path / "model")  # untrained: fusion and the int8 recipe are under test
    manifest = read_manifest(_export(model, tmp_path, task="generate", quantize="int8", max_accuracy_drop=1000),
                             "bundle")
    assert manifest["fusion"]["after"]["GroupQueryAttention"] == 2
    skipped = "ORTOptimizer has no graph optimizations for model type 'qwen2'"
    assert (skipped in " ".join(manifest["fusion"]["notes"])) == (arch == "qwen2")
    for name in ("model.onnx", "model_optimized.onnx"):
        assert manifest["validation"][name]["greedy_identical"] == 1.0, name
    assert manifest["quantization"]["block_size"] == 64


@pytest.mark.parametrize("flags", [{"per_channel": True}, {"quantize_preset": "avx2"}, {"select": "fastest"},
                                   {"min_agreement": 0.9}])
def test_classifier_int8_flags_are_refused_for_a_generator(tiny_run, tmp_path, flags):
    with pytest.raises(UsageError, match="generate model's int8 is blockwise .* takes none of them"):
        _export(tiny_run("llama"), tmp_path, quantize="int8", **flags)
    assert _no_bundle(tmp_path)


def test_a_graph_with_nothing_fused_is_described_as_the_plain_graph(tmp_path):
    from conftest import build_tiny_model

    # qwen2: ORTOptimizer has no fusions for it, and with --no-fuse-attention deployft fuses nothing either
    model = build_tiny_model("qwen2", tmp_path / "model")
    bundle = _export(model, tmp_path, task="generate", fuse_attention=False, max_accuracy_drop=1000)
    manifest = read_manifest(bundle, "bundle")
    assert manifest["fusion"]["summary"] == "nothing fused" and manifest["model_file"] == "model_optimized.onnx"
    assert manifest["variants"]["model_optimized.onnx"]["optimized"] is False
    card, text = (bundle / "README.md").read_text(), info_text(bundle)
    assert "the plain fp32 graph (nothing was fused), the first fp32 file that passed" in card
    assert "## model_optimized.onnx: the plain export's graph, nothing fused" in card
    assert "fused graph" not in card.lower() and "fused graph" not in text
    assert "model_optimized.onnx: the plain export's graph, nothing fused" in text
    assert "| model_optimized.onnx * | fp32 | no |" in text


def test_a_classifier_with_nothing_fused_builds_no_fused_candidate(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("deployft.exporter.optimize._ort_optimizer_skip", lambda folder: "no fusions (test)")
    bundle = _export(tiny_run("bert"), tmp_path, quantize="int8", max_accuracy_drop=TINY_BUDGET, select_seconds=0.2)
    manifest = read_manifest(bundle, "bundle")
    fused = [c for c in manifest["quantization"]["candidates"] if c["recipe"].startswith("fused")]
    assert fused and all(c["skipped"] == "not built: nothing was fused, so model_optimized.onnx holds the plain "
                                        "graph" for c in fused)
    assert not any(v["optimized"] for v in manifest["variants"].values())


def test_attention_fusion_can_be_turned_off(tiny_run, tmp_path):
    manifest = read_manifest(_export(tiny_run("llama"), tmp_path, fuse_attention=False), "bundle")
    assert "GroupQueryAttention" not in manifest["fusion"]["after"]
    assert "attention is not fused: --no-fuse-attention was given" in manifest["fusion"]["notes"][0]


def test_gpt2_attention_is_reported_as_not_fused_with_the_reason(tiny_run, tmp_path):
    manifest = read_manifest(_export(tiny_run("gpt2"), tmp_path), "bundle")
    assert "model type 'gpt2' is not one deployft fuses" in manifest["fusion"]["notes"][0]


def test_zero_budget_is_refused_as_undecidable(tiny_run, tmp_path):
    with pytest.raises(UsageError, match="no finite number of rows"):
        _export(tiny_run("bert"), tmp_path, max_accuracy_drop=0.0)
    assert _no_bundle(tmp_path)


def test_plain_model_folder_with_task(tiny_model, tmp_path):
    bundle = _export(tiny_model("bert"), tmp_path, task="classify", quantize="int8", max_accuracy_drop=ANY_FLIPS)
    manifest = read_manifest(bundle, "bundle")
    assert manifest["labels"] == ["LABEL_0", "LABEL_1"]
    assert manifest["validation_inputs"].startswith("random tokens")
    assert manifest["guard"]["rows_source"] == "random" and manifest["guard"]["rows"] == 40
    assert manifest["validation"]["model_optimized.onnx"]["accuracy"] is None
    assert manifest["source_run"]["is_run"] is False
    static = next(c for c in manifest["quantization"]["candidates"] if c["name"] == "static-qdq")
    assert static["skipped"] == "not built: a plain model folder has no training rows to calibrate on"
    timed = sum(1 for c in manifest["quantization"]["candidates"] if c["ms"])
    assert f"int8 candidates timed on ONNX Runtime's default provider, of 4 built (1 skipped) " in info_text(bundle)
    assert timed == 4


def test_run_with_gone_data_validates_on_random_tokens_but_refuses_calibration(tiny_run, tmp_path):
    run = tiny_run("bert")
    manifest = json.loads((run / "deployft.json").read_text())
    moved = tmp_path / "moved.csv"
    shutil.copy(manifest["data"]["train"]["path"], moved)
    manifest["data"]["train"]["path"] = str(moved)
    write_manifest(run, manifest)  # restamped: an edit without its digest is refused (test_source.py)
    moved.unlink()
    with pytest.raises(DataError, match=r"int8-static needs the RUN's training data.*moved.csv.*gone"):
        _export(run, tmp_path, quantize="int8-static")
    assert _no_bundle(tmp_path)
    bundle = _export(run, tmp_path, quantize="none", max_accuracy_drop=ANY_FLIPS)
    assert read_manifest(bundle, "bundle")["validation_inputs"].startswith("random tokens (RUN data unavailable")


@pytest.mark.parametrize(("flags", "error", "match"), [
    ({"quantize": "int3"}, UsageError, "--quantize is 'int3'; expected one of none, int8, int4, int8-static, fp16"),
    ({"quantize": "fp16"}, UsageError, "--quantize fp16 is for CUDA only.*--device cuda"),
    ({"quantize": "int8", "device": "cuda"}, UsageError, "no CUDA kernels"),
    ({"quantize": "int8-static", "device": "cuda"}, UsageError, "no CUDA kernels"),
    ({"device": "tpu"}, UsageError, "--device is 'tpu'"),
    ({"task": "translate"}, UsageError, "--task is 'translate'"),
    ({"max_accuracy_drop": -1.0}, UsageError, "--max-accuracy-drop must be a finite number >= 0"),
    ({"validate_samples": 0}, UsageError, "--validate-samples must be a positive integer"),
    ({"quantize_preset": "sse4"}, UsageError, "--quantize-preset is 'sse4'"),
    ({"quantize": "int8", "select": "biggest"}, UsageError, "--select is 'biggest'; expected one of fastest, smallest"),
    ({"select": "smallest"}, UsageError, "--select .* needs --quantize int8, got --quantize none"),
    ({"quantize": "int8", "select_seconds": 0}, UsageError, r"--select-seconds must be a number of seconds in \(0, "),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, flags, error, match):
    with pytest.raises(error, match=match):
        ExportConfig(run=tmp_path, output=tmp_path / "bundle", **flags)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="is not a folder"):
        _export(tmp_path / "missing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json.*not a RUN or Hugging Face model folder"):
        _export(tmp_path / "empty", tmp_path)
    assert _no_bundle(tmp_path)


def test_plain_folder_needs_a_task(tiny_model, tmp_path):
    with pytest.raises(UsageError, match="pass --task classify or --task generate"):
        _export(tiny_model("bert"), tmp_path)


def test_corrupted_weights(tiny_run, tmp_path):
    run = tiny_run("bert")
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(ModelError, match="cannot load the model weights.*corrupted or incomplete"):
        _export(run, tmp_path, max_accuracy_drop=ANY_FLIPS)
    assert _no_bundle(tmp_path)


@pytest.mark.parametrize(("source", "fix"), [("model", "fine-tune it first .deployft finetune --model"),
                                             ("run", "the RUN is incomplete: re-run deployft finetune")])
def test_a_folder_without_its_head_weights_is_refused_before_any_export(tiny_model, tiny_run, tmp_path, source, fix):
    from safetensors.torch import load_file, save_file

    folder = tiny_model("bert") if source == "model" else tiny_run("bert")
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if not k.startswith("classifier.")}, weights, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"has no weights for classifier\.bias, classifier\.weight, which a classify "
                                         r"model needs .*at random on every load.*" + fix):
        _export(folder, tmp_path, task="classify" if source == "model" else None, max_accuracy_drop=ANY_FLIPS)
    assert _no_bundle(tmp_path)


def test_fp32_files_over_the_budget_point_at_the_model_not_at_precision(tiny_run, tmp_path, monkeypatch):
    import deployft.exporter.validate as module

    real = module.compare

    def flipping(ref, path, device="cpu", provider="default"):
        report = real(ref, path, device, provider)
        report["flips"] = report["samples"] // 2
        return report

    monkeypatch.setattr(module, "compare", flipping)
    with pytest.raises(AccuracyBudgetError) as caught:
        _export(tiny_run("bert"), tmp_path, max_accuracy_drop=TINY_BUDGET)
    message = str(caught.value)
    assert "every candidate exceeded --max-accuracy-drop 25" in message and "model_optimized.onnx: " in message
    assert "the fp32 files disagree with their PyTorch original" in message and "--quantize none" not in message
    assert re.search(r"or pass --max-accuracy-drop \d+(\.\d)? or more \(the closest attempt's bound\)$", message)
    assert _no_bundle(tmp_path)


def test_unsupported_architecture_names_the_type(tiny_model, tmp_path):
    from transformers import XLNetConfig, XLNetForSequenceClassification

    folder = tmp_path / "xlnet"
    XLNetForSequenceClassification(XLNetConfig(vocab_size=300, d_model=32, n_layer=1, n_head=2, d_inner=64)) \
        .save_pretrained(folder)
    with pytest.raises(ModelError, match="model type 'xlnet' cannot be exported by Optimum.*supported types: .*bert"):
        _export(folder, tmp_path, task="classify")
    assert _no_bundle(tmp_path)


def test_task_disagreeing_with_the_run(tiny_run, tmp_path):
    with pytest.raises(UsageError, match="--task generate disagrees with RUN"):
        _export(tiny_run("bert"), tmp_path, task="generate")


def test_output_exists(tiny_run, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "keep.txt").write_text("mine")
    run = tiny_run("bert")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _export(run, tmp_path)
    assert (tmp_path / "bundle" / "keep.txt").read_text() == "mine"
    bundle = _export(run, tmp_path, overwrite=True, max_accuracy_drop=ANY_FLIPS)
    assert not (bundle / "keep.txt").exists() and (bundle / "deployft.json").is_file()


def test_static_calibration_needs_a_run(tiny_model, tmp_path):
    with pytest.raises(UsageError, match="int8-static calibrates on a RUN's training data"):
        _export(tiny_model("bert"), tmp_path, task="classify", quantize="int8-static")


def test_cuda_target_without_cuda_is_a_device_error(tiny_run, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        _export(tiny_run("bert"), tmp_path, quantize="fp16", device="cuda")


@pytest.mark.gpu
def test_fp16_on_cuda(tiny_run, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with a CUDA device")
    manifest = read_manifest(_export(tiny_run("bert"), tmp_path, quantize="fp16", device="cuda",
                                     max_accuracy_drop=ANY_FLIPS), "bundle")
    assert manifest["model_file"] == "model_fp16.onnx"
    assert manifest["validation"]["model_fp16.onnx"]["top1_agreement"] >= 0.95
    assert manifest["quantization"]["attempts"] == [{"remedy": "none", "drop": manifest["validation"][
        "model_fp16.onnx"]["drop"], "guard": manifest["validation"]["model_fp16.onnx"]["guard"]}]
