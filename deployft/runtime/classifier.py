"""A classifier session's one call: token ids in, logits out. `Predictor` and export validation both use it."""

from __future__ import annotations

import numpy as np


class ClassifierHead:
    """Feeds a sequence-classification session what it takes (token_type_ids as zeros when it takes them)."""

    def __init__(self, session):
        self.session = session
        self.input_names = {i.name for i in session.get_inputs()}

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits (batch, labels) of a right-padded batch."""
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.input_names})[0]
