"""Training examples from the user's data: read, map columns, clean, sample, split, and re-read for a RUN.

`load_examples(...)` is what `finetune` calls; `load_run_examples(run_dir, split)` gives later stages
(export validation, bench) the very same rows a RUN was trained and evaluated on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError
from ..tasks import Task, get_task
from .readers import DEFAULT_SOURCES, detect_format, fingerprint, read_rows

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
    examples = _build(manifest["task"], record["train"], record.get("eval"), manifest["columns"],
                      record["eval_fraction"], record["seed"], record["max_samples"])
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
           seed: int, max_samples: int | None) -> Examples:
    train_path = Path(train_src["path"])
    raw = read_rows(train_path, train_src["format"], train_src["encoding"])
    columns = _resolve_columns(get_task(task), flags, raw, train_path)
    pool = _clean(raw, columns, train_path)
    rng = random.Random(seed)
    if eval_src is None:
        train, evals = _split(_sample(pool, rng, max_samples), eval_fraction, train_path)
    else:
        eval_path = Path(eval_src["path"])
        eval_raw = read_rows(eval_path, eval_src["format"], eval_src["encoding"])
        _check_columns(columns, eval_raw, eval_path)
        train = _sample(pool, rng, max_samples)
        evals = _sample(_clean(eval_raw, columns, eval_path), rng, max_samples)
    labels = None if get_task(task).generates else _labels(train, evals, columns, train_path, eval_src)
    record = _record(train_src, eval_src, columns, len(train), len(evals), eval_fraction, seed, max_samples)
    return Examples(train=train, eval=evals, columns=columns, labels=labels, record=record)


def _resolve_columns(task: Task, flags: dict, rows: list[dict], path: Path) -> dict[str, str]:
    """The column of each role: the mapping a column flag names, else the first the file's columns fit."""
    flagged = [roles for roles in task.column_roles if any(flags.get(role) for role in roles)]
    roles = flagged[0] if flagged else task.default_columns(list(rows[0]))
    columns = {role: flags.get(role) or role for role in roles}
    _check_columns(columns, rows, path)
    return columns


def _check_columns(columns: dict[str, str], rows: list[dict], path: Path) -> None:
    found = list(rows[0])
    for role, name in columns.items():
        if name not in found:
            raise DataError(f"column '{name}' not found in {path} (columns: {', '.join(map(str, found))}); "
                            f"pass --{role}-column with one of them")


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


def _clean(rows: list[dict], columns: dict[str, str], path: Path) -> list[dict[str, str]]:
    """Rows renamed to their roles, as strings; rows with an empty or missing value are dropped."""
    kept = []
    for row in rows:
        values = {role: _as_text(row.get(name)) for role, name in columns.items()}
        if all(v is not None for v in values.values()):
            kept.append(values)
    dropped = len(rows) - len(kept)
    names = ", ".join(f"'{n}'" for n in columns.values())
    if not kept:
        raise DataError(f"all {len(rows)} rows of {path} have an empty or missing {names}; "
                        "fill them in or pass the right column flags")
    if dropped:
        logger.warning("dropped %d of %d rows of %s with an empty or missing %s", dropped, len(rows), path, names)
    return kept


def _sample(rows: list[dict], rng: random.Random, max_samples: int | None) -> list[dict]:
    rows = list(rows)
    rng.shuffle(rows)
    return rows[:max_samples] if max_samples is not None else rows


def _split(rows: list[dict], eval_fraction: float, path: Path) -> tuple[list[dict], list[dict]]:
    n_eval = max(1, round(len(rows) * eval_fraction))
    if len(rows) - n_eval < 1:
        raise DataError(f"{path} has {len(rows)} usable example(s), too few to hold out an eval split; "
                        "add rows, lower --eval-fraction or pass --eval-data")
    return rows[n_eval:], rows[:n_eval]


def _label_key(label: str) -> tuple:
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


def _labels(train: list[dict], evals: list[dict], columns: dict, path: Path, eval_src: dict | None) -> list[str]:
    seen = {row["label"] for row in train}
    if eval_src is None:
        seen |= {row["label"] for row in evals}
    labels = sorted(seen, key=_label_key)
    if len(labels) < 2:
        raise DataError(f"label column '{columns['label']}' of {path} has one class ({labels[0]!r}); "
                        "classification needs at least two: add examples of other classes or check --label-column")
    unknown = sorted({row["label"] for row in evals} - seen, key=_label_key)
    if unknown:
        raise DataError(f"eval data {eval_src['path']} has label(s) {', '.join(unknown)} that never occur in "
                        f"{path}; add them to the training data or remove them from --eval-data")
    return labels


def _record(train_src: dict, eval_src: dict | None, columns: dict[str, str], n_train: int, n_eval: int,
            eval_fraction: float, seed: int, max_samples: int | None) -> dict[str, Any]:
    """The `data` field of a RUN. Its `fingerprint` is the sha256 of the files' sha256, the column mapping and
    the split settings: what decides the rows a run trains on, cheap to recompute (the files are hashed anyway);
    a file saved again with the same rows counts as other data."""
    def describe(src: dict, rows: int) -> dict[str, Any]:
        path = Path(src["path"])
        return {"path": str(path), "format": src["format"], "sha256": src.get("sha256") or fingerprint(path, src["format"]),
                "rows": rows, "encoding": src["encoding"]}

    train = describe(train_src, n_train)
    evals = describe(eval_src, n_eval) if eval_src is not None else None
    settings = {"eval_fraction": None if eval_src else eval_fraction, "seed": seed, "max_samples": max_samples}
    blob = json.dumps([train["sha256"], evals and evals["sha256"], columns, settings], sort_keys=True)
    return {"train": train, "eval": evals, **settings, "fingerprint": hashlib.sha256(blob.encode()).hexdigest()}
