"""CSV and TSV text -> rows, refusing what the csv module would otherwise misread without a word.

Both are quoted as RFC 4180 says (what pandas' `to_csv` writes, with `sep="\\t"` too), strictly: a stray quote
is an error naming its line, not a field that swallows the lines after it. A header line holding another
separator and none of its own (`text;label` in a .csv) is refused before any row is judged. A row with more
fields than the header (an unquoted comma or tab in a text) and a header naming a column twice are refused with
the line and the fix; extra fields that are all empty (a trailing separator) are dropped. A quoted field whose
lines look like records of this file is read as written, with a warning naming its lines: a quote opened in one
record and closed, by chance, in a later one would read that way too. `strict_rows` is the strict reading
itself, one row at a time: `predict --input` reads its CSV through it, each record bounded (`max_record`).

RUNs recorded before this reading (`legacy=True`) are replayed with the reader they were trained with:
`csv.DictReader`'s defaults, lenient about quotes and extra fields.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["read_delimited", "separator_hint", "strict_records", "strict_rows"]

logger = logging.getLogger(__name__)

FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
"""The longest field training reads: the csv module's default (131,072 characters) refuses long documents."""
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
"""One line of a text with its ending (\\n, \\r\\n or a lone \\r), as `io.StringIO(text, newline="")` splits it."""
_QUOTE_FIX = 'double a quote inside a field ("") and wrap that field in quotes, or remove the stray quote'
_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}


def text_lines(text: str) -> Iterator[str]:
    """The lines of `text` with their endings, one at a time, as a file opened with newline="" yields them (the csv
    module's input), without the copy `io.StringIO` makes: it holds four bytes per character."""
    return (match.group() for match in _LINE.finditer(text))


def read_delimited(path: Path, text: str, fmt: str, *, legacy: bool = False) -> list[dict[str, Any]]:
    """The rows of a CSV (`fmt="csv"`) or TSV (`fmt="tsv"`) text; raises DataError for a misread-prone file.

    `legacy`: read as RUNs recorded before the distinct-row split were read (`load_run_examples` replays those).
    """
    delimiter = "\t" if fmt == "tsv" else ","
    if legacy:
        return _read_lenient(path, text, fmt, delimiter)
    _check_separator(path, text, fmt)
    rows: list[dict[str, Any]] = []
    spans: list[tuple[int, int, int]] = []  # (first line, last line, row) of the records spanning lines
    trailing = 0  # rows whose extra fields are all empty
    for start, end, row, cut in strict_rows(text_lines(text), path, fmt):
        rows.append(row)
        trailing += cut
        if end != start:
            spans.append((start, end, len(rows) - 1))
    header = list(rows[0]) if rows else []
    if trailing:
        logger.warning("%s: %d row(s) end in empty fields past the header's %d columns (a trailing separator); "
                    "those empty fields are ignored", path, trailing, len(header))
    if spans:
        _warn_swallowed(rows, spans, header, path, delimiter)
    return rows


def _read_lenient(path: Path, text: str, fmt: str, delimiter: str) -> list[dict[str, Any]]:
    """The reader of RUNs recorded before the distinct-row split: extra fields and stray quotes pass unnoticed."""
    csv.field_size_limit(FIELD_LIMIT)  # `strict_records` sets it for the strict reading
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [dict(row) for row in reader]
    except csv.Error as exc:
        raise DataError(f"data file {path} is not valid {fmt.upper()} ({exc}); fix the file") from exc
    if not reader.fieldnames:
        raise DataError(f"data file {path} is empty; pass a file with a header and at least one row")
    return rows


def _drop_empty_extras(record: list[str], header: list[str], path: str | Path, line: int, fmt: str) -> list[str]:
    """A record with more fields than the header, cut to the header when the extra fields are empty; else refused."""
    if not any(field.strip() for field in record[len(header):]):
        return record[:len(header)]
    raise DataError(f"data file {path} line {line} has {len(record)} fields but the header has {len(header)} "
                    f"({', '.join(header)}); {_extra_field_fix(fmt)}")


