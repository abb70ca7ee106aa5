"""Token ids shared by every stage: padding a batch, and the special ids (begin, end, padding) of a model.

numpy only, so training, export validation, bench and the torch-free runtime pad and resolve ids alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SpecialIds", "pad", "special_ids"]


def pad(rows: list[list[int]], value: int, side: str = "right", width: int | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """Pad `rows` to the longest one (or `width`) with `value`; returns `(ids, mask)` int64 arrays.

    Right padding for classification and teacher-forced scoring, left padding for generation, so that
    every row's next token sits in the last column.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        row = list(row)[:width] if side == "right" else list(row)[-width:] if width else []
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


@dataclass(frozen=True)
class SpecialIds:
    """The special token ids a decoding loop needs."""

    bos: int | None = None
    """Begin-of-text id (what an empty prompt starts from)."""
    eos: list[int] = field(default_factory=list)
    """Every id that ends a generation."""
    pad: int = 0
    """The id finished rows and left padding receive: the model's pad id, else its first end id, else 0."""


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if v is not None]


def special_ids(config: dict[str, Any], generation_config: dict[str, Any] | None = None,
                recorded: dict[str, Any] | None = None) -> SpecialIds:
    """Resolve bos / eos / pad ids: `recorded` (a bundle manifest's `generation` block) first, then
    `generation_config.json`, then `config.json` (the order transformers' `generate` reads them in).
    """
    sources = [recorded or {}, generation_config or {}, config]

    def first(key: str) -> Any:
        return next((s[key] for s in sources if s.get(key) is not None), None)

    eos = _ids(first("eos_token_id"))
    pad_value = first("pad_token_id")
    pad_id = int(pad_value) if pad_value is not None else eos[0] if eos else 0
    bos = first("bos_token_id")
    return SpecialIds(int(bos) if bos is not None else None, eos, pad_id)
