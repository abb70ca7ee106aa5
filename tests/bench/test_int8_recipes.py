"""benchmarks/int8_recipes.py on a tiny classifier bundle: every recipe built and timed, the table and the verdict
computed from the timings."""

from __future__ import annotations

import json

import pytest

from deployft.exporter import ExportConfig, export

@pytest.fixture(scope="module")
def recipes(benchmark_script):
    return benchmark_script("int8_recipes")


def test_every_recipe_is_built_and_timed(recipes, tiny_run, tmp_path, monkeypatch):
    bundle = export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "bundle", quantize="int8",
                                 validate_samples=40, calibration_samples=16, max_accuracy_drop=25.0,
                                 select_seconds=0.2))
    files = recipes.build(bundle, tmp_path)
    assert sorted(files) == sorted(recipes.recipes()) and all(p.stat().st_size > 0 for p in files.values())
    assert "static-qdq" not in files and "fused-qattention-per-channel" in files
    monkeypatch.setattr(recipes, "SHAPES", ((1, 8), (2, 8)))
    timed = files | {recipes.BASELINE: files["plain"], "model_quantized.onnx": bundle / "model_quantized.onnx"}
    medians, quiet = recipes.time_all(timed, 1, 2, float("inf"),
                                      json.loads((bundle / "config.json").read_text())["vocab_size"])
    assert (quiet["rounds_kept"], quiet["rounds_rejected"]) == (2, 0) and set(medians) == set(timed)
    assert set(medians[recipes.BASELINE]) == {"b1x8", "b2x8"}
    assert all(v > 0 for per in medians.values() for v in per.values())
    guard = recipes.guard_flips(bundle)
    candidates = json.loads((bundle / "deployft.json").read_text())["quantization"]["candidates"]
    chosen = next(c for c in candidates if c["kept"])
    assert guard["model_quantized.onnx"] == guard[chosen["name"]] and " of " in guard["plain"]


def test_the_verdict_follows_the_timings(recipes, tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "SHAPES", ((1, 32), (1, 128), (16, 128)))
    base = {"created": "now", "bundle": "b", "machine": "m", "threads": 2, "rounds": 3,
            "quiet": {"rounds_kept": 3, "rounds_dirty": 0, "rounds_rejected": 1},
            "max_foreign": 0.05, "kept": "plain", "guard": {}}
    plain = {"b1x32": 4.0, "b1x128": 13.0, "b16x128": 130.0}
    for deployable, verdict in (({"b1x32": 4.0, "b1x128": 10.0, "b16x128": 100.0}, "— met"),
                                ({"b1x32": 1.0, "b1x128": 10.0, "b16x128": 101.0}, "— not met")):
        medians = {recipes.BASELINE: plain, "plain": {k: v / 2 for k, v in plain.items()},
                   "model_quantized.onnx": deployable}
        recipes.write(base | {"medians": medians}, tmp_path / "r")
        text = (tmp_path / "r.md").read_text()
        assert text.rstrip().endswith(verdict)
        assert f"| {recipes.BASELINE} | - | 4.00 | 13.00 | 130.00 | 1.00x" in text
        same = ", ".join(f"{s} {plain[s] / 2 / deployable[s]:.2f}x" for s in ("b1x128", "b16x128"))
        assert f"against `plain` in the same deployft session (the graph's share alone): {same}" in text
