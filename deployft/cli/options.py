"""Flag help fed from the config dataclasses: a default is written once, in the dataclass, and shown from there."""

from __future__ import annotations

import dataclasses


def shown(cls, name: str) -> str:
    """The dataclass default of `name` as `--help` shows it (`show_default=shown(ExportConfig, "opset")`)."""
    value = {f.name: f for f in dataclasses.fields(cls)}[name].default
    if value is None or value is dataclasses.MISSING:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)
