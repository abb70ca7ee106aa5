"""Activation smoothing (`deployft.exporter.smooth`): the fp32 graph's outputs stay the same, outlier channels move
into the weights, and dynamic int8 of the smoothed graph is closer to fp32 than dynamic int8 of the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployft.exporter.quantize import quantize_dynamic_int8
from deployft.exporter.smooth import smooth_activations

CHANNELS = 64


def _run(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})


def _outlier_model(path, shared_weight=False):
    """x (rows, 64) -> LayerNormalization -> two MatMuls reading it (y1, y2); channel 5 of the LayerNorm's output
    is 40x the others (its gamma), as an encoder's are."""
    rng = np.random.default_rng(0)
    gamma = np.ones(CHANNELS, np.float32)
    gamma[5] = 40.0
    w1 = rng.normal(0, 0.1, (CHANNELS, 32)).astype(np.float32)
    w2 = w1 if shared_weight else rng.normal(0, 0.1, (CHANNELS, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "beta"),
             numpy_helper.from_array(w1, "w1")]
    if not shared_weight:
        inits.append(numpy_helper.from_array(w2, "w2"))
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w1"], ["y1"]),
             helper.make_node("MatMul", ["h", "w1" if shared_weight else "w2"], ["y2"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, CHANNELS])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2")]
    graph = helper.make_graph(nodes, "outliers", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _feeds(rows=64, seed=1):
    return {"x": np.random.default_rng(seed).normal(0, 1, (rows, CHANNELS)).astype(np.float32)}


def test_smoothing_keeps_fp32_outputs_and_brings_int8_closer(tmp_path):
    src = _outlier_model(tmp_path / "model.onnx")
    smoothed = tmp_path / "smoothed.onnx"
    settings = smooth_activations(src, smoothed, [_feeds(seed=s) for s in range(4)])["smoothing"]
    assert settings["smoothed"] == ["h"] and settings["activations_considered"] == 1
    assert settings["activations_smoothed"] == 1 and settings["calibration_rows"] == 4 * 64
    graph = onnx.load(str(smoothed)).graph
    muls = [n for n in graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and [n.input[0] for n in graph.node if n.op_type == "MatMul"] == [muls[0].output[0]] * 2
    test = _feeds(seed=9)
    reference = _run(src, test)
    for a, b in zip(reference, _run(smoothed, test)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    errors = []
    for name, fp32 in (("plain", src), ("smoothed", smoothed)):
        int8 = tmp_path / f"{name}-int8.onnx"
        quantize_dynamic_int8(fp32, int8, "avx512_vnni", per_channel=True)
        errors.append(max(float(np.abs(q - r).mean()) for q, r in zip(_run(int8, test), reference)))
    assert errors[1] < errors[0] / 2


def test_a_model_with_external_weights_is_probed_in_place_and_leaves_nothing_beside_it(tmp_path):
    from deployft.exporter.onnx_export import save_model

    (tmp_path / "inline").mkdir()
    inline = _outlier_model(tmp_path / "inline" / "model.onnx")
    folder = tmp_path / "external"
    folder.mkdir()
    save_model(onnx.load(str(inline)), folder / "model.onnx", external=True)
    assert (folder / "model.onnx_data").is_file()
    before = sorted(p.name for p in folder.iterdir())
    feeds = [_feeds(seed=s) for s in range(2)]
    outside = smooth_activations(folder / "model.onnx", tmp_path / "a.onnx", feeds)["smoothing"]
    assert sorted(p.name for p in folder.iterdir()) == before
    assert outside == smooth_activations(inline, tmp_path / "b.onnx", feeds)["smoothing"]
    test = _feeds(seed=9)
    for a, b in zip(_run(tmp_path / "a.onnx", test), _run(tmp_path / "b.onnx", test)):
        np.testing.assert_array_equal(a, b)


def test_activation_without_outliers_or_with_a_shared_weight_is_left_alone(tmp_path):
    src = _outlier_model(tmp_path / "model.onnx")
    calm = smooth_activations(src, tmp_path / "calm.onnx", [_feeds()], min_ratio=1000)["smoothing"]
    assert calm["smoothed"] == [] and calm["activations_considered"] == 1
    assert not [n for n in onnx.load(str(tmp_path / "calm.onnx")).graph.node if n.op_type == "Mul"]
    shared = _outlier_model(tmp_path / "shared.onnx", shared_weight=True)
    record = smooth_activations(shared, tmp_path / "shared-out.onnx", [_feeds()])["smoothing"]
    assert record["activations_considered"] == 0 and record["smoothed"] == []


def test_encoder_graph_outputs_are_unchanged_by_smoothing_every_activation(tiny_onnx, tmp_path):
    from deployft.exporter.optimize import optimize

    folder = tiny_onnx("bert")
    fused, _ = optimize(folder / "model.onnx", decoder=False)
    ids = np.random.default_rng(0).integers(5, 90, (2, 12), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    settings = smooth_activations(fused, tmp_path / "smoothed.onnx", [feeds], min_ratio=0)["smoothing"]
    model = onnx.load(str(tmp_path / "smoothed.onnx"))
    onnx.checker.check_model(model)  # every Mul sits between its activation's producer and its first reader
    readers = [n for n in model.graph.node if n.op_type in ("MatMul", "Attention") and n.input[0].endswith("/smoothed")]
    assert settings["activations_smoothed"] == settings["activations_considered"] >= 2 and readers
    assert any(n.op_type == "Attention" for n in readers)
    np.testing.assert_allclose(_run(tmp_path / "smoothed.onnx", feeds)[0], _run(fused, feeds)[0], rtol=1e-4, atol=1e-4)


def test_no_calibration_rows_is_a_stage_error(tmp_path):
    from deployft.errors import StageError

    with pytest.raises(StageError, match="smoothing the activations of model.onnx needs calibration rows and got none"):
        smooth_activations(_outlier_model(tmp_path / "model.onnx"), tmp_path / "out.onnx", [])


@pytest.mark.slow
def test_smoothing_the_real_classifier_brings_its_int8_logits_closer_to_fp32(real_classify_run, tmp_path):
    from transformers import AutoTokenizer

    from deployft.exporter import ExportConfig, export
    from deployft.exporter.samples import calibration_samples, padded_feeds, validation_samples
    from deployft.exporter.source import read_source

    bundle = export(ExportConfig(run=real_classify_run, output=tmp_path / "fp32", max_accuracy_drop=20))
    fused, source = bundle / "model_optimized.onnx", read_source(real_classify_run)
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    inputs = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}
    calibration = padded_feeds(calibration_samples(source, tokenizer, 100), tokenizer.pad_token_id, inputs, 16)
    settings = smooth_activations(fused, tmp_path / "smoothed.onnx", calibration)["smoothing"]
    assert 0 < settings["activations_smoothed"] <= settings["activations_considered"]
    rows = padded_feeds(validation_samples(source, tokenizer, 2000), tokenizer.pad_token_id, inputs, 16)

    def logits(path):
        return np.concatenate([_run(path, feed)[0] for feed in rows])

    reference = logits(fused)
    np.testing.assert_allclose(logits(tmp_path / "smoothed.onnx"), reference, rtol=1e-3, atol=1e-4)
    errors = {}
    for name, fp32 in (("plain", fused), ("smoothed", tmp_path / "smoothed.onnx")):
        quantize_dynamic_int8(fp32, tmp_path / f"{name}-int8.onnx", "avx512_vnni", per_channel=True)
        errors[name] = float(np.abs(logits(tmp_path / f"{name}-int8.onnx") - reference).mean())
    assert errors["smoothed"] < 0.8 * errors["plain"], errors
