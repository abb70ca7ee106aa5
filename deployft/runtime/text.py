"""Tokenization from a bundle's `tokenizer.json` and `tokenizer_config.json`, with the `tokenizers` library only.

The tokenizer is configured once at load and never changed afterwards, so one `TextCodec` can be used
from many threads. Padding is done here in numpy, so each call chooses its own side and length.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BundleError, reraise_as
from ..manifest import read_json
from ..prompts import SPECIAL_KEYS, check_template, read_chat_template
from ..tokens import pad

logger = logging.getLogger("deployft.runtime")


def _token_text(value) -> str | None:
    """A special token entry is either a string or an AddedToken dict in tokenizer_config.json."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def clean_up_tokenization(text: str) -> str:
    """transformers' `PreTrainedTokenizerBase.clean_up_tokenization` (4.57), the same replacements in the same order:
    the spaces an English word-level tokenizer leaves before punctuation and contractions."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
            .replace(" 're", "'re"))


class TextCodec:
    """Encode texts to padded id arrays and decode ids back to text, as the bundle's tokenizer does.

    It is also the `deployft.prompts.TextEncoder` the runtime formats prompts with.
    """

    def __init__(self, folder: str | Path, max_length: int | None):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{folder} has no tokenizer.json; re-export the bundle with deployft export")
        with reraise_as(BundleError, f"{path} cannot be read by the tokenizers library ({{reason}}); "
                                     "re-export the bundle with deployft export"):
            self.tokenizer = Tokenizer.from_file(str(path))
            self.truncating = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.truncating.no_padding()
        if max_length:
            # the tokenizer's own truncation keeps the closing special tokens ([SEP], </s>) in place
            self.truncating.enable_truncation(max_length)
        self.config = read_json(folder / "tokenizer_config.json")
        self.max_length = max_length
        self.clean_up_spaces = bool(self.config.get("clean_up_tokenization_spaces"))
        """Decoded text goes through `clean_up_tokenization`, as transformers decodes with this tokenizer config."""
        self.special_tokens = {k: _token_text(self.config.get(k)) for k in SPECIAL_KEYS if self.config.get(k)}
        self.pad_id = self._pad_id()
        self.chat_template = read_chat_template(folder, self.config)
        if self.chat_template is not None:
            check_template(self.chat_template)
        eos = self.token_id(self.special_tokens.get("eos_token"))
        self.eos_ids = [int(eos)] if eos is not None else []
        self.input_names = list(self.config.get("model_input_names") or ["input_ids", "attention_mask"])

    def _pad_id(self) -> int:
        pad = self.special_tokens.get("pad_token")
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        return int(pad_id) if pad_id is not None else 0

    def token_id(self, token: str | None) -> int | None:
        """The id of a token string, or None."""
        return None if token is None else self.tokenizer.token_to_id(token)

    def encode_one(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of one text, uncut (prompt formatting does its own truncation)."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text for classification, cut to the bundle's max_length by the tokenizer's own
        truncation (which keeps the closing special tokens), with a logged count."""
        encodings = self.truncating.encode_batch(list(texts))
        cut = sum(bool(e.overflowing) for e in encodings)
        if cut:
            logger.warning("%d of %d input(s) longer than %s tokens were truncated", cut, len(encodings),
                           self.max_length)
        return [list(e.ids) for e in encodings]

    def pad(self, rows: list[list[int]], side: str = "right") -> tuple[np.ndarray, np.ndarray]:
        """Pad rows to the longest one with the pad id; return `(input_ids, attention_mask)` int64 arrays."""
        return pad(rows, self.pad_id, side)

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` without special tokens, as transformers' `decode(ids, skip_special_tokens=True)` gives it
        (with its clean-up of spaces where the tokenizer config asks for it)."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return clean_up_tokenization(text) if self.clean_up_spaces else text
