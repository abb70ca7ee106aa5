"""ORTOptimizer level 2 on tiny exports: fused op counts and the fusion report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deployft.exporter.optimize import OPTIMIZED_NAME, attention_fused, fusion_report, op_counts, optimize


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_encoders_get_one_fused_attention_per_layer(tiny_onnx, arch):
    folder = tiny_onnx(arch)
    layers = json.loads((folder / "config.json").read_text()).get("num_hidden_layers") or 2
    path, report = optimize(folder / "model.onnx", decoder=False)
    assert path == folder / OPTIMIZED_NAME and path.is_file()
    after = report["after"]
    assert after.get("Attention", 0) + after.get("MultiHeadAttention", 0) == layers
    # residual Add and LayerNormalization stay apart: SkipLayerNormalization's CPU kernel is the slower one
    assert after.get("SkipLayerNormalization", 0) == 0 and after["LayerNormalization"] >= 2 * layers
    assert report["notes"][0].startswith("residual Add and LayerNormalization left as two ops")
    # the feed-forward bias Add stays apart from Gelu, so a dynamic int8 file folds it into its quantized MatMul
    assert after.get("BiasGelu", 0) == 0 and after.get("FastGelu", 0) + after.get("Gelu", 0) == layers
    assert report["notes"][1].startswith("feed-forward bias Add and Gelu left as two ops")
    assert report["before"].get("Attention", 0) == 0 and report["before"]["Softmax"] == layers
    # the last layer computes only the first position, the one the head reads: 1 query over every key
    assert f"Attention ×{layers - 1}, MultiHeadAttention ×1" in report["summary"]
    assert report["notes"][2].startswith("the last layer computes only the first position")
    assert attention_fused(report)
    assert report["level"] == 2
    assert report["after"] == op_counts(path)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoders_report_unfused_attention_plainly(tiny_onnx, arch):
    folder = tiny_onnx(arch)
    _, report = optimize(folder / "model.onnx", decoder=True)
    assert not attention_fused(report)
    assert "attention is not fused" in report["notes"][0]
    assert "Softmax" in report["after"]
    fused_norm = "SkipLayerNormalization" if arch == "gpt2" else "SkipSimplifiedLayerNormalization"
    assert report["after"].get(fused_norm, 0) > 0
    assert fused_norm in report["summary"]


def test_an_encoder_without_bias_gelu_gets_no_bias_gelu_note(tiny_onnx, monkeypatch):
    monkeypatch.setattr("deployft.exporter.optimize.split_bias_gelu", lambda path: 0)
    _, report = optimize(tiny_onnx("bert") / "model.onnx", decoder=False)
    assert report["notes"][0].startswith("residual Add and LayerNormalization left as two ops")
    assert not any(note.startswith("feed-forward bias Add and Gelu") for note in report["notes"])


def _loaded_ops(path, tmp_path):
    """Op type -> the op types feeding it, in the graph a deployft CPU session runs after its load-time fusions."""
    import onnx

    from deployft.runtime.session import CPU_DISABLED_OPTIMIZERS, import_ort

    ort = import_ort()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"loaded-{path.stem}.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
    graph = onnx.load(options.optimized_model_filepath).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    feeds: dict[str, list[str]] = {}
    for node in graph.node:
        feeds.setdefault(node.op_type, []).extend(producer.get(name, "input") for name in node.input[:1])
    return feeds


def test_fp32_file_runs_bias_gelu_and_int8_folds_the_bias_into_its_matmul(tiny_onnx, tmp_path):
    from deployft.exporter.quantize import quantize_dynamic_int8

    folder = tiny_onnx("bert")
    layers = json.loads((folder / "config.json").read_text()).get("num_hidden_layers") or 2
    fused, _ = optimize(folder / "model.onnx", decoder=False)
    assert len(_loaded_ops(fused, tmp_path).get("BiasGelu", [])) == layers  # ONNX Runtime re-fuses fp32 at load
    int8 = tmp_path / "int8.onnx"
    quantize_dynamic_int8(fused, int8, "avx512_vnni", per_channel=True)
    loaded = _loaded_ops(int8, tmp_path)
    assert "BiasGelu" not in loaded and loaded["Gelu"] == ["DynamicQuantizeMatMul"] * layers


def test_split_bias_gelu_splits_biased_activations_only(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deployft.exporter.optimize import split_bias_gelu

    bias = numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "bias")
    nodes = [helper.make_node("BiasGelu", ["x", "bias"], ["a"], domain="com.microsoft"),
             helper.make_node("FastGelu", ["a", "bias"], ["b"], name="fast", domain="com.microsoft"),
             helper.make_node("FastGelu", ["b"], ["y"], name="plain", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [bias])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), str(path))
    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    before = _run_one(path, x)
    assert split_bias_gelu(path) == 2
    ops = [(n.op_type, len(n.input)) for n in onnx.load(str(path)).graph.node]
    assert ops == [("Add", 2), ("Gelu", 1), ("Add", 2), ("FastGelu", 1), ("FastGelu", 1)]
    assert len({n.name for n in onnx.load(str(path)).graph.node}) == 5
    np.testing.assert_allclose(_run_one(path, x), before, rtol=1e-5, atol=1e-6)
    assert split_bias_gelu(path) == 0


def _run_one(path, x):
    from deployft.runtime.session import import_ort

    ort = import_ort()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_optimizer_leaves_only_the_onnx_file(tiny_onnx):
    folder = tiny_onnx("bert")
    before = {p.name for p in folder.iterdir()}
    optimize(folder / "model.onnx", decoder=False)
    assert {p.name for p in folder.iterdir()} - before == {OPTIMIZED_NAME}


def test_the_optimizers_scratch_folder_lies_inside_the_staged_folder(tiny_onnx, monkeypatch):
    # beside it, a kill would leave a tmpXXXX folder next to the output that no later run removes; inside the
    # staging folder, the next run's cleanup of that folder removes it too
    import tempfile
    import types

    import deployft.exporter.optimize as module

    made = []

    class Spy(tempfile.TemporaryDirectory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(Path(self.name))

    monkeypatch.setattr(module, "tempfile", types.SimpleNamespace(TemporaryDirectory=Spy))  # this module's only
    folder = tiny_onnx("bert")
    siblings = {p.name for p in folder.parent.iterdir()}
    optimize(folder / "model.onnx", decoder=False)
    assert [path.parent for path in made] == [folder] and not made[0].exists()
    assert {p.name for p in folder.parent.iterdir()} == siblings


def test_a_graph_with_nothing_fused_says_so():
    from deployft.exporter.optimize import anything_fused

    report = fusion_report({"MatMul": 8, "Softmax": 2}, {"MatMul": 8, "Softmax": 2}, decoder=True,
                           unfused_reason="--no-fuse-attention was given")
    assert report["summary"] == "nothing fused" and not anything_fused(report)
    assert report["notes"][0] == "attention is not fused: --no-fuse-attention was given; nothing else was fused either"
    assert anything_fused(fusion_report({"MatMul": 8}, {"MatMul": 8, "SkipLayerNormalization": 2}, decoder=True))


def test_one_definition_of_attention_fused_says_what_else_was_fused():
    from deployft.exporter.card import deployable_lines
    from deployft.exporter.optimize import fused_attention, fusion_text
    from deployft.exporter.recipes import attention_text

    layer_norms = fusion_report({"MatMul": 8, "Softmax": 2}, {"MatMul": 8, "Softmax": 2, "LayerNormalization": 5},
                                decoder=True, unfused_reason="--no-fuse-attention was given")
    assert fusion_text(layer_norms) == "attention not fused; LayerNormalization ×5 fused"
    gqa = fusion_report({"MatMul": 8}, {"MatMul": 2, "GroupQueryAttention": 2, "RotaryEmbedding": 4}, decoder=True)
    assert fusion_text(gqa) == "attention fused (GroupQueryAttention ×2)"
    assert fusion_text(fusion_report({"MatMul": 8}, {"MatMul": 8}, decoder=True)) == "nothing fused"
    # the card, the int8 candidates and the fusion report agree on which ops are a fused attention
    int8 = {"QAttention": 2, "MatMulInteger": 4}
    assert fused_attention(int8) == {"QAttention": 2}
    assert attention_text(int8, {}) == "its fused attention quantized too (QAttention ×2)"
    manifest = {"model_file": "m.onnx", "quantization": {"choice": "c", "remedy": "none"},
                "variants": {"m.onnx": {"precision": "int8", "ops": int8}}}
    assert "int8, attention fused (QAttention ×2)," in deployable_lines(manifest)[0]


def test_fusion_report_counts_only_new_fused_ops():
    before = {"MatMul": 16, "LayerNormalization": 5, "Softmax": 2}
    after = {"MatMul": 6, "Attention": 2, "SkipLayerNormalization": 4, "LayerNormalization": 1}
    report = fusion_report(before, after, decoder=False)
    assert report["summary"] == "Attention ×2, SkipLayerNormalization ×4"
    assert report["notes"] == ["23 nodes before, 13 after (10 removed)"]
    report = fusion_report(before, {"MatMul": 16, "Softmax": 2}, decoder=False)
    assert report["summary"] == "nothing fused"
    assert "attention was not fused" in report["notes"][0]


def test_a_decoder_fused_by_ort_optimizer_is_not_credited_to_deployft():
    from deployft.exporter.optimize import fusion_report

    report = fusion_report({"MatMul": 8}, {"MatMul": 4, "MultiHeadAttention": 2}, decoder=True)
    assert report["notes"][0] == "decoder attention fused by ORTOptimizer: MultiHeadAttention"
    report = fusion_report({"MatMul": 8}, {"MatMul": 4, "GroupQueryAttention": 2, "RotaryEmbedding": 4}, decoder=True)
    assert report["notes"][0].startswith("decoder attention fused by deployft: GroupQueryAttention ×2 with "
                                         "RotaryEmbedding ×4")
    report = fusion_report({"MatMul": 8}, {"MatMul": 4, "GroupQueryAttention": 2}, decoder=True)
    assert report["notes"][0].startswith("decoder attention fused by deployft: GroupQueryAttention ×2 (each rotating")
