"""Peer engines as bench variants (deployft/bench/peers.py): built once from the RUN, timed beside deployft's files,
accuracy beside speed, and a peer that cannot be built stays in the report with its reason.

No test asserts a speed: the machines are shared and noisy.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from bench_pairs import bench_pair, make_run  # noqa: F401  (fixture)
from conftest import qa_rows, write_rows

from deployft.bench import BenchConfig, benchmark, peers
from deployft.bench import genai_venv
from deployft.errors import StageError, UsageError
from deployft.manifest import read_manifest

HAS_OPENVINO = importlib.util.find_spec("optimum.intel") is not None and importlib.util.find_spec("openvino")
HAS_GENAI = importlib.util.find_spec("onnxruntime_genai") is not None


def quick(run, bundle, report, **kw):
    values = dict(threads=1, repeats=2, warmup=1, eval_samples=12, peak=False, plots=False)
    values.update(kw)
    return BenchConfig(run=run, bundle=bundle, report=report, **values)


def deployable(bundle) -> str:
    return next(n for n, v in read_manifest(bundle, "bundle")["variants"].items() if v["precision"] == "int8")


@pytest.mark.skipif(not HAS_OPENVINO, reason='optimum-intel / openvino not installed (pip install "deployft[peers]")')
def test_openvino_peers_are_built_once_timed_and_scored(bench_pair, tmp_path):
    run, bundle = bench_pair("classify")
    int8 = deployable(bundle)
    cache = tmp_path / "peer-cache"
    report = benchmark(quick(run, bundle, tmp_path / "report", variants=["pytorch", int8, "openvino"],
                             batch_sizes="1,2", seq_lens=8, peer_cache=cache))
    assert report.failed == {}
    names = ("openvino-fp32", "openvino-int8")
    assert {(r["variant"], r["batch"]) for r in report.results} >= {(n, b) for n in names for b in (1, 2)}
    for name in names:
        entry = report.variants[name]
        assert entry["source"] == "peer" and entry["engine"] == "openvino"
        assert entry["build"]["build_s"] > 0 and entry["build"]["cached"] is False
        assert entry["details"]["inference_precision"] == ("bf16" if peers.bf16_hint() else "f32")
        assert entry["details"]["static_shapes"] is True
        # the tiny model's top-1 has a margin int8 does not cross: both files agree with PyTorch on all 12 rows,
        # so their accuracy is PyTorch's (an agreement counted against the labels would read the accuracy instead)
        accuracy, base = entry["accuracy"], report.variants["pytorch"]["accuracy"]
        assert accuracy["samples"] == 12 and accuracy["agreement_with_pytorch"] == 1.0
        assert accuracy["accuracy"] == base["accuracy"] and accuracy["accuracy_delta_points"] == 0.0
    assert report.variants["openvino-int8"]["precision"] == "int8"
    shapes = {(s["batch"], s["seq"]): s for s in report.data["fastest"]}
    assert set(shapes) == {(1, 8), (2, 8)}
    for (batch, seq), shape in shapes.items():
        rows = {r["variant"]: r for r in report.results if (r["batch"], r["seq"]) == (batch, seq)}
        assert shape["fastest"] == min(rows, key=lambda n: rows[n]["p50"])
        assert shape["slower_than_fastest"][int8] == pytest.approx(rows[int8]["p50"] / rows[shape["fastest"]]["p50"])
        assert rows[int8]["vs_fastest"] == shape["slower_than_fastest"][int8] >= 1.0
    markdown = (report.path / "report.md").read_text()
    assert "## Fastest per shape" in markdown and f"`{int8}`" in markdown
    assert "`openvino-int8` (openvino, int8): built in" in markdown
    assert "<h2>Fastest per shape</h2>" in (report.path / "report.html").read_text()
    again = benchmark(quick(run, bundle, tmp_path / "again", variants=["openvino-fp32"], batch_sizes=1, seq_lens=8,
                            eval_samples=0, peer_cache=cache))
    assert again.variants["openvino-fp32"]["build"]["cached"] is True and again.failed == {}


def test_a_peer_that_cannot_be_built_is_reported_with_its_reason(bench_pair, tmp_path, monkeypatch):
    run, bundle = bench_pair("generate")

    def no_builder(name, run, target, threads):
        raise StageError("onnxruntime-genai's builder (int8, block 32) failed (exit 1): no space left")

    monkeypatch.setitem(peers._BUILDERS, "ort-genai", no_builder)
    real = importlib.util.find_spec  # llama-cpp-python missing, whether or not this machine has it
    hidden = {"llama_cpp", "sentencepiece"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    report = benchmark(quick(run, bundle, tmp_path / "report", variants=["pytorch", "ort-genai-int8", "llama.cpp"],
                             prompt_lens=4, new_tokens=2, eval_samples=0))
    assert set(report.failed) == {"ort-genai-int8", "llama.cpp-q8_0", "llama.cpp-q4_0"}
    assert "no space left" in report.failed["ort-genai-int8"]
    assert 'not installed: llama_cpp, sentencepiece; pip install "deployft[llama-cpp]"' in report.failed["llama.cpp-q4_0"]
    assert {r["variant"] for r in report.results} == {"pytorch"}
    assert list(report.variants) == ["pytorch", "ort-genai-int8", "llama.cpp-q8_0", "llama.cpp-q4_0"]
    markdown = (report.path / "report.md").read_text()
    assert "`llama.cpp-q8_0` (llama.cpp, int8): not built; **failed**: build failed: " in markdown


def test_peers_for_the_other_task_or_a_gpu_are_refused_in_one_line(bench_pair, tmp_path):
    run, bundle = bench_pair("generate")
    with pytest.raises(UsageError, match="peer.s. openvino that do not run generate models; peers for this RUN: "
                                         "ort-genai, llama.cpp"):
        benchmark(quick(run, bundle, tmp_path / "report", variants="pytorch,openvino"))
    classify_run, classify_bundle = bench_pair("classify")
    with pytest.raises(UsageError, match="timed on CPU only and --device is cuda"):
        benchmark(quick(classify_run, classify_bundle, tmp_path / "report", variants="openvino", device="cuda"))
    assert not (tmp_path / "report").exists()
    assert peers.expand(("pytorch", "ort-genai", "ort-genai-int8"), "generate") == [
        "pytorch", "ort-genai-int8", "ort-genai-int8-b64", "ort-genai-int4", "ort-genai-int4-b128"]


def test_peer_builds_are_cached_by_the_runs_weights(tmp_path, monkeypatch, bench_pair):
    run, _ = bench_pair("classify")
    calls = []

    def fake(name, run, target, threads):
        calls.append(name)
        target.mkdir(parents=True)

    monkeypatch.setitem(peers._BUILDERS, "openvino", fake)
    first = peers.build_peers(["openvino-fp32"], run, tmp_path, 1)
    second = peers.build_peers(["openvino-fp32"], run, tmp_path, 1)
    assert calls == ["openvino-fp32"] and first["openvino-fp32"]["cached"] is False
    assert second["openvino-fp32"] == {"path": first["openvino-fp32"]["path"], "build_s": None, "cached": True}
    other = shutil.copytree(run, tmp_path / "other")
    (other / "model.safetensors").write_bytes(b"different weights")
    peers.build_peers(["openvino-fp32"], other, tmp_path, 1)
    assert calls == ["openvino-fp32", "openvino-fp32"]


def test_peer_builds_of_sharded_or_bin_runs_are_keyed_by_every_weight_file(tmp_path, monkeypatch):
    """A RUN without a single model.safetensors (shards, PyTorch .bin) still gets its own cache entry: two such
    RUNs with other weights, or another config.json, never share a peer."""
    calls = []

    def fake(name, run, target, threads):
        calls.append(run.name)
        target.mkdir(parents=True)

    def run_folder(name, files):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in {"config.json": '{"model_type": "bert"}', **files}.items():
            (folder / file).write_text(text)
        return folder

    monkeypatch.setitem(peers._BUILDERS, "openvino", fake)
    shards = {"model-00001-of-00002.safetensors": "a", "model-00002-of-00002.safetensors": "b"}
    first = run_folder("shards", shards)
    other_shard = run_folder("other-shard", {**shards, "model-00002-of-00002.safetensors": "c"})
    other_config = run_folder("other-config", shards)
    (other_config / "config.json").write_text('{"model_type": "roberta"}')
    pickled = run_folder("bin", {"pytorch_model.bin": "a"})
    other_pickled = run_folder("bin2", {"pytorch_model.bin": "b"})
    cache = tmp_path / "cache"
    for run in (first, other_shard, other_config, pickled, other_pickled, first):
        peers.build_peers(["openvino-fp32"], run, cache, 1)
    assert calls == ["shards", "other-shard", "other-config", "bin", "bin2"]  # the last `first` is a cache hit
    assert len({p.name for p in cache.iterdir()}) == 5
    assert peers.run_fingerprint(first) == peers.run_fingerprint(run_folder("same", shards))


def test_the_helper_venv_is_made_once_torch_first(tmp_path, monkeypatch):
    commands = []

    def run(command, what):
        commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            (tmp_path / "venv" / "bin").mkdir(parents=True)
            (tmp_path / "venv" / "bin" / "python").write_text("")

    monkeypatch.setattr(genai_venv, "_run", run)
    python = genai_venv.helper_python(tmp_path / "venv")
    assert python == tmp_path / "venv" / "bin" / "python"
    installs = [c[c.index("install") + 2:] for c in commands if "install" in c]
    assert installs == [["torch==2.13.0"], ["onnxruntime-genai==0.18.0", "transformers==5.25.0", "onnx==1.23.2",
                                                   "onnx_ir==1.1.0"]]
    count = len(commands)
    genai_venv.helper_python(tmp_path / "venv")
    assert len(commands) == count
    assert json.loads((tmp_path / "venv" / "deployft-venv.json").read_text())[0] == ["torch==2.13.0"]


def _gqa_run(root):
    """A tiny llama RUN with head size 16 (onnxruntime-genai's GroupQueryAttention needs a multiple of 16) and
    matmuls 128 wide, so weight blocks of 128 fit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    run = make_run("llama", "generate", root / "run", write_rows(root / "data" / "qa.jsonl", qa_rows(60)))
    tokenizer = AutoTokenizer.from_pretrained(run)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(run)
    return run


@pytest.mark.slow
@pytest.mark.skipif(not HAS_GENAI, reason='onnxruntime-genai not installed (pip install "deployft[peers]")')
def test_ort_genai_peers_built_in_the_helper_venv_generate_exactly_n_tokens(tmp_path):
    from deployft.bench.roofline import onnx_weight_bytes
    from deployft.exporter import ExportConfig, export

    run = _gqa_run(tmp_path)
    bundle = export(ExportConfig(run=run, output=tmp_path / "bundle", validate_samples=8, max_accuracy_drop=1e9))
    report = benchmark(quick(run, bundle, tmp_path / "report", variants="pytorch,ort-genai",
                             prompt_lens="4,8", new_tokens=3, eval_samples=4, peer_cache=tmp_path / "peers"))
    assert report.failed == {}
    base = report.variants["pytorch"]["accuracy"]
    assert base["token_agreement"] == 1.0 and base["perplexity"] > 1
    for name, bits, block in (("ort-genai-int8", 8, 32), ("ort-genai-int8-b64", 8, 64), ("ort-genai-int4", 4, 32),
                              ("ort-genai-int4-b128", 4, 128)):
        assert _matmulnbits(Path(report.variants[name]["build"]["path"])) == {(bits, block)}, name
        rows = [r for r in report.results if r["variant"] == name]
        assert len(rows) == 2 and all(len(run["times"]) == run["tokens"] == 3 for r in rows for run in r["runs"])
        # the same function as PyTorch's, quantized: a random model's near-uniform perplexity barely moves, and at
        # 8 bits the greedy tokens stay PyTorch's (a builder fed other weights or tokens would miss both)
        accuracy = report.variants[name]["accuracy"]
        assert accuracy["perplexity"] == pytest.approx(base["perplexity"], rel=0.1 if bits == 8 else 0.25)
        assert accuracy["token_agreement"] >= (0.5 if bits == 8 else 0.1)
        assert report.variants[name]["build"]["build_s"] > 0
    weights = {name: report.variants[name]["weight_bytes_per_token"] for name in ("ort-genai-int8", "ort-genai-int4")}
    assert weights["ort-genai-int8"] == onnx_weight_bytes(Path(report.variants["ort-genai-int8"]["build"]["path"])
                                                          / "model.onnx")
    assert 0 < weights["ort-genai-int4"] < weights["ort-genai-int8"]  # the roofline reads the peer's own file


def _matmulnbits(folder: Path) -> set[tuple[int, int]]:
    """`(bits, block_size)` of every MatMulNBits node of a built onnxruntime-genai model, except its LM head."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    found = set()
    for node in graph.node:
        if node.op_type == "MatMulNBits" and "lm_head" not in node.name:
            attrs = {a.name: a.i for a in node.attribute}
            found.add((attrs.get("bits", 4), attrs["block_size"]))
    return found
