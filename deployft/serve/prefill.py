"""Prefills for the generator engine: prompts that start like one seen before resume from its cache
(`PrefixCache`), the others run in groups of similar length, left-padded; and left-padding arrays."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..runtime.kv_cache import positions_from_mask

MAX_PREFILL_PADDING = 1.5
"""A prefill group's tokens with padding (rows x longest prompt) stay within this multiple of its real tokens."""
MIN_PREFIX = 4
"""Cached prefixes shorter than this many tokens are not worth a call of their own."""
MAX_ENTRIES = 1024
"""Prompts the prefix cache keeps at most (each lookup compares the new prompt with every one)."""


class PrefixCache:
    """KV caches of prompts (kept after their prefill) and of finished requests' prompts and answers, so that a
    later prompt starting with the same tokens (the same system message and chat template, or a chat's previous
    turns) computes only the rest.

    A token's keys and values depend only on the tokens before it, so the first L columns of a stored prompt's cache
    are the cache of any prompt that begins with the same L tokens. `lookup` finds the stored prompt with the longest
    common prefix (at least `MIN_PREFIX` tokens, at most all but the new prompt's last token, whose logits give the
    first new token). Entries are dropped least recently used beyond `max_bytes` or `MAX_ENTRIES`; a prompt that
    begins with a stored one replaces it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], list[np.ndarray]] = OrderedDict()
        self.bytes = 0

    def lookup(self, ids: list[int]) -> tuple[int, list[np.ndarray]] | None:
        """`(L, per-layer arrays [1, kv_heads, L, head_dim])` of the longest cached prefix of `ids`, or None.
        The arrays are views of the cache's own: copy them before anything may write to them."""
        best, best_key = 0, None
        for key in self.entries:
            length = _common_prefix(key, ids)
            if length > best:
                best, best_key = length, key
        best = min(best, len(ids) - 1)
        if best < MIN_PREFIX:
            return None
        self.entries.move_to_end(best_key)
        return best, [a[:, :, :best, :] for a in self.entries[best_key]]

    def store(self, ids: list[int], arrays: list[np.ndarray]) -> None:
        """Keep a copy of the cache of prompt `ids` (per layer [1, kv_heads, len(ids), head_dim])."""
        key = tuple(int(i) for i in ids)
        if any(len(k) >= len(key) and k[:len(key)] == key for k in self.entries):  # already covered
            return
        size = sum(a.nbytes for a in arrays)
        if size > self.max_bytes:
            return
        copies = [np.array(a, copy=True) for a in arrays]  # never a view of a batch's buffers, written in place
        for covered in [k for k in self.entries if k == key[:len(k)]]:
            self.bytes -= sum(a.nbytes for a in self.entries.pop(covered))
        self.entries[key], self.bytes = copies, self.bytes + size
        while self.bytes > self.max_bytes or len(self.entries) > MAX_ENTRIES:
            self.bytes -= sum(a.nbytes for a in self.entries.popitem(last=False)[1])


def prefill(decoder, codec, prompts: list[list[int]], cache: PrefixCache | None,
            record: Callable[[int], None] = lambda rows: None,
            reused: Callable[[int], None] = lambda tokens: None) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Run `prompts` through `decoder`; per prompt, its last position's logits [1, vocab] and its cache per layer
    as numpy [1, kv_heads, len, head_dim]. A prompt with a cached prefix runs alone from it (`reused` gets the
    tokens not recomputed): GroupQueryAttention on the CPU takes a prompt after a past only for one row at a
    time, so when several prompts are prefilled together, one resumes only if the cache holds at least half of it
    (`_worth_resuming`); the others run in groups (`prefill_groups`). `record` gets each call's rows."""
    from onnxruntime import OrtValue

    results: list = [None] * len(prompts)
    fresh = []
    for index, ids in enumerate(prompts):
        hit = cache.lookup(ids) if cache is not None else None
        if hit is None or not _worth_resuming(hit[0], len(ids), len(prompts)):
            fresh.append(index)
            continue
        length, arrays = hit
        mask = np.ones((1, len(ids)), dtype=np.int64)
        past = [OrtValue.ortvalue_from_numpy(np.array(a, copy=True), decoder.device, 0) for a in arrays]
        logits, present = decoder.step(np.asarray([ids[length:]], dtype=np.int64), mask,
                                       positions_from_mask(mask)[:, length:], past)
        record(1)
        reused(length)
        results[index] = (logits, [v.numpy() for v in present])
    for group in prefill_groups(fresh, lambda i: len(prompts[i])):
        batch, mask = codec.pad([prompts[i] for i in group], side="left")
        logits, present = decoder.step(batch, mask, positions_from_mask(mask), None)
        record(len(group))
        host, width = [v.numpy() for v in present], batch.shape[1]
        for row, index in enumerate(group):
            results[index] = (logits[row:row + 1], [h[row:row + 1, :, width - len(prompts[index]):, :] for h in host])
    if cache is not None:
        for ids, (_, arrays) in zip(prompts, results):
            cache.store(ids, arrays)
    return results


def _worth_resuming(cached: int, length: int, prompts: int) -> bool:
    """Resume a prompt from `cached` of its `length` tokens in a call of its own, rather than prefill it whole in a
    group with the other `prompts` - 1: always when it is alone, else when the cache holds at least half of it."""
    return prompts == 1 or 2 * cached >= length


def left_pad(array: np.ndarray, width: int, axis: int) -> np.ndarray:
    """`array` with zeros prepended along `axis` up to `width`."""
    missing = width - array.shape[axis]
    if missing == 0:
        return array
    shape = list(array.shape)
    shape[axis] = missing
    return np.concatenate([np.zeros(shape, dtype=array.dtype), array], axis=axis)


def prefill_groups(items: list, length: Callable[[object], int]) -> list[list]:
    """`items` in prefill groups: sorted by `length`, an item joins the current group while the group's padded
    size stays within `MAX_PREFILL_PADDING` times its real tokens."""
    groups: list[list] = []
    for item in sorted(items, key=length):
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(map(length, group)) + length(item)
            if length(item) * (len(group) + 1) <= MAX_PREFILL_PADDING * real:
                group.append(item)
                continue
        groups.append([item])
    return groups


def _common_prefix(key: tuple[int, ...], ids: list[int]) -> int:
    """How many leading tokens `key` and `ids` share."""
    n = min(len(key), len(ids))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(key[:n]) != np.asarray(ids[:n]))
    return int(differ[0]) if differ.size else n
