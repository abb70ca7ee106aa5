"""Padding for the generator engine's batches: prefill groups of similar prompt lengths, and left-padding arrays."""

from __future__ import annotations

import numpy as np

MAX_PREFILL_PADDING = 1.5
"""A prefill group's tokens with padding (rows x longest prompt) stay within this multiple of its real tokens."""


def left_pad(array: np.ndarray, width: int, axis: int) -> np.ndarray:
    """`array` with zeros prepended along `axis` up to `width`."""
    missing = width - array.shape[axis]
    if missing == 0:
        return array
    shape = list(array.shape)
    shape[axis] = missing
    return np.concatenate([np.zeros(shape, dtype=array.dtype), array], axis=axis)


def prefill_groups(rows: list) -> list[list]:
    """`rows` (each with its prompt length as `.position`) in prefill groups: sorted by length, a row joins the
    current group while the group's padded size stays within `MAX_PREFILL_PADDING` times its real tokens."""
    groups: list[list] = []
    for row in sorted(rows, key=lambda r: r.position):
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(r.position for r in group) + row.position
            if row.position * (len(group) + 1) <= MAX_PREFILL_PADDING * real:
                group.append(row)
                continue
        groups.append([row])
    return groups
