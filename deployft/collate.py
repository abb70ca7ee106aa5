"""Turning normalised rows into model features, and padding them per batch (dynamic padding).

Classification: the tokenizer's own encoding, label ids. Generation: the prompt (through the chat
template when the tokenizer has one) followed by the response and EOS, with the loss on the response only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GenerateCollator", "classify_collator", "encode_classify", "encode_generate",
           "format_prompt", "prompt_format_for"]

IGNORE_INDEX = -100
"""Label value the loss skips (prompt and padding tokens)."""


def _keep(features: dict[str, Any], input_names: set[str] | None) -> dict[str, Any]:
    """Only what the model's forward takes: a tokenizer may emit token_type_ids its model rejects."""
    return {k: v for k, v in features.items() if input_names is None or k in input_names or k == "labels"}


def encode_classify(rows: list[dict[str, str]], tokenizer, max_length: int, *, label2id: dict[str, int],
                    input_names: set[str] | None = None, **_: Any) -> list[dict[str, Any]]:
    """`{"input_ids", "attention_mask", ..., "labels"}` per row, truncated to `max_length`, unpadded."""
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    features = []
    for i, row in enumerate(rows):
        item = {key: values[i] for key, values in encoded.items()}
        item["labels"] = label2id[row["label"]]
        features.append(_keep(item, input_names))
    return features


def prompt_format_for(tokenizer, columns: dict[str, str]) -> dict[str, str]:
    """`chat` when the tokenizer has a chat template, else `plain`; `text` for plain language modelling."""
    if "prompt" not in columns:
        return {"style": "text", "separator": "\n"}
    return {"style": "chat" if getattr(tokenizer, "chat_template", None) else "plain", "separator": "\n"}


def format_prompt(tokenizer, prompt: str, prompt_format: dict[str, str]) -> list[int]:
    """Token ids of a prompt exactly as training saw it (what generation should be fed)."""
    if prompt_format["style"] == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt + prompt_format["separator"])["input_ids"]


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def encode_generate(rows: list[dict[str, str]], tokenizer, max_length: int, *, prompt_format: dict[str, str],
                    **_: Any) -> list[dict[str, Any]]:
    """`{"input_ids", "attention_mask", "labels"}` per row; labels are IGNORE_INDEX on prompt tokens."""
    features = []
    for row in rows:
        if prompt_format["style"] == "text":
            ids = (tokenizer(row["text"])["input_ids"] + _eos(tokenizer))[:max_length]
            labels = list(ids)
        else:
            prompt = format_prompt(tokenizer, row["prompt"], prompt_format)
            prompt = prompt[-(max_length // 2):] if len(prompt) > max_length // 2 else prompt
            response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + _eos(tokenizer)
            ids = (prompt + response)[:max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


def classify_collator(tokenizer):
    """transformers' DataCollatorWithPadding: pads each batch to its longest example."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


class GenerateCollator:
    """Pads input_ids with the pad token, attention_mask with 0 and labels with IGNORE_INDEX, per batch."""

    def __init__(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_values = {"input_ids": pad if pad is not None else 0, "attention_mask": 0, "labels": IGNORE_INDEX}

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch = {}
        for key, pad in self.pad_values.items():
            rows = [list(f[key]) + [pad] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch
