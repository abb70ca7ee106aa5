"""A classifier's int8 chosen by measurement (`deployft.exporter.select`): candidates judged by the guard, timed
through an injectable timer, the fastest or smallest kept, every candidate recorded; and the timing itself."""

from __future__ import annotations

import math

import pytest

import deployft.exporter.timing as timing
from deployft.exporter import ExportConfig, export
from deployft.exporter.card import info_text
from deployft.exporter.select import RECIPES
from deployft.exporter.timing import Shape, Timings, typical_shapes
from deployft.manifest import read_manifest

NAMES = [r.name for r in RECIPES]
TINY_BUDGET = 25.0
"""Up to 2 flipped predictions of the tiny RUN's 24 eval rows pass; 5 do not."""


def _export(run, tmp_path, **flags):
    settings = {"validate_samples": 40, "calibration_samples": 16, "quantize": "int8", "max_accuracy_drop": TINY_BUDGET,
                "min_agreement": 0}  # the goal's climb is tested in test_export.py
    return read_manifest(export(ExportConfig(run=run, output=tmp_path / "bundle", **{**settings, **flags})), "bundle")


def _fake_timer(monkeypatch, scores: dict[str, float], seen: list | None = None):
    """Every file times `scores[name]` ms at every shape; `seen` collects the names it was asked to time."""

    def fake(files, plan):
        if seen is not None:
            seen.extend(files)
        return Timings({k: {s.label: scores[k] for s in plan.shapes} for k in files}, rounds=7, seconds=0.1)

    monkeypatch.setattr(timing, "time_files", fake)


def _flip(monkeypatch, flips: dict[str, int]):
    """The candidate files named in `flips` report that many flipped predictions (the rest their real report)."""
    import deployft.exporter.validate as module

    real = module.compare

    def fake(ref, path, device="cpu", provider="default"):
        report = real(ref, path, device, provider)
        if path.parent.name == "candidates.tmp" and path.stem in flips:
            report["flips"] = flips[path.stem]
        return report

    monkeypatch.setattr(module, "compare", fake)


def _kept(manifest):
    return [c["name"] for c in manifest["quantization"]["candidates"] if c["kept"]]


@pytest.mark.parametrize("fastest", ["plain-per-channel", "fused-qattention", "fused-qattention-per-channel",
                                     "static-qdq"])
def test_fastest_within_budget_is_kept(tiny_run, tmp_path, monkeypatch, fastest):
    scores = {name: 10.0 + i for i, name in enumerate(NAMES)} | {fastest: 2.0}
    _fake_timer(monkeypatch, scores)
    manifest = _export(tiny_run("bert"), tmp_path)
    q = manifest["quantization"]
    assert _kept(manifest) == [fastest] and q["recipe"] == fastest and q["selection"]["rule"] == "fastest"
    assert [c["name"] for c in q["candidates"]] == NAMES and all(c["passed"] for c in q["candidates"])
    for c in q["candidates"]:
        assert c["score_ms"] == pytest.approx(scores[c["name"]]) and set(c["ms"]) == set(q["selection"]["shapes"])
        assert c["vs_plain"] == pytest.approx(scores["plain"] / scores[c["name"]]) and c["bytes"] > 0
    kept = next(c for c in q["candidates"] if c["kept"])
    assert kept["per_channel"] is fastest.endswith("per-channel") and q["per_channel"] is kept["per_channel"]
    fused = fastest.startswith("fused")
    variant = manifest["variants"]["model_quantized.onnx"]
    assert variant["optimized"] is fused and (variant["ops"].get("QAttention", 0) > 0) is fused
    if fastest == "static-qdq":
        assert variant["ops"].get("QuantizeLinear", 0) > 0 and q["calibration_samples"] == 16
    note = q["selection"]["note"]
    assert (f"{scores['plain'] / 2.0:.2f}x faster than dynamic int8 of the plain export" in note) if fused else (
        f"the fastest fused candidate within budget (fused-qattention) measured {12.0 / 2.0:.2f}x its time" in note)


@pytest.mark.parametrize("attention", [True, False])
def test_a_fused_candidate_describes_the_attention_its_file_holds(tiny_run, tmp_path, monkeypatch, attention):
    """ORTOptimizer may fuse an encoder's Gelus but not its attention: the fused recipes still build, and their files
    hold no QAttention, so their descriptions (and the card's words for the kept one) must not claim it."""
    import deployft.exporter.optimize as optimize

    if not attention:
        monkeypatch.setattr(optimize, "ENCODER_FUSIONS_LEFT_OUT",
                            {**optimize.ENCODER_FUSIONS_LEFT_OUT, "disable_attention_fusion": True})
    _fake_timer(monkeypatch, {name: 10.0 + i for i, name in enumerate(NAMES)} | {"fused-qattention": 1.0})
    manifest = _export(tiny_run("bert"), tmp_path)
    graph, kept = manifest["variants"]["model_optimized.onnx"], manifest["variants"]["model_quantized.onnx"]
    # with attention fused, the last of the two layers computes its first position only (MultiHeadAttention)
    assert graph["optimized"] and graph["ops"].get("Gelu") == 2 and graph["ops"].get("Attention", 0) == attention
    assert graph["ops"].get("MultiHeadAttention", 0) == attention
    assert kept["optimized"] and kept["ops"].get("QAttention", 0) == attention and "Attention" not in kept["ops"]
    q = manifest["quantization"]
    described = {c["name"]: c["description"] for c in q["candidates"]}
    words = ("its fused attention quantized (QAttention ×1), the last layer's first position in MultiHeadAttention "
             "×1 over int8 q/k/v projections") if attention else "attention not fused"
    assert described["fused-qattention"] == f"dynamic int8 of the fused graph (model_optimized.onnx), {words}"
    assert described["fused-qattention-per-channel"] == (
        f"dynamic int8 of the fused graph (model_optimized.onnx), {words}, weights scaled per output channel")
    assert _kept(manifest) == ["fused-qattention"] and q["choice"] == described["fused-qattention"]
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert f"why this file: {q['choice']}; the fastest" in card and ("QAttention" in card) is attention


def test_smallest_keeps_the_smallest_file_within_budget(tiny_run, tmp_path, monkeypatch):
    _fake_timer(monkeypatch, {name: 1.0 for name in NAMES})
    _flip(monkeypatch, {"fused-qattention": 5})  # over budget: never kept, however small
    manifest = _export(tiny_run("bert"), tmp_path, select="smallest")
    candidates = {c["name"]: c for c in manifest["quantization"]["candidates"]}
    within = [c for c in candidates.values() if c["passed"]]
    assert _kept(manifest) == [min(within, key=lambda c: c["bytes"])["name"]]
    assert not candidates["fused-qattention"]["passed"] and candidates["fused-qattention"]["bytes"] > 0
    assert manifest["quantization"]["selection"]["rule"] == "smallest"
    kept = candidates[_kept(manifest)[0]]
    assert kept["bytes"] == manifest["files"]["model_quantized.onnx"]["bytes"]


def test_candidates_over_budget_are_recorded_never_timed_never_kept(tiny_run, tmp_path, monkeypatch):
    seen: list[str] = []
    _fake_timer(monkeypatch, {"plain": 1.0, "plain-per-channel": 9.0, "fused-qattention": 0.5,
                              "fused-qattention-per-channel": 0.3, "static-qdq": 5.0},
                seen)
    _flip(monkeypatch, {"fused-qattention": 5, "fused-qattention-per-channel": 7})
    manifest = _export(tiny_run("bert"), tmp_path)
    q = manifest["quantization"]
    assert sorted(seen) == ["plain", "plain-per-channel", "static-qdq"] and _kept(manifest) == ["plain"]
    failed = [c for c in q["candidates"] if c["name"].startswith("fused")]
    assert [c["guard"]["flips"] for c in failed] == [5, 7]
    assert all(not c["passed"] and c["ms"] is None and c["drop"] > TINY_BUDGET for c in failed)
    note = "a file quantized from the plain export was kept: no fused candidate was within budget"
    assert q["selection"]["note"] == note
    assert [a["remedy"] for a in q["attempts"]] == NAMES and q["remedy"] == "none"


def test_real_timing_records_every_candidate_and_info_prints_the_table(tiny_run, tmp_path):
    manifest = _export(tiny_run("bert"), tmp_path, select_seconds=0.2)
    q, selection = manifest["quantization"], manifest["quantization"]["selection"]
    shapes = selection["shapes"]
    assert shapes[1:] == ["b1x32", "b16x32"] and shapes[0].startswith("b1x") and selection["rounds"] >= 3
    timed = [c for c in q["candidates"] if c["passed"]]
    assert len(timed) == len(NAMES)  # a trained tiny RUN: every recipe within 2 flips of 24
    assert all(set(c["ms"]) == set(shapes) and all(v > 0 for v in c["ms"].values()) for c in timed)
    assert _kept(manifest) == [min(timed, key=lambda c: c["score_ms"])["name"]]
    assert sorted(p.name for p in (tmp_path / "bundle").glob("*.onnx")) == [
        "model.onnx", "model_optimized.onnx", "model_quantized.onnx"]
    text = info_text(tmp_path / "bundle")
    assert "kept by --select fastest" in text and f"| {_kept(manifest)[0]} * |" in text
    assert all(f"| {name}" in text for name in NAMES)
    assert "## Quantization" in (tmp_path / "bundle" / "README.md").read_text() and \
        f"| {_kept(manifest)[0]} * |" in (tmp_path / "bundle" / "README.md").read_text()


