"""Read a data source into plain rows (`list[dict]`), with one-line errors instead of parser tracebacks.

Formats: CSV and TSV (the shared `deployft/delimited.py`, which predict reads with too), JSONL or .json
holding a list (`jsonrows.py`), Parquet, a saved `datasets` folder, and the two embedded defaults
(`default:rotten_tomatoes`, `default:chatterbot`, see `deployft.data.defaults`). A text file that does not
decode is refused with its line, and an encoding is suggested only when the file is mostly not UTF-8 (one bad
byte in a UTF-8 file is a byte to fix).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

from ..delimited import read_delimited
from ..errors import DataError
from ..manifest import sha256_file
from .jsonrows import read_json_rows

logger = logging.getLogger(__name__)

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


def read_rows(path: Path, fmt: str, encoding: str = "utf-8", *, legacy: bool = False) -> list[dict[str, Any]]:
    """All rows of `path` as dicts; raises DataError for unreadable or empty data.

    `legacy`: read as RUNs recorded before the distinct-row split were trained on (`load_run_examples` replays
    those): CSV and TSV leniently (`csv.DictReader`'s defaults), the embedded chatterbot corpus with its repeated
    pairs.
    """
    if fmt in ("csv", "tsv", "jsonl"):
        text = _decode(path, encoding)
        rows = read_json_rows(path, text) if fmt == "jsonl" else read_delimited(path, text, fmt, legacy=legacy)
    elif fmt == "parquet":
        rows = _read_parquet(path)
    elif fmt == "datasets":
        rows = _read_saved_dataset(path)
    elif fmt == "default:rotten_tomatoes":
        rows = _read_rotten_tomatoes(path)
    elif fmt == "default:chatterbot":
        rows = _read_chatterbot(path, keep_repeats=legacy)
    else:
        raise DataError(f"unknown data format '{fmt}' for {path}")
    if not rows:
        raise DataError(f"data file {path} has no rows; pass a file with at least one example")
    return rows


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except LookupError as exc:
        raise DataError(f"unknown encoding '{encoding}' given to --encoding; use e.g. utf-8 or latin-1") from exc
    except UnicodeDecodeError as exc:
        raise DataError(_decode_error(path, data, encoding, exc)) from exc


def _decode_error(path: Path, data: bytes, encoding: str, exc: UnicodeDecodeError) -> str:
    """Where the first undecodable byte is, and the fix: an encoding only when the file is mostly not UTF-8."""
    line = data.count(b"\n", 0, exc.start) + 1
    found = f"data file {path} is not valid {encoding} (line {line}, byte {exc.start}: {data[exc.start:exc.end]!r})"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data[:4096]:
        return f"{found}; it looks like UTF-16: pass --encoding utf-16, or save it as UTF-8"
    if codecs.lookup(encoding).name == "utf-8" and _mostly_utf8(data):
        return (f"{found}, though the rest of the file is UTF-8; fix or delete that byte (an --encoding such as "
                "latin-1 would read every other accented character of the file wrongly)")
    return f"{found}; pass its encoding with --encoding, e.g. --encoding cp1252 (Windows) or latin-1"


def _mostly_utf8(data: bytes) -> bool:
    """More characters beyond ASCII decode as UTF-8 than bytes fail to: a UTF-8 file with a few damaged bytes."""
    valid = sum(1 for char in data.decode("utf-8", "ignore") if ord(char) > 127)
    invalid = data.decode("utf-8", "replace").count("\ufffd") - data.decode("utf-8", "ignore").count("\ufffd")
    return valid > invalid


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


def _read_chatterbot(folder: Path, keep_repeats: bool = False) -> list[dict[str, Any]]:
    """chatterbot-corpus conversations: the first utterance is the prompt, the second the response.

    A pair the corpus repeats (over half of its 2025: greetings, jokes asked twice) is kept once, so that no
    eval pair is a copy of a training pair; `keep_repeats` keeps them (RUNs recorded before this)."""
    import yaml

    rows = []
    for item in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(item.read_text(encoding="utf-8")) or {}
        for talk in doc.get("conversations") or []:
            if isinstance(talk, list) and len(talk) >= 2:
                rows.append({"prompt": str(talk[0]), "response": str(talk[1])})
    if keep_repeats:
        return rows
    pairs = dict.fromkeys((r["prompt"], r["response"]) for r in rows)  # first occurrences, in order
    distinct = [{"prompt": prompt, "response": response} for prompt, response in pairs]
    logger.info("chatterbot corpus: dropped %d repeated prompt/response pairs of %d", len(rows) - len(distinct),
                len(rows))
    return distinct
