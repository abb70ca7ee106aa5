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
from conftest import build_runtime_bundle, sentiment_rows

TEXTS = [r["text"] for r in sentiment_rows(40, seed=3)]


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "bundle-copy")


def _torch_log_probs(bundle, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = json.loads((bundle / "deployft.json").read_text())["source_run"]["path"]
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    batch = AutoTokenizer.from_pretrained(source)(texts, padding=True, truncation=True, max_length=32,
                                                  return_tensors="pt")
    with torch.no_grad():
        return torch.log_softmax(model(**batch).logits.double(), dim=-1).numpy()


@pytest.fixture(scope="module")
def sharp_classifier(_tiny_model_cache, tmp_path_factory):
    """`sharp_classifier("bert")` -> a classifier BUNDLE with large random weights (std 0.25), so its scores depend
    on every input, the attention mask included (the untrained tiny model scores every text about 0.5055, and a
    runtime that ignored the mask moved its scores by less than 1e-5), and a head bias that splits TEXTS between
    the labels at their median (the tiny tokenizer, trained on the spot, differs from one session to the next)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cache = {}

    def get(arch: str):
        if arch not in cache:
            tiny, sharp = _tiny_model_cache(arch), tmp_path_factory.mktemp(f"sharp-{arch}")
            model = AutoModelForSequenceClassification.from_pretrained(tiny).eval()
            generator = torch.Generator().manual_seed(0)
            batch = AutoTokenizer.from_pretrained(tiny)(TEXTS, padding=True, truncation=True, max_length=32,
                                                        return_tensors="pt")
            with torch.no_grad():
                for param in model.parameters():
                    if param.dim() >= 2:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.25)
                logits = model(**batch).logits
                head_bias = [p for name, p in model.named_parameters() if name.endswith("bias") and p.shape == (2,)]
                head_bias[-1][1] -= (logits[:, 1] - logits[:, 0]).median() + 1e-3  # no text sits on the boundary
            model.save_pretrained(sharp)
            AutoTokenizer.from_pretrained(tiny).save_pretrained(sharp)
            bundle = tmp_path_factory.mktemp(f"sharp-bundle-{arch}") / "bundle"
            cache[arch] = build_runtime_bundle(sharp, bundle, "classify", int8=False)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_predict_matches_pytorch(sharp_classifier, arch):
    """Batches of 7 sorted by length (each padded its own way) against PyTorch's one padded batch: the logits, up to
    the constant softmax removes, agree to a relative 1e-3, far below what ignoring the padding mask changes."""
    bundle = sharp_classifier(arch)
    predictor = Predictor.load(bundle)
    predictions = predictor.predict(TEXTS, batch_size=7)
    expected = _torch_log_probs(bundle, TEXTS)
    ours = np.log([[p.scores[lab] for lab in predictor.labels] for p in predictions])
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-5)
    assert [p.label for p in predictions] == [predictor.labels[i] for i in expected.argmax(axis=1)]
    assert {p.label for p in predictions} == set(predictor.labels)  # the scores really spread


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


def test_a_model_file_given_as_a_path_out_of_the_bundle_is_refused_as_not_one_of_its_files(runtime_bundle, tmp_path):
    bundle = _copy(runtime_bundle("bert"), tmp_path)
    other = shutil.copytree(bundle, tmp_path / "other")
    for name in (f"../{other.name}/model.onnx", str(other / "model.onnx"), ".."):  # existing, but another's
        with pytest.raises(BundleError) as caught:  # the caller's name is to fix, not the manifest
            Predictor.load(bundle, model_file=name)
        assert str(caught.value) == (f"model file {name!r} is not a file name inside {bundle}; pass one of the "
                                     "bundle's .onnx files (model.onnx, model_int8.onnx)")


def test_a_manifest_naming_a_model_file_out_of_the_bundle_is_blamed_on_the_manifest(runtime_bundle, tmp_path):
    from deployft.runtime.integrity import check_for_load

    bundle = _copy(runtime_bundle("bert"), tmp_path)
    manifest = json.loads((bundle / "deployft.json").read_text())
    with pytest.raises(BundleError, match=r"deployft.json names model file '\.\./evil.onnx', a path outside the "
                                          "bundle folder"):
        check_for_load(bundle, manifest, "../evil.onnx")


