"""Export's example rows as model feeds (`deployft.exporter.samples`)."""

from __future__ import annotations

import numpy as np

from deployft.exporter.samples import Samples, padded_feeds


def test_padded_feeds_keep_order_pad_right_and_feed_only_the_model_inputs():
    samples = Samples([[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]], None)
    feeds = padded_feeds(samples, pad_id=0, session_inputs={"input_ids": 0, "attention_mask": 0}, size=3)
    assert [sorted(f) for f in feeds] == [["attention_mask", "input_ids"]] * 2
    np.testing.assert_array_equal(feeds[0]["input_ids"], [[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    np.testing.assert_array_equal(feeds[0]["attention_mask"], [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(feeds[1]["input_ids"], [[11, 12, 13, 14]])
    with_positions = padded_feeds(samples, 0, {"input_ids": 0, "position_ids": 0, "token_type_ids": 0}, size=2)
    np.testing.assert_array_equal(with_positions[0]["position_ids"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(with_positions[1]["token_type_ids"], np.zeros((2, 4)))
