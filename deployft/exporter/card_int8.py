"""How a classifier's int8 file chosen by measurement (`select.py`) reads in the model card and `deployft info`:
why it was kept, every candidate with its guard and timings, and what the timings are worth."""

from __future__ import annotations

from typing import Any

__all__ = ["candidates_table", "fmt", "selection_text", "timing_note", "why_selected"]


def fmt(value: Any) -> str:
    """A value as the card's tables print it: `-` for none, small numbers in 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return str(value)


def selection_text(manifest: dict[str, Any]) -> str:
    """The candidates table and the timing note, as the model card prints them (empty without a selection)."""
    return "\n\n".join(part for part in (candidates_table(manifest["quantization"]), timing_note(manifest)) if part)


def why_selected(q: dict[str, Any]) -> str:
    """Why the kept int8 file is the one: its recipe, the rule among the candidates timed and built, the remedy, the
    agreement goal and what it is worth against the other kind of graph."""
    chosen = q["selection"]
    timed = sum(1 for c in q["candidates"] if c.get("ms"))
    built = sum(1 for c in q["candidates"] if c.get("skipped") is None)
    skipped = len(q["candidates"]) - built
    return (f"{q['choice']}; the {chosen['rule']} of the {timed} int8 candidates timed{_timed_on(chosen)}, of "
            f"{built} built{f' ({skipped} skipped)' if skipped else ''} (remedy: {q.get('remedy')})"
            f"{_goal(chosen)}; {chosen['note']}")


def _timed_on(selection: dict[str, Any]) -> str:
    """Which provider the candidates were timed on (bundles written before it was recorded: nothing)."""
    provider = selection.get("timed_on")
    return f" on ONNX Runtime's {provider} provider" if provider else ""


def _goal(selection: dict[str, Any]) -> str:
    """The agreement goal the remedies climbed for, and whether the kept file reached it (none before it existed)."""
    goal = selection.get("agreement_goal")
    if not goal:
        return ""
    if selection.get("agreement_goal_reached"):
        return f", agreeing with PyTorch on at least {goal:.2%} of the rows (--min-agreement {goal:g})"
    return (f"; no rung reached the goal of {goal:.2%} agreement with PyTorch (--min-agreement {goal:g}), so the "
            f"first rung within the guard was kept")


def candidates_table(q: dict[str, Any] | None) -> str:
    """A classifier's int8 candidates as a Markdown table: guard, size, median ms per shape, and the kept one (*);
    empty when the bundle was not quantized by measured selection."""
    if not q or not q.get("candidates"):
        return ""
    selection = q["selection"]
    shapes = selection.get("shapes") or []
    head = "| candidate | from | flips | bound | guard | MB | " + " | ".join(f"{s} ms" for s in shapes) + \
        " | geo-mean ms | vs plain |"
    lines = [head, "|" + " --- |" * (len(shapes) + 8)]
    for c in q["candidates"]:
        guard = c["guard"]
        verdict = "skipped" if c["skipped"] else ("pass" if c["passed"] else "FAIL")
        ms = [fmt(None if c["ms"] is None else c["ms"].get(s)) for s in shapes]
        size = "-" if c["bytes"] is None else f"{c['bytes'] / 1e6:.2f}"
        vs = "-" if c["vs_plain"] is None else f"{c['vs_plain']:.2f}x"
        lines.append(f"| {c['name']}{' *' if c['kept'] else ''} | {c['quantized_from'] or '-'} | "
                     f"{fmt(guard.get('flips'))} | {fmt(c['drop'])} | {verdict} | {size} | " + " | ".join(ms)
                     + f" | {fmt(c['score_ms'])} | {vs} |")
    timed = (f"timed{_timed_on(selection)} {selection['rounds']} interleaved rounds in {selection['seconds']} s, "
             f"{selection['threads']}")
    skipped = [f"{c['name']}: {c['skipped']}" for c in q["candidates"] if c["skipped"]]
    return "\n".join([f"kept by --select {selection['rule']} ({selection['score']}); {timed}; * = kept", *lines,
                      *[f"skipped {line}" for line in skipped]])


def timing_note(manifest: dict[str, Any]) -> str:
    """What the timings are worth when the files were validated through another provider than they were timed on
    (`timing.PROVIDER`); empty otherwise."""
    timed_on = ((manifest.get("quantization") or {}).get("selection") or {}).get("timed_on")
    validated = {(v.get("validation") or {}).get("provider", "default") for v in manifest["variants"].values()}
    others = ", ".join(sorted(validated - {timed_on}))
    if not timed_on or not others:
        return ""
    name = manifest["model_file"]
    dynamic = (manifest["variants"][name].get("ops") or {}).get("DynamicQuantizeLinear")
    runs = (f"a Predictor given provider {others} runs the bundle's fp32 file instead of {name}, as {others} "
            "does not accelerate dynamic int8 (DynamicQuantizeLinear)" if dynamic
            else f"through {others} the candidates may rank otherwise")
    return (f"The int8 candidates were validated through ONNX Runtime's {others} provider but timed on its "
            f"{timed_on} provider, which runs {name} as it is; {runs}.")
