"""Predict over a JSONL or CSV file in bounded memory: read a chunk, predict it, append it to a JSONL file.

The input is UTF-8 (a leading byte-order mark is skipped), decoded one line at a time so a byte that is not UTF-8
is reported with its line; each row's text is a string (or null, read as ""), never another JSON value turned into
text. A CSV is read strictly, as training data is (`deployft.delimited.strict_rows`): a stray quote, or a
quote never closed (which would join every later line into one text and shift the ids), is an error naming its
line, and so is a line without the text's field (an empty field is an empty text). `predict --ray` reads its JSONL
and CSV files with this reader too (`ray_source`). The output path is checked before any work
(`outputs.check_output_file`: not the input, not a folder; and not named as another format, `OTHER_FORMATS`). It
is written under a temporary name of this run's own and renamed when complete (`deployft.staging.atomic_file`), so
an interrupted run never leaves a file that looks finished, two runs into one output do not write the same file,
and a temporary file left by a kill is removed by the next run.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..delimited import separator_message, strict_records, strict_rows
from ..errors import DataError, UsageError
from ..prompts import lone_surrogate
from ..staging import atomic_file
from ..tasks import get_task
from .inputs import check_batch_size
from .outputs import check_output_file
from .predictor import Predictor
from .sampling import GenerationOptions

logger = logging.getLogger(__name__)

OTHER_FORMATS = (".csv", ".tsv", ".json", ".parquet", ".xlsx", ".xls")
"""Output suffixes that name another format than the JSON Lines predict writes (refused: a reader of that format
would fail on the file, or misread it). `.jsonl`, `.ndjson` and names without these suffixes are taken."""
OUTPUT_ID = "id"
"""The key of each prediction's row position (0 for the input's first row)."""
_JSON_TYPES = {list: "an array", dict: "an object", bool: "a boolean", int: "a number", float: "a number"}
MAX_RECORD = 1_000_000
"""The longest CSV record read, in characters, every column of it counted: far beyond any model's input, and the
most a quote never closed makes the reader hold before it is refused (training reads its file whole, unbounded)."""


def check_input(path: Path, shown: str | Path | None = None) -> Path:
    """Refuse an input file that is missing or neither .jsonl nor .csv (named as `shown`, default `path`)."""
    shown = shown or path
    if not path.is_file():
        raise DataError(f"input file {shown} not found; pass an existing .jsonl or .csv file to --input")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(f"input file {shown} has extension '{suffix}'; pass a .jsonl or .csv file to --input")
    return path


def check_file_job(input_path: str | Path, output_path: str | Path, batch_size: int) -> None:
    """Refuse, before the bundle is loaded, a file job that cannot succeed: the batch size, the input file, and
    an output that is the input, a folder, under a file, or named as another format than the JSON Lines written."""
    check_batch_size(batch_size)
    check_input(Path(input_path))
    output = check_output_file(output_path, input_path)
    if output.suffix.lower() in OTHER_FORMATS:
        raise UsageError(f"--output {output_path} names a {output.suffix} file, but predict writes JSON Lines (one "
                         f"JSON object per row); pass an --output ending in .jsonl, such as "
                         f"{output.with_suffix('.jsonl')}")


def read_texts(path: Path, column: str | None, task: str, shown: str | Path | None = None) -> Iterator[str]:
    """Check the file, then return an iterator over the text of each row, read one at a time. Errors name the
    file as `shown` (default: `path`), e.g. the path as the user gave it when `path` is resolved."""
    shown = shown or path
    check_input(path, shown)
    lines = _lines(path, shown)
    csv = path.suffix.lower() == ".csv"
    rows = _csv_rows(lines, shown) if csv else _jsonl_rows(lines, shown)
    return (_text_of(row, column, task, shown, number, csv) for number, row in _noting_own_id(rows, shown))


def _noting_own_id(rows: Iterator[tuple[int, object]], shown: str | Path) -> Iterator[tuple[int, object]]:
    """`rows`, with a warning when the first has an `id` column of its own (`warn_own_id`)."""
    for index, (number, row) in enumerate(rows):
        if index == 0 and isinstance(row, dict):
            warn_own_id(shown, row)
        yield number, row


def warn_own_id(shown: str | Path, columns) -> None:
    """Warn that an input's own `id` column is not the predictions' `id` (each row's position), so that a file
    joined back on `id` is not joined one row off without a word."""
    if OUTPUT_ID in columns:
        logger.warning("%s has a column %r of its own; the predictions' %r is each row's position in the file (0 for "
                       "the first row), not that column: join them to the rows by position", shown, OUTPUT_ID,
                       OUTPUT_ID)


def _lines(path: Path, shown: str | Path) -> Iterator[str]:
    """The file's lines, each decoded on its own as UTF-8 (the first without a byte-order mark)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{shown} line {number} is not UTF-8 (byte {raw[exc.start]:#04x}); re-save the file "
                                "as UTF-8 (a spreadsheet's 'CSV UTF-8', or iconv -f latin1 -t utf-8) and pass it "
                                "to --input") from exc
            yield line


def _jsonl_rows(lines: Iterator[str], shown: str | Path) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{shown} line {number} is not valid JSON ({exc.msg}); fix the line") from exc
            yield number, row