def test_the_provider_the_candidates_were_timed_on_is_recorded_and_said(tiny_run, tmp_path, monkeypatch):
    # files validated through OpenVINO (faked here: the plugin serves Intel CPUs only) are still timed on the default
    # provider, which runs a dynamic int8 file as it is; the card says so, and what a Predictor on OpenVINO runs
    import deployft.exporter.validate as module

    real = module.compare

    def through_openvino(ref, path, device="cpu", provider="default"):
        assert provider == "openvino"
        return {**real(ref, path, device, "default"), "provider": "openvino"}

    monkeypatch.setattr(module, "compare", through_openvino)
    monkeypatch.setattr("deployft.exporter.runner.check_device", lambda config: None)
    _fake_timer(monkeypatch, {name: 10.0 + i for i, name in enumerate(NAMES)})
    manifest = _export(tiny_run("bert"), tmp_path, provider="openvino")
    assert manifest["quantization"]["selection"]["timed_on"] == "default" and _kept(manifest) == ["plain"]
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "int8 candidates timed on ONNX Runtime's default provider, of 5 built" in card
    assert ("The int8 candidates were validated through ONNX Runtime's openvino provider but timed on its default "
            "provider, which runs model_quantized.onnx as it is; a Predictor given provider openvino runs the "
            "bundle's fp32 file instead of model_quantized.onnx") in card
    assert "but timed on its default provider" in info_text(tmp_path / "bundle")


def test_files_are_timed_on_the_default_provider(tiny_onnx, monkeypatch):
    from deployft.exporter.timing import TimingPlan, time_files
    from deployft.runtime import session as session_module

    real, seen = session_module.create_session, []
    monkeypatch.setattr(session_module, "create_session", lambda path, options: seen.append(options.provider)
                        or real(path, options))
    time_files({"a": tiny_onnx("bert") / "model.onnx"}, TimingPlan([Shape(1, 8)], seconds=0.0, threads=1))
    assert seen == ["default"]


def test_typical_shapes_are_median_max_and_a_batch():
    assert typical_shapes(128, [10, 20, 30, 200]) == [Shape(1, 25), Shape(1, 128), Shape(16, 128)]
    assert typical_shapes(512, [40]) == [Shape(1, 40), Shape(1, 512), Shape(16, 128)]
    assert typical_shapes(32, [32, 32]) == [Shape(1, 32), Shape(16, 32)]
    assert typical_shapes(64, []) == [Shape(1, 64), Shape(16, 64)]


def test_files_are_timed_in_sessions_that_do_not_spin(tiny_onnx, monkeypatch):
    # a spinning pool of the file called last would take a core from the next one in the round
    from deployft.exporter.timing import TimingPlan, time_files
    from deployft.runtime import session as session_module

    real, seen = session_module.create_session, []

    def spy(path, options):
        seen.append(options)
        return real(path, options)

    monkeypatch.setattr(session_module, "create_session", spy)
    folder = tiny_onnx("bert")
    timings = time_files({"a": folder / "model.onnx", "b": folder / "model.onnx"},
                         TimingPlan([Shape(1, 8), Shape(2, 8)], seconds=0.0, threads=1))
    assert [(o.spinning, o.threads) for o in seen] == [(False, 1), (False, 1)]
    assert timings.rounds == 3 and set(timings.medians["b"]) == {"b1x8", "b2x8"}


def test_score_is_the_geometric_mean_of_the_shapes():
    timings = Timings({"a": {"b1x8": 1.0, "b16x8": 16.0}}, rounds=3, seconds=1.0)
    assert timings.score("a") == pytest.approx(4.0) and not math.isclose(timings.score("a"), 8.5)


def test_no_buildable_candidate_is_one_stage_error(tiny_run, tmp_path, monkeypatch):
    import deployft.exporter.quantize as quantize
    from deployft.errors import StageError

    def broken(src, *args, **kwargs):
        raise StageError(f"quantization of {src.name} failed: broken on purpose")

    monkeypatch.setattr(quantize, "quantize_dynamic_int8", broken)
    monkeypatch.setattr(quantize, "quantize_static_int8", broken)
    with pytest.raises(StageError, match=r"no int8 candidate could be built \(plain: not built: quantization of "
                                         r"model.onnx failed: broken on purpose; .*--quantize none") as info:
        _export(tiny_run("bert"), tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / "bundle").exists()
