"""Tokenization from a bundle's `tokenizer.json` and `tokenizer_config.json`, with the `tokenizers` library only.

The tokenizer is configured once at load and never changed afterwards, so one `TextCodec` can be used
from many threads. Padding is done here in numpy, so each call chooses its own side and length.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import BundleError

logger = logging.getLogger("deployft.runtime")

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")


def _token_text(value) -> str | None:
    """A special token entry is either a string or an AddedToken dict in tokenizer_config.json."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class TextCodec:
    """Encode texts to padded id arrays and decode ids back to text, as the bundle's tokenizer does."""

    def __init__(self, folder: str | Path, max_length: int | None):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{folder} has no tokenizer.json; re-export the bundle with deployft export")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.truncating = Tokenizer.from_file(str(path))
        self.truncating.no_padding()
        if max_length:
            # the tokenizer's own truncation keeps the closing special tokens ([SEP], </s>) in place
            self.truncating.enable_truncation(max_length)
        self.config = _read_json(folder / "tokenizer_config.json")
        self.max_length = max_length
        self.special_tokens = {k: _token_text(self.config.get(k)) for k in SPECIAL_KEYS if self.config.get(k)}
        self.pad_id = self._pad_id()
        self.input_names = list(self.config.get("model_input_names") or ["input_ids", "attention_mask"])

    def _pad_id(self) -> int:
        pad = self.special_tokens.get("pad_token")
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        return int(pad_id) if pad_id is not None else 0

    def token_id(self, token: str | None) -> int | None:
        """The id of a token string, or None."""
        return None if token is None else self.tokenizer.token_to_id(token)

    def encode(self, texts: list[str], add_special_tokens: bool = True, keep: str = "start",
               limit: int | None = None) -> list[list[int]]:
        """Token ids per text, cut with a logged count.

        `keep="start"` (classification) cuts to the bundle's max_length with the tokenizer's own truncation;
        `keep="end"` (prompts) keeps the last `limit` tokens, where the question usually is.
        """
        tokenizer = self.truncating if keep == "start" else self.tokenizer
        encodings = tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        ids = [list(e.ids) for e in encodings]
        if keep == "start":
            limit, cut = self.max_length, sum(bool(e.overflowing) for e in encodings)
        else:
            cut = sum(len(row) > limit for row in ids) if limit else 0
            ids = [row[-limit:] for row in ids] if cut else ids
        if cut:
            logger.warning("%d of %d input(s) longer than %s tokens were truncated", cut, len(ids), limit)
        return ids

    def pad(self, rows: list[list[int]], side: str = "right") -> tuple[np.ndarray, np.ndarray]:
        """Pad rows to the longest one; return `(input_ids, attention_mask)` int64 arrays."""
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, span] = row
            mask[i, span] = 1
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from exc
