"""Decode-step passes: packed sibling projections and the optional last-position LM head, same numbers as before."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from deployft.exporter.decoder_fusion import attention_shape, fuse_attention
from deployft.exporter.decoder_graph import (LOGITS_TO_KEEP, add_logits_to_keep, attention_reads_packed_qkv, lm_head,
                                            pack_projections)

LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 16


@pytest.fixture
def fused_llama(tiny_onnx, tiny_model):
    """The tiny llama's export with deployft's attention fusion (the graph the passes run on), and its folder."""
    from transformers import AutoModelForCausalLM

    folder, model_dir = tiny_onnx("llama"), tiny_model("llama")
    cfg = json.loads((model_dir / "config.json").read_text())
    shape, reason = attention_shape(cfg, AutoModelForCausalLM.from_pretrained(model_dir).eval())
    assert reason is None
    model = onnx.load(str(folder / "model.onnx"))
    fuse_attention(model, shape)
    return model, folder


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, ids, mask, past=None, keep=None):
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)[:, -ids.shape[1]:].astype(np.int64)
    past = past or {f"past_key_values.{i}.{k}": np.zeros((ids.shape[0], KV_HEADS, 0, HEAD_DIM), np.float32)
                    for i in range(LAYERS) for k in ("key", "value")}
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    if keep is not None:
        feed[LOGITS_TO_KEEP] = np.array(keep, dtype=np.int64)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feed)))
    return out["logits"], {n.replace("present", "past_key_values"): v for n, v in out.items() if n != "logits"}


def _batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 60, size=(2, 6)).astype(np.int64)
    mask = np.ones((2, 6), dtype=np.int64)
    mask[0, :2], ids[0, :2] = 0, 0
    return ids, mask


def test_packing_groups_qkv_and_gate_up_and_keeps_every_number(fused_llama):
    model, _ = fused_llama
    reference = _session(model)
    head = lm_head(model)
    assert head is not None
    before = Counter(n.op_type for n in model.graph.node)["MatMul"]
    packed = pack_projections(model, exclude={head})
    onnx.checker.check_model(model)
    assert sorted(len(group) for group in packed) == [2, 2, 3, 3]  # q/k/v and gate/up of each of the 2 layers
    assert all(any("q_proj" in n for n in g) == any("v_proj" in n for n in g) for g in packed)
    assert Counter(n.op_type for n in model.graph.node)["MatMul"] == before - 6
    ids, mask = _batch()
    ours, ours_past = _run(_session(model), ids, mask)
    theirs, their_past = _run(reference, ids, mask)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    for name in their_past:
        np.testing.assert_allclose(ours_past[name], their_past[name], atol=1e-5)


def _as_k_q_v(model) -> None:
    """Put every packed q/k/v group in k, q, v order (as a real export's node order packs them): weight columns,
    split sizes and outputs together, so the graph computes the same."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for split in [n for n in model.graph.node if n.op_type == "Split" and "q_proj" in n.name]:
        weight, sizes = weights[producers[split.input[0]].input[1]], weights[split.input[1]]
        columns, widths = numpy_helper.to_array(weight), numpy_helper.to_array(sizes)
        bounds = np.cumsum([0, *widths])
        parts = [columns[:, bounds[i]:bounds[i + 1]] for i in range(3)]
        weight.CopyFrom(numpy_helper.from_array(np.concatenate([parts[1], parts[0], parts[2]], axis=1), weight.name))
        sizes.CopyFrom(numpy_helper.from_array(widths[[1, 0, 2]], sizes.name))
        outputs = list(split.output)
        del split.output[:]
        split.output.extend([outputs[1], outputs[0], outputs[2]])


@pytest.mark.parametrize("order", ["q, k, v", "k, q, v"])
def test_attention_reads_the_packed_qkv_and_keeps_every_number(fused_llama, order):
    model, _ = fused_llama
    pack_projections(model, exclude={lm_head(model)})
    if order == "k, q, v":
        _as_k_q_v(model)
    reference = _session(model)
    assert attention_reads_packed_qkv(model) == LAYERS
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Split"] == LAYERS  # gate/up only
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type == "GroupQueryAttention"):
        assert list(node.input[1:3]) == ["", ""] and "q_proj+k_proj+v_proj" in producers[node.input[0]].name
    assert attention_reads_packed_qkv(model) == 0  # nothing left to fold
    rng = np.random.default_rng(2)  # one row: a first step without padding, then a decode step
    ids = rng.integers(3, 60, size=(1, 6)).astype(np.int64)
    mask = np.ones((1, 6), dtype=np.int64)
    ours, ours_past = _run(_session(model), ids, mask)
    theirs, their_past = _run(reference, ids, mask)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    step = np.array([[7]], dtype=np.int64)
    mask = np.ones((1, 7), dtype=np.int64)
    ours, _ = _run(_session(model), step, mask, ours_past)
    theirs, _ = _run(reference, step, mask, their_past)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_split_with_other_readers_is_kept(fused_llama):
    from onnx import helper

    model, _ = fused_llama
    pack_projections(model, exclude={lm_head(model)})
    split = next(n for n in model.graph.node if n.op_type == "Split" and "q_proj" in n.name)
    model.graph.node.append(helper.make_node("Identity", [split.output[1]], ["extra"], name="extra_reader"))
    assert attention_reads_packed_qkv(model) == LAYERS - 1


