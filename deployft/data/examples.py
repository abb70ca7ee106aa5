"""Training examples from the user's data: read, map columns, clean, sample, split, and re-read for a RUN.

`load_examples(...)` is what `finetune` calls; `load_run_examples(run_dir, split)` gives later stages
(export validation, bench) the very same rows a RUN was trained and evaluated on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError
from ..staging import same_file
from ..tasks import get_task
from .columns import chat_error, check_columns, is_chat, resolve_columns
from .labels import class_labels, normalize_label, number_text
from .readers import DEFAULT_SOURCES, detect_format, fingerprint, read_rows
from .split import SPLIT, SPLITS, input_key, split_rows

__all__ = ["Examples", "load_examples", "load_run_examples", "resolve_source"]

logger = logging.getLogger(__name__)


@dataclass
class Examples:
    """Cleaned rows of one task, split into train and eval, and the record that reproduces them."""

    train: list[dict[str, str]]
    eval: list[dict[str, str]]
    columns: dict[str, str]
    labels: list[str] | None
    record: dict[str, Any] = field(default_factory=dict)


def resolve_source(data: str | Path | None, task: str, encoding: str = "utf-8") -> dict[str, Any]:
    """`{"path", "format", "encoding"}` for a data path, or for the task's default data set when None."""
    if data is None or str(data) in DEFAULT_SOURCES:
        from .defaults import default_data

        path, fmt = default_data(task if data is None else str(data))
        return {"path": str(path), "format": fmt, "encoding": "utf-8"}
    path = Path(data).expanduser().resolve()
    return {"path": str(path), "format": detect_format(path), "encoding": encoding}


def load_examples(task: str, data: str | Path | None = None, eval_data: str | Path | None = None, *,
                  columns: dict[str, str | None] | None = None, eval_fraction: float = 0.1, seed: int = 42,
                  max_samples: int | None = None, encoding: str = "utf-8") -> Examples:
    """Read, clean, sample and split the data of `task` ("classify" or "generate").

    Args:
        columns: flag values `text`, `label`, `prompt`, `response` (None: the task's defaults).
        eval_fraction: share of the data held out for evaluation when `eval_data` is None.
        max_samples: at most this many examples, drawn with `seed` before the eval split
            (with `eval_data`: at most this many of each).

    Raises:
        DataError: a missing, empty, unreadable or unsuitable file (the message names it and the fix).
    """
    train_src = resolve_source(data, task, encoding)
    eval_src = resolve_source(eval_data, task, encoding) if eval_data is not None else None
    return _build(task, train_src, eval_src, columns or {}, eval_fraction, seed, max_samples)


def load_run_examples(run_dir: str | Path, split: str = "eval", limit: int | None = None) -> list[dict[str, str]]:
    """The rows a RUN folder was trained (`split="train"`) or evaluated (`split="eval"`) on.

    Raises:
        DataError: the RUN's data file is gone or changed since training (sha256 differs).
    """
    from ..manifest import read_manifest

    if split not in ("train", "eval"):
        raise UsageError(f"split must be 'train' or 'eval', got {split!r}")
    manifest = read_manifest(run_dir, "run")
    record = manifest["data"]
    sources = [record["train"]] + ([record["eval"]] if record.get("eval") else [])
    for source in sources:
        _check_unchanged(source, run_dir)
    if record.get("split") not in (None, *SPLITS):
        raise DataError(f"RUN {run_dir} was split by {record['split']!r}, which this deployft does not know; use "
                        "the deployft version that trained it")
    examples = _build(manifest["task"], record["train"], record.get("eval"), manifest["columns"],
                      record["eval_fraction"], record["seed"], record["max_samples"],
                      split=record.get("split"))
    rows = examples.train if split == "train" else examples.eval
    return rows[:limit] if limit is not None else rows


def _check_unchanged(source: dict[str, Any], run_dir: str | Path) -> None:
    path = Path(source["path"])
    if not path.exists():
        raise DataError(f"data {path} used by RUN {run_dir} is gone; restore it or pass your own examples")
    if fingerprint(path, source["format"]) != source["sha256"]:
        raise DataError(f"data {path} changed since RUN {run_dir} was trained (sha256 differs); "
                        "restore the original file or pass your own examples")


