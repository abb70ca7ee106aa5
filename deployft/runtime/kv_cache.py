"""A generation's KV cache, kept one of two ways for `KVDecoder.iter_batch` (see `generation.py`).

`CopyingCache` feeds each step's `present` back as the next `past`; `SharedCache` preallocates one buffer per layer
that GroupQueryAttention updates in place, for files whose model metadata carries `SHARED_CACHE_KEY`. Both drop
finished rows and shared padding with `kept_rows`, which the serve engine's continuous batch uses too, and a shared
cache's buffers get their spare columns from `with_room`, as the engine's do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import BundleError
from .padding import left_padded

if TYPE_CHECKING:
    from .generation import KVDecoder

KEEP_LAST = np.array(1, dtype=np.int64)
"""`logits_to_keep` fed to a fused file: only the last position is projected onto the vocabulary."""
SHARED_CACHE_KEY = "deployft.kv_cache"
"""Model metadata key: `SHARED_CACHE` when `past_key_values.N` and `present.N` may be one buffer updated in place."""
SHARED_CACHE = "shared-buffer"


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids of a padded batch: 0.. over the real tokens, 1 on padding (as transformers computes them)."""
    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1).astype(np.int64)


def shared_padding(mask: np.ndarray) -> int:
    """How many leading columns of a left-padded batch's mask are padding in every row."""
    return int(mask.argmax(axis=1).min()) if mask.size else 0


def kept_rows(arrays: list[np.ndarray], mask: np.ndarray, keep) -> tuple[list[np.ndarray], np.ndarray]:
    """The rows `keep` (indices, in order) of a left-padded batch's cache (per layer: batch, heads, length, dim) and
    mask, less the leading columns that are padding in all of them; the arrays are cut to the mask's width. Views
    of `arrays` when every row is kept and no column is dropped, copies otherwise."""
    (batch, width), mask = mask.shape, mask[keep]
    start = shared_padding(mask)
    if len(keep) == batch and start == 0:
        return [a[:, :, :width, :] for a in arrays], mask
    return [a[:, :, start:width, :][keep] for a in arrays], mask[:, start:]  # columns cut first: one small copy


def with_room(arrays: list[np.ndarray], room: int) -> list[np.ndarray]:
    """New contiguous arrays: each of `arrays` (per layer: batch, heads, length, dim) followed by `room` zero
    columns, where a shared cache's later tokens are written in place."""
    return [np.concatenate([a, np.zeros((*a.shape[:2], room, a.shape[3]), dtype=a.dtype)], axis=2) for a in arrays]


