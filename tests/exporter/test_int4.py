"""`quantize_int4`: 4-bit MatMulNBits, the LM head at 8 bits, edge layers and exclusions, read back from the file."""

from __future__ import annotations

import numpy as np
import pytest

from deployft.exporter.int4 import bits_of, edge_layer_matmuls, quantize_int4, weight_matmuls, width_of
from deployft.exporter.quantize import head_matmuls


def _nbits(path) -> dict[str, tuple[int, int]]:
    """`{original MatMul name: (bits, block_size)}` of every MatMulNBits node in the file."""
    import onnx

    out = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            out[node.name.rsplit("_Q", 1)[0]] = (attrs["bits"], attrs["block_size"])
    return out


def _ops(path) -> dict[str, int]:
    import collections

    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _remaining(path) -> list[str]:
    import onnx

    return weight_matmuls(onnx.load(str(path)).graph)


def _logits(path, ids=(5, 9, 14, 3)):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids))[None]}
    feed.update({i.name: np.zeros((1, 2, 0, 16), np.float32) for i in sess.get_inputs()
                 if i.name.startswith("past_key_values")})
    return sess.run(["logits"], feed)[0]


def test_int4_is_four_bit_everywhere_but_the_eight_bit_head(tiny_onnx):
    folder = tiny_onnx("llama")
    src, dst = folder / "model.onnx", folder / "q4.onnx"
    head = head_matmuls(src)
    settings = quantize_int4(src, dst, eight_bit=head)
    nbits = _nbits(dst)
    assert nbits.pop("/lm_head/MatMul") == (8, 32)
    assert len(nbits) == 2 * 7 and set(nbits.values()) == {(4, 32)}  # q, k, v, o, gate, up, down per layer
    assert _remaining(dst) == []
    assert settings["bits"] == {"4": 14, "8": 1} == bits_of(dst) and settings["eight_bit_nodes"] == head
    assert settings["mode"] == "int4" and settings["accuracy_level"] == 4 and settings["symmetric"] is True
    assert settings["embedding"] == "8-bit GatherBlockQuantized, block 32" and _ops(dst)["GatherBlockQuantized"] == 1
    assert width_of(dst, head) == 8 and width_of(dst, ["/model/layers.0/mlp/down_proj/MatMul"]) == 4
    assert width_of(dst, head + ["/model/layers.0/mlp/down_proj/MatMul"]) is None  # two widths
    assert width_of(dst, ["no-such-node"]) is None and width_of(dst, []) is None and width_of(dst, [""]) is None
    fp32, int4 = _logits(src), _logits(dst)
    assert np.abs(fp32 - int4).max() < 0.25 * np.abs(fp32).max()


def test_int4_with_the_head_at_four_bits_too(tiny_onnx):
    folder = tiny_onnx("llama")
    src, dst = folder / "model.onnx", folder / "q4.onnx"
    settings = quantize_int4(src, dst)
    assert set(_nbits(dst).values()) == {(4, 32)} and len(_nbits(dst)) == 15 and _remaining(dst) == []
    assert settings["bits"] == {"4": 15} and settings["eight_bit_nodes"] == [] and width_of(dst, head_matmuls(src)) == 4
    assert settings["embedding"] == "8-bit GatherBlockQuantized, block 32"  # the lookup stays at 8 bits
    fp32, int4 = _logits(src), _logits(dst)
    assert np.abs(fp32 - int4).max() < 0.25 * np.abs(fp32).max()


def test_block_size_reaches_every_node(tiny_onnx):
    folder = tiny_onnx("llama")
    quantize_int4(folder / "model.onnx", folder / "q4.onnx", block_size=128, eight_bit=["/lm_head/MatMul"])
    assert {block for _, block in _nbits(folder / "q4.onnx").values()} == {128}


