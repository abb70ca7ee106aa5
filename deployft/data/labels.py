"""Class labels: one spelling per class whatever the format, and the classes a classifier learns.

A label is stripped of surrounding spaces, and a number is written the same way whether it came as a JSON
number or as text: 1, "1", 1.0 and "1.0" are all "1"; 2.5 and "2.50" are "2.5". Text with leading zeros
("007") stays as written: it is more likely a code than a number. A boolean is spelled "true" / "false" whether
it came as a JSON (or Parquet) boolean or as text in any case ("True", as pandas writes a CSV, or "TRUE"), so
`true`, "true" and "True" are one class. NaN and null are missing labels. Other text keeps its case: "Pos" and
"pos" are two classes, which training names in a warning.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["class_labels", "label_key", "normalize_label", "number_text"]

logger = logging.getLogger(__name__)

_BOOLEANS = ("true", "false")
_NUMBER = re.compile(r"[+-]?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


def normalize_label(value: Any, booleans: bool = True) -> str | None:
    """The label's one spelling, or None for a missing one (None, NaN, blank).

    `booleans=False`: a boolean spelled as RUNs recorded before booleans were one class learned it (a JSON boolean
    "True" / "False", text as written), so such a RUN replays its own classes.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return ("true" if value else "false") if booleans else str(value)
    if isinstance(value, (int, float)):
        return number_text(value)
    text = str(value).strip()
    if booleans and text.lower() in _BOOLEANS:
        return text.lower()
    if _NUMBER.fullmatch(text):
        return number_text(int(text) if text.lstrip("+-").isdigit() else float(text))
    return text or None


def number_text(value: int | float) -> str:
    """A number as text, a whole float without its `.0` (1.0 -> "1")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_key(label: str) -> tuple:
    """Numbers first, in numeric order, then text in alphabetical order."""
    if _NUMBER.fullmatch(label):
        return (0, float(label), label)
    return (1, 0.0, label)


def class_labels(train: list[dict[str, str]], evals: list[dict[str, str]], column: str, path: Path,
                 eval_path: str | None, legacy: bool = False) -> list[str]:
    """The classes of the training rows, in `label_key` order.

    Raises:
        DataError: one class only, or eval labels that never occur in training.
    """
    seen = {row["label"] for row in train}
    if legacy and eval_path is None:
        seen |= {row["label"] for row in evals}
    labels = sorted(seen, key=label_key)
    if len(labels) < 2:
        raise DataError(f"label column '{column}' of {path} has one class ({labels[0]!r}) in its training rows; "
                        "classification needs at least two: add examples of other classes or check --label-column")
    unknown = sorted({row["label"] for row in evals} - seen, key=label_key)
    if unknown:
        raise DataError(f"eval data {eval_path} has label(s) {', '.join(unknown)} that never occur in "
                        f"{path}; add them to the training data or remove them from --eval-data")
    _warn_case_twins(labels, train, column, path)
    return labels


def _warn_case_twins(labels: list[str], train: list[dict[str, str]], column: str, path: Path) -> None:
    """One warning naming the classes that differ only in letter case ("Pos" and "pos"): they stay separate classes,
    as written, but are most often one class spelled two ways."""
    spellings: dict[str, list[str]] = {}
    for label in labels:
        spellings.setdefault(label.casefold(), []).append(label)
    twins = [group for group in spellings.values() if len(group) > 1]
    if not twins:
        return
    rows = Counter(row["label"] for row in train)
    named = "; ".join(" / ".join(f"{label!r} ({rows[label]} training rows)" for label in group) for group in twins)
    logger.warning("label column '%s' of %s has classes that differ only in letter case: %s; each is learned as its "
                   "own class: write them one way if they are one", column, path, named)
