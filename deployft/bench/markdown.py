"""report.md: the benchmark's tables, readable in a terminal, a pull request or a README."""

from __future__ import annotations

from typing import Any

from ..tasks import get_task
from .quiet import rounds_note
from .report import quality_errors, row_label


def _num(value, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _mb(value) -> str:
    return _num(None if value is None else value / 1e6, ".1f")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(data: dict[str, Any]) -> str:
    """One line naming the CPU, cores, memory, threads and the main library versions."""
    m = data["machine"]
    versions = m.get("versions", {})
    libs = ", ".join(f"{k} {versions[k]}" for k in ("torch", "onnxruntime", "transformers") if k in versions)
    gpu = f", GPU {m['gpu']['name']}" if m.get("gpu") else ""
    return (f"{m['cpu']['model']} ({', '.join(m['cpu']['flags']) or 'no SIMD flags read'}), "
            f"{m['cores_usable']} usable cores, {m['memory_bytes'] / 2**30:.0f} GiB{gpu}; "
            f"{data['config']['threads']} threads{_provider(data['config'])}; {libs}")


def _provider(config: dict[str, Any]) -> str:
    provider = config.get("provider", "default")
    shapes = " (static shapes)" if config.get("static_shapes") else ""
    return "" if provider == "default" else f", ONNX Runtime provider {provider}{shapes}"


def variants_table(data: dict[str, Any]) -> str:
    rows = []
    for name, v in data["variants"].items():
        acc = v.get("accuracy") or {}
        if not get_task(data["task"]).generates:
            quality = [_num(acc.get("accuracy"), ".4f"), _num(acc.get("macro_f1"), ".4f"),
                       _num(acc.get("accuracy_delta_points"), "+.2f"),
                       _num(acc.get("agreement_with_pytorch"), ".3f")]
        else:
            quality = [_num(acc.get("perplexity"), ".3f"), _num(acc.get("token_agreement"), ".3f"),
                       _mb(v.get("weight_bytes_per_token"))]
        rows.append([name, v["status"], v["precision"], _mb(v.get("size_bytes")), _mb(v.get("peak_rss_bytes")),
                     _num(v.get("cold_start_s"), ".2f"), *quality])
    quality_head = (["accuracy", "macro-F1", "Δ accuracy (points)", "top-1 agreement with pytorch"]
                    if not get_task(data["task"]).generates
                    else ["perplexity", "greedy-token agreement", "weights read per token MB"])
    return _table(["variant", "status", "precision", "size MB", "peak RSS MB", "cold start s", *quality_head], rows)


def spread_per_call(data: dict[str, Any]) -> bool:
    """Whether a classifier report's p90 / p99 are over every timed call: every row has `calls` (a report written
    before they were recorded has them over the rounds' medians)."""
    return all("calls" in r for r in data["results"])


def hot_latency(data: dict[str, Any]) -> bool:
    """Whether a classifier report measured hot latency (back-to-back calls); with --hot-calls 0 every row's
    headline is the settled call."""
    return any(r.get("latency") == "hot" for r in data["results"])


def classify_table(data: dict[str, Any]) -> str:
    """Hot latency (the median of back-to-back calls, per round) where measured, the settled single call beside it;
    without hot calls the settled call only, once. p90 / p99 are over every timed call; a report written before
    `calls` was recorded has them over the rounds' medians only, and its header says so."""
    per_call, hot = spread_per_call(data), hot_latency(data)
    rows = []
    for r in sorted(data["results"], key=lambda r: (r["batch"], r["seq"])):
        spread = r["calls"] if per_call else r
        settled = [_num(r["settled"]["p50"] * 1e3), _num(r["speedup_settled_p50"], ".2f", "x")] if hot else []
        rows.append([row_label(r), str(r["batch"]), str(r["seq"]), _num(r["p50"] * 1e3), _num(spread["p90"] * 1e3),
                     _num(spread["p99"] * 1e3), _num(r["throughput"], ".1f"), _num(r["speedup_p50"], ".2f", "x"),
                     *settled, _num(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"], ".1f", "%"),
                     str(r["n"]), str(r["calls"]["n"]) if per_call else "–"])
    spread = ["p90 ms (all calls)", "p99 ms (all calls)"] if per_call else \
        ["p90 ms (of round medians)", "p99 ms (of round medians)"]
    settled = ["settled p50 ms", "speed-up settled"] if hot else []
    return _table(["variant", "batch", "seq", f"{'hot' if hot else 'settled'} p50 ms", *spread, "samples/s",
                   "speed-up p50", *settled, "of peak", "rounds", "calls"], rows)


def generate_table(data: dict[str, Any]) -> str:
    rows = []
    for r in sorted(data["results"], key=lambda r: (r["prompt_len"], r["new_tokens"])):
        tok = r["per_token"] or {}
        rows.append([row_label(r), str(r["prompt_len"]), str(r["new_tokens"]), _num(r["ttft"]["p50"] * 1e3),
                     _num(r["decode_tokens_per_s"], ".1f"), _num(tok.get("p50") and tok["p50"] * 1e3),
                     _num(tok.get("p99") and tok["p99"] * 1e3), _num(r["speedup_decode"], ".2f", "x"),
                     _num(r["speedup_ttft"], ".2f", "x"),
                     _num(None if r.get("fraction_of_bandwidth") is None else 100 * r["fraction_of_bandwidth"], ".1f",
                          "%"),
                     str(len(r["runs"]))])
    return _table(["variant", "prompt", "new tokens", "TTFT p50 ms", "decode tok/s", "per-token p50 ms",
                   "per-token p99 ms", "speed-up decode", "speed-up TTFT", "of memory roofline", "rounds"], rows)


def fastest_table(data: dict[str, Any]) -> str:
    """Per shape: the fastest variant, then each deployft file's time as a multiple of the fastest's."""
    generates = get_task(data["task"]).generates
    own = [n for n, v in data["variants"].items() if v["source"] == "onnx" and v["status"] == "ok"]
    rows = []
    for shape in data.get("fastest") or []:
        ratios = shape["slower_than_fastest"]
        cell = f"prompt {shape['prompt_len']}, {shape['new_tokens']} new" if generates else \
            f"b{shape['batch']}×{shape['seq']}"
        rows.append([cell, f"`{shape['fastest']}` ({shape['fastest_source']})",
                     *[_num(ratios.get(name), ".2f", "x") for name in own]])
    return _table(["shape", "fastest", *[f"`{n}`" for n in own]], rows)


FASTEST_NOTE = "Each deployft file's time (classifiers: p50; generators: per decoded token) as a multiple of the " \
    "fastest variant's; 1.00x means it is the fastest."


def peers_lines(data: dict[str, Any]) -> list[str]:
    """How each peer was built and run (engine settings, build time, cache), one list item each."""
    lines = []
    for name, v in data["variants"].items():
        if v["source"] != "peer":
            continue
        build, details = v.get("build") or {}, v.get("details") or {}
        made = "reused from the peer cache" if build.get("cached") else \
            f"built in {build['build_s']:.1f} s" if build.get("build_s") is not None else "not built"
        settings = _settings(details)
        lines.append(f"`{name}` ({v.get('engine')}, {v['precision']}): {made}"
                     + (f"; {settings}" if settings else "") + (f"; **{v['status']}**: {v['error']}"
                                                                  if v["status"] != "ok" else ""))
    return lines


def _settings(details: dict[str, Any]) -> str:
    return ", ".join(f"{k} {val}" for k, val in details.items())


def provider_lines(data: dict[str, Any]) -> list[str]:
    """How each of deployft's files ran where its provider reported settings (OpenVINO: precision, shapes)."""
    lines = []
    for name, v in data["variants"].items():
        details = v.get("details") or {}
        if v["source"] == "onnx" and details:
            lines.append(f"`{name}`: {_settings(details)}")
    return lines


def _latency_note(data: dict[str, Any]) -> str:
    """What a classifier's headline latency is: hot (back-to-back calls) or, with --hot-calls 0, settled."""
    if not hot_latency(data):
        return "latency is the settled call (one per round, after an idle pause; no back-to-back calls were timed)"
    return f"hot latency is the median of {data['config'].get('hot_calls', 0)} back-to-back calls made right after " \
        "each settled call (one per round, after an idle pause), as a busy server sees it"


def _baseline_line(data: dict[str, Any], generates: bool) -> str:
    """What the speed-ups divide by, or that they are missing: a baseline not timed (left out of the variants, or
    failed) gives none."""
    name = data["baseline"]
    if (data["variants"].get(name) or {}).get("status") != "ok":
        return f"baseline: `{name}` was not measured (not among the variants, or it failed), so no speed-up is given"
    if generates:
        return f"baseline: `{name}` (transformers generate, greedy, KV cache); speed-up = decode tokens/s over the " \
            "baseline's"
    return f"baseline: `{name}` (the RUN in eager fp32); speed-ups are baseline p50 / variant p50"


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The facts above the tables, one list item each (Markdown inline: `code`, **bold**); report.md and
    report.html both list them, so the two say the same."""
    load, generates = data["load_average"], get_task(data["task"]).generates
    # a report recorded before `calls` has p90 / p99 over the rounds' medians, as its table's header says
    spread = "; p90 / p99 are over every timed call" if spread_per_call(data) else ""
    lines = [f"machine: {machine_line(data)}",
             f"load average (1/5/15 min): before {load['before']}, after {load['after']}",
             _baseline_line(data, generates) + ("" if generates else f"; {_latency_note(data)}{spread}")]
    if rows := (data.get("inputs") or {}).get("eval_rows"):
        lines.append(f"accuracy{' and perplexity' if generates else ''} over {rows} eval rows of the RUN")
    rounds = data.get("rounds") or {}
    kept = f"{rounds['rounds_kept']} rounds kept per cell (at least {data['config']['repeats']} asked for)" \
        if "rounds_kept" in rounds else f"{data['config']['repeats']} rounds asked for per cell"
    lines.append(f"created {data['created']}, {kept} after {data['config']['warmup']} warm-up runs, variants "
                 "interleaved round by round")
    if rounds.get("judged"):  # its warning, if any, is among the report's warnings (`runner.machine_warnings`)
        lines.append(rounds_note(rounds, with_warning=False))
    if peak := data.get("peak"):
        lines.append(f"peak matmul: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s"
                     + (f", bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s" if peak.get("bf16") else "")
                     + (f", int8 {peak['int8'] / 1e9:.1f} GOP/s" if peak.get("int8") else "")
                     + (f"; memory read {peak['read_bytes_per_s'] / 1e9:.1f} GB/s" if peak.get("read_bytes_per_s")
                        else "") + f" ({peak.get('method', 'method not recorded')})")
        if generates:
            lines.append("decode is judged against the memory roofline: weight bytes read per token x decode "
                         "tokens/s over the measured read bandwidth (100 % = every weight streamed from memory at "
                         "that rate)")
    return lines


def list_sections(data: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The sections after the tables that are lists (title, items): peers, providers, failed variants and
    variants whose accuracy could not be measured; only those with something to say."""
    failed = [f"`{n}`: {v['error']}" for n, v in data["variants"].items() if v["status"] != "ok"]
    quality = [f"`{n}`: {reason}" for n, reason in quality_errors(data).items()]
    sections = [("Peers", peers_lines(data)), ("Providers", provider_lines(data)), ("Failed variants", failed),
                ("Accuracy not measured", quality)]
    return [(title, items) for title, items in sections if items]


def render_markdown(data: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The whole report.md."""
    parts = [f"# deployft bench: {data['task']} — {data.get('base_model')}", ""]
    parts += [f"- {line}" for line in summary_lines(data)]
    parts += [f"- **warning:** {w}" for w in data["warnings"]]
    parts += ["", "## Variants", "", variants_table(data), "", "## Speed", "",
              classify_table(data) if not get_task(data["task"]).generates else generate_table(data), ""]
    if data.get("fastest"):
        parts += ["## Fastest per shape", "", FASTEST_NOTE, "", fastest_table(data), ""]
    for title, items in list_sections(data):
        parts += [f"## {title}", ""] + [f"- {item}" for item in items] + [""]
    if images:
        parts += ["## Plots", ""] + [f"![{title}]({name})" for name, title in images.items()] + [""]
    return "\n".join(parts)
