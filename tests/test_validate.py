"""Validation against PyTorch: logit parity, top-1 agreement, task metrics, greedy continuations."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deployft.quantize import quantize_dynamic_int8
from deployft.validate import OnnxDecoder, classify_metrics, compare, reference, session


def _model(folder, task):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "classify" else AutoModelForCausalLM
    return cls.from_pretrained(folder).eval()


def _sequences(n, vocab=250, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(rng.randint(3, 20))] for _ in range(n)]


def test_classify_metrics_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    metrics = classify_metrics(logits, [0, 1, 1, 1])
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert classify_metrics(logits, None) == {"accuracy": None, "macro_f1": None}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_fp32_classifier_matches_pytorch(tiny_model, tiny_onnx, arch):
    sequences = _sequences(40)
    labels = [i % 2 for i in range(40)]
    ref = reference("classify", _model(tiny_model(arch), "classify"), sequences, 0, labels)
    report = compare(ref, tiny_onnx(arch) / "model.onnx")
    assert report["samples"] == 40
    assert report["max_abs_logit_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    assert report["accuracy"] == report["accuracy_pytorch"] == ref.metrics["accuracy"]
    assert report["macro_f1"] == report["macro_f1_pytorch"]


def test_a_different_model_is_caught(tiny_model, tiny_onnx):
    import torch

    model = _model(tiny_model("bert"), "classify")
    with torch.no_grad():
        model.classifier.bias += 3.0
    report = compare(reference("classify", model, _sequences(20), 0), tiny_onnx("bert") / "model.onnx")
    assert report["max_abs_logit_diff"] > 2.9


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fp32_generator_matches_pytorch_and_greedy_is_identical(tiny_model, tiny_onnx, arch):
    import torch

    model = _model(tiny_model(arch), "generate")
    sequences = _sequences(8, vocab=390)
    prompts = [s[:5] for s in sequences[:3]]
    ref = reference("generate", model, sequences, 0, prompts=prompts)
    labels = torch.tensor([sequences[0]])
    loss = model(input_ids=labels, labels=labels).loss.item()
    assert reference("generate", model, sequences[:1], 0).metrics["perplexity"] == pytest.approx(np.exp(loss), rel=1e-4)
    report = compare(ref, tiny_onnx(arch) / "model.onnx")
    assert report["max_abs_logit_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    assert report["greedy_identical"] == 1.0 and report["greedy_prompts"] == 3
    assert abs(report["perplexity_increase_pct"]) < 1e-3
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompts[0]]), max_new_tokens=16, do_sample=False,
                                   min_new_tokens=16, pad_token_id=0)
    assert generated[0, 5:].tolist() == ref.greedy[0]


def test_onnx_decoder_cache_loop_equals_full_recompute(tiny_onnx):
    decoder = OnnxDecoder(session(tiny_onnx("llama") / "model.onnx"))
    prompt = [1, 40, 41, 42]
    tokens = decoder.greedy(prompt, 6)
    full = list(prompt)
    for _ in range(6):
        full.append(int(decoder.forward(full)[-1].argmax()))
    assert tokens == full[len(prompt):]


def test_int8_classifier_report(tiny_model, tiny_onnx):
    folder = tiny_onnx("bert")
    quantize_dynamic_int8(folder / "model.onnx", folder / "q.onnx", "avx512_vnni", per_channel=False)
    ref = reference("classify", _model(tiny_model("bert"), "classify"), _sequences(30), 0, [0] * 30)
    report = compare(ref, folder / "q.onnx")
    assert 0 < report["max_abs_logit_diff"] < 0.5
    assert 0.0 <= report["top1_agreement"] <= 1.0


def test_cuda_is_refused_when_onnxruntime_has_none(tiny_onnx):
    import onnxruntime as ort

    from deployft.errors import DeviceError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        session(tiny_onnx("bert") / "model.onnx", "cuda")
