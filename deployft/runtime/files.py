"""Predict over a JSONL or CSV file in bounded memory: read a chunk, predict it, append it to a JSONL file.

The output is written under a temporary name of this run's own and renamed when complete
(`deployft.staging.atomic_file`), so an interrupted run never leaves a file that looks finished, two runs into
one output do not write the same file, and a temporary file left by a kill is removed by the next run.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..errors import DataError
from ..staging import atomic_file
from .predictor import Predictor
from .sampling import GenerationOptions
from ..tasks import get_task



def read_texts(path: Path, column: str | None, task: str) -> Iterator[str]:
    """Check the file, then return an iterator over the text of each row, read one at a time."""
    if not path.is_file():
        raise DataError(f"input file {path} not found; pass an existing .jsonl or .csv file to --input")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(f"input file {path} has extension '{suffix}'; pass a .jsonl or .csv file to --input")
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _csv_rows(path)
    return (_text_of(row, column, task, path, number) for number, row in rows)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {number} is not valid JSON ({exc.msg}); fix the line") from exc


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            yield number, row


def _text_of(row, column: str | None, task: str, path: Path, number: int) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise DataError(f"{path} line {number} is {type(row).__name__}; expected an object with a text column")
    names = (column,) if column else get_task(task).input_columns
    for name in names:
        if name in row:
            value = row[name]
            return "" if value is None else str(value)
    raise DataError(f"{path} line {number} has no column {' or '.join(repr(n) for n in names)} "
                    f"(columns: {', '.join(row)}); pass --column NAME")


def count_rows(path: Path) -> int:
    """Rows in the file (for the progress bar), counted without holding them."""
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(lines - 1, 0) if path.suffix.lower() == ".csv" else lines


def predict_file(predictor: Predictor, input_path: str | Path, output_path: str | Path,
                 column: str | None = None, batch_size: int = 32, options: GenerationOptions | None = None,
                 progress: bool = True) -> int:
    """Predict every row of `input_path` into JSONL `output_path`; returns the number of rows written."""
    from tqdm import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    texts = read_texts(input_path, column, predictor.task)
    chunk = list(itertools.islice(texts, batch_size))  # a wrong column fails here, before any progress bar
    written = 0
    with atomic_file(output_path) as staging, open(staging, "w", encoding="utf-8") as out, \
            tqdm(total=count_rows(input_path), disable=not progress, unit="row") as bar:
        while chunk:
            for record in _records(predictor, chunk, batch_size, options):
                out.write(json.dumps({"id": written, **record}, ensure_ascii=False) + "\n")
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
