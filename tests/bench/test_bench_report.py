"""Report assembly, Markdown, HTML and plots from hand-made measurements (no model involved)."""

import json
from html import escape as html_escape
from pathlib import Path

import pytest

from deployft.bench import BenchConfig, BenchReport
from deployft.bench.html import inline_to_html, markdown_table_to_html, render_html
from deployft.bench.machine import busy_warning, describe_machine
from deployft.bench.markdown import list_sections, render_markdown, summary_lines
from deployft.bench.quiet import noisy_warning, rounds_note
from deployft.bench.report import assemble, write_report
from deployft.bench.runner import machine_warnings
from deployft.bench.timing import percentile


def _raw(task, timings, variants, flops):
    return {"created": "2026-01-01T00:00:00+00:00", "load_before": [0.1, 0.1, 0.1], "load_after": [1.0, 0.5, 0.2],
            "inputs": {"eval_rows": 4}, "machine": describe_machine(), "peak": {"fp32": 1e11, "int8": 4e11, "read_bytes_per_s": 1e10},
            "variants": variants, "timings": timings, "wall_s": 1.0, "flops": flops, "warnings": ["the machine was busy"],
            "rounds": {"rounds_kept": 3, "rounds_rejected": 2, "rounds_dirty": 0, "max_other_share": 0.05,
                       "judged": True, "worst_kept_other_share": 0.01}}


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


def test_a_file_computing_the_first_position_alone_is_judged_by_its_own_flops(tmp_path):
    manifests = _manifests("classify")
    manifests["bundle"]["fusion"] = {"first_position": True}
    manifests["bundle"]["variants"]["model_int8.onnx"]["optimized"] = True  # made from the fused graph
    raw = {**classify_raw(), "flops_first_position": {"1x16": 600_000}}
    data = assemble(config(tmp_path), manifests, raw)
    rows = {r["variant"]: r for r in data["results"]}
    assert data["variants"]["model_int8.onnx"]["first_position"] is True
    assert rows["model_int8.onnx"]["flops"] == 600_000 and rows["pytorch"]["flops"] == 1_000_000
    assert rows["model_int8.onnx"]["fraction_of_peak"] == pytest.approx(6e5 / rows["model_int8.onnx"]["p50"] / 4e11)
    manifests["bundle"]["variants"]["model_int8.onnx"]["optimized"] = False  # a plain file does every position
    assert {r["variant"]: r["flops"] for r in assemble(config(tmp_path), manifests, raw)["results"]} == {
        "pytorch": 1_000_000, "model_int8.onnx": 1_000_000}


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
    assert "Quiet rounds: 3 kept, 2 rejected and repeated" in markdown and report.data["rounds"]["rounds_rejected"] == 2
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


def _fail_mid_way(raw, name, rounds_kept=1):
    """What interleave and the runner leave when `name` crashes after `rounds_kept` rounds: those rounds' samples
    and a failed status."""
    for cell in raw["timings"][name]:
        cell["samples"] = cell["samples"][:rounds_kept]
    raw["variants"][name] = {"status": "failed", "error": "RuntimeError: segfault in kernel"}
    return raw


def test_a_variant_that_failed_mid_way_is_never_the_fastest(tmp_path):
    # model_int8.onnx's one round (4 ms hot) is faster than every pytorch round, but it crashed after it
    data = assemble(config(tmp_path), _manifests("classify"), _fail_mid_way(classify_raw(), "model_int8.onnx"))
    assert [(s["fastest"], s["slower_than_fastest"]) for s in data["fastest"]] == [("pytorch", {"pytorch": 1.0})]
    rows = {r["variant"]: r for r in data["results"]}
    assert rows["model_int8.onnx"]["complete"] is False and "vs_fastest" not in rows["model_int8.onnx"]
    assert rows["pytorch"]["complete"] is True and rows["pytorch"]["vs_fastest"] == 1.0
    markdown, html = render_markdown(data), render_html(data, tmp_path, {})
    for text in (markdown, html):
        assert "model_int8.onnx (failed; rounds before)" in text and "segfault in kernel" in text
    generated = assemble(config(tmp_path), _manifests("generate"), _fail_mid_way(generate_raw(), "model.onnx"))
    assert [s["fastest"] for s in generated["fastest"]] == ["pytorch"]
    assert "model.onnx (failed; rounds before)" in render_markdown(generated)


def test_speedups_need_a_baseline_measured_to_the_end(tmp_path):
    data = assemble(config(tmp_path), _manifests("classify"), _fail_mid_way(classify_raw(), "pytorch"))
    int8 = next(r for r in data["results"] if r["variant"] == "model_int8.onnx")
    assert int8["speedup_p50"] is None and int8["speedup_settled_p50"] is None
    assert [s["fastest"] for s in data["fastest"]] == ["model_int8.onnx"]


