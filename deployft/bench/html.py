"""report.html: one self-contained file (plots embedded as base64) that can be mailed or attached to a CI run."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from ..tasks import get_task
from .markdown import (FASTEST_NOTE, classify_table, fastest_table, generate_table, list_sections, summary_lines,
                       variants_table)

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.warn{background:#fff3cd;padding:.5em 1em;border-radius:4px}
img{max-width:100%;display:block;margin:1em 0}code{background:#f3f3f3;padding:0 3px}"""


def markdown_table_to_html(table: str) -> str:
    """The pipe tables report.md uses, as an HTML table (cells escaped)."""
    lines = [line.strip().strip("|").split("|") for line in table.strip().splitlines()]
    header, body = lines[0], lines[2:]
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def inline_to_html(text: str) -> str:
    """One line of report.md's inline Markdown (`code`, **bold**), escaped, as HTML."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{inline_to_html(item)}</li>" for item in items) + "</ul>"


def _image(folder: Path, name: str, title: str) -> str:
    encoded = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'


def render_html(data: dict[str, Any], folder: Path, images: dict[str, str]) -> str:
    """The whole report.html, with no external reference: tables inline, plots as data URIs; the same lines and
    sections as report.md (`summary_lines`, `list_sections`)."""
    speed = classify_table(data) if not get_task(data["task"]).generates else generate_table(data)
    title = f"deployft bench: {data['task']} — {data.get('base_model')}"
    warnings = "".join(f'<p class="warn">Warning: {html.escape(w)}</p>' for w in data["warnings"])
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", _list(summary_lines(data)), warnings,
        "<h2>Variants</h2>", markdown_table_to_html(variants_table(data)),
        "<h2>Speed</h2>", markdown_table_to_html(speed),
        *(["<h2>Fastest per shape</h2>", f"<p>{html.escape(FASTEST_NOTE)}</p>",
           markdown_table_to_html(fastest_table(data))] if data.get("fastest") else []),
        *(f"<h2>{html.escape(name)}</h2>{_list(items)}" for name, items in list_sections(data)),
        "<h2>Plots</h2>" if images else "",
        *(_image(folder, name, title) for name, title in images.items()),
        "</body></html>",
    ]
    return "\n".join(parts)
