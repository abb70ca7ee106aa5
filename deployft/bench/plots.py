"""PNG plots of a report: latency percentiles per variant and shape, speed-up bars, tokens/s for generators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tasks import get_task
from .report import row_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shape(row: dict[str, Any], task: str) -> str:
    if get_task(task).generates:
        return f"p{row['prompt_len']}+{row['new_tokens']}"
    return f"b{row['batch']}×s{row['seq']}"


def _grouped_bars(ax, shapes: list[str], variants: list[str], value) -> None:
    """Bars grouped by shape, one colour per variant; `value(variant, shape)` may be None (no bar)."""
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        heights = [value(variant, shape) for shape in shapes]
        xs = [j + i * width for j, h in enumerate(heights) if h is not None]
        ax.bar(xs, [h for h in heights if h is not None], width, label=variant)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=30, ha="right")
    ax.legend(fontsize=7)


def _save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    _pyplot().close(fig)
    return name


def latency_plot(data: dict[str, Any], folder: Path) -> str:
    """p50 bars with p90 and p99 markers per variant and shape (classification) or per-token latency (generation)."""
    plt, task = _pyplot(), data["task"]
    rows = data["results"]
    shapes = list(dict.fromkeys(_shape(r, task) for r in rows))
    variants = list(dict.fromkeys(row_label(r) for r in rows))
    # classifiers: bar at the median of the rounds' medians, ticks over every call (`calls`; older reports: rounds)
    stats = {(row_label(r), _shape(r, task)): (r if not get_task(task).generates else r["per_token"]) for r in rows}
    spread = {key: s.get("calls", s) if s else s for key, s in stats.items()}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(shapes) * max(1, len(variants) / 3)), 4))
    _grouped_bars(ax, shapes, variants, lambda v, s: stats[(v, s)]["p50"] * 1e3 if stats.get((v, s)) else None)
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        for j, shape in enumerate(shapes):
            s = spread.get((variant, shape))
            if s:
                ax.plot([j + i * width] * 2, [s["p90"] * 1e3, s["p99"] * 1e3], "k_", markersize=6)
    ax.set_yscale("log")
    over = "every call" if all("calls" in r for r in rows) else "the rounds' medians"
    ax.set_ylabel(f"ms (bar p50, ticks p90 / p99 of {over})" if not get_task(task).generates
                  else "ms per token (p50; ticks p90/p99)")
    ax.set_title("Latency percentiles per variant and shape")
    return _save(fig, folder, "latency.png")


def speedup_plot(data: dict[str, Any], folder: Path) -> str:
    """Speed-up over the PyTorch baseline per variant and shape (1.0 = as fast as the baseline)."""
    plt, task = _pyplot(), data["task"]
    key = "speedup_p50" if not get_task(task).generates else "speedup_decode"
    rows = data["results"]
    shapes = list(dict.fromkeys(_shape(r, task) for r in rows))
    variants = list(dict.fromkeys(row_label(r) for r in rows))
    values = {(row_label(r), _shape(r, task)): r.get(key) for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(shapes)), 4))
    _grouped_bars(ax, shapes, variants, lambda v, s: values.get((v, s)))
    if max((v for v in values.values() if v), default=1.0) > 10:
        ax.set_yscale("log")  # one huge ratio would flatten every other bar
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel("speed-up over pytorch" + (" at p50" if not get_task(task).generates else " (decode tokens/s)"))
    ax.set_title("Speed-up over the PyTorch original")
    return _save(fig, folder, "speedup.png")


def tokens_plot(data: dict[str, Any], folder: Path) -> str:
    """Decode tokens/s per variant and prompt length (generators)."""
    plt = _pyplot()
    rows = data["results"]
    shapes = list(dict.fromkeys(_shape(r, "generate") for r in rows))
    variants = list(dict.fromkeys(row_label(r) for r in rows))
    values = {(row_label(r), _shape(r, "generate")): r["decode_tokens_per_s"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(shapes)), 4))
    _grouped_bars(ax, shapes, variants, lambda v, s: values.get((v, s)))
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title("Generation speed")
    return _save(fig, folder, "tokens_per_s.png")


def write_plots(data: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write the plots that apply to the report's task; `{file name: title}` of those written."""
    if not data["results"]:
        return {}
    images = {latency_plot(data, folder): "Latency percentiles", speedup_plot(data, folder): "Speed-up over pytorch"}
    if get_task(data["task"]).generates:
        images[tokens_plot(data, folder)] = "Decode tokens per second"
    return images
