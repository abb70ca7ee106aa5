"""Decoder attention fusion: a Llama export rewritten into GroupQueryAttention (rotary inside), same I/O, same numbers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from conftest import build_tiny_model
from deployft.exporter.decoder_fusion import AttentionShape, attention_shape, fuse_attention, rotary_caches, unsupported_reason
from deployft.runtime.kv_cache import positions_from_mask
from deployft.runtime.padding import ROTARY_IN_ATTENTION, ROTARY_KEY, right_padded, to_left_padding


def _shape(model_dir, model=None) -> AttentionShape:
    from transformers import AutoModelForCausalLM

    cfg = json.loads((model_dir / "config.json").read_text())
    shape, reason = attention_shape(cfg, model or AutoModelForCausalLM.from_pretrained(model_dir).eval())
    assert reason is None
    return shape


def _fused_copy(folder, shape: AttentionShape):
    model = onnx.load(str(folder / "model.onnx"))
    assert fuse_attention(model, shape) == shape.num_layers
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "fused.onnx"))
    return folder / "fused.onnx"


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _step(sess, ids, mask, positions, past):
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feed)))
    return out["logits"], {n.replace("present", "past_key_values"): v for n, v in out.items() if n.startswith("present")}


def _decode(sess, steps=3, protocol=True):
    """A left-padded batch of 2 (row 0 has 3 pads), a prompt step then `steps` one-token steps. A file whose
    metadata says it rotates inside its attention gets its prompt step right-padded, as the runtime feeds it
    (`protocol`; False feeds it left-padded like any other file)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 60, size=(2, 7)).astype(np.int64)
    mask = np.ones((2, 7), dtype=np.int64)
    mask[0, :3] = 0
    ids[0, :3] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    past = {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
            if i.name.startswith("past_key_values.")}
    if protocol and sess.get_modelmeta().custom_metadata_map.get(ROTARY_KEY) == ROTARY_IN_ATTENTION:
        right_ids, right_mask, lengths = right_padded(ids, mask, 0)
        logits, past = _step(sess, right_ids, right_mask, positions_from_mask(right_mask), past)
        logits = to_left_padding(logits, lengths, axis=1)
        past = {name: to_left_padding(value, lengths, axis=2) for name, value in past.items()}
    else:
        logits, past = _step(sess, ids, mask, positions, past)
    outputs = [logits[0, 3:], logits[1]]
    for _ in range(steps):
        next_ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        logits, past = _step(sess, next_ids, mask, positions, past)
        outputs.append(logits[:, -1])
    return outputs, past


def test_fused_llama_keeps_inputs_outputs_and_numbers(tiny_onnx, tiny_model):
    folder = tiny_onnx("llama")
    shape = _shape(tiny_model("llama"))
    fused = _fused_copy(folder, shape)
    before, after = onnx.load(str(folder / "model.onnx")), onnx.load(str(fused))
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    ops = Counter(n.op_type for n in after.graph.node)
    assert ops["GroupQueryAttention"] == 2 and ops["RotaryEmbedding"] == 0
    assert all(a.i == 1 for n in after.graph.node if n.op_type == "GroupQueryAttention"
               for a in n.attribute if a.name == "do_rotary")
    assert {p.key: p.value for p in after.metadata_props}[ROTARY_KEY] == ROTARY_IN_ATTENTION
    assert ops["Softmax"] == 0 and len(after.graph.node) < len(before.graph.node) / 3
    ours, ours_past = _decode(_session(fused))
    theirs, their_past = _decode(_session(folder / "model.onnx"))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for name, value in their_past.items():  # real (unpadded) cache columns agree
        np.testing.assert_allclose(ours_past[name][1], value[1], atol=1e-4)
        np.testing.assert_allclose(ours_past[name][0][:, 3:], value[0][:, 3:], atol=1e-4)