def strict_rows(lines: Iterable[str], path: str | Path, fmt: str, max_record: int | None = None,
                empty_fix: str = "pass a file with a header and at least one row",
                ) -> Iterator[tuple[int, int, dict[str, Any], bool]]:
    """The rows of CSV (`fmt="csv"`) or TSV `lines`, read strictly, one at a time: `(first line, last line, row,
    cut)`, `row` keyed by the header's columns (a short record's missing fields None), `cut` when the record's
    extra fields were empty and dropped (a trailing separator). Blank lines are skipped.

    `max_record` bounds one record's characters (`strict_records`); `empty_fix` is the fix an empty file's error
    gives.

    Raises:
        DataError: no header (an empty file), a header naming a column twice, a record with more fields than the
            header, a record past `max_record` characters, or a quote error (`strict_records`).
    """
    header: list[str] | None = None
    for start, end, record in strict_records(lines, path, fmt, max_record):
        if record and header is None:
            header = _check_header(record, path)
        elif record:
            cut = len(record) > len(header)
            if cut:
                record = _drop_empty_extras(record, header, path, start, fmt)
            yield start, end, dict(zip(header, record + [None] * (len(header) - len(record)))), cut
    if header is None:
        raise DataError(f"data file {path} is empty; {empty_fix}")


def strict_records(lines: Iterable[str], path: str | Path, fmt: str,
                   max_record: int | None = None) -> Iterator[tuple[int, int, list[str]]]:
    """The records of CSV (`fmt="csv"`) or TSV `lines` (each line with its end of line), read strictly, one at a
    time: `(first line, last line, fields)`, a blank line an empty record.

    `max_record` bounds the characters of one record, its lines together (None: no bound): a quote never closed
    makes the rest of the file one record, held in memory until the end of the file or until this bound. The
    bound is counted here, on the lines handed to the csv module, whose own field limit is one setting for the
    whole process: that stays `FIELD_LIMIT` for every reader, so readers in other threads never change it.

    Raises:
        DataError: a quote is never closed (naming the line its record starts on) or stray (naming its line), or
            a record runs past `max_record` characters.
    """
    csv.field_size_limit(FIELD_LIMIT)
    taken = 0  # characters of the record being read

    def counted() -> Iterator[str]:
        nonlocal taken
        for line in lines:
            taken += len(line)
            if max_record is not None and taken > max_record:
                raise _RecordTooLong(taken == len(line))
            yield line

    reader = csv.reader(counted(), delimiter="\t" if fmt == "tsv" else ",", strict=True)
    start = 1
    try:
        for record in reader:  # the csv module reads no line ahead of the record it returns
            yield start, reader.line_num, record
            start, taken = reader.line_num + 1, 0
    except csv.Error as exc:
        raise _parse_error(exc, path, fmt, start, reader.line_num) from exc
    except _RecordTooLong as exc:
        if exc.args[0]:  # the record's one line
            raise DataError(f"data file {path} line {start} is longer than {max_record:,} characters, the most "
                            "read for one record; shorten its fields") from None
        raise DataError(f"data file {path} line {start}: the record that starts on this line runs past "
                        f"{max_record:,} characters, the most read, most likely because a quote opened there is "
                        f"never closed (every line after it read into one field); {_QUOTE_FIX}, or shorten the "
                        "record's fields") from None


class _RecordTooLong(Exception):
    """Raised in the lines `strict_records` hands the csv module, when a record outgrows its bound; its one
    argument: whether the record was a single line."""


def _parse_error(exc: csv.Error, path: str | Path, fmt: str, start: int, line: int) -> DataError:
    if "unexpected end of data" in str(exc):
        return DataError(f"data file {path} line {start}: a quote opened in this record is never closed, so the "
                         f"rest of the file would be read as one field; {_QUOTE_FIX}")
    where = f"line {line}" + (f" (in the record that starts on line {start})" if start != line else "")
    found = str(exc).replace("\t", "\\t")  # the csv module names the tab it expected as a literal tab
    return DataError(f"data file {path} {where} is not valid {fmt.upper()} ({found}); {_QUOTE_FIX}")


