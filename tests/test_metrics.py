"""One definition per metric: the RUN, the BUNDLE's validation and bench report the same number for the same rows."""

from __future__ import annotations

import pytest

from conftest import sentiment_rows, write_rows
from deployft.manifest import read_manifest


def test_run_macro_f1_equals_bundle_validation_pytorch_macro_f1(tiny_model, tmp_path):
    """Three classes in training, two in a small eval split: the absent class must not count in either place."""
    from deployft import ExportConfig, FinetuneConfig, export, finetune

    train = write_rows(tmp_path / "train.csv", sentiment_rows(120, labels=("negative", "positive", "neutral")))
    evals = write_rows(tmp_path / "eval.csv", sentiment_rows(14, seed=3))
    run = finetune(FinetuneConfig(task="classify", model=str(tiny_model("bert")), data=str(train),
                                  eval_data=str(evals), output=str(tmp_path / "run"), max_steps=12, lr=3e-3,
                                  batch_size=16, max_length=32))
    run_metrics = read_manifest(run, "run")["metrics"]
    bundle = export(ExportConfig(run=run, output=tmp_path / "bundle", quantize="none", max_accuracy_drop=100))
    validation = read_manifest(bundle, "bundle")["validation"]["model.onnx"]
    assert validation["samples"] == 14 == run_metrics["eval_samples"]
    assert validation["macro_f1_pytorch"] == pytest.approx(run_metrics["macro_f1"], abs=1e-6)
    assert validation["accuracy_pytorch"] == pytest.approx(run_metrics["accuracy"], abs=1e-6)
