"""CSV and TSV text -> rows, refusing what the csv module would otherwise misread without a word.

    CSV   quoted as RFC 4180 says, strictly: a stray quote is an error naming its line, not a field that
          swallows the lines after it
    TSV   no quoting at all (the IANA text/tab-separated-values rule): a quote is a character like any other

Also refused, with the line and the fix: a row with more fields than the header (an unquoted comma in a text),
a header naming a column twice, and a quoted field whose lines are records of their own (a quote opened in one
record and closed, by chance, in a later one).
"""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["read_delimited", "separator_hint"]

FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
"""The longest field read: the csv module's default (131,072 characters) refuses long documents."""
_QUOTE_FIX = 'double a quote inside a field ("") and wrap that field in quotes, or remove the stray quote'
_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}


def read_delimited(path: Path, text: str, fmt: str) -> list[dict[str, Any]]:
    """The rows of a CSV (`fmt="csv"`) or TSV (`fmt="tsv"`) text; raises DataError for a misread-prone file."""
    csv.field_size_limit(FIELD_LIMIT)
    delimiter = "\t" if fmt == "tsv" else ","
    options: dict[str, Any] = {"quoting": csv.QUOTE_NONE} if fmt == "tsv" else {"strict": True}
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, **options)
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    spans: list[tuple[int, int, int]] = []  # (first line, last line, row) of the records spanning lines
    start = 1
    try:
        for record in reader:
            if record and header is None:
                header = _check_header(record, path)
            elif record:
                if len(record) != len(header):
                    record = _fit(record, header, path, start, fmt)
                rows.append(dict(zip(header, record)))
                if reader.line_num != start:
                    spans.append((start, reader.line_num, len(rows) - 1))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _parse_error(exc, path, fmt, start, reader.line_num) from exc
    if header is None:
        raise DataError(f"data file {path} is empty; pass a file with a header and at least one row")
    if fmt == "csv" and spans:
        _check_swallowed(rows, spans, header, path)
    return rows


def _fit(record: list[str], header: list[str], path: Path, line: int, fmt: str) -> list[Any]:
    """A short record padded with None (missing values); a long one refused."""
    if len(record) < len(header):
        return record + [None] * (len(header) - len(record))
    raise DataError(f"data file {path} line {line} has {len(record)} fields but the header has {len(header)} "
                    f"({', '.join(header)}); {_extra_field_fix(fmt)}")


def _parse_error(exc: csv.Error, path: Path, fmt: str, start: int, line: int) -> DataError:
    if "unexpected end of data" in str(exc):
        return DataError(f"data file {path} line {start}: a quote opened in this record is never closed, so the "
                         f"rest of the file would be read as one field; {_QUOTE_FIX}")
    where = f"line {line}" + (f" (in the record that starts on line {start})" if start != line else "")
    return DataError(f"data file {path} {where} is not valid {fmt.upper()} ({exc}); {_QUOTE_FIX}")


def _check_header(header: list[str], path: Path) -> list[str]:
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        names = ", ".join(f"'{name}'" for name in repeated)
        raise DataError(f"data file {path} names column(s) {names} more than once in its header (line 1); "
                        "rename the copies so every column has its own name")
    return header


def _extra_field_fix(fmt: str) -> str:
    if fmt == "tsv":
        return "a TSV field cannot hold a tab: replace the tabs inside the text with spaces"
    return 'wrap a text that holds a comma in double quotes ("hello, world",pos)'


def _check_swallowed(rows: list[dict[str, Any]], spans: list[tuple[int, int, int]], header: list[str],
                     path: Path) -> None:
    """Refuse a quoted field that holds lines which are records of this file: as many fields as the header, one of
    them a value that its column repeats in single-line records (a label), right where that column sits. A
    multi-line text of prose does not look like that."""
    if len(header) < 2:
        return
    spanning = {index for _, _, index in spans}
    single = [row for index, row in enumerate(rows) if index not in spanning]
    repeated = []
    for name in header:
        counts = Counter((row[name] or "").strip() for row in single)
        repeated.append({value for value, n in counts.items() if n > 1 and value})
    for start, end, index in spans:
        for column, name in enumerate(header):
            for line in (rows[index][name] or "").split("\n")[:-1]:
                parts = [part.strip() for part in line.rstrip("\r").split(",")]
                if len(parts) == len(header) and any(parts[j] in repeated[j] for j in range(len(parts)) if j != column):
                    raise DataError(f"data file {path} lines {start}-{end} are read as one record: the quoted "
                                    f"'{name}' field holds the line {line.strip()!r}, which looks like a record of "
                                    f"its own, so a quote in it is unbalanced; {_QUOTE_FIX}")


def separator_hint(path: Path, columns: list[str]) -> str | None:
    """The fix for a delimited file whose one header column holds another separator (`text;label` in a .csv)."""
    fmt = path.suffix.lower()
    if fmt not in (".csv", ".tsv") or len(columns) != 1:
        return None
    own = "," if fmt == ".csv" else "\t"
    found = [sep for sep in _SEPARATORS if sep != own and sep in str(columns[0])]
    if not found:
        return None
    sep = found[0]
    fix = {"\t": "rename it to .tsv", ",": "rename it to .csv"}.get(sep, "save it comma-separated (.csv)")
    header = str(columns[0]).replace("\t", "\\t")
    return (f"data file {path} is separated by {_SEPARATORS[sep]}s, not {_SEPARATORS[own]}s (header: {header}); "
            f"{fix}")