def _check_header(header: list[str], path: str | Path) -> list[str]:
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        names = ", ".join(f"'{name}'" for name in repeated)
        raise DataError(f"data file {path} names column(s) {names} more than once in its header (line 1); "
                        "rename the copies so every column has its own name")
    return header


def _extra_field_fix(fmt: str) -> str:
    if fmt == "tsv":
        return "wrap a text that holds a tab in double quotes, or replace its tabs with spaces"
    return 'wrap a text that holds a comma in double quotes ("hello, world",pos)'


def _warn_swallowed(rows: list[dict[str, Any]], spans: list[tuple[int, int, int]], header: list[str], path: Path,
                    delimiter: str) -> None:
    """Warn of quoted fields holding lines that look like records of this file: as many fields as the header, one
    of them a value that its column repeats in single-line records (a label), right where that column sits. The
    quotes balance (the strict parser checked), so this is a suspicion, not an error: a list in a text can look so."""
    if len(header) < 2:
        return
    spanning = {index for _, _, index in spans}
    single = [row for index, row in enumerate(rows) if index not in spanning]
    repeated = []
    for name in header:
        counts = Counter((row[name] or "").strip() for row in single)
        repeated.append({value for value, n in counts.items() if n > 1 and value})
    suspects = []
    for start, end, index in spans:
        name, line = _record_like(rows[index], header, repeated, delimiter)
        if line is not None:
            suspects.append(f"lines {start}-{end} (the '{name}' field holds the line {line!r})")
    if suspects:
        logger.warning("data file %s: %d quoted field(s) hold a line that looks like a record of its own: %s; "
                       "each was read as one field, as its quotes balance, but those lines may be records swallowed "
                       "by a misplaced quote: if so, %s", path, len(suspects),
                       "; ".join(suspects[:5]) + (" ..." if len(suspects) > 5 else ""), _QUOTE_FIX)


def _record_like(row: dict[str, Any], header: list[str], repeated: list[set[str]],
                 delimiter: str) -> tuple[str | None, str | None]:
    """`(column, line)` of the first line inside a field of `row` that looks like a record, else `(None, None)`."""
    for column, name in enumerate(header):
        for line in (row[name] or "").split("\n")[:-1]:
            parts = [part.strip() for part in line.rstrip("\r").split(delimiter)]
            if len(parts) == len(header) and any(parts[j] in repeated[j] for j in range(len(parts)) if j != column):
                return name, line.strip()
    return None, None


def _check_separator(path: Path, text: str, fmt: str) -> None:
    """Refuse a file whose header line holds another separator and not its own (`text;label` in a .csv), before
    any row is judged: a `;` row holding a comma or a quote would otherwise fail with advice about commas."""
    header = next((line for line in text_lines(text) if line.strip()), "")
    message = separator_message(path, fmt, header.rstrip("\r\n"))
    if message:
        raise DataError(message)


def separator_hint(path: Path, columns: list[str]) -> str | None:
    """The fix for a delimited file whose one header column holds another separator (`text;label` in a .csv)."""
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "tsv") or len(columns) != 1:
        return None
    return separator_message(path, fmt, str(columns[0]))


def separator_message(path: str | Path, fmt: str, header: str, tsv: bool = True) -> str | None:
    """The error for a header line that holds another separator and not the file's own (`text;label` in a .csv),
    with the fix; None when the header looks right. `tsv`: the reader takes .tsv files (predict does not, so a
    tab-separated .csv is told to be saved comma-separated instead)."""
    own = "\t" if fmt == "tsv" else ","
    found = [sep for sep in _SEPARATORS if sep != own and sep in header]
    if own in header or not found:
        return None
    sep = found[0]
    renames = {"\t": "rename it to .tsv", ",": "rename it to .csv"} if tsv else {}
    fix = renames.get(sep, "save it comma-separated (.csv)")
    shown = header.replace("\t", "\\t")
    return (f"data file {path} is separated by {_SEPARATORS[sep]}s, not {_SEPARATORS[own]}s (header: {shown}); "
            f"{fix}")
