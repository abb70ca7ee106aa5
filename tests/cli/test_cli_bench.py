"""`deployft bench` on the command line: help, a run, and bad input (exit code 1, one `Error:` line)."""

from __future__ import annotations

import json

from bench_pairs import bench_pair  # noqa: F401  (fixture)
from click.testing import CliRunner

from deployft.cli import main


def test_help_lists_the_flags():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for flag in ("--run", "--bundle", "--report", "--variants", "--batch-sizes", "--seq-lens", "--prompt-lens",
                 "--new-tokens", "--threads", "--repeats", "--eval-samples", "--device", "--peer-cache"):
        assert flag in result.output


def test_bench_writes_the_report_and_says_where(bench_pair, tmp_path):
    run, bundle = bench_pair("classify")
    report = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "bench", "--run", str(run), "--bundle", str(bundle), "--report", str(report), "--variants", "pytorch,model.onnx",
        "--batch-sizes", "1", "--seq-lens", "8", "--repeats", "2", "--warmup", "0", "--threads", "1",
        "--eval-samples", "4", "--no-peak", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert f"Report: {report.resolve() / 'report.html'}" in result.output and "## Speed" in result.output
    data = json.loads((report / "report.json").read_text())
    assert {r["variant"] for r in data["results"]} == {"pytorch", "model.onnx"} and data["config"]["repeats"] == 2
    assert not list(report.glob("*.png"))


def test_a_config_file_fills_the_same_options(bench_pair, tmp_path):
    run, bundle = bench_pair("classify")
    config = tmp_path / "bench.yaml"
    config.write_text("variants: [model.onnx]\nbatch_sizes: [2]\nseq_lens: [8]\nrepeats: 2\nwarmup: 0\n"
                      "threads: 1\neval_samples: 0\npeak: false\nplots: false\n")
    result = CliRunner().invoke(main, ["bench", "--run", str(run), "--bundle", str(bundle),
                                       "--report", str(tmp_path / "r"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [(r["variant"], r["batch"], r["seq"]) for r in data["results"]] == [("model.onnx", 2, 8)]


def _error(args):
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_bad_flags_exit_1_with_one_line(bench_pair, tmp_path):
    run, bundle = bench_pair("classify")
    _, gen_bundle = bench_pair("generate")
    base = ["--run", str(run), "--report", str(tmp_path / "r")]
    assert "--batch-sizes is empty" in _error([*base, "--bundle", str(bundle), "--batch-sizes", ","])
    assert "unknown variant(s) fast.onnx" in _error([*base, "--bundle", str(bundle), "--variants", "pytorch,fast.onnx"])
    assert "pass the BUNDLE exported from this RUN" in _error([*base, "--bundle", str(gen_bundle)])
    assert "does not exist" in _error([*base, "--bundle", str(tmp_path / "missing")])
    assert "--threads must be" in _error([*base, "--bundle", str(bundle), "--threads", "0"])
    assert "peer(s) ort-genai that do not run classify models; peers for this RUN: openvino" in _error(
        [*base, "--bundle", str(bundle), "--variants", "pytorch,ort-genai"])
    assert not (tmp_path / "r").exists()


def test_provider_openvino_runs_the_files_through_it_or_reports_why_not(bench_pair, tmp_path):
    """Each `.onnx` variant runs in its own worker through the OpenVINO plugin; where the plugin offers no device
    (it serves Intel hardware only) the variant is reported failed with that reason, never silently run on CPU."""
    run, bundle = bench_pair("classify")
    report = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "bench", "--run", str(run), "--bundle", str(bundle), "--report", str(report), "--variants",
        "pytorch,model.onnx", "--provider", "openvino", "--batch-sizes", "1", "--seq-lens", "8", "--repeats", "2",
        "--warmup", "0", "--threads", "1", "--eval-samples", "4", "--no-peak", "--no-plots"])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    assert data["config"]["provider"] == "openvino" and "ONNX Runtime provider openvino" in result.output
    ran = {r["variant"] for r in data["results"]}
    failed = "variant model.onnx failed:" in result.output
    assert "pytorch" in ran and (failed != ("model.onnx" in ran)), result.output
    if failed:
        assert "Intel hardware only" in result.output or "deployft[openvino]" in result.output


def test_bad_option_values_exit_1_with_one_line_naming_the_option(tmp_path):
    """Refused while the options are read, before any folder is: a config file's wrong types, nan / inf seconds,
    a file where the peer cache folder goes."""
    base = ["--run", str(tmp_path / "run"), "--bundle", str(tmp_path / "bundle"), "--report", str(tmp_path / "r")]
    cases = {"variants: 5": "--variants expects", "batch_sizes: 1.5": "--batch-sizes expects",
             "batch_sizes: [1.7, 8]": "--batch-sizes expects", "seq_lens: null": "--seq-lens expects"}
    for text, words in cases.items():
        (tmp_path / "bad.yaml").write_text(text + "\n")
        assert words in _error([*base, "--config", str(tmp_path / "bad.yaml")])
    assert "--settle must be a finite number" in _error([*base, "--settle", "nan"])
    assert "--min-time must be a finite number" in _error([*base, "--min-time", "inf"])
    (tmp_path / "cache").write_text("")
    assert "--peer-cache" in _error([*base, "--peer-cache", str(tmp_path / "cache")])
    assert not (tmp_path / "r").exists()


def test_the_summary_names_variants_whose_accuracy_was_not_measured(tmp_path, monkeypatch):
    from test_bench_report import _manifests, _ok, classify_raw, config

    import deployft.bench
    from deployft.bench import BenchReport
    from deployft.bench.report import assemble, write_report

    raw = classify_raw()
    raw["variants"]["model_int8.onnx"] = _ok(accuracy=None, accuracy_error="worker died: killed by signal 9")
    folder = tmp_path / "report"
    folder.mkdir()
    data = assemble(config(tmp_path), _manifests("classify"), raw)
    write_report(data, folder, plots=False)
    monkeypatch.setattr(deployft.bench, "benchmark", lambda config: BenchReport(folder, data))
    result = CliRunner().invoke(main, ["bench", "--run", "r", "--bundle", "b", "--report", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert "variant model_int8.onnx: accuracy not measured: worker died: killed by signal 9" in result.output
    assert "## Accuracy not measured" in result.output


def test_flags_the_runs_task_never_uses_are_refused_before_any_timing(bench_pair, tmp_path):
    for task, flags, named in (
            ("generate", ["--hot-calls", "9", "--batch-sizes", "7", "--seq-lens", "5"],
             "Error: --batch-sizes, --seq-lens, --hot-calls: not used by a generate RUN"),
            ("classify", ["--prompt-lens", "3", "--new-tokens", "99"],
             "Error: --prompt-lens, --new-tokens: not used by a classify RUN")):
        run, bundle = bench_pair(task)
        report = tmp_path / task
        line = _error(["--run", str(run), "--bundle", str(bundle), "--report", str(report), *flags])
        assert line.startswith(named) and line.endswith("leave them out")
        assert not report.exists()
