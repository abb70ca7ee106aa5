"""Fill a stage's config dataclass from defaults, a YAML/TOML file, and explicit values, in that order.

The CLI, the Python API and a config file all fill the same dataclass: one source of defaults. A file's keys are
the flags' names (dashes or underscores): a field whose flag is named otherwise says so in its metadata
(`metadata={"flag": "grace"}` for `grace_s`, set by `--grace`), and the file may use either name.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
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
    try:
        text = path.read_text(encoding="utf-8")
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
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.end]!r}); "
                         "save it as UTF-8") from exc
    except Exception as exc:  # the parsers' own error types differ; all mean the same thing here
        raise UsageError(f"config file {path} could not be parsed: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[T], config_file: str | Path | None = None, **explicit: Any) -> T:
    """Build `cls` from its defaults, then `config_file`, then the `explicit` values that are not None.

    A file's values are converted to their fields' types (`lr: "5e-5"` -> 5e-05, `batch_size: "16"` -> 16).

    Raises:
        UsageError: an unreadable file, an unknown option, or a value of the wrong type (naming key and file).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    flags = {f.metadata["flag"]: name for name, f in fields.items() if "flag" in f.metadata}
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update({flags.get(key, key): value for key, value in read_config_file(config_file).items()})
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = {fields[name].metadata.get("flag", name) for name in fields}
            raise UsageError(f"config file {config_file} has unknown option(s) {', '.join(unknown)}; "
                             f"known options: {', '.join(sorted(known))}")
        hints = _type_hints(cls)
        values = {key: convert_value(value, hints.get(key), fields[key], f"config file {config_file}")
                  for key, value in values.items()}
    values.update({k: v for k, v in explicit.items() if v is not None})
    return cls(**values)


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not evaluate: leave the values to the dataclass's own checks
        return {}


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path"}


def convert_value(value: Any, hint: Any, field: dataclasses.Field, where: str,
                  syntax: str = "{name}: {value}") -> Any:
    """`value` as the field's type: bool, int, float or str (a path), or None where the field allows it; other
    field types (tuples, ...) are left to the dataclass. A value of none of them is a UsageError that starts with
    `where` (`config file x.yaml`) and shows the field's default written in `syntax` as an example."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    simple = [kind for kind in kinds if kind is not type(None)]
    if not simple or any(kind not in _KINDS for kind in simple):
        return value
    if value is None and type(None) in kinds:
        return None
    for kind in simple:
        converted = _as(kind, value)
        if converted is not None:
            return converted
    default = field.default
    example = ("" if default in (None, dataclasses.MISSING)
               else "; e.g. " + syntax.format(name=field.name, value=json.dumps(default)))
    expected = " or ".join(_KINDS[kind] for kind in simple) + (" or null" if type(None) in kinds else "")
    raise UsageError(f"{where}: option {field.name} must be {expected}, got {value!r} "
                     f"({type(value).__name__}){example}")


def _as(kind: type, value: Any) -> Any:
    """`value` as `kind`, or None when it is not one."""
    if kind is bool:
        words = {"true": True, "false": False}
        return value if isinstance(value, bool) else words.get(value.lower()) if isinstance(value, str) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        return value if isinstance(value, int) else None
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value) if isinstance(value, str) else None
        except ValueError:
            return None
    if isinstance(value, (str, Path)):
        return value
    return str(value) if isinstance(value, (int, float)) else None
