"""First steps of left-padded batches on files that rotate keys inside GroupQueryAttention.

deployft's fused decoders hand the packed q/k/v projection to GroupQueryAttention with `do_rotary` (one node per
layer instead of a Split and two RotaryEmbedding nodes). On a first step (no past) that op rotates every row by
its column, from the first row's first position id on; a left-padded row's tokens would be rotated as if they
stood `pad` positions later, and its cached keys would no longer match the position ids later steps feed. So a
first step of a left-padded batch runs right-padded instead (each row's tokens from column 0: column and position
agree), and its outputs are moved back into the left-padded layout the caller asked for. Decode steps and
prompts resumed after a past take their position ids per row, so only first steps need this.
"""

from __future__ import annotations

import numpy as np

ROTARY_KEY = "deployft.rotary"
"""Model metadata key: `ROTARY_IN_ATTENTION` when GroupQueryAttention rotates q and k itself (`do_rotary`)."""
ROTARY_IN_ATTENTION = "in-attention"


def left_padded(mask: np.ndarray) -> bool:
    """Whether some row of a batch's mask has real tokens after padding at its start (a single row too: the op
    would rotate it by its first position id plus its column)."""
    return bool(((mask[:, 0] == 0) & (mask.sum(axis=1) > 0)).any())


def column_positions(mask: np.ndarray) -> np.ndarray:
    """Position ids 0, 1, ... on every row: a right-padded first step's tokens stand at their own columns."""
    return np.ascontiguousarray(np.broadcast_to(np.arange(mask.shape[1], dtype=np.int64), mask.shape))


def right_padded(ids: np.ndarray, mask: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A left-padded batch moved to right padding: `(ids, mask, lengths)`, each row's tokens from column 0."""
    lengths = mask.sum(axis=1).astype(np.int64)
    width = mask.shape[1]
    out_ids = np.full_like(ids, pad_id)
    out_mask = np.zeros_like(mask)
    for row, length in enumerate(lengths):
        out_ids[row, :length] = ids[row, width - length:]
        out_mask[row, :length] = 1
    return out_ids, out_mask, lengths


def to_left_padding(array: np.ndarray, lengths: np.ndarray, axis: int) -> np.ndarray:
    """`array` (rows first, each row's `length` real entries from index 0 along `axis`) with every row's entries
    moved to the end of `axis`; the columns before them are zero."""
    out = np.zeros_like(array)
    width = array.shape[axis]
    for row, length in enumerate(lengths):
        source = [row] + [slice(None)] * (array.ndim - 1)
        target = list(source)
        source[axis], target[axis] = slice(0, length), slice(width - length, width)
        out[tuple(target)] = array[tuple(source)]
    return out
