"""Report assembly, Markdown, HTML and plots from hand-made measurements (no model involved)."""

import json

import pytest

from deployft.bench import BenchConfig, BenchReport
from deployft.bench.html import markdown_table_to_html
from deployft.bench.machine import describe_machine
from deployft.bench.report import assemble, write_report
from deployft.bench.timing import percentile


def _raw(task, timings, variants, flops):
    return {"created": "2026-01-01T00:00:00+00:00", "load_before": [0.1, 0.1, 0.1], "load_after": [1.0, 0.5, 0.2],
            "inputs": {"eval_rows": 4}, "machine": describe_machine(), "peak": {"fp32": 1e11, "int8": 4e11, "read_bytes_per_s": 1e10},
            "variants": variants, "timings": timings, "wall_s": 1.0, "flops": flops, "warnings": ["the machine was busy"],
            "rounds": {"rounds_kept": 3, "rounds_rejected": 2, "rounds_dirty": 0, "max_other_share": 0.05,
                       "judged": True, "median_other_share": 0.01}}


def _manifests(task):
    run = {"task": task, "base_model": "tiny", "model_type": "bert"}
    return {"run": run, "bundle": {"variants": {"model.onnx": {"precision": "fp32"},
                                                "model_int8.onnx": {"precision": "int8"}}}}


def _ok(**extra):
    return {"status": "ok", "error": None, "size_bytes": 1000, "peak_rss_bytes": 5e7, "cold_start_s": 0.5, **extra}


def classify_raw():
    def calls(settled, hot):  # one settled call per round, then back-to-back calls
        return [{"seconds": s, "hot": h} for s, h in zip(settled, hot)]

    timings = {
        "pytorch": [{"cell": [1, 16], "samples": calls([0.014, 0.016, 0.015, 0.040],
                                                       [[0.010, 0.009, 0.011], [0.012] * 3, [0.011] * 3, [0.030] * 3])}],
        "model_int8.onnx": [{"cell": [1, 16], "samples": calls([0.006, 0.008, 0.007, 0.009],
                                                               [[0.004] * 3, [0.005] * 3, [0.0045] * 3, [0.006] * 3])}],
        "pytorch-compile": [{"cell": [1, 16], "samples": []}],
    }
    variants = {
        "pytorch": _ok(accuracy={"samples": 4, "accuracy": 0.75, "macro_f1": 0.7, "predictions": [0, 1, 1, 0]}),
        "model_int8.onnx": _ok(accuracy={"samples": 4, "accuracy": 0.5, "macro_f1": 0.5, "predictions": [0, 1, 0, 0]}),
        "pytorch-compile": {"status": "failed", "error": "InductorError: no compiler"},
    }
    return _raw("classify", timings, variants, {"1x16": 1_000_000})


def generate_raw():
    runs = lambda step: [{"tokens": 4, "times": [0.02 + i * step for i in range(4)]} for _ in range(3)]  # noqa: E731
    timings = {"pytorch": [{"cell": [8, 4], "samples": runs(0.010)}],
               "model.onnx": [{"cell": [8, 4], "samples": runs(0.005)}]}
    variants = {"pytorch": _ok(weight_bytes_per_token=4e8,
                               accuracy={"samples": 2, "perplexity": 12.0, "continuations": [[1, 2, 3], [4, 5]]}),
                "model.onnx": _ok(accuracy={"samples": 2, "perplexity": 12.5, "continuations": [[1, 2, 9], [4, 5]]})}
    return _raw("generate", timings, variants, {"8x4": {"prefill": 800, "decode_token": 100}})


def config(tmp_path):
    return BenchConfig(run=tmp_path / "run", bundle=tmp_path / "bundle", report=tmp_path / "report")


