"""The eval split held out of one data file: copies of a row on one side only, every class kept in training and,
where it has the rows, scored in eval.

Rows with the same input (the text, or the prompt and response; the label does not count) are one group, and
a group is held out whole, so eval never scores a row the model was trained on. Each class gets its share of the
held-out rows (`eval_fraction` of its rows, rounded so the shares add up to the split's size), at least one where
it has two rows or more and the split has room, never its last training row, so a classifier learns every class
it is scored on and a rare class is scored too; a class eval cannot hold is named in a warning. Groups are taken
in the shuffled order: a seed gives the same split every time, and `load_run_examples` replays it. A generator's
rows are one class: its first rows (in shuffled order) are held out.

RUNs record the split they used (`SPLIT`); those of earlier versions replay theirs (`DISTINCT_ROWS`: the first
groups held out whatever their class, so long as every class kept a training row; no record: the first rows,
copies or not).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

from ..errors import DataError

__all__ = ["DISTINCT_ROWS", "SPLIT", "SPLITS", "input_key", "split_rows"]

logger = logging.getLogger(__name__)

SPLIT = "every-class"
"""This split's name in a RUN's data record."""
DISTINCT_ROWS = "distinct-rows"
"""The split before classes had their share: the first groups, in shuffled order, that leave every class a
training row."""
SPLITS = (SPLIT, DISTINCT_ROWS)
"""Splits a RUN may record; a record without one was split row by row (`legacy`)."""

Key = tuple[tuple[str, str], ...]


def split_rows(rows: list[dict[str, str]], eval_fraction: float, path: Path,
               method: str | None = SPLIT) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """`(train, eval)` of shuffled `rows`, about `eval_fraction` of them held out.

    `method`: one of `SPLITS`, or None for the first rows held out whatever they hold, as RUNs recorded before
    the distinct-row split were.

    Raises:
        DataError: too few distinct rows to hold one out and train on the rest.
    """
    n_eval = max(1, round(len(rows) * eval_fraction))
    if method is None:
        if len(rows) - n_eval < 1:
            raise _too_few(path, len(rows), len(rows))
        return rows[n_eval:], rows[:n_eval]
    groups: dict[Key, Counter] = {}
    for row in rows:
        groups.setdefault(input_key(row), Counter())[row.get("label")] += 1
    if method == DISTINCT_ROWS:
        held = _held_out(groups, {None: n_eval}, lambda label: None)
    else:
        held = _held_out(groups, _shares(sum(groups.values(), Counter()), n_eval, eval_fraction), lambda label: label)
    train = [row for row in rows if input_key(row) not in held]
    evals = [row for row in rows if input_key(row) in held]
    if not train or not evals:
        raise _too_few(path, len(rows), len(groups))
    if len(groups) < len(rows):
        logger.info("%s: %d rows repeat another row's input; each is held out with its copies or not at all",
                    path, len(rows) - len(groups))
    if method == SPLIT:
        _warn_unscored(path, Counter(row.get("label") for row in train), {row.get("label") for row in evals})
    return train, evals


def input_key(row: dict[str, str]) -> Key:
    """What makes two rows copies of each other: every value but the label."""
    return tuple((role, value) for role, value in row.items() if role != "label")


def _shares(counts: Counter, n_eval: int, fraction: float) -> dict:
    """Rows of each class to hold out: `fraction` of its rows, at least one for a class of two rows or more (taken
    from the largest shares while the split has room), never all of them; they add up to `n_eval` where the
    classes have the rows."""
    shares = {label: min(n - 1, math.floor(n * fraction)) for label, n in counts.items()}
    for label in sorted(counts, key=lambda label: counts[label]):  # the rarest first
        if shares[label] == 0 and counts[label] >= 2 and sum(shares.values()) < n_eval + _spare(shares):
            shares[label] = 1
    while sum(shares.values()) > n_eval and _spare(shares):
        shares[max(shares, key=lambda label: shares[label])] -= 1
    while sum(shares.values()) < n_eval:
        room = [label for label in shares if shares[label] < counts[label] - 1]
        if not room:
            break
        shares[max(room, key=lambda label: counts[label] * fraction - shares[label])] += 1
    return shares


def _spare(shares: dict) -> int:
    """Rows the shares above one could give up."""
    return sum(max(share - 1, 0) for share in shares.values())


def _held_out(groups: dict[Key, Counter], shares: dict, share_of) -> set[Key]:
    """The first groups, in shuffled order, that fit in their classes' `shares` (keyed by `share_of(label)`) and
    leave every class a training row (the smallest such group when none fits)."""
    left = sum(groups.values(), Counter())  # rows of each label not held out
    taken: Counter = Counter()
    fits = [key for key, labels in groups.items() if all(left[label] > n for label, n in labels.items())]
    held = set()
    for key in fits:
        labels = groups[key]
        wanted = Counter()
        for label, n in labels.items():
            wanted[share_of(label)] += n
        if all(taken[s] + n <= shares.get(s, 0) for s, n in wanted.items()) and \
                all(left[label] > n for label, n in labels.items()):
            held.add(key)
            left -= labels
            taken += wanted
            if all(taken[s] >= n for s, n in shares.items()):
                break
    if not held and fits:
        held.add(min(fits, key=lambda key: sum(groups[key].values())))
    return held


def _warn_unscored(path: Path, trained: Counter, scored: set) -> None:
    missing = sorted(label for label in trained if label is not None and label not in scored)
    if missing:
        shown = ", ".join(f"{label} ({trained[label]} row{'s' if trained[label] > 1 else ''})" for label in missing)
        logger.warning("%s: the eval split holds no row of class(es) %s, so eval accuracy does not score them; add "
                       "rows of them, raise --eval-fraction or pass --eval-data", path, shown)


def _too_few(path: Path, rows: int, distinct: int) -> DataError:
    counted = f"{rows} usable example(s)" + (f" ({distinct} distinct)" if distinct < rows else "")
    return DataError(f"{path} has {counted}, too few to hold out an eval split and train on every class; "
                     "add rows, lower --eval-fraction or pass --eval-data")