def test_accuracy_that_could_not_be_measured_is_reported(tmp_path):
    raw = classify_raw()
    raw["variants"]["model_int8.onnx"] = _ok(accuracy=None, accuracy_error="worker died: killed by signal 9")
    data = assemble(config(tmp_path), _manifests("classify"), raw)
    folder = tmp_path / "out"
    folder.mkdir()
    write_report(data, folder, plots=False)
    report = BenchReport.read(folder)
    assert report.quality_errors == {"model_int8.onnx": "accuracy not measured: worker died: killed by signal 9"}
    assert report.failed == {"pytorch-compile": "InductorError: no compiler"}  # still timed in full: not failed
    assert "## Accuracy not measured\n\n- `model_int8.onnx`: accuracy not measured: worker died: killed by signal 9" \
        in (folder / "report.md").read_text()
    assert "<h2>Accuracy not measured</h2>" in (folder / "report.html").read_text()
    raw = generate_raw()
    raw["variants"]["model.onnx"]["accuracy"].update(perplexity=None, perplexity_error="KeyError: logits")
    data = assemble(config(tmp_path), _manifests("generate"), raw)
    assert BenchReport(tmp_path, data).quality_errors == {"model.onnx": "perplexity not measured: KeyError: logits"}
    assert "- `model.onnx`: perplexity not measured: KeyError: logits" in render_markdown(data)


def _with_peer_and_provider(raw):
    raw["variants"]["model_int8.onnx"]["details"] = {"inference_precision": "f32", "static_shapes": True}
    raw["variants"]["openvino-int8"] = _ok(build={"build_s": 12.5, "cached": False}, details={"num_streams": 1})
    raw["timings"]["openvino-int8"] = [{"cell": [1, 16], "samples": raw["timings"]["pytorch"][0]["samples"]}]
    return raw


def test_the_html_report_says_what_the_markdown_says(tmp_path):
    data = assemble(config(tmp_path), _manifests("classify"), _with_peer_and_provider(classify_raw()))
    markdown, html = render_markdown(data), render_html(data, tmp_path, {})
    lines = summary_lines(data)
    assert any(line.startswith("Quiet rounds: 3 kept, 2 rejected") for line in lines)
    assert any(line.startswith("peak matmul: fp32 100.0 GFLOP/s") for line in lines)
    sections = dict(list_sections(data))
    assert sections["Peers"] == ["`openvino-int8` (openvino, int8): built in 12.5 s; num_streams 1"]
    assert sections["Providers"] == ["`model_int8.onnx`: inference_precision f32, static_shapes True"]
    for line in lines:
        assert f"- {line}" in markdown and f"<li>{inline_to_html(line)}</li>" in html
    for title, items in sections.items():
        assert f"## {title}" in markdown and f"<h2>{title}</h2>" in html
        for item in items:
            assert f"- {item}" in markdown and f"<li>{inline_to_html(item)}</li>" in html
    assert "<code>openvino-int8</code> (openvino, int8): built in 12.5 s" in html


def test_classifier_spread_is_over_every_call_and_the_kept_rounds_are_counted(tmp_path):
    data = assemble(config(tmp_path), _manifests("classify"), classify_raw())
    base = next(r for r in data["results"] if r["variant"] == "pytorch")
    calls = [0.010, 0.009, 0.011] + [0.012] * 3 + [0.011] * 3 + [0.030] * 3  # every hot call of the 4 rounds
    assert base["calls"]["n"] == 12 and base["n"] == 4
    assert base["calls"]["p90"] == pytest.approx(percentile(calls, 90))
    assert base["calls"]["p99"] == pytest.approx(percentile(calls, 99)) != pytest.approx(base["p99"])
    markdown = render_markdown(data)
    assert "| p90 ms (all calls) | p99 ms (all calls) |" in markdown and "| rounds | calls |" in markdown
    assert "p90 / p99 are over every timed call" in markdown
    assert f"| {percentile(calls, 90) * 1e3:.2f} | {percentile(calls, 99) * 1e3:.2f} |" in markdown
    assert "3 rounds kept per cell (at least 20 asked for)" in markdown and "20 repeats" not in markdown
    assert "others used at most 1.0% of a core during a kept round" in markdown
    settled = classify_raw()
    for cells in settled["timings"].values():
        for cell in cells:
            cell["samples"] = [{"seconds": m["seconds"], "hot": []} for m in cell["samples"]]
    base = next(r for r in assemble(config(tmp_path), _manifests("classify"), settled)["results"]
                if r["variant"] == "pytorch")
    assert base["calls"] == base["settled"]  # without hot calls, every call is a settled one


