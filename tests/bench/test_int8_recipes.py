"""benchmarks/int8_recipes.py on a tiny classifier bundle: every recipe built, measured against the fp32 export and
timed, the table and the verdicts computed from the measurements."""

from __future__ import annotations

import json

import onnx
import pytest


def bundle_run(bundle):
    """The RUN a bundle was exported from, as its manifest names it."""
    from pathlib import Path

    return Path(json.loads((bundle / "deployft.json").read_text())["source_run"]["path"])


@pytest.fixture(scope="module")
def recipes(benchmark_script):
    return benchmark_script("int8_recipes")


def test_every_recipe_is_built_and_timed(recipes, tiny_int8_classifier, tmp_path, monkeypatch):
    bundle = tiny_int8_classifier
    run = bundle_run(bundle)
    files = recipes.build(bundle, tmp_path, run)
    extra = [f"{recipes.FUSED}; BiasGelu fused", "plain-per-channel; activations smoothed",
             f"{recipes.FUSED}; activations smoothed", f"{recipes.FUSED}; {recipes.FIRST_LAYER}",
             f"{recipes.FUSED}; {recipes.HEAD}"]
    assert sorted(files) == sorted([*recipes.recipes(), *extra]) and all(p.stat().st_size > 0 for p in files.values())
    assert "static-qdq" not in files and "fused-qattention-per-channel" in files
    assert [n.op_type for n in onnx.load(str(files[extra[0]])).graph.node].count("BiasGelu") == 2  # one per layer
    attention = sorted((n.name, n.op_type) for n in onnx.load(str(files[extra[3]])).graph.node
                       if n.op_type.endswith("Attention"))
    # layer 0's attention kept in fp32; layer 1, the last, computes its first position (MultiHeadAttention)
    assert dict((op, name) for name, op in attention) == {"Attention": "Attention_0", "MultiHeadAttention": (
        "/bert/encoder/layer.1/attention/self/first_position/MultiHeadAttention")}
    tables = [n.input[0] for n in onnx.load(str(files[extra[4]])).graph.node if n.op_type == "Gather"]
    assert any("word_embeddings" in t and not t.endswith("_quantized") for t in tables)  # the head rung's fp32 table
    sizes, real = [], recipes.padded
    monkeypatch.setattr(recipes, "padded", lambda *args: sizes.append(args[-1]) or real(*args))
    agreement = recipes.agreement({"model.onnx": bundle / "model.onnx", **files}, run, bundle)
    from deployft.exporter.validate import BATCH

    assert sizes == [BATCH]  # export's own validation batches: dynamic int8 depends on which rows share one
    assert agreement["model.onnx"] == {"rows": 24, "flips": 0, "agreement": 1.0, "mean_abs_logit_diff": 0.0}
    assert all(a["rows"] == 24 and 0 <= a["flips"] <= 24 for a in agreement.values())
    assert agreement["plain"]["mean_abs_logit_diff"] > 0
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
    base = {"created": "now", "bundle": "b", "machine": "m", "threads": 2, "rounds": 3, "command": "python x",
            "quiet": {"rounds_kept": 3, "rounds_dirty": 0, "rounds_rejected": 1},
            "max_foreign": 0.05, "kept": "plain", "guard": {}, "agreement_rows": 2000}
    plain = {"b1x32": 4.0, "b1x128": 13.0, "b16x128": 130.0}
    cases = (({"b1x32": 4.0, "b1x128": 10.0, "b16x128": 100.0}, 19, "b16x128 1.30x — met; top-1 agreement >= 0.99: "
              "0.9905 — met"),
             ({"b1x32": 1.0, "b1x128": 10.0, "b16x128": 101.0}, 21, "b16x128 1.29x — not met; top-1 agreement >= "
              "0.99: 0.9895 — not met"))
    for deployable, flips, verdict in cases:
        medians = {recipes.BASELINE: plain, "plain": {k: v / 2 for k, v in plain.items()},
                   "model_quantized.onnx": deployable, "plain; activations smoothed": plain}
        agreement = {name: {"rows": 2000, "flips": flips, "agreement": 1 - flips / 2000, "mean_abs_logit_diff": 0.01}
                     for name in medians}
        recipes.write(base | {"medians": medians, "agreement": agreement}, tmp_path / "r")
        text = (tmp_path / "r.md").read_text()
        assert text.rstrip().endswith(verdict)
        assert f"| {recipes.BASELINE} | - | {1 - flips / 2000:.4f} ({flips}) | 0.0100 | 4.00 | 13.00 | 130.00 | 1.00x" \
            in text
        same = ", ".join(f"{s} {plain[s] / 2 / deployable[s]:.2f}x" for s in ("b1x128", "b16x128"))
        assert f"against `plain` in the same deployft session (the graph's share alone): {same}" in text
        assert ("- `plain; activations smoothed` takes b1x32 2.00x, b1x128 2.00x, b16x128 2.00x the time of `plain`; "
                f"flips {flips} against {flips}") in text
