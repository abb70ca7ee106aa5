"""The benchmark report: one JSON document with every raw timing, and the files written from it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..manifest import read_json
from ..tasks import get_task
from .config import TORCH_VARIANTS, BenchConfig
from .peak import fraction_of_peak
from .roofline import fraction_of_bandwidth
from .timing import percentile, summarize

BASELINE = "pytorch"
"""Speed-ups and accuracy deltas are measured against the RUN in eager fp32."""


@dataclasses.dataclass
class BenchReport:
    """A written benchmark report: its folder and its `report.json` content."""

    path: Path
    """The report folder (report.json, report.md, report.html, *.png)."""
    data: dict[str, Any]
    """Everything in report.json."""

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        """Per variant: status, error, size, peak memory, cold start and accuracy."""
        return self.data["variants"]

    @property
    def results(self) -> list[dict[str, Any]]:
        """One row per variant and grid cell, with raw samples and their summary. Classifiers: p50 / p90 / p99 are
        over the rounds' medians, `calls` over every timed call; `complete` is False for the rounds a variant
        measured before it failed (such a row is never the fastest)."""
        return self.data["results"]

    @property
    def failed(self) -> dict[str, str]:
        """`{variant: error}` for the variants that could not be measured."""
        return {n: v["error"] for n, v in self.variants.items() if v["status"] != "ok"}

    @property
    def quality_errors(self) -> dict[str, str]:
        """`{variant: reason}` for variants timed in full whose accuracy or perplexity could not be measured."""
        return quality_errors(self.data)

    @classmethod
    def read(cls, folder: str | Path) -> BenchReport:
        """Load a report folder written by `benchmark`."""
        folder = Path(folder)
        return cls(folder.resolve(), read_json(folder / "report.json", UsageError, missing_ok=False))


def _config_json(config: BenchConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(config).items()}


def assemble(config: BenchConfig, manifests: dict, raw: dict[str, Any]) -> dict[str, Any]:
    """The report document from the raw measurements: summaries, speed-ups, fractions of peak, accuracy deltas."""
    run = manifests["run"]
    variants = {name: _variant_entry(name, manifests["bundle"], info) for name, info in raw["variants"].items()}
    peak = raw.get("peak")
    if not get_task(run["task"]).generates:
        flops = {name: raw.get("flops_first_position") if v.get("first_position") else raw["flops"]
                 for name, v in variants.items()}
        results = _classify_results(raw["timings"], variants, flops, peak)
    else:
        results = _generate_results(raw["timings"], variants, raw["flops"], peak)
    _accuracy_deltas(variants, run["task"])
    fastest = fastest_per_shape(results, variants, get_task(run["task"]).generates)
    return {
        "format_version": 1, "kind": "bench", "created": raw["created"], "task": run["task"],
        "run": str(Path(config.run).resolve()), "bundle": str(Path(config.bundle).resolve()),
        "base_model": run.get("base_model"), "model_type": run.get("model_type"),
        "config": _config_json(config), "machine": raw["machine"], "inputs": raw["inputs"],
        "load_average": {"before": raw["load_before"], "after": raw["load_after"]},
        "rounds": raw.get("rounds"), "warnings": raw["warnings"], "peak": peak, "wall_s": raw["wall_s"],
        "baseline": BASELINE,
        "variants": variants, "results": results, "fastest": fastest,
    }


def quality_errors(data: dict[str, Any]) -> dict[str, str]:
    """`{variant: reason}` for variants timed in full whose accuracy (or a generator's perplexity) could not be
    measured: the worker failed in the accuracy pass, or a variant without full-sequence logits."""
    errors = {}
    for name, v in data["variants"].items():
        perplexity = (v.get("accuracy") or {}).get("perplexity_error")
        if v["status"] == "ok" and v.get("accuracy_error"):
            errors[name] = f"accuracy not measured: {v['accuracy_error']}"
        elif v["status"] == "ok" and perplexity:
            errors[name] = f"perplexity not measured: {perplexity}"
    return errors


def fastest_per_shape(results: list[dict[str, Any]], variants: dict[str, dict], generates: bool
                      ) -> list[dict[str, Any]]:
    """Per grid shape, the fastest variant (lowest p50; generators: most decode tokens/s) and how many times
    slower than it each variant is; each row also gets `vs_fastest`. Only variants measured to the end (status
    ok) take part: a variant that failed mid-way keeps its earlier rounds in `results`, too few to rank."""
    shape_keys = ("prompt_len", "new_tokens") if generates else ("batch", "seq")
    shapes: dict[tuple, list[dict]] = {}
    for row in results:
        if variants[row["variant"]]["status"] == "ok":
            shapes.setdefault(tuple(row[k] for k in shape_keys), []).append(row)
    table = []
    for shape, rows in shapes.items():
        if generates:
            rows = [r for r in rows if r["decode_tokens_per_s"]]
            cost = {r["variant"]: 1.0 / r["decode_tokens_per_s"] for r in rows}
        else:
            cost = {r["variant"]: r["p50"] for r in rows}
        if not cost:
            continue
        best = min(cost, key=cost.get)
        for row in rows:
            row["vs_fastest"] = cost[row["variant"]] / cost[best]
        table.append({**dict(zip(shape_keys, shape)), "fastest": best,
                      "fastest_source": variants[best]["source"],
                      "slower_than_fastest": {n: c / cost[best] for n, c in cost.items()}})
    return table


def row_label(row: dict[str, Any]) -> str:
    """A result row's variant name, marked when the variant failed after these rounds (tables and plots alike)."""
    return row["variant"] if row.get("complete", True) else f"{row['variant']} (failed; rounds before)"


def _variant_entry(name: str, bundle: dict, info: dict[str, Any]) -> dict[str, Any]:
    from .peers import PEERS

    entry = dict(info)
    entry["source"] = "torch" if name in TORCH_VARIANTS else "peer" if name in PEERS else "onnx"
    if name in PEERS:
        entry["precision"], entry["engine"] = PEERS[name].precision, PEERS[name].engine
    elif name in TORCH_VARIANTS:
        entry["precision"] = "int8" if name == "pytorch-int8" else "fp32"
    else:
        file = (bundle.get("variants") or {}).get(name, {})
        entry["precision"] = file.get("precision", "fp32")
        # a file made from the fused graph computes the last layer's first position alone where export did so
        entry["first_position"] = bool((bundle.get("fusion") or {}).get("first_position") and file.get("optimized"))
    return entry


def _peak_for(peak: dict | None, variant: dict[str, Any]) -> float | None:
    """The peak a variant is judged against: int8 for int8 / int4 files (MatMulNBits accuracy level 4 computes in
    int8), bf16 for float files run with a bf16 precision hint (none measured: no fraction), else fp32."""
    if not peak:
        return None
    if variant["precision"].startswith(("int8", "int4")):
        return peak.get("int8")
    if (variant.get("details") or {}).get("inference_precision") == "bf16":
        return peak.get("bf16")
    return peak.get("fp32")


def _classify_results(timings, variants, flops, peak) -> list[dict[str, Any]]:
    """Result rows; `flops`: `{variant: {cell: FLOPs per inference}}`, each variant's own."""
    rows = []
    for name, cells in timings.items():
        for cell in cells:
            if not cell["samples"]:
                continue
            batch, seq = cell["cell"]
            settled = [m["seconds"] for m in cell["samples"]]
            hot = [percentile(m["hot"], 50) for m in cell["samples"] if m["hot"]]
            times = hot if len(hot) == len(settled) else settled
            calls = [t for m in cell["samples"] for t in m["hot"]] if times is hot else settled
            stats = summarize(times)
            cell_flops = (flops.get(name) or {}).get(f"{batch}x{seq}")
            rows.append({"variant": name, "batch": batch, "seq": seq, "latency": "hot" if times is hot else "settled",
                         "complete": variants[name]["status"] == "ok", "calls": summarize(calls),
                         "times_s": times, "settled_times_s": settled, "settled": summarize(settled), **stats,
                         "throughput": batch / stats["p50"], "flops": cell_flops,
                         "fraction_of_peak": fraction_of_peak(cell_flops, stats["p50"],
                                                              _peak_for(peak, variants[name]))})
    base = {(r["batch"], r["seq"]): r for r in rows if r["variant"] == BASELINE and r["complete"]}
    for row in rows:
        ref = base.get((row["batch"], row["seq"]))
        row["speedup_p50"] = ref["p50"] / row["p50"] if ref else None
        row["speedup_settled_p50"] = ref["settled"]["p50"] / row["settled"]["p50"] if ref else None
    return rows


def _decode_rate(run: dict[str, Any]) -> float | None:
    """Tokens per second after the first token (the decode phase), or None for a single-token run."""
    times = run["times"]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None


def _generate_results(timings, variants, flops, peak) -> list[dict[str, Any]]:
    rows = []
    for name, cells in timings.items():
        for cell in cells:
            if not cell["samples"]:
                continue
            prompt_len, new_tokens = cell["cell"]
            runs = cell["samples"]
            gaps = [b - a for r in runs for a, b in zip(r["times"], r["times"][1:])]
            rates = [x for x in (_decode_rate(r) for r in runs) if x is not None]
            cell_flops = flops.get(f"{prompt_len}x{new_tokens}") or {}
            rate = summarize(rates)["p50"] if rates else None
            rows.append({
                "variant": name, "prompt_len": prompt_len, "new_tokens": new_tokens, "runs": runs,
                "complete": variants[name]["status"] == "ok",
                "ttft": summarize([r["times"][0] for r in runs]),
                "per_token": summarize(gaps) if gaps else None, "decode_tokens_per_s": rate,
                "tokens_generated": [r["tokens"] for r in runs], "flops": cell_flops or None,
                "fraction_of_peak": fraction_of_peak(cell_flops.get("decode_token", 0) * (rate or 0), 1.0,
                                                     _peak_for(peak, variants[name])),
                "fraction_of_bandwidth": fraction_of_bandwidth(rate, variants[name].get("weight_bytes_per_token"),
                                                               (peak or {}).get("read_bytes_per_s")),
            })
    base = {(r["prompt_len"], r["new_tokens"]): r for r in rows if r["variant"] == BASELINE and r["complete"]}
    for row in rows:
        ref = base.get((row["prompt_len"], row["new_tokens"]))
        ok = ref is not None and ref["decode_tokens_per_s"] and row["decode_tokens_per_s"]
        row["speedup_decode"] = row["decode_tokens_per_s"] / ref["decode_tokens_per_s"] if ok else None
        row["speedup_ttft"] = ref["ttft"]["p50"] / row["ttft"]["p50"] if ref is not None else None
    return rows


def _accuracy_deltas(variants: dict[str, dict], task: str) -> None:
    """Compare each variant's predictions with the baseline's, then drop the bulky per-sample lists."""
    from .accuracy import token_agreement

    base = dict((variants.get(BASELINE) or {}).get("accuracy") or {})
    for entry in variants.values():
        acc = entry.get("accuracy")
        if not acc:
            continue
        if not get_task(task).generates:
            preds, ref = acc.get("predictions"), base.get("predictions")
            if ref is not None and preds is not None and "accuracy" in base:
                acc["agreement_with_pytorch"] = sum(a == b for a, b in zip(preds, ref)) / max(len(ref), 1)
                acc["accuracy_delta_points"] = 100 * (acc["accuracy"] - base["accuracy"])
        else:
            ref = base.get("continuations")
            acc["token_agreement"] = token_agreement(ref, acc["continuations"]) if ref is not None else None
    for entry in variants.values():
        if entry.get("accuracy"):
            entry["accuracy"].pop("predictions", None)
            entry["accuracy"].pop("continuations", None)


def write_report(data: dict[str, Any], folder: Path, plots: bool = True) -> None:
    """report.json, report.md, the PNG plots and the self-contained report.html, into `folder`."""
    from .html import render_html
    from .markdown import render_markdown

    (folder / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    images = {}
    if plots:
        from .plots import write_plots

        images = write_plots(data, folder)
    (folder / "report.md").write_text(render_markdown(data, images), encoding="utf-8")
    (folder / "report.html").write_text(render_html(data, folder, images), encoding="utf-8")
