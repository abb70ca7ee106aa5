"""The last encoder layer computed for the first position only: same logits, fewer rows, and left alone where
the head reads more."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from deployft.exporter import first_position
from deployft.exporter.first_position import FIRST_POSITION, keep_first_position
from deployft.exporter.optimize import ENCODER_FUSIONS_LEFT_OUT, _ort_optimize, op_counts
from deployft.exporter.quantize import sensitive_nodes
from deployft.exporter.recipes import attention_text
from deployft.runtime.session import SessionOptions, create_session


def _fused(tiny_onnx, arch: str):
    """A tiny encoder's plain export and its ORTOptimizer graph (attention fused, nothing rewritten yet)."""
    folder = tiny_onnx(arch)
    target = folder / "fused.onnx"
    _ort_optimize(folder / "model.onnx", target, **ENCODER_FUSIONS_LEFT_OUT)
    return folder / "model.onnx", target


def _logits(path, feeds):
    session, _ = create_session(path, SessionOptions(threads=1))
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _ragged(rows: int = 4, width: int = 9) -> dict:
    rng = np.random.default_rng(1)
    lengths = np.array([width, 5, 2, 7][:rows])
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, 90, (rows, width)) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_the_last_layer_runs_one_query_and_gives_the_same_logits(tiny_onnx, arch):
    plain, fused = _fused(tiny_onnx, arch)
    before = op_counts(fused)
    note = keep_first_position(fused)
    assert note and note.startswith("the last layer computes only the first position")
    after = op_counts(fused)
    assert after["Attention"] == before["Attention"] - 1 and after["MultiHeadAttention"] == 1
    graph = onnx.load(str(fused)).graph
    query = next(n for n in graph.node if n.name.endswith(f"{FIRST_POSITION}/q/MatMul"))
    assert next(n for n in graph.node if query.input[0] in n.output).op_type == "Slice"  # q reads the first row
    keys = next(n for n in graph.node if n.name.endswith(f"{FIRST_POSITION}/k/MatMul"))
    assert keys.input[0] == query.input[0].removesuffix(f"/{FIRST_POSITION}")  # keys read every row
    np.testing.assert_allclose(_logits(fused, _ragged()), _logits(plain, _ragged()), rtol=1e-4, atol=1e-5)


def test_a_head_reading_another_position_is_left_as_it_is(tiny_onnx):
    _, fused = _fused(tiny_onnx, "bert")
    model = onnx.load(str(fused))
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "pooler" in n.output[0])
    index = onnx.numpy_helper.from_array(np.array(1, np.int64), "second_position")
    model.graph.initializer.append(index)
    gather.input[1] = "second_position"
    onnx.save(model, str(fused))
    written = fused.read_bytes()
    assert keep_first_position(fused) is None and fused.read_bytes() == written


def test_a_head_index_from_a_constant_node_of_any_form_is_read(tiny_onnx):
    plain, fused = _fused(tiny_onnx, "bert")
    model = onnx.load(str(fused))
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "pooler" in n.output[0])
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["head_index"], value_int=0))
    gather.input[1] = "head_index"  # a scalar through `value_int`, not a tensor `value`
    onnx.save(model, str(fused))
    assert keep_first_position(fused) is not None
    np.testing.assert_allclose(_logits(fused, _ragged()), _logits(plain, _ragged()), rtol=1e-4, atol=1e-5)


def test_a_last_layer_output_read_elsewhere_keeps_every_position(tiny_onnx):
    _, fused = _fused(tiny_onnx, "bert")
    model = onnx.load(str(fused))
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "pooler" in n.output[0])
    model.graph.output.append(onnx.helper.make_tensor_value_info(gather.input[0], onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(fused))
    assert keep_first_position(fused) is None
    assert "MultiHeadAttention" not in op_counts(fused)


def test_a_rewrite_that_changes_the_logits_is_not_kept(tiny_onnx, monkeypatch, caplog):
    _, fused = _fused(tiny_onnx, "bert")
    real = first_position._rewrite

    def unmasked(model, *args):  # a rewrite that loses the padding mask: padded rows' logits change
        heads = real(model, *args)
        next(n for n in model.graph.node if n.op_type == "MultiHeadAttention").input[4] = ""
        return heads

    monkeypatch.setattr(first_position, "_rewrite", unmasked)
    written = fused.read_bytes()
    with caplog.at_level(logging.WARNING):
        assert keep_first_position(fused) is None
    assert fused.read_bytes() == written and "keeps every position (its outputs differ by up to" in caplog.text
    assert not [p for p in fused.parent.iterdir() if p.name.startswith(".first-position-")]


def test_the_last_layer_in_fp32_keeps_its_first_position_projections(tiny_onnx):
    _, fused = _fused(tiny_onnx, "bert")
    keep_first_position(fused)
    last = sensitive_nodes(fused, 2, ("last",))
    assert sorted(n.rsplit("/", 2)[-2] for n in last if FIRST_POSITION in n) == ["k", "q", "v"]
    assert all("layer.1/" in n for n in last) and not any(n.startswith("Attention") for n in last)
    assert "Attention_0" in sensitive_nodes(fused, 2, ("first",))


def test_candidates_say_what_precision_the_first_position_attention_reads():
    ops = {"QAttention": 5, "MultiHeadAttention": 1, "MatMulInteger": 20}
    text = attention_text(ops, {})
    assert text == ("its fused attention quantized (QAttention ×5), the last layer's first position in "
                    "MultiHeadAttention ×1 over int8 q/k/v projections")
    kept = attention_text({"Attention": 1, "MultiHeadAttention": 1}, {}, [f"x/{FIRST_POSITION}/q/MatMul"])
    assert kept == ("its fused attention kept in fp32 (Attention ×1), the last layer's first position in "
                    "MultiHeadAttention ×1 over fp32 q/k/v projections")
    assert attention_text({"MultiHeadAttention": 1}, {}) == (
        "the last layer's first position in MultiHeadAttention ×1 over int8 q/k/v projections")


def test_optimize_keeps_every_position_when_asked(tiny_onnx):
    """Export asks for the rewrite on CPU targets only (`--device cuda` keeps every position, not validated there)."""
    from deployft.exporter.optimize import optimize

    _, report = optimize(tiny_onnx("bert") / "model.onnx", decoder=False, first_position=False)
    assert report["first_position"] is False and "MultiHeadAttention" not in report["after"]
    assert not any(note.startswith("the last layer computes only") for note in report["notes"])