def _build(task: str, train_src: dict, eval_src: dict | None, flags: dict, eval_fraction: float,
           seed: int, max_samples: int | None, split: str | None = SPLIT) -> Examples:
    """`split`: the split a RUN recorded (`split.SPLITS`); a RUN recorded before the distinct-row split (None) is
    read, cleaned, split and labelled as it was then, so it replays the very rows it trained on (the lenient CSV
    reader, values and labels spelled as read, the row split of `split.py`, an --eval-data that is --data let
    through)."""
    legacy = split not in SPLITS
    train_path = Path(train_src["path"])
    if not legacy and eval_src is not None and same_file(train_path, Path(eval_src["path"])):
        raise DataError(f"--eval-data {eval_src['path']} is the same file as --data, so eval would score the "
                        "training rows; pass a file of held-out rows, or leave --eval-data out to hold out "
                        "--eval-fraction of --data")
    raw = read_rows(train_path, train_src["format"], train_src["encoding"], legacy=legacy)
    columns = resolve_columns(get_task(task), flags, raw, train_path)
    pool = _clean(raw, columns, train_path, legacy, booleans=split == SPLIT)
    rng = random.Random(seed)
    if eval_src is None:
        train, evals = split_rows(_sample(pool, rng, max_samples), eval_fraction, train_path,
                                  None if legacy else split)
    else:
        eval_path = Path(eval_src["path"])
        eval_raw = read_rows(eval_path, eval_src["format"], eval_src["encoding"], legacy=legacy)
        check_columns(columns, eval_raw, eval_path)
        train = _sample(pool, rng, max_samples)
        evals = _sample(_clean(eval_raw, columns, eval_path, legacy, booleans=split == SPLIT), rng, max_samples)
        _warn_overlap(train, evals, eval_path)
    labels = None if get_task(task).generates else class_labels(
        train, evals, columns["label"], train_path, eval_src and eval_src["path"], legacy)
    record = _record(train_src, eval_src, columns, len(train), len(evals), eval_fraction, seed, max_samples)
    return Examples(train=train, eval=evals, columns=columns, labels=labels, record=record)


def _as_text(value: Any) -> str | None:
    if isinstance(value, float) and math.isnan(value):
        return None
    return _legacy_text(value)


def _legacy_text(value: Any) -> str | None:
    """A value as RUNs recorded before the distinct-row split spelled it: labels not normalised, NaN kept."""
    if value is None:
        return None
    text = number_text(value) if isinstance(value, float) else str(value)
    return text if text.strip() else None


def _clean(rows: list[dict], columns: dict[str, str], path: Path, legacy: bool = False,
           booleans: bool = True) -> list[dict[str, str]]:
    """Rows renamed to their roles, as strings; rows with an empty or missing value are dropped.

    `legacy`: every value spelled by `_legacy_text`, nested ones too, as RUNs before the distinct-row split were.
    `booleans`: a boolean label is one class whatever its format or case (`normalize_label`); False for a RUN of
    an earlier split, which learned them as written.

    Raises:
        DataError: a value is a JSON object or list (or a nested Parquet value), not text.
    """
    kept = []
    for number, row in enumerate(rows, start=1):
        values = {role: _legacy_text(row.get(name)) if legacy else _value(row.get(name), role, name, path, number,
                                                                           booleans)
                  for role, name in columns.items()}
        if all(v is not None for v in values.values()):
            kept.append(values)
    dropped = len(rows) - len(kept)
    names = " or ".join(f"'{n}'" for n in columns.values())  # a row is dropped when any of them is empty
    if not kept:
        raise DataError(f"all {len(rows)} rows of {path} have an empty or missing {names}; "
                        "fill them in or pass the right column flags")
    if dropped:
        logger.warning("dropped %d of %d rows of %s with an empty or missing %s", dropped, len(rows), path, names)
    return kept


def _value(value: Any, role: str, name: str, path: Path, number: int, booleans: bool = True) -> str | None:
    if is_chat(value):
        raise DataError(chat_error(name, path))
    if isinstance(value, (dict, list, tuple)):
        raise DataError(f"column '{name}' of {path} row {number} holds a {type(value).__name__}, not text "
                        f"({str(value)[:40]}); write that value as plain text, or pass --{role}-column "
                        "with a column of text")
    return normalize_label(value, booleans) if role == "label" else _as_text(value)


def _sample(rows: list[dict], rng: random.Random, max_samples: int | None) -> list[dict]:
    rows = list(rows)
    rng.shuffle(rows)
    return rows[:max_samples] if max_samples is not None else rows


def _warn_overlap(train: list[dict], evals: list[dict], eval_path: Path) -> None:
    inputs = {input_key(row) for row in train}
    copies = sum(input_key(row) in inputs for row in evals)
    if copies:
        logger.warning("%d of %d eval rows of %s also occur in the training data: the eval metrics score them "
                       "on rows the model trained on", copies, len(evals), eval_path)


def _record(train_src: dict, eval_src: dict | None, columns: dict[str, str], n_train: int, n_eval: int,
            eval_fraction: float, seed: int, max_samples: int | None) -> dict[str, Any]:
    """The `data` field of a RUN. Its `fingerprint` is the sha256 of the files' sha256, the column mapping and
    the split settings: what decides the rows a run trains on, cheap to recompute (the files are hashed anyway);
    a file saved again with the same rows counts as other data."""
    def describe(src: dict, rows: int) -> dict[str, Any]:
        path = Path(src["path"])
        sha256 = src.get("sha256") or fingerprint(path, src["format"])
        return {"path": str(path), "format": src["format"], "sha256": sha256, "rows": rows, "encoding": src["encoding"]}

    train = describe(train_src, n_train)
    evals = describe(eval_src, n_eval) if eval_src is not None else None
    settings = {"eval_fraction": None if eval_src else eval_fraction, "seed": seed, "max_samples": max_samples,
                "split": SPLIT}
    blob = json.dumps([train["sha256"], evals and evals["sha256"], columns, settings], sort_keys=True)
    return {"train": train, "eval": evals, **settings, "fingerprint": hashlib.sha256(blob.encode()).hexdigest()}