def _csv_rows(lines: Iterator[str], shown: str | Path) -> Iterator[tuple[int, object]]:
    """The rows of a CSV file, read strictly, as training data is (`strict_rows`): a stray or unclosed quote, an
    unquoted comma or a repeated column is an error naming its line, never rows silently joined into one text or
    cut apart (either would shift every id); a record longer than `MAX_RECORD` is refused, so memory stays
    bounded (as long as the file has line breaks: a line is read whole). A header separated by another character
    (`text;label`) is refused first, as training refuses it."""
    lines, head = iter(lines), []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    message = separator_message(shown, "csv", head[-1].rstrip("\r\n") if head else "", tsv=False)
    if message:
        raise DataError(message)
    rows = strict_rows(itertools.chain(head, lines), shown, "csv", max_record=MAX_RECORD,
                       empty_fix="pass a file with a header and at least one row to --input")
    for start, _, row, _ in rows:
        yield start, row


def _text_of(row, column: str | None, task: str, path: Path, number: int, csv: bool = False) -> str:
    """The text of one row. A CSV record with fewer fields than the header lacks its last columns (`strict_rows`
    gives them as None): one that lacks the text is refused, as an empty field ("") is not."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise DataError(f"{path} line {number} is {type(row).__name__}; expected an object with a text column")
    names = (column,) if column else get_task(task).input_columns
    for name in names:
        if name in row:
            if csv and row[name] is None:
                raise DataError(f"{path} line {number} has {sum(v is not None for v in row.values())} of the "
                                f"header's {len(row)} fields, none for column {name!r}; fill the line in (an empty "
                                "text is an empty field), or quote a text that holds a comma or a line break")
            return text_value(row[name], name, get_task(task).generates, f"{path} line {number}")
    raise DataError(f"{path} line {number} has no column {' or '.join(repr(n) for n in names)} "
                    f"(columns: {', '.join(str(k) for k in row)}); pass --column NAME")


def text_value(value, name: str, generates: bool, where: str, fix: str = "write the text as a JSON string") -> str:
    """A row's text in column `name`: a string as it is, null as ""; any other value is refused, never turned into
    text (`predict --ray` reads Parquet values with it too).

    `where` names the row (`data.jsonl line 3`); `fix` is the message's fix for a value that is not a chat.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        if found := lone_surrogate(value):  # JSON's "\ud800" without its pair: the file's text to fix
            raise DataError(f"{where}: column {name!r} holds {found}, which is not valid text; write it as UTF-8 "
                            "text (a surrogate only as half of a pair)")
        return value
    chat = isinstance(value, list) and value and all(isinstance(m, dict) for m in value)
    if chat and generates:
        fix = ("a chat is not read from a file: pass its messages to Predictor.generate or to the server's "
               "/v1/chat/completions")
    found = _JSON_TYPES.get(type(value), f"a {type(value).__name__}")  # a Parquet column may hold dates, bytes, ...
    raise DataError(f"{where}: column {name!r} is {found}, not a string; {fix}")


def count_rows(path: Path) -> int:
    """Rows in the file (for the progress bar), counted without holding them: a CSV's records as the reader takes
    them (a quoted text may span lines; a record past `MAX_RECORD` stops the count), a JSONL file's lines that are
    not blank. 0 (no total) for a file the reader will refuse."""
    if path.suffix.lower() != ".csv":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    try:
        records = sum(1 for _, _, fields in strict_records(_lines(path, path), path, "csv", MAX_RECORD) if fields)
    except DataError:  # the reader names the line when it gets there; the bar only loses its total
        return 0
    return max(records - 1, 0)


def predict_file(predictor: Predictor, input_path: str | Path, output_path: str | Path,
                 column: str | None = None, batch_size: int = 32, options: GenerationOptions | None = None,
                 progress: bool = True) -> int:
    """Predict every row of `input_path` into JSONL `output_path`; returns the number of rows written.

    Raises:
        UsageError: batch_size below 1; `output_path` is the input file, a folder, under a file, or named as
            another format (`OTHER_FORMATS`).
        DataError: the input is missing, not .jsonl or .csv, not UTF-8, malformed, lacks the column (a CSV line
            without the text's field too), has a value that is not a string, or has no rows. Nothing is written
            then, and an existing output is kept.
    """
    from tqdm import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    check_file_job(input_path, output_path, batch_size)
    texts = read_texts(input_path, column, predictor.task)
    chunk = list(itertools.islice(texts, batch_size))  # a wrong column fails here, before any progress bar
    if not chunk:
        raise DataError(f"{input_path} has no rows; pass a file with at least one row to --input")
    written = 0
    with atomic_file(output_path) as staging, open(staging, "w", encoding="utf-8") as out, \
            tqdm(total=count_rows(input_path) or None, disable=not progress, unit="row") as bar:
        while chunk:
            for record in _records(predictor, chunk, batch_size, options):
                out.write(json.dumps({OUTPUT_ID: written, **record}, ensure_ascii=False) + "\n")
                written += 1
            bar.update(len(chunk))
            chunk = list(itertools.islice(texts, batch_size))
    return written


def _records(predictor: Predictor, chunk: list[str], batch_size: int,
             options: GenerationOptions | None) -> list[dict]:
    if not get_task(predictor.task).generates:
        return [{"text": t, **asdict(p)} for t, p in zip(chunk, predictor.predict(chunk, batch_size=batch_size))]
    settings = asdict(options or GenerationOptions())
    completions = predictor.generate(chunk, **settings)
    return [{"prompt": t, "completion": c} for t, c in zip(chunk, completions)]
