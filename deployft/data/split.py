"""The eval split held out of one data file: copies of a row on one side only, every class kept in training.

Rows with the same input (the text, or the prompt and response; the label does not count) are one group, and
a group is held out whole, so eval never scores a row the model was trained on. A group is not held out when
that would leave a class no training row, so a classifier learns every class it is scored on. Both depend on
the shuffled order alone: a seed gives the same split every time, and `load_run_examples` replays it.
Without repeated rows and rare classes the split is what it always was: the first rows held out, the rest trained.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ..errors import DataError

__all__ = ["SPLIT", "input_key", "split_rows"]

logger = logging.getLogger(__name__)

SPLIT = "distinct-rows"
"""This split's name in a RUN's data record; a record without one was split row by row (`legacy=True`)."""

Key = tuple[tuple[str, str], ...]


def split_rows(rows: list[dict[str, str]], eval_fraction: float, path: Path,
               legacy: bool = False) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """`(train, eval)` of shuffled `rows`, about `eval_fraction` of them held out.

    `legacy`: the first rows held out whatever they hold, as RUNs recorded before this split were.

    Raises:
        DataError: too few distinct rows to hold one out and train on the rest.
    """
    n_eval = max(1, round(len(rows) * eval_fraction))
    if legacy:
        if len(rows) - n_eval < 1:
            raise _too_few(path, len(rows), len(rows))
        return rows[n_eval:], rows[:n_eval]
    groups: dict[Key, Counter] = {}
    for row in rows:
        groups.setdefault(input_key(row), Counter())[row.get("label")] += 1
    held = _held_out(groups, n_eval)
    train = [row for row in rows if input_key(row) not in held]
    evals = [row for row in rows if input_key(row) in held]
    if not train or not evals:
        raise _too_few(path, len(rows), len(groups))
    if len(groups) < len(rows):
        logger.info("%s: %d rows repeat another row's input; each is held out with its copies or not at all",
                    path, len(rows) - len(groups))
    return train, evals


def input_key(row: dict[str, str]) -> Key:
    """What makes two rows copies of each other: every value but the label."""
    return tuple((role, value) for role, value in row.items() if role != "label")


def _held_out(groups: dict[Key, Counter], n_eval: int) -> set[Key]:
    """The first groups, in shuffled order, that fit in `n_eval` rows and leave every class a training row
    (the smallest such group when none fits)."""
    left = sum(groups.values(), Counter())  # rows of each label not held out
    fits = [key for key, labels in groups.items() if all(left[label] > n for label, n in labels.items())]
    held, count = set(), 0
    for key in fits:
        labels, size = groups[key], sum(groups[key].values())
        if count + size <= n_eval and all(left[label] > n for label, n in labels.items()):
            held.add(key)
            left -= labels
            count += size
            if count == n_eval:
                break
    if not held and fits:
        held.add(min(fits, key=lambda key: sum(groups[key].values())))
    return held


def _too_few(path: Path, rows: int, distinct: int) -> DataError:
    counted = f"{rows} usable example(s)" + (f" ({distinct} distinct)" if distinct < rows else "")
    return DataError(f"{path} has {counted}, too few to hold out an eval split and train on every class; "
                     "add rows, lower --eval-fraction or pass --eval-data")
