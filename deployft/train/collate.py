"""Turning normalised rows into model features, and padding them per batch (dynamic padding).

Classification: the tokenizer's own encoding, label ids. Generation: `deployft.prompts.example_ids`, the same
prompt formatting and truncation that export validation, bench and the runtime use, with the loss on the
response only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..prompts import Cuts, PromptFormat, TokenizerAdapter, example_ids, prompt_limit
from ..tokens import pad

__all__ = ["GenerateCollator", "IGNORE_INDEX", "classify_collator", "encode_classify", "encode_generate"]

IGNORE_INDEX = -100
"""Label value the loss skips (prompt and padding tokens)."""

logger = logging.getLogger(__name__)


def _keep(features: dict[str, Any], input_names: set[str] | None) -> dict[str, Any]:
    """Only what the model's forward takes: a tokenizer may emit token_type_ids its model rejects."""
    return {k: v for k, v in features.items() if input_names is None or k in input_names or k == "labels"}


def encode_classify(rows: list[dict[str, str]], tokenizer, max_length: int, *, label2id: dict[str, int],
                    input_names: set[str] | None = None, split: str = "training", **_: Any) -> list[dict[str, Any]]:
    """`{"input_ids", "attention_mask", ..., "labels"}` per row, truncated to `max_length`, unpadded.

    Texts cut to `max_length` are reported in one warning for the data set (`split`: `training` or `eval`).
    """
    texts = [r["text"] for r in rows]
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    cuts = Cuts()
    for whole, kept in zip(_lengths(tokenizer, texts), encoded["input_ids"]):
        cuts.add(whole, len(kept))
    if cuts.cut:
        logger.warning(cut_message(cuts, split, max_length))
    features = []
    for i, row in enumerate(rows):
        item = {key: values[i] for key, values in encoded.items()}
        item["labels"] = label2id[row["label"]]
        features.append(_keep(item, input_names))
    return features


def _lengths(tokenizer, texts: list[str], chunk: int = 1024) -> Iterator[int]:
    """Each text's length in tokens, uncut (special tokens included), a chunk at a time: only the lengths are kept."""
    for start in range(0, len(texts), chunk):
        ids = tokenizer(texts[start:start + chunk], verbose=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        yield from (len(row) for row in ids)


def encode_generate(rows: list[dict[str, str]], tokenizer, max_length: int, *,
                    prompt_format: dict[str, str] | PromptFormat | None, split: str = "training",
                    **_: Any) -> list[dict[str, Any]]:
    """`{"input_ids", "attention_mask", "labels"}` per row; labels are IGNORE_INDEX where the loss skips.

    Examples cut to `max_length` are reported in one warning for the data set (`split`: `training` or `eval`).
    """
    fmt = prompt_format if isinstance(prompt_format, PromptFormat) else PromptFormat.from_manifest(prompt_format)
    encoder, cuts = TokenizerAdapter(tokenizer), Cuts()
    features = []
    for row in rows:
        ids, targets = example_ids(row, fmt, encoder, max_length, cuts)
        labels = [token if target else IGNORE_INDEX for token, target in zip(ids, targets)]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if cuts.cut:
        logger.warning(cut_message(cuts, split, max_length))
    return features


def cut_message(cuts: Cuts, split: str, max_length: int) -> str:
    """`20 of 20 training examples cut to --max-length 64 (87 % of their tokens dropped; ...)`: one line."""
    prompts = (f"; {cuts.prompts} prompts kept only their last {prompt_limit(max_length)} tokens, half of "
               "--max-length" if cuts.prompts else "")
    return (f"{cuts.cut} of {cuts.examples} {split} examples cut to --max-length {max_length} "
            f"({100 * cuts.dropped / cuts.tokens:.0f} % of their tokens dropped{prompts}); raise --max-length to "
            "keep them")


def classify_collator(tokenizer):
    """transformers' DataCollatorWithPadding: pads each batch to its longest example."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


class GenerateCollator:
    """Pads input_ids with the pad token, attention_mask with 0 and labels with IGNORE_INDEX, per batch."""

    def __init__(self, tokenizer):
        self.pad_values = {"input_ids": TokenizerAdapter(tokenizer).ids.pad, "attention_mask": 0,
                           "labels": IGNORE_INDEX}

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        return {key: torch.from_numpy(pad([f[key] for f in features], value)[0])
                for key, value in self.pad_values.items()}