def test_edge_layers_at_eight_bits_and_exclusions_in_fp32(tiny_onnx):
    folder = tiny_onnx("llama")
    src = folder / "model.onnx"
    edges = edge_layer_matmuls(src, num_layers=2)
    assert len(edges) == 14 and all("layers.0" in n or "layers.1" in n for n in edges)
    excluded = [n for n in edges if "down_proj" in n]
    settings = quantize_int4(src, folder / "q4.onnx", block_size=16, eight_bit=[*edges, "/lm_head/MatMul"],
                             nodes_to_exclude=excluded)
    assert sorted(_remaining(folder / "q4.onnx")) == sorted(excluded)
    assert settings["bits"] == {"8": 13} and settings["nodes_excluded"] == excluded


def test_every_node_excluded_leaves_the_fp32_logits(tiny_onnx):
    """The passes touch nothing but the nodes they quantize: with every MatMul excluded the file is the fp32 one."""
    import onnx

    folder = tiny_onnx("llama")
    src = folder / "model.onnx"
    graph = onnx.load(str(src)).graph
    embedding = [n.name for n in graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"]
    everything = weight_matmuls(graph) + head_matmuls(src) + embedding  # the tied head is a Transpose's
    settings = quantize_int4(src, folder / "q4.onnx", eight_bit=["/lm_head/MatMul"], nodes_to_exclude=everything)
    assert settings["bits"] == {} and settings["eight_bit_nodes"] == [] and settings["embedding"].startswith("fp32")
    np.testing.assert_allclose(_logits(folder / "q4.onnx"), _logits(src), atol=1e-5)
    quantize_int4(src, folder / "q4b.onnx")  # and the comparison can fail: int4 moves the logits
    assert np.abs(_logits(folder / "q4b.onnx") - _logits(src)).max() > 1e-5


def _gemm_graph(tmp_path):
    """x[2, 64] -> Gemm(W1ᵀ, b1) -> Relu -> Gemm(W2, no bias) -> Gemm(W3, alpha 2) -> MatMul(W4): OPT's fc1 / fc2
    export as the first kind; the third is no plain product, so no quantizer rewrites it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=shape).astype(np.float32) for name, shape in
               (("w1", (64, 64)), ("b1", (64,)), ("w2", (64, 64)), ("w3", (64, 64)), ("w4", (64, 64)))}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="/layers.0/fc1/Gemm", transB=1),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["h2"], name="/layers.0/fc2/Gemm"),
             helper.make_node("Gemm", ["h2", "w3"], ["h3"], name="/layers.1/scaled/Gemm", alpha=2.0),
             helper.make_node("MatMul", ["h3", "w4"], ["y"], name="/layers.1/out/MatMul")]
    graph = helper.make_graph(nodes, "gemms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    path = tmp_path / "gemms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_weight_gemms_are_quantized_and_what_stays_fp32_is_recorded(tmp_path, mode):
    from deployft.exporter.quantize import quantize_blockwise_int8

    src, dst = _gemm_graph(tmp_path), tmp_path / "q.onnx"
    settings = (quantize_int4(src, dst) if mode == "int4" else quantize_blockwise_int8(src, dst))
    ops = _ops(dst)
    assert settings["gemms_as_matmuls"] == ["/layers.0/fc1/Gemm_MatMul", "/layers.0/fc2/Gemm_MatMul"]
    assert ops["MatMulNBits"] == 3 and ops["Gemm"] == 1 and ops["Add"] == 1  # fc1's bias, added after its MatMul
    assert settings["nodes_excluded"] == ["/layers.1/scaled/Gemm"]  # the one weight product left in fp32, counted
    if mode == "int4":
        assert settings["bits"] == {"4": 3}
    x = np.random.default_rng(1).normal(size=(2, 64)).astype(np.float32)
    fp32, quantized = _run(src, x), _run(dst, x)
    error = np.abs(fp32 - quantized).max() / np.abs(fp32).max()  # three random layers: 4 bits err by tens of %
    assert error < (0.5 if mode == "int4" else 0.05)


def test_the_gemm_rewrite_alone_computes_the_same(tmp_path):
    import onnx

    from deployft.exporter.matmuls import gemms_as_matmuls

    src = _gemm_graph(tmp_path)
    model = onnx.load(str(src))
    assert len(gemms_as_matmuls(model)) == 2
    assert {i.name for i in model.graph.initializer} == {"w1.transposed", "b1", "w2", "w3", "w4"}  # no 2nd copy
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    x = np.random.default_rng(1).normal(size=(2, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "rewritten.onnx", x), _run(src, x), rtol=1e-5, atol=1e-2)


def test_edge_layers_name_a_weight_gemm_by_the_matmul_it_becomes(tmp_path):
    src = _gemm_graph(tmp_path)
    assert edge_layer_matmuls(src, num_layers=2) == ["/layers.0/fc1/Gemm_MatMul", "/layers.0/fc2/Gemm_MatMul",
                                                     "/layers.1/out/MatMul"]
    settings = quantize_int4(src, tmp_path / "q.onnx", eight_bit=["/layers.0/fc1/Gemm_MatMul"],
                             nodes_to_exclude=["/layers.0/fc2/Gemm_MatMul"])
    assert settings["bits"] == {"4": 1, "8": 1} and settings["eight_bit_nodes"] == ["/layers.0/fc1/Gemm_MatMul"]
    assert settings["nodes_excluded"] == ["/layers.0/fc2/Gemm_MatMul", "/layers.1/scaled/Gemm"]


# --- `export --quantize int4` -------------------------------------------------------------------------------------

FAST = {"validate_samples": 40}


def _export(run, tmp_path, **flags):
    from deployft.exporter import ExportConfig, export

    return export(ExportConfig(run=run, output=tmp_path / "bundle", **{**FAST, **flags}))


def _inject(monkeypatch, ratios):
    """The successive int4 attempts report `ratios` as their perplexity ratio's upper bound."""
    import deployft.exporter.validate as module

    real, queue = module.compare, list(ratios)

    def fake(ref, path, device="cpu", provider="default"):
        report = real(ref, path, device, provider)
        if path.name == "model_int4.onnx" and queue:
            report["perplexity_ratio_upper_95"] = queue.pop(0)
        return report

    monkeypatch.setattr(module, "compare", fake)


def test_int4_export_of_the_tiny_llama_within_budget_predicts_and_benches(tiny_run, tmp_path):
    from deployft import Predictor
    from deployft.bench import BenchConfig, benchmark
    from deployft.manifest import read_manifest

    run = tiny_run("llama")
    bundle = _export(run, tmp_path, quantize="int4")
    manifest = read_manifest(bundle, "bundle")
    q, variant = manifest["quantization"], manifest["variants"]["model_int4.onnx"]
    assert manifest["model_file"] == "model_int4.onnx" and variant["precision"] == "int4" and variant["optimized"]
    assert q["mode"] == "int4" and q["remedy"] == "none" and q["block_size"] == 32 and q["accuracy_level"] == 4
    assert q["quantized_from"] == "model_optimized.onnx" and "int4" in q["choice"] and "LM head at 8 bits" in q["choice"]
    nbits = _nbits(bundle / "model_int4.onnx")
    # q/k/v and gate/up are packed in the fused graph: 4 MatMuls per layer (qkv, o, gate+up, down)
    assert nbits.pop("/lm_head/MatMul") == (8, 32) and set(nbits.values()) == {(4, 32)} and len(nbits) == 8
    assert _remaining(bundle / "model_int4.onnx") == [] and q["bits"] == {"4": 8, "8": 1} and q["head_bits"] == 8
    assert variant["ops"]["MatMulNBits"] == 9 and variant["ops"]["GroupQueryAttention"] == 2
    assert variant["ops"]["GatherBlockQuantized"] == 1 and q["embedding"] == "8-bit GatherBlockQuantized, block 32"
    report = manifest["validation"]["model_int4.onnx"]
    assert report["guard"]["passed"] and report["drop"] <= 10.0
    assert 0.0 <= report["greedy_token_agreement"] <= 1.0
    assert "MatMulNBits 4-bit ×8, 8-bit ×1; LM head 8-bit; token embedding 8-bit GatherBlockQuantized" \
        in (bundle / "README.md").read_text()
    predictor = Predictor.load(bundle)  # the KV-cache decoder on MatMulNBits, through the runtime's own loop
    assert predictor.model_file == "model_int4.onnx"
    assert predictor.decoder.shares_cache  # the int4 file keeps the fused graph's in-place cache
    assert variant["external_data"] == ["model_int4.onnx_data"] and (bundle / "model_int4.onnx_data").is_file()
    ids = list(predictor.iter_token_ids([5, 9, 14, 3], max_new_tokens=6, ignore_eos=True))
    assert len(ids) == 6 and all(0 <= i < manifest_vocab(bundle) for i in ids)
    assert isinstance(predictor.generate("hello", max_new_tokens=4), str)
    report = benchmark(BenchConfig(run=run, bundle=bundle, report=tmp_path / "report", variants=["model_int4.onnx"],
                                   threads=1, repeats=2, warmup=1, eval_samples=4, peak=False, prompt_lens="4",
                                   new_tokens=3))
    assert report.variants["model_int4.onnx"]["status"] == "ok"
    assert report.variants["model_int4.onnx"]["precision"] == "int4"
    (row,) = report.results
    assert row["variant"] == "model_int4.onnx" and all(r["tokens"] == 3 for r in row["runs"])


def manifest_vocab(bundle) -> int:
    import json

    return json.loads((bundle / "config.json").read_text())["vocab_size"]


def test_int4_ladder_then_refusal_without_a_bundle(tiny_run, tmp_path, monkeypatch):
    from deployft.errors import AccuracyBudgetError
    from deployft.manifest import read_manifest

    run = tiny_run("llama")
    _inject(monkeypatch, [1.30, 1.20, 1.12])
    with pytest.raises(AccuracyBudgetError, match=r"int4 reached 12.00 .*none: 30.00, blocks of 16: 20.00, blocks of "
                                                  r"16 \+ first and last layer at 8 bits: 12.00.*no bundle written"):
        _export(run, tmp_path / "refused", quantize="int4")
    assert not (tmp_path / "refused" / "bundle").exists()
    monkeypatch.undo()
    _inject(monkeypatch, [1.30, 1.20])
    manifest = read_manifest(_export(run, tmp_path, quantize="int4", max_accuracy_drop=15.0), "bundle")
    q = manifest["quantization"]
    assert q["remedy"] == "blocks of 16 + first and last layer at 8 bits" and q["block_size"] == 16
    assert q["bits"] == {"8": 9} and [a["remedy"] for a in q["attempts"]][:2] == ["none", "blocks of 16"]


def test_classifier_refuses_int4_and_block_size(tiny_run, tmp_path):
    from deployft.errors import UsageError

    run = tiny_run("bert")
    with pytest.raises(UsageError, match="--quantize int4 is for generators .* quantized with --quantize int8"):
        _export(run, tmp_path, quantize="int4")
    with pytest.raises(UsageError, match="--block-size sets the MatMulNBits blocks of a generator; a classify"):
        _export(run, tmp_path, quantize="int8", block_size=16)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(("flags", "match"), [
    ({"quantize": "int4", "block_size": 48}, "--block-size is 48; expected one of 16, 32, 64, 128"),
    ({"quantize": "none", "block_size": 32}, "--block-size sets the blocks .* not of --quantize none"),
    ({"quantize": "int4", "device": "cuda"}, "--device cuda --quantize int4 is refused"),
    ({"quantize": "int4", "head_bits": 6}, "--head-bits is 6; expected one of 8, 4"),
    ({"quantize": "int8", "head_bits": 4}, "--head-bits sets the LM head .* not of --quantize int8; drop --head-bits"),
    ({"quantize": "none", "head_bits": 8}, "--head-bits sets the LM head .* not of --quantize none; drop --head-bits"),
])
def test_bad_int4_flags_are_refused_before_any_work(tmp_path, flags, match):
    from deployft.errors import UsageError
    from deployft.exporter import ExportConfig

    with pytest.raises(UsageError, match=match):
        ExportConfig(run=tmp_path, output=tmp_path / "bundle", **flags)


def test_cli_block_size_reaches_the_file(tiny_run, tmp_path):
    from click.testing import CliRunner

    from deployft.cli import main

    bundle = tmp_path / "b"
    result = CliRunner().invoke(main, ["export", str(tiny_run("llama")), "-o", str(bundle), "--quantize", "int4",
                                       "--block-size", "128", "--validate-samples", "8", "--max-accuracy-drop", "1000"])
    assert result.exit_code == 0, result.output
    assert "deployable: model_int4.onnx" in result.output and "| model_int4.onnx * | int4 |" in result.output
    assert "quantization: int4 (blockwise int4 weights (MatMulNBits), int8 compute, block 128; MatMulNBits 4-bit ×8, " \
           "8-bit ×1; LM head 8-bit; token embedding 8-bit GatherBlockQuantized, block 64), remedy: none" in result.output
    assert {block for _, block in _nbits(bundle / "model_int4.onnx").values()} == {128}


def test_cli_head_bits_four_reaches_the_file_manifest_and_card(tiny_run, tmp_path):
    from click.testing import CliRunner

    from deployft import Predictor
    from deployft.cli import main
    from deployft.manifest import read_manifest

    bundle = tmp_path / "b"
    result = CliRunner().invoke(main, ["export", str(tiny_run("llama")), "-o", str(bundle), "--quantize", "int4",
                                       "--head-bits", "4", "--validate-samples", "8", "--max-accuracy-drop", "1000"])
    assert result.exit_code == 0, result.output
    assert "MatMulNBits 4-bit ×9; LM head 4-bit; token embedding 8-bit GatherBlockQuantized" in result.output
    q = read_manifest(bundle, "bundle")["quantization"]
    assert q["bits"] == {"4": 9} and q["head_bits"] == 4 and q["eight_bit_nodes"] == []
    assert "the LM head at 4 bits" in q["choice"]
    assert _nbits(bundle / "model_int4.onnx")["/lm_head/MatMul"] == (4, 32)
    assert "LM head 4-bit" in (bundle / "README.md").read_text()
    assert len(list(Predictor.load(bundle).iter_token_ids([5, 9, 14, 3], max_new_tokens=3, ignore_eos=True))) == 3


def test_an_opt_generator_gets_its_gemm_layers_quantized_and_its_card_says_what_the_file_holds(tmp_path):
    """OPT's fc1 / fc2 export as Gemm: they are 4-bit like every other layer, and nothing is claimed otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, OPTConfig

    from conftest import _bpe_tokenizer
    from deployft.exporter.card import info_text
    from deployft.manifest import read_manifest

    tokenizer, folder = _bpe_tokenizer(None), tmp_path / "model-opt"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(OPTConfig(
        hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2, max_position_embeddings=128,
        word_embed_proj_dim=32, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    bundle = _export(folder, tmp_path, task="generate", quantize="int4", validate_samples=8, max_accuracy_drop=1000)
    manifest = read_manifest(bundle, "bundle")
    q, ops = manifest["quantization"], manifest["variants"]["model_int4.onnx"]["ops"]
    assert len(q["gemms_as_matmuls"]) == 4 and "Gemm" not in ops and q["nodes_excluded"] == []
    assert q["bits"] == {"4": 12, "8": 1} and ops["MatMulNBits"] == 13  # q, k, v, out, fc1, fc2 per layer + head
    line = "MatMulNBits 4-bit ×12, 8-bit ×1; LM head 8-bit; token embedding fp32), remedy: none, 0 nodes kept in fp32"
    assert line in info_text(bundle) and line in (bundle / "README.md").read_text()
