"""`ShapeSessions`: the buckets calls are padded to, the padding itself, and the least-recently-used cap."""

from __future__ import annotations

import numpy as np
import pytest

from deployft.runtime.shapes import ShapeSessions, bucket_batch, bucket_length, reshape_input


@pytest.mark.parametrize("length, max_length, expected", [
    (1, None, 32), (32, None, 32), (33, None, 64), (100, None, 128), (129, None, 192), (200, None, 256),
    (257, None, 384), (33, 48, 48), (50, 48, 50), (128, 128, 128)])
def test_lengths_pad_to_their_bucket_never_past_max_length(length, max_length, expected):
    assert bucket_length(length, max_length) == expected


@pytest.mark.parametrize("batch, expected", [(1, 1), (2, 2), (3, 4), (5, 8), (16, 16), (17, 32)])
def test_batches_pad_to_a_power_of_two(batch, expected):
    assert bucket_batch(batch) == expected


def test_reshape_input_fixes_every_input():
    assert reshape_input(["input_ids", "attention_mask"], (4, 64)) == "input_ids[4,64],attention_mask[4,64]"


class _Fixed:
    """A session compiled for one shape: refuses any other; returns each row's sums of ids and mask."""

    def __init__(self, shape):
        self.shape, self.seen = shape, []

    def run(self, names, feeds):
        assert all(v.shape == self.shape for v in feeds.values()), (feeds, self.shape)
        self.seen.append({k: v.copy() for k, v in feeds.items()})
        return [np.stack([feeds["input_ids"].sum(1), feeds["attention_mask"].sum(1)], 1), np.zeros(3)]


def _sessions(max_sessions=3):
    built = []

    def build(shape):
        built.append(_Fixed(shape))
        return built[-1]

    return ShapeSessions(build, (1, 32), max_length=128, max_sessions=max_sessions), built


def test_a_call_is_padded_with_the_pad_id_and_mask_zero_and_its_padding_rows_cut():
    sessions, built = _sessions()
    sessions.pad_id = 7
    ids, mask = np.ones((3, 20), dtype=np.int64), np.ones((3, 20), dtype=np.int64)
    out, other = sessions.run(["logits", "other"], {"input_ids": ids, "attention_mask": mask})
    fed = built[-1].seen[-1]
    assert built[-1].shape == (4, 32) and fed["input_ids"].shape == (4, 32)
    assert (fed["input_ids"][:3, 20:] == 7).all() and (fed["input_ids"][3] == 7).all()
    assert (fed["attention_mask"][:, 20:] == 0).all() and (fed["attention_mask"][3] == 0).all()
    assert out.shape == (3, 2) and (out[:, 1] == 20).all() and (out[:, 0] == 20 + 12 * 7).all()
    assert other.shape == (3,)  # an output that is not per row is returned whole


def test_a_call_already_at_its_bucket_is_not_copied():
    sessions, built = _sessions()
    ids = np.arange(64, dtype=np.int64).reshape(2, 32)
    sessions.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert built[-1].shape == (2, 32) and (built[-1].seen[-1]["input_ids"] == ids).all()


def test_the_least_recently_used_shape_is_dropped_past_the_cap():
    sessions, built = _sessions(max_sessions=3)
    for batch in (2, 4, 1, 8):  # (1, 32) was compiled at load and used again before (8, 32) arrived
        ids = np.ones((batch, 10), dtype=np.int64)
        sessions.run(["logits"], {"input_ids": ids, "attention_mask": ids})
    assert sessions.shapes == [(4, 32), (1, 32), (8, 32)]
    assert [s.shape for s in built] == [(1, 32), (2, 32), (4, 32), (8, 32)]
    ids = np.ones((2, 10), dtype=np.int64)
    sessions.run(["logits"], {"input_ids": ids, "attention_mask": ids})
    assert len(built) == 5 and sessions.shapes[-1] == (2, 32)  # dropped, so compiled again
