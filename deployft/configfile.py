"""Fill a stage's config dataclass from defaults, a YAML/TOML file, and explicit values, in that order.

The CLI, the Python API and a config file all fill the same dataclass: one source of defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from .errors import UsageError, first_line

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file into a flat dict."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} not found; pass an existing file to --config")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"config file {path} has extension '{suffix}'; use .yaml, .yml, .toml or .json")
    except UsageError:
        raise
    except Exception as exc:  # the parsers' own error types differ; all mean the same thing here
        raise UsageError(f"config file {path} could not be parsed: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[T], config_file: str | Path | None = None, **explicit: Any) -> T:
    """Build `cls` from its defaults, then `config_file`, then the `explicit` values that are not None."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"config file {config_file} has unknown option(s) {', '.join(unknown)}; "
                             f"known options: {', '.join(sorted(names))}")
    values.update({k: v for k, v in explicit.items() if v is not None})
    return cls(**values)