def test_a_dirty_round_is_warned_about_once_in_the_words_of_quiet(tmp_path):
    """The runner's warning is `noisy_warning`'s sentence, listed once with the report's warnings (report.md,
    report.html and the CLI print that list); the rounds line is `rounds_note`'s, without it."""
    raw = classify_raw()
    raw["rounds"].update(rounds_dirty=1, max_rejected_in_a_row=5)
    raw["warnings"] = machine_warnings(raw["rounds"], raw["load_before"], raw["load_after"], threads=2, cores=4)
    warning = noisy_warning(raw["rounds"])
    assert raw["warnings"] == [warning] and "1 of the 3 kept rounds were measured while other programs" in warning
    data = assemble(config(tmp_path), _manifests("classify"), raw)
    markdown, html = render_markdown(data), render_html(data, tmp_path, {})
    assert markdown.count(warning) == 1 and f"- **warning:** {warning}" in markdown
    assert html.count(html_escape(warning)) == 1
    assert f"- {rounds_note(data['rounds'], with_warning=False)}" in markdown


def test_the_machine_warnings_judged_or_not():
    clean = {"rounds_kept": 3, "rounds_rejected": 0, "rounds_dirty": 0, "max_other_share": 0.05, "judged": True}
    busy = ([3.5, 3.0, 3.0], [5.0, 4.0, 3.0])  # a load average that would say "busy"
    assert machine_warnings(clean, *busy, threads=2, cores=4) == []  # judged rounds say more than the load average
    unjudged = machine_warnings({**clean, "judged": False}, *busy, threads=2, cores=4)
    assert unjudged == [busy_warning(*busy, threads=2, cores=4), noisy_warning({**clean, "judged": False})]
    assert "not judged" in unjudged[1]
    (threads,) = machine_warnings(clean, *busy, threads=8, cores=4)
    assert threads.startswith("--threads 8 is more than the 4 usable cores")


RECORDED = sorted((Path(__file__).parents[2] / "benchmarks" / "results").glob("**/bench_*.json"))


@pytest.mark.skipif(not RECORDED, reason="no recorded bench results in benchmarks/results")
@pytest.mark.parametrize("path", RECORDED, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recorded_reports_still_render(path, tmp_path):
    """Reports recorded before `calls`, `complete` and `worst_kept_other_share` existed still read and render,
    and say what their spread columns hold."""
    report = BenchReport(path.parent, json.loads(path.read_text(encoding="utf-8")))
    markdown, html = render_markdown(report.data), render_html(report.data, tmp_path, {})
    assert "## Speed" in markdown and "<h2>Speed</h2>" in html
    if (report.data.get("rounds") or {}).get("judged"):
        rounds = report.data["rounds"]
        assert f"- Quiet rounds: {rounds['rounds_kept']} kept, {rounds['rounds_rejected']} rejected" in markdown
    if report.data["task"] == "classify":
        per_call = all("calls" in r for r in report.results)
        assert ("p90 ms (all calls)" if per_call else "p90 ms (of round medians)") in markdown
        # the summary says what the table says, not "every timed call" above a table of round medians
        assert ("p90 / p99 are over every timed call" in markdown) is per_call
        assert ("p90 / p99 are over every timed call" in html) is per_call


def test_without_hot_calls_the_report_shows_the_settled_latency_once(tmp_path):
    raw = classify_raw()
    for cells in raw["timings"].values():
        for cell in cells:
            cell["samples"] = [{"seconds": m["seconds"], "hot": []} for m in cell["samples"]]
    settings = BenchConfig(run=tmp_path / "run", bundle=tmp_path / "bundle", report=tmp_path / "report", hot_calls=0)
    data = assemble(settings, _manifests("classify"), raw)
    markdown, html = render_markdown(data), render_html(data, tmp_path, {})
    header = next(line for line in markdown.splitlines() if line.startswith("| variant | batch"))
    assert header.startswith("| variant | batch | seq | settled p50 ms | p90 ms") and header.count("settled") == 1
    assert "speed-up settled" not in markdown and "back-to-back calls made" not in markdown
    assert "latency is the settled call (one per round, after an idle pause; no back-to-back calls were timed)" in \
        markdown and "no back-to-back calls were timed" in html
    hot = render_markdown(assemble(config(tmp_path), _manifests("classify"), classify_raw()))
    assert "hot p50 ms" in hot and "settled p50 ms" in hot and "median of 5 back-to-back calls" in hot


def test_the_summary_says_how_many_eval_rows_scored_and_when_no_baseline_was_timed(tmp_path):
    data = assemble(config(tmp_path), _manifests("classify"), classify_raw())
    lines = summary_lines(data)
    assert "accuracy over 4 eval rows of the RUN" in lines
    assert any(line.startswith("baseline: `pytorch` (the RUN in eager fp32); speed-ups are") for line in lines)
    raw = classify_raw()
    raw["variants"]["pytorch"] = {**raw["variants"]["pytorch"], "status": "failed", "error": "boom"}
    lines = summary_lines(assemble(config(tmp_path), _manifests("classify"), raw))
    assert any(line.startswith("baseline: `pytorch` was not measured (not among the variants, or it failed), so no "
                               "speed-up is given; ") for line in lines)
    generated = summary_lines(assemble(config(tmp_path), _manifests("generate"), generate_raw()))
    assert "accuracy and perplexity over 4 eval rows of the RUN" in generated
