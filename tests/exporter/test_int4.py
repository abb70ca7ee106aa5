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