def test_a_left_padded_first_step_is_why_the_file_is_marked(tiny_onnx, tiny_model):
    """Fed left-padded on its first step, the op rotates the padded row by its column: its cached keys (and so
    its later steps) differ from the export's. This is what the metadata tells the runtime to avoid."""
    folder = tiny_onnx("llama")
    fused = _fused_copy(folder, _shape(tiny_model("llama")))
    theirs, their_past = _decode(_session(folder / "model.onnx"))
    ours, ours_past = _decode(_session(fused), protocol=False)
    key = "past_key_values.0.key"
    assert np.abs(ours_past[key][0][:, 3:] - their_past[key][0][:, 3:]).max() > 1e-2  # the padded row
    np.testing.assert_allclose(ours_past[key][1], their_past[key][1], atol=1e-4)  # the unpadded row
    assert max(np.abs(a - b).max() for a, b in zip(ours[2:], theirs[2:])) > 1e-3


def test_scaled_rotary_is_taken_from_the_model(tiny_model, tmp_path):
    """Linear rope scaling changes every position's angle: the fused graph must still match the export."""
    from transformers import AutoModelForCausalLM

    from deployft.exporter.onnx_export import export_onnx
    from deployft.exporter.source import read_source

    source = tiny_model("llama")
    plain_cos, _ = rotary_caches(AutoModelForCausalLM.from_pretrained(source).eval(), 128)
    cfg = json.loads((source / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (source / "config.json").write_text(json.dumps(cfg))
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    folder = tmp_path / "scaled"
    export_onnx(read_source(source, "generate"), folder)
    shape = _shape(source, model)
    assert not np.allclose(shape.cos_cache, plain_cos)
    ours, _ = _decode(_session(_fused_copy(folder, shape)))
    theirs, _ = _decode(_session(folder / "model.onnx"))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_biased_projections_and_sliding_windows_fuse_exactly(arch, tmp_path):
    """Qwen2 adds a bias after q/k/v; Mistral's window (4) is shorter than the 7-token prompt + 3 steps."""
    from deployft.exporter.onnx_export import export_onnx
    from deployft.exporter.source import read_source

    source = build_tiny_model(arch, tmp_path / "model")
    export_onnx(read_source(source, "generate"), tmp_path / "onnx")
    shape = _shape(source)
    assert shape.window == (4 if arch == "mistral" else None)
    fused = _fused_copy(tmp_path / "onnx", shape)
    ours, _ = _decode(_session(fused))
    theirs, _ = _decode(_session(tmp_path / "onnx" / "model.onnx"))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)
    model = onnx.load(str(fused))
    rotary = Counter(n.op_type for n in model.graph.node)["RotaryEmbedding"]
    marked = {p.key: p.value for p in model.metadata_props}.get(ROTARY_KEY) == ROTARY_IN_ATTENTION
    # Qwen2's heads of 16 rotate inside the attention; Mistral's heads of 8 cannot, so they keep RotaryEmbedding
    assert (rotary, marked) == ((4, False) if arch == "mistral" else (0, True))


def test_a_biased_projection_without_its_add_is_refused(tmp_path):
    from deployft.exporter.onnx_export import export_onnx
    from deployft.exporter.source import read_source

    source = build_tiny_model("qwen2", tmp_path / "model")
    export_onnx(read_source(source, "generate"), tmp_path / "onnx")
    shape = _shape(source)
    assert shape.qkv_bias
    model = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    add = next(n for n in model.graph.node if n.name == "/model/layers.1/self_attn/k_proj/Add")
    add.name = "/model/layers.1/self_attn/k_proj/renamed"
    with pytest.raises(ValueError, match="layer 1: k_proj has a bias but its Add was not found"):
        fuse_attention(model, shape)


def test_fusion_works_at_an_older_opset(tiny_model, tmp_path):
    """Opset 14: the shared nodes avoid Shape(start, end) and Unsqueeze with an axes input."""
    from deployft.exporter.onnx_export import export_onnx, onnx_opset
    from deployft.exporter.source import read_source

    source = tiny_model("llama")
    export_onnx(read_source(source, "generate"), tmp_path / "onnx", opset=14)
    assert onnx_opset(tmp_path / "onnx" / "model.onnx") == 14
    ours, _ = _decode(_session(_fused_copy(tmp_path / "onnx", _shape(source))))
    theirs, _ = _decode(_session(tmp_path / "onnx" / "model.onnx"))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_external_weights_are_rewritten_not_shared_or_left_behind(tiny_onnx, tiny_model):
    """A copy never shares the plain export's weight file; fusing replaces ORTOptimizer's `.onnx.data` file with
    the fused file's own `_data` (a fused decoder always keeps its weights beside it)."""
    from deployft.exporter.onnx_export import external_files
    from deployft.exporter.optimize import _rewrite

    folder = tiny_onnx("llama")
    plain = folder / "model.onnx"
    onnx.save(onnx.load(str(plain)), str(plain), save_as_external_data=True, location="model.onnx_data",
              size_threshold=0)
    assert external_files(plain) == [folder / "model.onnx_data"]
    target = folder / "model_optimized.onnx"
    _rewrite(plain, target, None)
    assert external_files(target) == [] and (folder / "model.onnx_data").is_file()
    onnx.save(onnx.load(str(target)), str(target), save_as_external_data=True, location="model_optimized.onnx.data",
              size_threshold=0)
    _rewrite(target, target, _shape(tiny_model("llama")))
    assert not (folder / "model_optimized.onnx.data").exists()
    assert external_files(target) == [folder / "model_optimized.onnx_data"]
    ours, _ = _decode(_session(target))
    theirs, _ = _decode(_session(plain))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_a_graph_without_llama_projections_is_refused(tiny_onnx, tiny_model):
    shape = _shape(tiny_model("llama"))
    gpt2 = onnx.load(str(tiny_onnx("gpt2") / "model.onnx"))
    with pytest.raises(ValueError, match="layer 0: expected one q_proj MatMul, found 0"):
        fuse_attention(gpt2, shape)


def test_a_graph_without_the_cache_inputs_is_refused(tiny_onnx, tiny_model):
    shape = _shape(tiny_model("llama"))
    model = onnx.load(str(tiny_onnx("llama") / "model.onnx"))
    for item in list(model.graph.input):
        if item.name == "past_key_values.1.value":
            item.name = "past.1.value"
    with pytest.raises(ValueError, match="layer 1: the graph has no 'past_key_values.1.value'"):
        fuse_attention(model, shape)


@pytest.mark.parametrize("config, reason", [
    ({"model_type": "gpt2"}, "model type 'gpt2' is not one deployft fuses"),
    ({"model_type": "llama", "pretraining_tp": 2}, "pretraining_tp"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "differ per layer"),
    ({"model_type": "llama"}, None),
    ({"model_type": "llama", "attention_bias": True}, None),
    ({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 4096}, None),
    ({"model_type": "mistral", "sliding_window": 4096}, None),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "longrope", "factor": 4.0},
      "original_max_position_embeddings": 32}, "short factors up to 32 tokens"),
    ({"model_type": "llama", "hidden_size": 48, "num_attention_heads": 4},
     "head size 12 is not a multiple of 8 (GroupQueryAttention)"),
    ({"model_type": "mistral", "hidden_size": 32, "num_attention_heads": 4}, None),  # heads of 8: RotaryEmbedding
])
def test_unsupported_models_say_why(config, reason):
    """The config-level refusals; attention_shape adds the rotary checks (partial rotary, untabulable module)."""
    found = unsupported_reason(config)
    assert found is None if reason is None else reason in found


