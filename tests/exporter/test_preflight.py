"""What export refuses before any work: an --output that would destroy the RUN or cannot be created, flags the task
cannot take, an opset torch cannot export, an unusable budget, a provider that is not there. Each is one `UsageError`
(or the provider's own error) naming the flag, raised before the model is loaded. Settings the --quantize mode or the
task ignores (a config file shared across modes) are one warning each, never refused."""

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
    with pytest.raises(UsageError, match=r"^--output .* (is|holds) the RUN folder .*run-bert: writing there would "
                                         r"delete it; pass another --output outside it$"):
        export(ExportConfig(run=run, output=output, overwrite=True, validate_samples=40, max_accuracy_drop=100.0))
    assert _files(run) == before
    # the same folder named another way (a trailing "." or a link) is the same folder
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(UsageError, match="is the RUN folder"):
        ExportConfig(run=run / ".", output=tmp_path / "link", overwrite=True)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_an_output_that_holds_the_runs_data_is_refused_before_any_work(tiny_run, tmp_path, no_work, split):
    import json
    import shutil

    from deployft.manifest import write_manifest

    run, output = tiny_run("bert"), tmp_path / "out"
    manifest = json.loads((run / "deployft.json").read_text())
    record = manifest["data"]["train"]
    data = output / f"{split}.csv"
    output.mkdir()
    shutil.copy(record["path"], data)
    manifest["data"][split] = {**record, "path": str(data)}
    write_manifest(run, manifest)
    word = "training" if split == "train" else "eval"
    with pytest.raises(UsageError, match=rf"^--output {output} holds the RUN's {word} data {data}: writing there "
                                         r"would delete it; pass another --output outside it$"):
        export(ExportConfig(run=run, output=output, overwrite=True, max_accuracy_drop=100.0))
    assert data.is_file()


def test_an_output_that_holds_the_sign_key_is_refused_and_the_keys_kept(tiny_run, tmp_path):
    from deployft.signing import generate_keys

    output = tmp_path / "out"
    private, public = generate_keys(output / "sign.pem", output / "sign.pub.pem")
    with pytest.raises(UsageError, match=rf"^--output {output} holds --sign-key {private}: writing there would delete "
                                         r"it; pass another --output outside it$"):
        ExportConfig(run=tiny_run("bert"), output=output, overwrite=True, sign_key=private)
    assert private.is_file() and public.is_file()


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


WHAT = {"--select-seconds": "the timing of a classifier's --quantize int8 files"} | {
    flag: "a classifier's --quantize int8 or --quantize int8-static"
    for flag in ("--per-channel", "--quantize-preset", "--calibration-samples")}
"""What each setting sets up, as the warning about a mode that ignores it says."""


@pytest.mark.parametrize(("flags", "flag"), [
    ({"per_channel": True}, "--per-channel"),
    ({"quantize_preset": "avx2"}, "--quantize-preset"),
    ({"calibration_samples": 8}, "--calibration-samples"),
    ({"select_seconds": 5}, "--select-seconds"),
    ({"quantize": "int8-static", "select_seconds": 5}, "--select-seconds"),
    ({"quantize": "int4", "calibration_samples": 8}, "--calibration-samples"),
    ({"quantize": "fp16", "device": "cuda", "per_channel": True}, "--per-channel"),
])
def test_settings_the_mode_ignores_are_warned_about_not_refused(tmp_path, caplog, flags, flag):
    # one config file may serve several --quantize modes: a setting one mode ignores is not an error
    ExportConfig(run=tmp_path, output=tmp_path / "b", **flags)
    mode = flags.get("quantize", "none")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{flag} is ignored: --quantize {mode} does not use it (it sets up {WHAT[flag]})"]


def test_settings_the_mode_uses_are_not_warned_about(tmp_path, caplog):
    ExportConfig(run=tmp_path, output=tmp_path / "b", quantize="int8", per_channel=True, quantize_preset="avx2",
                 calibration_samples=8, select_seconds=5)
    ExportConfig(run=tmp_path, output=tmp_path / "b", quantize="int8-static", per_channel=True, calibration_samples=8)
    ExportConfig(run=tmp_path, output=tmp_path / "b", fuse_attention=True)
    assert not caplog.records


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
    ("llama", {"quantize": "int8", "per_channel": True}, "--per-channel, .* generate model's int8 is blockwise"),
    ("llama", {"quantize": "int4", "quantize_preset": "avx2"}, "--quantize-preset, .* generate model's int4 is "),
    ("bert", {"quantize": "int4"}, "^--quantize int4 is for generators"),
    ("bert", {"quantize": "int8", "block_size": 32}, "^--block-size sets the MatMulNBits blocks of a generator"),
])
def test_flags_the_task_cannot_take_are_refused_before_any_work(tiny_run, tmp_path, no_work, arch, flags, match):
    with pytest.raises(UsageError, match=match):
        export(ExportConfig(run=tiny_run(arch), output=tmp_path / "b", max_accuracy_drop=100.0, **flags))


@pytest.fixture
def stop_after_preflight(monkeypatch):
    """End export with a marker once the checks before any work have passed."""
    def passed(*args, **kwargs):
        raise _Passed

    monkeypatch.setattr("deployft.exporter.runner.check_output_free", passed)


class _Passed(Exception):
    pass


@pytest.mark.parametrize(("arch", "flags", "warnings"), [
    ("bert", {"fuse_attention": True}, []),  # the default, spelled out
    ("bert", {"fuse_attention": False}, ["--no-fuse-attention is ignored: it sets a generator's attention fusion, "
                                         "and a classify model's attention is fused by ORTOptimizer whatever it says"]),
    ("llama", {"quantize": "int8", "calibration_samples": 8, "select_seconds": 5}, [
        f"{flag} is ignored: a generate model's int8 is blockwise (MatMulNBits, nothing calibrated or timed) and does "
        "not use it" for flag in ("--calibration-samples", "--select-seconds")]),
])
def test_settings_the_task_ignores_are_warned_about_not_refused(tiny_run, tmp_path, caplog, stop_after_preflight,
                                                               arch, flags, warnings):
    with pytest.raises(_Passed):
        export(ExportConfig(run=tiny_run(arch), output=tmp_path / "b", max_accuracy_drop=100.0, **flags))
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == warnings


def test_fusing_attention_is_the_default_and_never_refused(tmp_path):
    # --fuse-attention names the default ("fuse where supported"); on CUDA nothing is fused, and the manifest says why
    assert ExportConfig(run=tmp_path, output=tmp_path / "b").fuse_attention is True
    ExportConfig(run=tmp_path, output=tmp_path / "b", quantize="fp16", device="cuda", fuse_attention=True)


def test_a_missing_openvino_plugin_is_named_before_any_work(tiny_run, tmp_path, monkeypatch, no_work):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "deployft\[openvino\]", or pass --provider '):
        export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "b", provider="openvino",
                            max_accuracy_drop=100.0))
    assert not (tmp_path / "b").exists()