class CopyingCache:
    """A generation's cache as ONNX Runtime returns it: each step's `present` is fed back as the next `past`."""

    def __init__(self, decoder: KVDecoder, ids: np.ndarray, mask: np.ndarray):
        self.decoder, self.ids, self.mask = decoder, ids, mask
        self.next_position = mask.sum(axis=1, keepdims=True).astype(np.int64)
        self.past: list | None = None

    @property
    def width(self) -> int:
        """Columns of the attention mask (and of the cache): prompt and tokens fed, padding included."""
        return self.mask.shape[1]

    def prefill(self) -> np.ndarray:
        """Run the prompt; returns the last position's logits (float32)."""
        logits, self.past = self.decoder.step(self.ids, self.mask, positions_from_mask(self.mask), None)
        return logits

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one new token per row; returns their logits."""
        self.mask = np.concatenate([self.mask, np.ones((self.mask.shape[0], 1), dtype=np.int64)], axis=1)
        logits, self.past = self.decoder.step(tokens[:, None], self.mask, self.next_position, self.past)
        self.next_position = self.next_position + 1
        return logits

    def compact(self, keep: np.ndarray, room: int) -> None:
        """Keep only the rows `keep` (indices, in order), less the leading columns that are padding in all of them
        (`kept_rows`), copying each layer through numpy (device -> host -> device on CUDA). `room`: the steps still
        to run (a copying cache grows by itself)."""
        arrays, self.mask = kept_rows([value.numpy() for value in self.past], self.mask, keep)
        self.next_position = self.next_position[keep]
        self.past = [self.decoder._owned(array) for array in arrays]


class SharedCache:
    """A generation's cache in one preallocated buffer per layer, updated in place.

    The buffers have `capacity` columns (`_size`): the prompt's and the budget's, at most `max_positions + 1` where
    the model has a limit (`iter_batch` compacts the batch before its mask grows wider than the positions). The
    prefill runs with a zero `past` of that length, so ONNX Runtime returns `present` buffers of that length holding
    the prompt's keys and values (on a file that rotates inside its attention, a left-padded prompt runs
    right-padded through `KVDecoder.step` and is copied into numpy buffers of that length, `padding.py`). Every
    decode step binds each buffer as both `past_key_values.N` and `present.N`: GroupQueryAttention sees the shared
    buffer and writes the step's keys and values at column `total - 1`, attending over the first `total` columns
    only (the attention mask's width), so nothing is copied. `input_ids`, `position_ids` and `logits` are
    preallocated arrays bound once and rewritten each step. `compact` copies the rows left through numpy into new
    buffers, sized by `_size` again for the steps still to run, and binds those.
    """

    def __init__(self, decoder: KVDecoder, ids: np.ndarray, mask: np.ndarray, budget: int):
        from onnxruntime import OrtValue

        self.decoder, self.ids = decoder, ids
        self._ort_value = OrtValue.ortvalue_from_numpy
        self._size(mask, budget)
        self.step_positions = mask.sum(axis=1, keepdims=True).astype(np.int64)
        self.binding = None
        self.arrays: list[np.ndarray] = []
        """The buffers' memory when they were made from numpy (kept for as long as the OrtValues use it)."""

    def _size(self, mask: np.ndarray, budget: int) -> None:
        """Room for `mask`'s columns and `budget` more tokens (the last one never fed back)."""
        batch, self.total = mask.shape
        limit = self.decoder.max_positions  # `iter_batch` compacts the batch before its mask grows wider
        self.capacity = self.total + (min(budget, limit + 1 - self.total) if limit else budget)
        self.mask = np.ones((batch, self.capacity), dtype=np.int64)
        self.mask[:, :self.total] = mask
        self.step_ids = np.zeros((batch, 1), dtype=np.int64)

    @property
    def width(self) -> int:
        """Columns of the attention mask: prompt and tokens fed, padding included."""
        return self.total

    def prefill(self) -> np.ndarray:
        """Run the prompt into buffers of `capacity` columns and bind them; returns the last position's logits."""
        decoder, ids = self.decoder, self.ids
        mask = self.mask[:, :self.total]
        if decoder.rotates_in_attention and left_padded(mask):  # a right-padded first step (`padding.py`)
            logits, presents = decoder.step(ids, mask, positions_from_mask(mask), None)
            self.arrays = with_room([present.numpy() for present in presents], self.capacity - self.total)
            self._bind([self._ort_value(array) for array in self.arrays], logits.shape[-1])  # CPU: same memory
            return logits
        feeds = {"input_ids": ids, "attention_mask": mask}
        if decoder.has_positions:
            feeds["position_ids"] = positions_from_mask(mask)
        if decoder.keeps_last:
            feeds["logits_to_keep"] = KEEP_LAST
        feeds = {name: self._ort_value(np.require(value, requirements="C")) for name, value in feeds.items()}
        zero = self._ort_value(np.zeros((ids.shape[0], decoder.kv_heads, self.capacity, decoder.head_dim),
                                        dtype=decoder.past_dtype))
        feeds.update({name: zero for name in decoder.past_names})
        outputs = dict(zip(decoder.output_names, decoder.session.run_with_ort_values(decoder.output_names, feeds)))
        logits = outputs["logits"].numpy()
        self._bind([outputs[present] for present in decoder.present_names], logits.shape[-1])
        return logits[:, -1, :].astype(np.float32)

    def _bind(self, buffers: list, vocab: int) -> None:
        """Bind `buffers` (one per layer, `capacity` columns) as past and present, and the step's preallocated
        inputs and logits."""
        decoder = self.decoder
        self.logits = np.zeros((self.step_ids.shape[0], 1, vocab), dtype=decoder.logits_dtype)
        binding = decoder.session.io_binding()
        binding.bind_ortvalue_input("input_ids", self._ort_value(self.step_ids))
        if decoder.has_positions:
            binding.bind_ortvalue_input("position_ids", self._ort_value(self.step_positions))
        binding.bind_ortvalue_output("logits", self._ort_value(self.logits))
        self.buffers = buffers  # kept for as long as bound
        for past, present, buffer in zip(decoder.past_names, decoder.present_names, self.buffers):
            if buffer.shape()[2] != self.capacity:
                raise BundleError(f"the decoder returned a cache of length {buffer.shape()[2]} for a buffer of "
                                  f"{self.capacity}; its {SHARED_CACHE_KEY!r} metadata is wrong: re-export it")
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        self.binding = binding

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """Write one new token per row into the bound inputs and run the step in place; returns their logits."""
        self.step_ids[:, 0] = tokens
        self.total += 1
        self.binding.bind_cpu_input("attention_mask", np.ascontiguousarray(self.mask[:, :self.total]))
        self.decoder.session.run_with_iobinding(self.binding)
        self.step_positions += 1
        return self.logits[:, -1, :].astype(np.float32)

    def compact(self, keep: np.ndarray, room: int) -> None:
        """Keep only the rows `keep` (indices, in order), less the leading columns that are padding in all of them
        (`kept_rows`), in new buffers with room for the `room` steps still to run (`_size`; made from numpy: the CPU
        shares its memory)."""
        arrays, mask = kept_rows([buffer.numpy() for buffer in self.buffers], self.mask[:, :self.total], keep)
        self._size(mask, room + 1)
        self.step_positions = self.step_positions[keep]
        self.arrays = with_room(arrays, self.capacity - self.total)
        self._bind([self._ort_value(array) for array in self.arrays], self.logits.shape[-1])
