"""JSON Lines, or a .json file holding a list of objects, -> rows.

Lines end at "\\n" alone (a trailing "\\r" is dropped): JSON strings may hold U+2028, U+2029 and U+0085, which
`str.splitlines` would take for line ends. A file that is one JSON object of columns (pandas' default
`to_json`) or of wrapped records is refused with the way to write records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["read_json_rows"]

_RECORDS_FIX = 'write one JSON object per row (pandas: df.to_json(path, orient="records", lines=True))'


def read_json_rows(path: Path, text: str) -> list[dict[str, Any]]:
    """The objects of a JSONL text, or of a JSON list; raises DataError naming the line of a bad one."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"data file {path} is not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from exc
    else:
        whole = _one_document(stripped)
        rows = _lines(path, text) if whole is None else [_one_row(path, whole)]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"data file {path} row {number} is {type(row).__name__} {str(row)[:40]!r}, not a JSON "
                            f"object; {_RECORDS_FIX}")
    return rows


def _one_document(text: str) -> Any:
    """The file's content when it is one JSON value (a pretty-printed object too), else None."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _one_row(path: Path, value: Any) -> Any:
    if isinstance(value, dict) and value and all(isinstance(v, (dict, list)) for v in value.values()):
        keys = ", ".join(map(str, list(value)[:6]))
        nested = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if nested:
            raise DataError(f"data file {path} holds its rows inside the key '{nested[0]}' of one JSON object "
                            f"(keys: {keys}); save that list on its own, or {_RECORDS_FIX}")
        raise DataError(f"data file {path} holds one JSON object of columns ({keys}), as pandas' default to_json "
                        f"writes, not one object per row; {_RECORDS_FIX}")
    return value


def _lines(path: Path, text: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"data file {path} line {number} is not valid JSON ({exc.msg}); "
                            "JSONL needs one JSON object per line") from exc
    return rows
