"""Prefill groups: similar prompt lengths together, padding bounded; left padding."""

from __future__ import annotations

import numpy as np

from deployft.serve.prefill import MAX_PREFILL_PADDING, left_pad, prefill_groups


class _Len:
    def __init__(self, n):
        self.position = n


def test_prefill_groups_bound_the_padding():
    groups = prefill_groups([_Len(n) for n in (40, 3, 4, 41, 5, 200)])
    assert [[r.position for r in g] for g in groups] == [[3, 4, 5], [40, 41], [200]]
    for group in groups:
        assert max(r.position for r in group) * len(group) <= MAX_PREFILL_PADDING * sum(r.position for r in group)
    assert prefill_groups([]) == []


def test_left_pad_prepends_zeros_only_when_needed():
    row = np.ones((1, 3), dtype=np.int64)
    assert left_pad(row, 3, 1) is row
    np.testing.assert_array_equal(left_pad(row, 5, 1), [[0, 0, 1, 1, 1]])
