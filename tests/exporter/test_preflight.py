"""What export refuses before any work: an --output that would destroy the RUN or cannot be created, flags the
--quantize mode or the task does not use, an opset torch cannot export, an unusable budget, a provider that is not
there. Each is one `UsageError` (or the provider's own error) naming the flag, raised before the model is loaded."""

from __future__ import annotations

import sys

import pytest

from deployft.errors import MissingDependencyError, UsageError
from deployft.exporter import ExportConfig, export
from deployft.staging import check_output_free


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if export gets as far as loading the PyTorch model or exporting ONNX."""
    def too_late(*args, **kwargs):
        raise AssertionError("the refusal came after the work started")

    monkeypatch.setattr("deployft.exporter.source.load_torch_model", too_late)
    monkeypatch.setattr("deployft.exporter.onnx_export.export_onnx", too_late)


def _files(folder):
    return sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("where", ["the run", "its parent"])
def test_an_output_that_is_or_holds_the_run_is_refused_and_the_run_kept(tiny_run, tmp_path, where):
    run = tiny_run("bert")
    before = _files(run)
    output = run if where == "the run" else run.parent
    with pytest.raises(UsageError, match=r"^--output .* (is the RUN folder|holds the RUN folder .*run-bert): "
                                         r"writing the BUNDLE there would replace the RUN; pass an --output outside"):
        export(ExportConfig(run=run, output=output, overwrite=True, validate_samples=40, max_accuracy_drop=100.0))
    assert _files(run) == before
    # the same folder named another way (a trailing "." or a link) is the same folder
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(UsageError, match="is the RUN folder"):
        ExportConfig(run=run / ".", output=tmp_path / "link", overwrite=True)


def test_a_bundle_inside_the_run_folder_is_allowed(tmp_path):
    # it adds a folder to the RUN and replaces nothing of it, so it is not refused
    ExportConfig(run=tmp_path, output=tmp_path / "bundle", overwrite=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, True, "2"])
def test_the_budget_must_be_a_finite_number_at_least_zero(tmp_path, bad):
    with pytest.raises(UsageError, match=r"^--max-accuracy-drop must be a finite number >= 0 .* got "):
        ExportConfig(run=tmp_path, output=tmp_path / "b", max_accuracy_drop=bad)


def test_a_classifier_budget_over_every_prediction_is_refused_before_any_work(tiny_run, tmp_path, no_work):
    with pytest.raises(UsageError, match=r"^--max-accuracy-drop 101 is more than every prediction: .* 100 or less$"):
        export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "b", max_accuracy_drop=101))


def test_an_output_below_a_file_is_refused_before_any_work(tiny_run, tmp_path, no_work):
    run = tiny_run("bert")
    (tmp_path / "afile.txt").write_text("x")
    for output in (tmp_path / "afile.txt" / "bundle", tmp_path / "afile.txt" / "deeper" / "bundle"):
        with pytest.raises(UsageError, match=r"^output .* cannot be created: .*afile.txt is a file; pass a folder "
                                             r"path with --output$"):
            export(ExportConfig(run=run, output=output, max_accuracy_drop=100.0))
    assert (tmp_path / "afile.txt").read_text() == "x"
    check_output_free(tmp_path / "new" / "deeper" / "bundle", overwrite=False)  # missing folders are created later


@pytest.mark.parametrize(("flags", "flag"), [
    ({"per_channel": True}, "--per-channel"),
    ({"quantize_preset": "avx2"}, "--quantize-preset"),
    ({"calibration_samples": 8}, "--calibration-samples"),
    ({"quantize": "int4", "per_channel": True}, "--per-channel"),
])
def test_quantization_flags_the_mode_does_not_use_are_refused(tmp_path, flags, flag):
    with pytest.raises(UsageError, match=f"^{flag} sets up --quantize int8 or int8-static; --quantize "
                                         f"{flags.get('quantize', 'none')} uses none of it: drop {flag}"):
        ExportConfig(run=tmp_path, output=tmp_path / "b", **flags)
    ExportConfig(run=tmp_path, output=tmp_path / "b", **{**flags, "quantize": "int8-static"})


@pytest.mark.parametrize("opset", [7, 13, 24, True, 14.0])
def test_an_opset_torch_cannot_export_is_refused_naming_the_flag(tmp_path, opset):
    with pytest.raises(UsageError, match=rf"^--opset is {opset!r}; expected 14 to 23 .*leave --opset out$"):
        ExportConfig(run=tmp_path, output=tmp_path / "b", opset=opset)


def test_the_opset_range_is_what_the_installed_torch_exports(tmp_path):
    from torch.onnx._constants import ONNX_MAX_OPSET

    from deployft.exporter.config import OPSETS

    assert OPSETS[-1] == ONNX_MAX_OPSET
    for opset in (OPSETS[0], OPSETS[-1]):
        ExportConfig(run=tmp_path, output=tmp_path / "b", opset=opset)


@pytest.mark.parametrize(("arch", "flags", "match"), [
    ("bert", {"fuse_attention": False}, "^--no-fuse-attention sets a generator's attention fusion; a classify"),
    ("bert", {"fuse_attention": True}, "^--fuse-attention sets a generator's attention fusion"),
    ("llama", {"quantize": "int8", "calibration_samples": 8}, "--calibration-samples, .* generate model's int8 is "
                                                              "blockwise"),
])
def test_flags_the_task_does_not_use_are_refused_before_any_work(tiny_run, tmp_path, no_work, arch, flags, match):
    with pytest.raises(UsageError, match=match):
        export(ExportConfig(run=tiny_run(arch), output=tmp_path / "b", max_accuracy_drop=100.0, **flags))


def test_fusing_attention_on_cuda_is_refused(tmp_path):
    with pytest.raises(UsageError, match="^--fuse-attention fuses a decoder's attention for --device cpu only"):
        ExportConfig(run=tmp_path, output=tmp_path / "b", quantize="fp16", device="cuda", fuse_attention=True)


def test_a_missing_openvino_plugin_is_named_before_any_work(tiny_run, tmp_path, monkeypatch, no_work):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "deployft\[openvino\]", or pass --provider '):
        export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "b", provider="openvino",
                            max_accuracy_drop=100.0))
    assert not (tmp_path / "b").exists()