def test_logits_to_keep_defaults_to_every_position_and_one_gives_the_last(fused_llama):
    model, _ = fused_llama
    reference = _session(model)
    add_logits_to_keep(model, lm_head(model))
    onnx.checker.check_model(model)
    sess = _session(model)
    assert LOGITS_TO_KEEP not in {i.name for i in sess.get_inputs()}  # optional: callers that do not know it work
    ids, mask = _batch()
    full, past = _run(reference, ids, mask)
    default, _ = _run(sess, ids, mask)
    last, kept_past = _run(sess, ids, mask, keep=1)
    assert default.shape == full.shape and last.shape == (2, 1, full.shape[-1])
    np.testing.assert_allclose(default, full, atol=1e-6)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6)
    # the next decode step from the kept cache matches the reference's
    step_ids, step_mask = np.array([[5], [7]], np.int64), np.ones((2, 7), np.int64)
    step_mask[0, :2] = 0
    ours, _ = _run(sess, step_ids, step_mask, kept_past, keep=1)
    theirs, _ = _run(reference, step_ids, step_mask, past)
    np.testing.assert_allclose(ours[:, -1], theirs[:, -1], atol=1e-5)


def test_logits_to_keep_refuses_a_missing_head_or_a_second_input(fused_llama):
    model, _ = fused_llama
    with pytest.raises(ValueError, match="no LM head MatMul"):
        add_logits_to_keep(model, "/not/a/node")
    add_logits_to_keep(model, lm_head(model))
    with pytest.raises(ValueError, match="already has an input"):
        add_logits_to_keep(model, lm_head(model))


def test_lm_head_is_the_matmul_behind_the_logits(fused_llama):
    model, _ = fused_llama
    producers = {o: n for n in model.graph.node for o in n.output}
    head = lm_head(model)
    assert producers["logits"].name == head or producers[producers["logits"].input[0]].name == head


def test_packed_nodes_keep_their_layer_in_the_name(fused_llama):
    from deployft.exporter.quantize import sensitive_nodes

    model, folder = fused_llama
    pack_projections(model, exclude={lm_head(model)})
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    assert "/model/layers.0/self_attn/q_proj+k_proj+v_proj/MatMul" in matmuls
    assert "/model/layers.1/mlp/gate_proj+up_proj/MatMul" in matmuls
    onnx.save(model, str(folder / "packed.onnx"))
    picked = sensitive_nodes(folder / "packed.onnx", num_layers=2)  # the int8 remedy's first/last layer rule
    assert "/model/layers.0/self_attn/q_proj+k_proj+v_proj/MatMul" in picked
    assert "/model/layers.1/mlp/gate_proj+up_proj/MatMul" in picked


def test_packed_name_falls_back_when_members_share_no_folder():
    from deployft.exporter.decoder_graph import packed_name

    assert packed_name(["a", "b"], 3) == "/deployft/decode/packed_3"
    assert packed_name(["/m/x/q/MatMul", "/m/x/q/MatMul_1"], 0) == "/deployft/decode/packed_0"
    assert packed_name(["/m/l.2/attn/q/MatMul", "/m/l.2/attn/k/MatMul"], 0) == "/m/l.2/attn/q+k"
