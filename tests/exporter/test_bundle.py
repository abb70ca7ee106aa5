"""The BUNDLE folder: manifest per docs/folders.md, file hashes, model card, Optimum loads it, `info` summary."""

from __future__ import annotations

import pytest

from deployft.exporter.card import info_text, validation_table
from deployft.exporter import ExportConfig, export
from deployft.manifest import read_manifest, sha256_file

FIELDS = {"format_version", "kind", "task", "labels", "max_length", "prompt_format", "model_type", "model_file",
          "variants", "opset", "fusion", "quantization", "accuracy_budget", "guard", "validation", "validation_inputs",
          "generation", "files", "source_run", "versions", "created", "manifest_sha256"}


@pytest.fixture(scope="module")
def bundles(_tiny_run_cache, tmp_path_factory):
    """One int8 classifier bundle and one fp32 generator bundle, shared by this module's read-only tests."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        "bert": export(ExportConfig(run=_tiny_run_cache("bert"), output=root / "bert", quantize="int8",
                                    validate_samples=40, max_accuracy_drop=100)),
        "llama": export(ExportConfig(run=_tiny_run_cache("llama"), output=root / "llama", validate_samples=16)),
    }


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_manifest_has_every_documented_field_and_hashes_match(bundles, arch):
    bundle = bundles[arch]
    manifest = read_manifest(bundle, "bundle")
    assert FIELDS <= set(manifest)
    on_disk = {p.name for p in bundle.iterdir() if p.is_file()} - {"deployft.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle / name)
        assert entry["bytes"] == (bundle / name).stat().st_size
    for required in ("config.json", "tokenizer.json", "README.md", "model.onnx", manifest["model_file"]):
        assert required in manifest["files"]
    assert manifest["source_run"]["weights_sha256"] == sha256_file(manifest["source_run"]["path"] + "/model.safetensors")
    assert manifest["opset"] >= 14
    external = {name: variant["external_data"] for name, variant in manifest["variants"].items()}
    if arch == "llama":  # a decoder's fused and blockwise files keep their weights beside them, whatever the size
        assert external.pop("model.onnx") == [] and external  # Optimum's export stays in one file
        assert external == {name: [f"{name}_data"] for name in external}
    else:  # small models: one file
        assert all(names == [] for names in external.values())


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_an_exported_bundle_passes_its_own_integrity_check(bundles, arch):
    from deployft.manifest import manifest_digest
    from deployft.runtime.integrity import check_bundle

    manifest = read_manifest(bundles[arch], "bundle")
    assert manifest["format_version"] == 2 and manifest["manifest_sha256"] == manifest_digest(manifest)
    assert sorted(check_bundle(bundles[arch], manifest).files) == sorted(manifest["files"])


def test_classifier_manifest_content(bundles):
    manifest = read_manifest(bundles["bert"], "bundle")
    assert manifest["task"] == "classify" and manifest["labels"] == ["negative", "positive"]
    assert manifest["max_length"] == 32 and manifest["generation"] is None
    # the last of the two layers computes only the first position, the one the head reads
    after = manifest["fusion"]["after"]
    assert after["Attention"] == 1 and after["MultiHeadAttention"] == 1
    assert "Attention ×1, MultiHeadAttention ×1" in manifest["fusion"]["summary"]
    notes = manifest["fusion"]["notes"]
    assert any(note.startswith("the last layer computes only the first position") for note in notes)
    q = manifest["quantization"]
    assert q["mode"] == "int8" and q["preset"] in ("avx512_vnni", "avx2", "arm64") and q["remedy"] == "none"


def test_generator_manifest_has_what_a_kv_cache_loop_needs(bundles):
    manifest = read_manifest(bundles["llama"], "bundle")
    assert manifest["generation"]["num_layers"] == 2
    assert manifest["generation"]["num_kv_heads"] == 2 and manifest["generation"]["head_dim"] == 16
    assert manifest["generation"]["eos_token_id"] == [2] and manifest["generation"]["pad_token_id"] == 0
    assert "position_ids" in manifest["generation"]["inputs"]
    assert manifest["prompt_format"]["style"] == "chat"
    assert (bundles["llama"] / "generation_config.json").is_file()
    fusion = manifest["fusion"]
    assert fusion["after"]["GroupQueryAttention"] == 2 and "RotaryEmbedding" not in fusion["after"]
    assert fusion["after"]["Split"] == 2  # gate/up; attention reads the packed q/k/v
    assert "decoder attention fused by deployft" in fusion["notes"][0]
    record = manifest["validation"]["model_optimized.onnx"]["guard"]
    assert record["rows"] == manifest["guard"]["rows"] == 16 and record["passed"] is True
    assert record["perplexity_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert record["perplexity_ratio"] <= record["perplexity_ratio_upper_95"] + 1e-9
    assert record["greedy_token_agreement"] == 1.0 and record["max_perplexity_ratio"] == pytest.approx(1.1)
    assert "only 16 sequences" in manifest["guard"]["warnings"][0]


def test_optimum_loads_the_classifier_bundle_with_pytorch_logits(bundles):
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = read_manifest(bundles["bert"], "bundle")
    tokenizer = AutoTokenizer.from_pretrained(bundles["bert"])
    batch = tokenizer(["the film was great", "the plot was dull and tedious"], padding=True, return_tensors="pt")
    torch_model = AutoModelForSequenceClassification.from_pretrained(manifest["source_run"]["path"]).eval()
    with torch.no_grad():
        expected = torch_model(**batch).logits
    for name in ("model_optimized.onnx", "model_quantized.onnx"):
        ort_model = ORTModelForSequenceClassification.from_pretrained(bundles["bert"], file_name=name)
        logits = ort_model(**batch).logits
        tolerance = 1e-4 if name == "model_optimized.onnx" else 0.05
        assert torch.max(torch.abs(torch.as_tensor(logits) - expected)) <= tolerance


def test_optimum_generates_the_pytorch_tokens_from_the_generator_bundle(bundles):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(bundles["llama"], "bundle")
    tokenizer = AutoTokenizer.from_pretrained(bundles["llama"])
    ids = tokenizer(["what do bees make"], return_tensors="pt")
    torch_model = AutoModelForCausalLM.from_pretrained(manifest["source_run"]["path"]).eval()
    ort_model = ORTModelForCausalLM.from_pretrained(bundles["llama"], file_name=manifest["model_file"])
    kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    expected = torch_model.generate(**ids, **kwargs)
    assert ort_model.generate(**ids, **kwargs).tolist() == expected.tolist()
    # the fused file rotates inside its attention: its card says Optimum takes it one prompt per call
    assert "one prompt per call" in (bundles["llama"] / "README.md").read_text()


def test_the_optimum_caveat_follows_the_deployable_files_own_ops():
    from deployft.exporter.card import optimum_note

    def manifest(ops):
        return {"model_file": "m.onnx", "variants": {"m.onnx": {"ops": ops}}}

    assert optimum_note(manifest({"GroupQueryAttention": 2, "MatMulNBits": 9})).startswith(" (one prompt per call")
    assert optimum_note(manifest({"GroupQueryAttention": 2, "RotaryEmbedding": 4})) == ""  # rotated before it
    assert optimum_note(manifest({"MatMul": 9})) == ""


def test_model_card_and_info_describe_the_deployable_file_itself(bundles):
    card = (bundles["bert"] / "README.md").read_text()
    manifest = read_manifest(bundles["bert"], "bundle")
    assert "model_quantized.onnx" in card and "Attention ×1, MultiHeadAttention ×1" in card
    assert validation_table(manifest) in card
    assert "ORTModelForSequenceClassification" in card and "Attention 0->1" in card
    ops, q = manifest["variants"]["model_quantized.onnx"]["ops"], manifest["quantization"]
    fused = q["quantized_from"] != "model.onnx" and q["recipe"].startswith("fused")  # the kept candidate, measured
    assert ("QAttention" in ops) is fused and "Attention" not in ops  # int8 files hold QAttention, never fp32 Attention
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) + ops.get("QuantizeLinear", 0) > 0
    attention = (f"attention fused (MultiHeadAttention ×1, QAttention ×{ops['QAttention']})" if fused
                 else "attention not fused")
    deployable = f"model_quantized.onnx: int8, {attention}, {sum(ops.values())} nodes ("
    assert deployable in card and f"why this file: {q['choice']}; the fastest of " in card
    assert "Not the deployable file (model_quantized.onnx is; see above)" in card
    text = info_text(bundles["bert"])
    for expected in ("task: classify", "labels: negative, positive", "deployable: model_quantized.onnx",
                     deployable, "fused graph model_optimized.onnx: ", "Attention ×1", "(not the deployable file)",
                     "Attention 0->1", "quantization: int8", "model.onnx", "MB", "| model_quantized.onnx * | int8 |",
                     "accuracy guard:", "rows: 24 (eval rows)"):
        assert expected in text
    llama = info_text(bundles["llama"])
    assert "perplexity" in llama and "quantization: none" in llama
    assert "model_optimized.onnx: fp32, attention fused (GroupQueryAttention ×2)" in llama
    assert "why this file: the fused fp32 graph" in llama and "(not the deployable file)" not in llama
    assert "perplexity ratio 1.0000 over 16 sequences" in llama


def test_op_changes_lists_what_the_optimizer_changed():
    from deployft.exporter.card import op_changes

    fusion = {"before": {"MatMul": 16, "Softmax": 2, "Gather": 5}, "after": {"MatMul": 6, "Attention": 2, "Gather": 5}}
    assert op_changes(fusion) == "MatMul 16->6, Softmax 2->0, Attention 0->2"
    assert op_changes({"before": {"A": 1}, "after": {"A": 1}}) == "unchanged"


def test_validation_table_marks_the_deployable_file():
    manifest = {"task": "classify", "model_file": "b.onnx", "variants": {
        "a.onnx": {"precision": "fp32", "optimized": False,
                   "validation": {"max_abs_logit_diff": 1e-7, "top1_agreement": 1.0, "accuracy": 0.9, "drop": 0.0}},
        "b.onnx": {"precision": "int8", "optimized": True,
                   "validation": {"max_abs_logit_diff": 0.02, "top1_agreement": 0.99, "accuracy": 0.89, "drop": 1.0}}}}
    lines = validation_table(manifest).splitlines()
    assert lines[0].endswith("| bound |") and len(lines) == 4
    assert lines[2].startswith("| a.onnx | fp32 | no | 1e-07 | 1.0000 | 0.9000 |")
    assert lines[3].startswith("| b.onnx * | int8 | yes | 0.0200 | 0.9900 | 0.8900 |")


def test_info_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    from deployft.errors import BundleError

    with pytest.raises(BundleError, match="does not exist"):
        info_text(tmp_path / "nope")