def test_rotary_caches_are_the_models_cos_and_sin(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).eval()
    cos, sin = rotary_caches(model, 128)
    assert cos.shape == sin.shape == (128, 8) and cos.dtype == np.float32
    ref_cos, ref_sin = model.model.rotary_emb(torch.zeros(1), torch.arange(128)[None])
    np.testing.assert_allclose(cos, ref_cos[0, :, :8].numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, ref_sin[0, :, :8].numpy(), atol=1e-6)


def test_optimize_fuses_a_decoder_and_can_write_external_weights(tiny_onnx, tiny_model, monkeypatch):
    from deployft.exporter.optimize import optimize

    monkeypatch.setattr("deployft.exporter.onnx_export.EXTERNAL_DATA_BYTES", 0)
    folder = tiny_onnx("llama")
    path, report = optimize(folder / "model.onnx", decoder=True, attention=_shape(tiny_model("llama")))
    assert report["after"]["GroupQueryAttention"] == 2 and "fused by deployft" in report["notes"][0]
    assert (folder / "model_optimized.onnx_data").is_file()
    ours, _ = _decode(_session(path))
    theirs, _ = _decode(_session(folder / "model.onnx"))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)


class _Decoder:
    def __init__(self, width):
        import torch

        def rotary(probe, positions):
            angles = positions[..., None].float() * torch.ones(width // 2)
            return torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

        self.rotary_emb = rotary if width else None


class _Model:
    def __init__(self, width):
        self.decoder = _Decoder(width)

    def get_decoder(self):
        return self.decoder


@pytest.mark.parametrize(("width", "reason"), [
    (8, None),
    (4, "its rotary embedding covers 4 of 8 head dimensions (partial rotary)"),
    (0, "its rotary embedding cannot be tabulated"),
])
def test_attention_shape_checks_the_rotary_module(width, reason):
    config = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32,
              "num_hidden_layers": 2, "max_position_embeddings": 16}
    shape, found = attention_shape(config, _Model(width))
    if reason is None:
        assert found is None and shape.cos_cache.shape == (16, 4) and shape.num_kv_heads == 2 and not shape.qkv_bias
    else:
        assert shape is None and found.startswith(reason)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_optimized_decoders_update_their_cache_in_place_like_the_copying_cache(arch, tmp_path):
    """optimize() marks the fused file; its shared, in-place cache gives the copying cache's logits on a left-padded
    batch: Qwen2's biased projections, and Mistral's window (4) shorter than the 7-token prompt + 5 steps."""
    from deployft.exporter.onnx_export import export_onnx
    from deployft.exporter.optimize import optimize
    from deployft.exporter.source import read_source
    from deployft.runtime.generation import KVDecoder
    from deployft.runtime.kv_cache import SHARED_CACHE, SHARED_CACHE_KEY, CopyingCache, SharedCache

    source = build_tiny_model(arch, tmp_path / "model")
    export_onnx(read_source(source, "generate"), tmp_path / "onnx")
    path, report = optimize(tmp_path / "onnx" / "model.onnx", decoder=True, attention=_shape(source))
    assert any("marked shareable" in note for note in report["notes"])
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}[SHARED_CACHE_KEY] == SHARED_CACHE
    decoder = KVDecoder(_session(path), "cpu", [1], 0, None)
    plain = KVDecoder(_session(tmp_path / "onnx" / "model.onnx"), "cpu", [1], 0, None)
    assert decoder.shares_cache and not plain.shares_cache
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 60, size=(2, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, :3], ids[0, :3] = 0, 0
    shared, copying = SharedCache(decoder, ids, mask, 6), CopyingCache(decoder, ids, mask)
    logits = [(shared.prefill(), copying.prefill())]
    for step in range(5):
        tokens = logits[-1][1].argmax(axis=-1)
        logits.append((shared.advance(tokens), copying.advance(tokens)))
    for ours, theirs in logits:
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert shared.total == 12