def test_classify_speedups_come_from_the_recorded_medians(tmp_path):
    data = assemble(config(tmp_path), _manifests("classify"), classify_raw())
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"pytorch", "model_int8.onnx"}
    base, int8 = rows["pytorch"], rows["model_int8.onnx"]
    assert base["latency"] == "hot" and base["times_s"] == [0.010, 0.012, 0.011, 0.030]  # each round's median
    assert base["p50"] == percentile(base["times_s"], 50) == pytest.approx(0.0115)
    assert int8["speedup_p50"] == pytest.approx(base["p50"] / int8["p50"])
    assert base["settled_times_s"] == [0.014, 0.016, 0.015, 0.040] and base["settled"]["p50"] == pytest.approx(0.0155)
    assert int8["speedup_settled_p50"] == pytest.approx(0.0155 / 0.0075)
    assert base["speedup_p50"] == 1.0 and base["throughput"] == pytest.approx(1 / base["p50"])
    assert base["p50"] <= base["p90"] <= base["p99"]
    assert int8["fraction_of_peak"] == pytest.approx(1e6 / int8["p50"] / 4e11)
    acc = data["variants"]["model_int8.onnx"]["accuracy"]
    assert acc["accuracy_delta_points"] == pytest.approx(-25.0) and acc["agreement_with_pytorch"] == 0.75
    assert "predictions" not in acc and data["variants"]["pytorch-compile"]["status"] == "failed"


def test_generate_rows_have_ttft_decode_rate_and_token_agreement(tmp_path):
    data = assemble(config(tmp_path), _manifests("generate"), generate_raw())
    rows = {r["variant"]: r for r in data["results"]}
    assert rows["pytorch"]["decode_tokens_per_s"] == pytest.approx(100.0)
    assert rows["model.onnx"]["decode_tokens_per_s"] == pytest.approx(200.0)
    assert rows["model.onnx"]["speedup_decode"] == pytest.approx(2.0)
    assert rows["model.onnx"]["per_token"]["p50"] == pytest.approx(0.005)
    assert rows["model.onnx"]["ttft"]["p50"] == pytest.approx(0.02)
    assert rows["model.onnx"]["fraction_of_peak"] == pytest.approx(100 * 200.0 / 1e11)
    assert rows["pytorch"]["fraction_of_bandwidth"] == pytest.approx(100.0 * 4e8 / 1e10)
    assert rows["model.onnx"]["fraction_of_bandwidth"] is None  # its weight bytes were not counted
    assert data["variants"]["model.onnx"]["accuracy"]["token_agreement"] == pytest.approx(4 / 5)


@pytest.mark.parametrize("raw, task", [(classify_raw, "classify"), (generate_raw, "generate")])
def test_report_files_parse_and_html_is_self_contained(tmp_path, raw, task):
    data = assemble(config(tmp_path), _manifests(task), raw())
    folder = tmp_path / "out"
    folder.mkdir()
    write_report(data, folder)
    report = BenchReport.read(folder)
    assert report.data == json.loads(json.dumps(data, default=str))
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert "latency.png" in pngs and "speedup.png" in pngs
    assert ("tokens_per_s.png" in pngs) == (task == "generate")
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs) and 'src="latency.png"' not in html
    markdown = (folder / "report.md").read_text()
    assert "## Variants" in markdown and "the machine was busy" in markdown
    assert "clean rounds: 3 kept, 2 rejected and repeated" in markdown and report.data["rounds"]["rounds_rejected"] == 2
    if task == "classify":
        assert report.failed == {"pytorch-compile": "InductorError: no compiler"}
        assert "InductorError" in markdown and "InductorError" in html


def test_markdown_tables_become_html_tables():
    html = markdown_table_to_html("| a | b |\n| --- | --- |\n| 1 | <x> |")
    assert html.startswith("<table>") and "<th>a</th>" in html and "&lt;x&gt;" in html


def test_without_hot_calls_the_settled_call_is_the_headline(tmp_path):
    raw = classify_raw()
    for cells in raw["timings"].values():
        for cell in cells:
            cell["samples"] = [{"seconds": m["seconds"], "hot": []} for m in cell["samples"]]
    rows = {r["variant"]: r for r in assemble(config(tmp_path), _manifests("classify"), raw)["results"]}
    assert rows["pytorch"]["latency"] == "settled" and rows["pytorch"]["p50"] == pytest.approx(0.0155)
    assert rows["model_int8.onnx"]["speedup_p50"] == rows["model_int8.onnx"]["speedup_settled_p50"]
