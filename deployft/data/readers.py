"""Read a data source into plain rows (`list[dict]`), with one-line errors instead of parser tracebacks.

Formats: CSV, TSV, JSONL (or .json holding a list), Parquet, a saved `datasets` folder, and the two
embedded defaults (`default:rotten_tomatoes`, `default:chatterbot`, see `deployft.data.defaults`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..manifest import sha256_file

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
DEFAULT_SOURCES = ("default:rotten_tomatoes", "default:chatterbot")


def detect_format(path: Path) -> str:
    """The format name of a data path, or a DataError naming what is supported."""
    if not path.exists():
        raise DataError(f"data file {path} not found; pass an existing file or folder to --data / --eval-data")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "datasets"
        raise DataError(f"data folder {path} is not a saved `datasets` folder (no dataset_info.json); "
                        "pass a CSV, TSV, JSONL or Parquet file, or a folder written by Dataset.save_to_disk")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"data file {path} has unsupported extension '{suffix or '(none)'}'; "
                        "use .csv, .tsv, .jsonl, .json or .parquet, or a saved `datasets` folder")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty; pass a file with a header and at least one row")
    return EXTENSIONS[suffix]


def fingerprint(path: Path, fmt: str) -> str:
    """sha256 of a data file, or of the sorted file table of a folder."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def read_rows(path: Path, fmt: str, encoding: str = "utf-8") -> list[dict[str, Any]]:
    """All rows of `path` as dicts; raises DataError for unreadable or empty data."""
    if fmt in ("csv", "tsv", "jsonl"):
        text = _decode(path, encoding)
        rows = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, fmt)
    elif fmt == "parquet":
        rows = _read_parquet(path)
    elif fmt == "datasets":
        rows = _read_saved_dataset(path)
    elif fmt == "default:rotten_tomatoes":
        rows = _read_rotten_tomatoes(path)
    elif fmt == "default:chatterbot":
        rows = _read_chatterbot(path)
    else:
        raise DataError(f"unknown data format '{fmt}' for {path}")
    if not rows:
        raise DataError(f"data file {path} has no rows; pass a file with at least one example")
    return rows


def _decode(path: Path, encoding: str) -> str:
    try:
        return path.read_bytes().decode(encoding).removeprefix("\ufeff")
    except LookupError as exc:
        raise DataError(f"unknown encoding '{encoding}' given to --encoding; use e.g. utf-8 or latin-1") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not valid {encoding} (byte {exc.start}); "
                        "pass its encoding with --encoding, e.g. --encoding latin-1") from exc


def _read_delimited(path: Path, text: str, fmt: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    try:
        rows = [dict(row) for row in reader]
    except csv.Error as exc:
        raise DataError(f"data file {path} is not valid {fmt.upper()} ({exc}); fix the file") from exc
    if not reader.fieldnames:
        raise DataError(f"data file {path} is empty; pass a file with a header and at least one row")
    return rows


def _read_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"data file {path} is not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from exc
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"data file {path} line {number} is not valid JSON ({exc.msg}); "
                                "JSONL needs one JSON object per line") from exc
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(f"data file {path} must hold JSON objects (one per line), not other values")
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"data file {path} is not a readable Parquet file ({type(exc).__name__}); "
                        "fix the file or convert it to CSV or JSONL") from exc


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for damaged folders
        raise DataError(f"data folder {path} could not be read by datasets.load_from_disk "
                        f"({type(exc).__name__}); re-create it with save_to_disk") from exc
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise DataError(f"data folder {path} holds splits {', '.join(data)} but no 'train'; "
                            "save one split with Dataset.save_to_disk")
        data = data["train"]
    return data.to_list()


def _read_rotten_tomatoes(path: Path) -> list[dict[str, Any]]:
    """Rotten Tomatoes review snippets: label `fresh` or `rotten` (the `plot` summaries are dropped)."""
    import bz2

    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{"text": r["text"], "label": r["category"]} for r in rows if r["category"] in ("fresh", "rotten")]


def _read_chatterbot(folder: Path) -> list[dict[str, Any]]:
    """chatterbot-corpus conversations: the first utterance is the prompt, the second the response."""
    import yaml

    rows = []
    for item in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(item.read_text(encoding="utf-8")) or {}
        for talk in doc.get("conversations") or []:
            if isinstance(talk, list) and len(talk) >= 2:
                rows.append({"prompt": str(talk[0]), "response": str(talk[1])})
    return rows
