"""Quantization: CPU preset detection, dynamic int8 on the fused graph, exclusions, static int8, fp16."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from deployft.errors import MissingDependencyError, UsageError
from deployft.exporter.optimize import optimize
from deployft.exporter.quantize import (
    convert_fp16, cpu_preset, head_matmuls, preset_config, quantize_blockwise_int8, quantize_dynamic_int8,
    quantize_nncf_int8, quantize_static_int8, sensitive_nodes, untie_transposed_weights,
)


def _ops(path):
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize(("flags", "machine", "preset"), [
    ("fpu sse2 avx2 avx512f avx512_vnni", "x86_64", "avx512_vnni"),
    ("fpu sse2 avx avx2 fma", "x86_64", "avx2"),
    ("fpu sse2", "x86_64", "avx2"),
    ("fp asimd", "aarch64", "arm64"),
    ("", "arm64", "arm64"),
])
def test_cpu_preset_follows_the_instruction_set(flags, machine, preset):
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_preset(cpuinfo, machine) == preset


def test_cpu_preset_on_this_machine_is_a_known_preset():
    assert cpu_preset() in ("avx512_vnni", "avx2", "arm64")


def test_unknown_preset_is_refused_naming_the_flag():
    with pytest.raises(UsageError, match="--quantize-preset.*avx512_vnni, avx2, arm64"):
        preset_config("sse4", static=False, per_channel=False)


def test_dynamic_int8_quantizes_the_fused_graph(tiny_onnx):
    folder = tiny_onnx("bert")
    fused, _ = optimize(folder / "model.onnx", decoder=False)
    settings = quantize_dynamic_int8(fused, folder / "q.onnx", "avx512_vnni", per_channel=False)
    ops = _ops(folder / "q.onnx")
    # the last layer's first-position attention reads quantized q/k/v MatMuls (its attention core is fp32, as
    # QAttention's is)
    assert ops["QAttention"] == 1 and ops["MultiHeadAttention"] == 1 and ops["LayerNormalization"] >= 4
    assert ops["MatMulInteger"] > 0 and "MatMul" not in ops
    assert "SkipLayerNormalization" not in ops
    assert "Attention" not in ops
    assert settings["mode"] == "int8" and settings["preset"] == "avx512_vnni"
    assert settings["quantized_from"] == fused.name and settings["nodes_excluded"] == []
    assert (folder / "q.onnx").stat().st_size < fused.stat().st_size / 2


def test_excluded_nodes_stay_fp32(tiny_onnx):
    import onnx

    folder = tiny_onnx("bert")
    fused, _ = optimize(folder / "model.onnx", decoder=False)
    nodes = sensitive_nodes(fused, num_layers=2)
    assert len(nodes) >= 3
    quantize_dynamic_int8(fused, folder / "q.onnx", "avx2", per_channel=True, nodes_to_exclude=nodes)
    kept = {n.name: n.op_type for n in onnx.load(str(folder / "q.onnx")).graph.node}
    for name in nodes:
        assert name in kept and kept[name] in ("MatMul", "Attention", "Gather")
    quantize_dynamic_int8(fused, folder / "all.onnx", "avx2", per_channel=True)
    assert _ops(folder / "q.onnx")["MatMulInteger"] < _ops(folder / "all.onnx")["MatMulInteger"]


def test_sensitive_nodes_are_head_first_and_last_layer(tiny_onnx):
    folder = tiny_onnx("bert")
    nodes = sensitive_nodes(folder / "model.onnx", num_layers=2)
    assert nodes and all(any(k in n for k in ("layer.0", "layer.1", "classifier", "pooler", "embeddings"))
                         for n in nodes)
    assert {f"/bert/embeddings/{table}_embeddings/Gather" for table in ("word", "position", "token_type")} <= set(nodes)
    assert "/classifier/Gemm_MatMul" in nodes and "/bert/pooler/dense/Gemm_MatMul" in nodes
    llama = tiny_onnx("llama")
    nodes = sensitive_nodes(llama / "model.onnx", num_layers=2)
    # the tiny llama's head is tied: it reads a Transpose of the embedding, which dynamic int8 leaves in fp32 anyway
    assert "/lm_head/MatMul" not in nodes and "/model/embed_tokens/Gather" in nodes
    assert not any("layers.1/self_attn" in n for n in sensitive_nodes(llama / "model.onnx", num_layers=8))
    assert any("layers.1/" in n for n in nodes)


def _fp32_nodes(path) -> set[str]:
    """The nodes of a dynamic int8 file that run in fp32: ops the quantizer handles that read no quantized tensor."""
    import onnx

    return {n.name for n in onnx.load(str(path)).graph.node
            if n.op_type in ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")
            and not any(name.endswith("_quantized") for name in n.input)}


@pytest.mark.parametrize("graph", ["plain", "fused"])
@pytest.mark.parametrize("parts", [("head",), ("head", "first", "last"), ("first",)])
def test_fp32_parts_are_exactly_the_nodes_the_exclusion_keeps_in_fp32(tiny_onnx, graph, parts):
    import onnx

    folder = tiny_onnx("bert")
    src = folder / "model.onnx" if graph == "plain" else optimize(folder / "model.onnx", decoder=False)[0]
    quantize_dynamic_int8(src, folder / "all.onnx", "avx2", per_channel=True)
    nodes = sensitive_nodes(src, num_layers=2, parts=parts)
    quantize_dynamic_int8(src, folder / "kept.onnx", "avx2", per_channel=True, nodes_to_exclude=nodes)
    # what the card counts ("N nodes kept in fp32") is what the exclusion kept: no shape Gather, no MatMul of two
    # activations, which int8 leaves in fp32 anyway
    assert sorted(nodes) == sorted(_fp32_nodes(folder / "kept.onnx") - _fp32_nodes(folder / "all.onnx"))
    lookups = [n for n in onnx.load(str(folder / "kept.onnx")).graph.node if n.op_type == "Gather"]
    quantized = [n.name for n in lookups if n.input[0].endswith("_quantized")]
    assert quantized == [] if "head" in parts else len(quantized) == 3  # word, position and token-type tables


def test_static_int8_calibrates_on_the_given_inputs(tiny_onnx):
    folder = tiny_onnx("bert")
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        ids = rng.integers(5, 200, size=(1, 12))
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    settings = quantize_static_int8(folder / "model.onnx", folder / "s.onnx", "avx512_vnni", False, batches)
    ops = _ops(folder / "s.onnx")
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert settings["calibration_samples"] == 4 and settings["mode"] == "int8-static"


def test_fp16_conversion_keeps_fp32_inputs_and_outputs(tiny_onnx):
    import onnx

    folder = tiny_onnx("bert")
    convert_fp16(folder / "model.onnx", folder / "h.onnx")
    model = onnx.load(str(folder / "h.onnx"))
    float_inits = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT,
                                                                         onnx.TensorProto.FLOAT16)]
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits) > len(float_inits) // 2
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _weight_matmuls(path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def test_blockwise_int8_turns_every_weight_matmul_into_matmulnbits(tiny_onnx):
    import onnxruntime as ort

    folder = tiny_onnx("llama")
    src = folder / "model.onnx"
    settings = quantize_blockwise_int8(src, folder / "q.onnx")
    ops = _ops(folder / "q.onnx")
    assert ops["MatMulNBits"] == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the LM head
    assert _weight_matmuls(folder / "q.onnx") == []
    assert settings["block_size"] == 64 and settings["accuracy_level"] == 4 and settings["mode"] == "int8"
    assert "MatMulNBits" in settings["method"] and settings["quantized_from"] == "model.onnx"
    feed = {"input_ids": np.array([[5, 9, 14, 3]]), "attention_mask": np.ones((1, 4), dtype=np.int64),
            "position_ids": np.arange(4)[None]}
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, folder / "q.onnx")]
    for sess in sessions:
        feed.update({i.name: np.zeros((1, 2, 0, 16), np.float32) for i in sess.get_inputs()
                     if i.name.startswith("past_key_values")})
    fp32, int8 = (s.run(["logits"], feed)[0] for s in sessions)
    assert np.abs(fp32 - int8).max() < 0.1 * np.abs(fp32).max()


def test_blockwise_int8_keeps_excluded_nodes_in_fp32(tiny_onnx):
    folder = tiny_onnx("llama")
    head = head_matmuls(folder / "model.onnx")
    assert head == ["/lm_head/MatMul"]
    settings = quantize_blockwise_int8(folder / "model.onnx", folder / "q.onnx", block_size=16, nodes_to_exclude=head)
    assert _weight_matmuls(folder / "q.onnx") == head and _ops(folder / "q.onnx")["MatMulNBits"] == 14
    assert settings["nodes_excluded"] == head and settings["block_size"] == 16


def test_a_tied_head_gets_its_own_transposed_weight():
    from onnx import TensorProto, helper, numpy_helper

    emb = np.arange(24, dtype=np.float32).reshape(6, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["h"], name="embed"),
         helper.make_node("Transpose", ["emb"], ["emb_t"], name="tie", perm=[1, 0]),
         helper.make_node("MatMul", ["h", "emb_t"], ["logits"], name="lm_head")],
        "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 6])],
        initializer=[numpy_helper.from_array(emb, "emb")])
    model = helper.make_model(graph)
    assert untie_transposed_weights(model) == ["emb"]
    nodes = {n.name: n for n in model.graph.node}
    assert "tie" not in nodes and nodes["lm_head"].input[1] == "emb.transposed"
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(weights["emb.transposed"], emb.T)
    np.testing.assert_array_equal(weights["emb"], emb)  # the lookup keeps the original


def test_large_models_are_written_with_external_weights(tiny_onnx, monkeypatch):
    """Above 2 GB one protobuf cannot hold the weights: they go to `<file>_data` (threshold lowered to test it)."""
    import onnx
    import onnxruntime as ort

    monkeypatch.setattr("deployft.exporter.onnx_export.EXTERNAL_DATA_BYTES", 0)
    folder = tiny_onnx("llama")
    quantize_blockwise_int8(folder / "model.onnx", folder / "q.onnx")
    assert (folder / "q.onnx_data").stat().st_size > 0
    graph = onnx.load(str(folder / "q.onnx"), load_external_data=False).graph
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    sess = ort.InferenceSession(str(folder / "q.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].name == "logits"


def _batches(count: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(count):
        ids = rng.integers(5, 200, size=(1, 12))
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return batches


def test_nncf_int8_writes_a_qdq_file_and_says_how(tiny_onnx):
    pytest.importorskip("nncf", reason='NNCF is not installed (pip install "deployft[openvino-export]")')
    import onnxruntime as ort

    folder = tiny_onnx("bert")
    settings = quantize_nncf_int8(folder / "model.onnx", folder / "n.onnx", _batches())
    ops = _ops(folder / "n.onnx")
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0 and "DynamicQuantizeLinear" not in ops
    assert settings["quantizer"] == "nncf" and settings["calibration_samples"] == 4
    assert settings["mode"] == "int8-static" and "NNCF" in settings["method"] and "NNCF" in settings["choice"]
    import onnx

    graph = onnx.load(str(folder / "n.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    in_float = [n.name for n in matmuls if all(producers.get(i) != "DequantizeLinear" for i in n.input)]
    assert settings["nodes_excluded"] == in_float and len(in_float) < len(matmuls)  # what the card counts as fp32
    feeds = _batches(1)[0]
    plain = ort.InferenceSession(str(folder / "model.onnx")).run(None, feeds)[0]
    quantized = ort.InferenceSession(str(folder / "n.onnx")).run(None, feeds)[0]
    assert quantized.shape == plain.shape and np.abs(quantized - plain).max() < 0.5 * np.abs(plain).max() + 1e-3


def test_nncf_takes_no_preset_or_per_channel(tmp_path):
    from deployft.exporter import ExportConfig

    for flags in ({"per_channel": True}, {"quantize_preset": "avx2"}):
        with pytest.raises(UsageError, match="NNCF's transformer preset, which takes neither"):
            ExportConfig(run=tmp_path, output=tmp_path / "b", quantize="int8-static", provider="openvino", **flags)


def test_nncf_missing_names_the_extra(tiny_onnx, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)
    folder = tiny_onnx("bert")
    with pytest.raises(MissingDependencyError, match=r'pip install "deployft\[openvino-export\]"'):
        quantize_nncf_int8(folder / "model.onnx", folder / "n.onnx", _batches())


def test_onnx_runtimes_preprocessing_advice_is_held_back_and_other_warnings_kept(caplog):
    """ORT logs "Please consider ... pre-processing" on the root logger for every file quantized."""
    import logging

    from deployft.exporter.quantize import _no_advice

    advice = logging.LogRecord("root", logging.WARNING, "/x/onnxruntime/quantization/quantize.py", 1,
                               "Please consider to run pre-processing before quantization.", None, None)
    other = logging.LogRecord("root", logging.WARNING, "/x/onnxruntime/quantization/quantize.py", 1,
                              "something else", None, None)
    with caplog.at_level(logging.WARNING), _no_advice():
        logging.getLogger().handle(advice)
        logging.getLogger().handle(other)
    logging.getLogger().handle(advice)  # outside the block: as ONNX Runtime logs it
    assert [r.getMessage() for r in caplog.records] == ["something else",
                                                        "Please consider to run pre-processing before quantization."]
