"""`deployft export` and `deployft info` through click's CliRunner: help, a real export, bad input."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from deployft.cli import main


@pytest.mark.parametrize("command", ["export", "info"])
def test_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: main " + command in result.output or f"Usage: deployft {command}" in result.output
    if command == "export":
        for flag in ("--quantize", "--quantize-preset", "--per-channel", "--calibration-samples",
                     "--validate-samples", "--max-accuracy-drop", "--device", "--overwrite", "--task",
                     "--no-fuse-attention", "--select", "--select-seconds", "--block-size", "--min-agreement"):
            assert flag in result.output


def test_export_then_info(tiny_run, tmp_path):
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", str(tiny_run("bert")), "--output", str(bundle), "--quantize", "int8",
                                       "--validate-samples", "24", "--quantize-preset", "avx2",
                                       "--max-accuracy-drop", "30", "--select-seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert "deployable: model_quantized.onnx" in result.output and "| model_quantized.onnx * | int8 |" in result.output
    assert "quantization: int8 candidate " in result.output and "(preset avx2, per-channel" in result.output
    assert "kept by --select fastest" in result.output and "| static-qdq" in result.output
    rule = "rule: pass when the one-sided 95% lower bound of top-1 agreement with PyTorch"
    assert rule in result.output and ">= 0.7000" in result.output and "rows: 24 (eval rows)" in result.output
    assert "model_quantized.onnx (deployable): " in result.output and "/24 predictions agree" in result.output
    info = CliRunner().invoke(main, ["info", str(bundle)])
    assert info.exit_code == 0 and "fused graph model_optimized.onnx: " in info.output
    assert "labels: negative, positive" in info.output and rule in info.output
    assert "| candidate | from | flips | bound | guard | MB | b1x" in info.output and " * |" in info.output


def test_info_refuses_an_edited_manifest_as_verify_does_and_a_missing_field_in_one_line(tiny_run, tmp_path):
    import json

    from deployft.manifest import write_manifest

    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", str(tiny_run("bert")), "-o", str(bundle), "--validate-samples", "8",
                                       "--max-accuracy-drop", "100"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "deployft.json").read_text())
    (bundle / "deployft.json").write_text(json.dumps({**manifest, "labels": manifest["labels"][::-1]}))
    edited = _fails(["info", str(bundle)], "deployft.json was modified after export")
    assert edited.output == CliRunner().invoke(main, ["verify", str(bundle)]).output
    write_manifest(bundle, {k: v for k, v in manifest.items() if k != "fusion"})  # restamped, a field gone
    _fails(["info", str(bundle)], f"Error: {bundle / 'deployft.json'} has no field 'fusion', which deployft info "
           "reads; re-export the bundle with deployft export")


def test_select_flag_is_one_error_line(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny_run("bert")), "--output", str(tmp_path / "b"),
                                       "--quantize", "int8", "--select", "biggest"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --select is 'biggest'; expected one of fastest, smallest"
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("flag", "expected", "why"), [
    ([], "note: decoder attention fused by deployft: GroupQueryAttention ×2",
     "of model_optimized.onnx, attention fused (GroupQueryAttention ×2); it passed"),
    (["--no-fuse-attention"], "note: attention is not fused: --no-fuse-attention was given",
     "of model_optimized.onnx, attention not fused; SkipSimplifiedLayerNormalization ×4, QuickGelu ×2, "
     "SimplifiedLayerNormalization ×1 fused; it passed"),
])
def test_generator_export_says_whether_attention_was_fused(tiny_run, tmp_path, flag, expected, why):
    # the fusion note is under test, not the guard (8 rows of a random tiny llama decide no realistic budget)
    result = CliRunner().invoke(main, ["export", str(tiny_run("llama")), "--output", str(tmp_path / "b"),
                                       "--quantize", "int8", "--validate-samples", "8", "--max-accuracy-drop", "1000",
                                       *flag])
    assert result.exit_code == 0, result.output
    assert expected in result.output
    assert "quantization: int8 (blockwise int8 weights (MatMulNBits), int8 compute, block 64)" in result.output
    assert why in result.output and "where the fusion note says so" not in result.output  # the "why this file" line


def test_export_reads_a_config_file(tiny_run, tmp_path):
    config = tmp_path / "export.yaml"
    config.write_text("quantize: none\nvalidate_samples: 8\nmax_accuracy_drop: 100\n")
    result = CliRunner().invoke(main, ["export", str(tiny_run("bert")), "-o", str(tmp_path / "b"),
                                       "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "deployable: model_optimized.onnx" in result.output


def test_an_output_that_holds_the_config_file_is_refused_and_the_file_kept(tiny_run, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    config = output / "export.yaml"
    config.write_text("quantize: none\nvalidate_samples: 8\nmax_accuracy_drop: 100\n")
    result = _fails(["export", str(tiny_run("bert")), "-o", str(output), "--overwrite", "--config", str(config)])
    assert result.output == (f"Error: --output {output} holds --config {config}: writing there would delete it; "
                             "pass another --output outside it\n")
    assert config.is_file() and sorted(output.iterdir()) == [config]


def test_a_config_file_shared_across_modes_exports_with_one_warning_per_ignored_setting(tiny_run, tmp_path, caplog):
    # int8 settings in a file also used for --quantize none, the default fusion spelled out: warned about, not refused
    config = tmp_path / "export.yaml"
    config.write_text("quantize: int8\nper_channel: true\ncalibration_samples: 16\nselect_seconds: 5\n"
                      "fuse_attention: true\nvalidate_samples: 8\nmax_accuracy_drop: 100\n")
    result = CliRunner().invoke(main, ["export", str(tiny_run("bert")), "-o", str(tmp_path / "b"),
                                       "--config", str(config), "--quantize", "none"])
    assert result.exit_code == 0, result.output
    assert "deployable: model_optimized.onnx" in result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "ignored" in r.getMessage()]
    assert [w.split(" is ignored: --quantize none does not use it")[0] for w in warnings] == [
        "--calibration-samples", "--select-seconds", "--per-channel"]


def _fails(args, *fragments):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output
    return result


def test_bad_input_is_one_line_and_exit_1(tiny_run, tiny_model, tmp_path):
    run = str(tiny_run("bert"))
    out = str(tmp_path / "b")
    plain = str(tiny_model("bert"))
    _fails(["export", str(tmp_path / "missing"), "-o", out], "is not a folder")
    _fails(["export", str(tmp_path), "-o", out], "has no config.json")
    _fails(["export", run, "-o", out, "--quantize", "int3"], "--quantize is 'int3'")
    _fails(["export", run, "-o", out, "--quantize", "int8", "--min-agreement", "99"], "--min-agreement is a share",
           "[0, 1]")
    _fails(["export", run, "-o", out, "--min-agreement", "0.9"], "--min-agreement steers", "--quantize int8")
    _fails(["export", run, "-o", out, "--quantize", "int4"], "--quantize int4 is for generators", "--quantize int8")
    _fails(["export", run, "-o", out, "--quantize", "int4", "--block-size", "48"], "--block-size is 48")
    for flag, value in (("--block-size", "32"), ("--head-bits", "4")):  # a classifier has no int4 to pass instead
        _fails(["export", run, "-o", out, flag, value], f"drop {flag} (or, for a generator, pass --quantize int4)")
    _fails(["export", run, "-o", out, "--quantize", "fp16"], "--quantize fp16 is for CUDA only")
    _fails(["export", run, "-o", out, "--quantize", "int8", "--device", "cuda"], "no CUDA kernels")
    _fails(["export", plain, "-o", out], "pass --task classify or --task generate")
    _fails(["export", run, "-o", out], "cannot decide --max-accuracy-drop 3", "24 validation rows", "99 rows")
    _fails(["export", plain, "-o", out, "--task", "classify", "--quantize", "int8-static"],
           "int8-static calibrates on a RUN's training data")
    _fails(["export", run, "-o", out, "--max-accuracy-drop", "nan"], "--max-accuracy-drop must be a finite number")
    _fails(["export", run, "-o", out, "--max-accuracy-drop", "inf"], "--max-accuracy-drop must be a finite number")
    _fails(["export", run, "-o", run, "--overwrite"], "--output", "is the RUN folder", "would delete it",
           "pass another --output outside it")
    _fails(["export", run, "-o", str(tmp_path), "--overwrite"], "--output", "holds the RUN folder")
    _fails(["export", run, "-o", out, "--opset", "7"], "--opset is 7; expected 14 to 23")
    (tmp_path / "afile").write_text("x")
    _fails(["export", run, "-o", str(tmp_path / "afile" / "b")], "afile is a file", "--output")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    _fails(["export", run, "-o", str(tmp_path / "taken")], "exists and is not empty", "--overwrite")
    _fails(["info", str(tmp_path / "missing")], "does not exist")
    _fails(["info", run], "is a RUN folder, not a BUNDLE folder")
    assert not (tmp_path / "b").exists()
