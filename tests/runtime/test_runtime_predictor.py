"""Loading a BUNDLE and classifying: parity with PyTorch, batching, truncation, threads, every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from deployft.errors import BundleError, UsageError
from deployft.runtime import Prediction, Predictor
from conftest import sentiment_rows

TEXTS = [r["text"] for r in sentiment_rows(40, seed=3)]


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "bundle-copy")


def _torch_probs(bundle, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = json.loads((bundle / "deployft.json").read_text())["source_run"]["path"]
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    batch = AutoTokenizer.from_pretrained(source)(texts, padding=True, truncation=True, max_length=32,
                                                  return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**batch).logits, dim=-1).numpy()


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_predict_matches_pytorch(runtime_bundle, arch):
    bundle = runtime_bundle(arch)
    predictor = Predictor.load(bundle)
    predictions = predictor.predict(TEXTS, batch_size=7)
    expected = _torch_probs(bundle, TEXTS)
    ours = np.array([[p.scores[lab] for lab in predictor.labels] for p in predictions])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert [p.label for p in predictions] == [predictor.labels[i] for i in expected.argmax(axis=1)]


def test_prediction_fields(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("bert"))
    prediction = predictor.predict("the film was great")
    assert isinstance(prediction, Prediction)
    assert list(prediction.scores) == predictor.labels == ["negative", "positive"]
    assert prediction.score == max(prediction.scores.values())
    assert prediction.label == max(prediction.scores, key=prediction.scores.get)
    assert sum(prediction.scores.values()) == pytest.approx(1.0)


def test_batch_size_and_order_do_not_change_results(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("bert"))
    one_by_one = [predictor.predict(t) for t in TEXTS]
    for batch_size in (1, 5, 64):
        batched = predictor.predict(TEXTS, batch_size=batch_size)
        assert [p.label for p in batched] == [p.label for p in one_by_one]
        np.testing.assert_allclose([p.score for p in batched], [p.score for p in one_by_one], atol=1e-5)


def test_empty_list_empty_string_and_long_text(runtime_bundle, caplog):
    predictor = Predictor.load(runtime_bundle("roberta"))
    assert predictor.predict([]) == []
    assert isinstance(predictor.predict(""), Prediction)
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        long = predictor.predict(["the film was great " * 300, "short", "dull " * 100])
    assert len(long) == 3
    assert "2 of 3 input(s) longer than 32 tokens were truncated" in caplog.text


def test_forward_returns_logits(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("bert"))
    ids, mask = predictor.codec.pad(predictor.codec.encode(TEXTS[:4]), side="right")
    logits = predictor.forward(ids, mask)
    assert logits.shape == (4, 2)
    np.testing.assert_allclose(logits, predictor.forward(ids, mask))


def test_threads_share_one_predictor(runtime_bundle):
    from concurrent.futures import ThreadPoolExecutor

    predictor = Predictor.load(runtime_bundle("bert"), threads=1)
    alone = [predictor.predict(TEXTS[i:i + 5]) for i in range(0, 40, 5)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda i: predictor.predict(TEXTS[i:i + 5]), range(0, 40, 5)))
    assert together == alone


def test_load_attributes_and_model_file_variant(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("bert"), model_file="model_int8.onnx", threads=2)
    assert (predictor.task, predictor.device, predictor.model_file) == ("classify", "cpu", "model_int8.onnx")
    assert predictor.providers == ["CPUExecutionProvider"]
    assert predictor.manifest["kind"] == "bundle"
    assert predictor.predict("the film was great").label in predictor.labels


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Predictor.load(tmp_path / "nope")


def test_newer_format_version_is_refused(runtime_bundle, tmp_path):
    bundle = _copy(runtime_bundle("bert"), tmp_path)
    manifest = json.loads((bundle / "deployft.json").read_text())
    (bundle / "deployft.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99, newer than"):
        Predictor.load(bundle)


def test_modified_model_file_is_refused(runtime_bundle, tmp_path):
    bundle = _copy(runtime_bundle("bert"), tmp_path)
    with open(bundle / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"model.onnx was modified after export"):
        Predictor.load(bundle)
    Predictor.load(bundle, model_file="model_int8.onnx")  # the untouched variant still loads


def test_unknown_model_file(runtime_bundle):
    with pytest.raises(BundleError, match="model file nope.onnx not found.*model_int8.onnx"):
        Predictor.load(runtime_bundle("bert"), model_file="nope.onnx")


@pytest.mark.parametrize("kwargs, match", [({"device": "tpu"}, "device must be"), ({"threads": 0}, "threads")])
def test_bad_load_options(runtime_bundle, kwargs, match):
    with pytest.raises(UsageError, match=match):
        Predictor.load(runtime_bundle("bert"), **kwargs)


@pytest.mark.parametrize("texts", [None, 3, ["ok", None], {"text": "a"}])
def test_bad_texts(runtime_bundle, texts):
    predictor = Predictor.load(runtime_bundle("bert"))
    with pytest.raises(ValueError, match="predict"):
        predictor.predict(texts)


def test_bad_batch_size(runtime_bundle):
    with pytest.raises(ValueError, match="batch_size"):
        Predictor.load(runtime_bundle("bert")).predict(["a"], batch_size=0)


def test_generation_calls_on_a_classifier_are_refused(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("bert"))
    for call in (lambda: predictor.generate("hi"), lambda: next(predictor.stream("hi")),
                 lambda: next(predictor.iter_token_ids([1, 2]))):
        with pytest.raises(ValueError, match="needs a generate bundle.*call predict"):
            call()


def test_import_runtime_pulls_in_no_torch(runtime_bundle):
    code = ("import sys, deployft.runtime, deployft.runtime.files, deployft.cli.predict\n"
            "from deployft.runtime import Predictor\n"
            f"p = Predictor.load({str(runtime_bundle('bert'))!r})\n"
            "p.predict('the film was great')\n"
            f"g = Predictor.load({str(runtime_bundle('llama'))!r})\n"
            "g.generate('hi', max_new_tokens=3)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'optimum', 'datasets'))\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundle_validated_for_another_device_is_logged(runtime_bundle, tmp_path, caplog):
    from deployft.manifest import write_manifest

    bundle = _copy(runtime_bundle("bert"), tmp_path)
    manifest = json.loads((bundle / "deployft.json").read_text())
    write_manifest(bundle, {**manifest, "device": "cuda"})  # as an export for cuda stamps it
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        Predictor.load(bundle)
    assert "validated for cuda but runs on cpu" in caplog.text


def test_a_manifest_edited_by_hand_is_refused_not_logged(runtime_bundle, tmp_path):
    bundle = _copy(runtime_bundle("bert"), tmp_path)
    manifest = json.loads((bundle / "deployft.json").read_text())
    (bundle / "deployft.json").write_text(json.dumps({**manifest, "labels": ["positive", "negative"]}))
    with pytest.raises(BundleError, match=r"deployft.json was modified after export \(manifest_sha256 does not match"):
        Predictor.load(bundle)


def test_an_onnx_file_the_manifest_does_not_list_is_refused(runtime_bundle, tmp_path):
    bundle = _copy(runtime_bundle("bert"), tmp_path)
    shutil.copyfile(bundle / "model.onnx", bundle / "extra.onnx")
    with pytest.raises(BundleError) as caught:
        Predictor.load(bundle, model_file="extra.onnx")
    assert str(caught.value) == (f"model file {bundle}/extra.onnx is not listed in deployft.json, so it cannot be "
                                 "verified; pass one of the bundle's .onnx files (model.onnx, model_int8.onnx)")
