"""Validation against PyTorch: logit parity, top-1 agreement, task metrics, greedy continuations, all run through
the runtime's own session, classifier call and decoder."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deployft.exporter.quantize import quantize_dynamic_int8
from deployft.exporter.samples import Samples
from deployft.exporter.source import read_source
from deployft.exporter.validate import compare, reference


def _reference(folder, task, sequences, labels=None, prompts=(), model=None):
    from transformers import AutoTokenizer

    source = read_source(folder, task)
    model = model or _model(folder, task)
    samples = Samples(sequences, labels, [[1] * len(s) for s in sequences], list(prompts))
    return reference(source, model, AutoTokenizer.from_pretrained(folder), samples)


def _model(folder, task):
    from deployft.tasks import get_task

    return get_task(task).model_class().from_pretrained(folder).eval()


def _sequences(n, vocab=250, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(rng.randint(3, 20))] for _ in range(n)]


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_fp32_classifier_matches_pytorch(tiny_model, tiny_onnx, arch):
    labels = [i % 2 for i in range(40)]
    ref = _reference(tiny_model(arch), "classify", _sequences(40), labels)
    report = compare(ref, tiny_onnx(arch) / "model.onnx")
    assert report["samples"] == 40
    assert report["max_abs_logit_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    assert report["accuracy"] == report["accuracy_pytorch"] == ref.metrics["accuracy"]
    assert report["macro_f1"] == report["macro_f1_pytorch"]


def test_a_different_model_is_caught(tiny_model, tiny_onnx):
    import torch

    folder = tiny_model("bert")
    model = _model(folder, "classify")
    with torch.no_grad():
        model.classifier.bias += 3.0
    report = compare(_reference(folder, "classify", _sequences(20), model=model),
                     tiny_onnx("bert") / "model.onnx")
    assert report["max_abs_logit_diff"] > 2.9


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fp32_generator_matches_pytorch_and_greedy_is_identical(tiny_model, tiny_onnx, arch):
    import torch

    folder = tiny_model(arch)
    model = _model(folder, "generate")
    sequences = _sequences(8, vocab=390)
    prompts = [s[:5] for s in sequences[:3]]
    ref = _reference(folder, "generate", sequences, prompts=prompts, model=model)
    labels = torch.tensor([sequences[0]])
    loss = model(input_ids=labels, labels=labels).loss.item()
    one = _reference(folder, "generate", sequences[:1], model=model)
    assert one.metrics["perplexity"] == pytest.approx(np.exp(loss), rel=1e-4)  # every target: transformers' loss
    report = compare(ref, tiny_onnx(arch) / "model.onnx")
    assert report["max_abs_logit_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    assert report["greedy_identical"] == 1.0 and report["greedy_prompts"] == 3
    assert abs(report["perplexity_increase_pct"]) < 1e-3
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompts[0]]), max_new_tokens=16, do_sample=False,
                                   min_new_tokens=16, pad_token_id=0)
    assert generated[0, 5:].tolist() == ref.greedy[0]


def test_generator_validation_runs_the_runtime_decoder(tiny_model, tiny_onnx, monkeypatch):
    """Export validation and Predictor share one decoding loop: a change to the runtime's decoder shows here."""
    from deployft.runtime import generation

    calls = []

    class Spy(generation.KVDecoder):
        def iter_batch(self, *args, **kwargs):
            calls.append("iter_batch")
            for tokens in super().iter_batch(*args, **kwargs):
                yield (tokens + 1) % 390  # a decoder that is off by one token

        def full_logits(self, ids, mask):
            calls.append("full_logits")
            return super().full_logits(ids, mask)

    monkeypatch.setattr(generation, "KVDecoder", Spy)
    sequences = _sequences(4, vocab=390)
    ref = _reference(tiny_model("llama"), "generate", sequences, prompts=[s[:5] for s in sequences[:2]])
    report = compare(ref, tiny_onnx("llama") / "model.onnx")
    assert "iter_batch" in calls and "full_logits" in calls
    assert report["greedy_identical"] == 0.0


def test_greedy_continuations_stop_at_the_models_positions(tiny_model, tiny_onnx):
    """A prompt 8 tokens short of the position table: 9 greedy tokens (the last never fed back), on the fused file
    too, whose rotary table ends there."""
    import json

    import onnx

    from deployft.exporter.decoder_fusion import attention_shape, fuse_attention

    folder, files = tiny_model("llama"), tiny_onnx("llama")
    model = _model(folder, "generate")
    config = json.loads((folder / "config.json").read_text())
    shape, _ = attention_shape(config, model)
    fused = onnx.load(str(files / "model.onnx"))
    fuse_attention(fused, shape)
    onnx.save(fused, str(files / "fused.onnx"))
    prompt = _sequences(1, vocab=390)[0] * 20
    prompt = prompt[:config["max_position_embeddings"] - 8]
    ref = _reference(folder, "generate", _sequences(2, vocab=390), prompts=[prompt], model=model)
    assert len(ref.greedy[0]) == 9
    for name in ("model.onnx", "fused.onnx"):
        report = compare(ref, files / name)
        assert report["greedy_identical"] == 1.0


def test_int8_classifier_report(tiny_model, tiny_onnx):
    folder = tiny_onnx("bert")
    quantize_dynamic_int8(folder / "model.onnx", folder / "q.onnx", "avx512_vnni", per_channel=False)
    ref = _reference(tiny_model("bert"), "classify", _sequences(30), [0] * 30)
    report = compare(ref, folder / "q.onnx")
    assert 0 < report["max_abs_logit_diff"] < 0.5
    assert report["top1_agreement"] >= 0.8  # the tiny model's logits barely move under int8


def test_cuda_is_refused_when_onnxruntime_has_none(tiny_model, tiny_onnx):
    import onnxruntime as ort

    from deployft.errors import DeviceError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    ref = _reference(tiny_model("bert"), "classify", _sequences(4))
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        compare(ref, tiny_onnx("bert") / "model.onnx", "cuda")