LONGROPE = {"rope_type": "longrope", "factor": 4.0, "short_factor": [1.0] * 8,
            "long_factor": [float(f) for f in np.linspace(1.0, 16.0, 8)]}


@pytest.mark.parametrize("overrides, note", [
    ({"rope_scaling": LONGROPE, "original_max_position_embeddings": 32}, "rope_scaling 'longrope'"),
    ({"head_dim": 12}, "head size 12 is not a multiple of 8 (GroupQueryAttention)"),
])
def test_an_attention_the_fused_ops_cannot_run_exactly_is_exported_unfused(overrides, note, tmp_path, caplog):
    """Longrope switches rotary tables at a length (one fused table is wrong on one side of it); ONNX Runtime's
    GroupQueryAttention runs heads of 8k only. Both export unfused, the manifest saying why."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import _bpe_tokenizer, _tiny_config
    from deployft.exporter import ExportConfig, export

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer(None)
    config = _tiny_config("llama", tokenizer, 2)
    for key, value in overrides.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    with caplog.at_level("WARNING", logger="deployft"):
        bundle = export(ExportConfig(run=tmp_path / "model", output=tmp_path / "bundle", task="generate",
                                     quantize="none", validate_samples=4))
    manifest = json.loads((bundle / "deployft.json").read_text())
    assert any(f"attention is not fused: {note}" in line for line in manifest["fusion"]["notes"]), manifest["fusion"]
    assert manifest["fusion"]["after"].get("GroupQueryAttention", 0) == 0
    assert ("past 32 tokens (original_max_position_embeddings) model.onnx keeps the short factors" in caplog.text
            ) == ("rope_scaling" in overrides)
