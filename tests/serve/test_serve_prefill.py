"""Prefill groups: similar prompt lengths together, padding bounded; left padding; the prompt prefix cache."""

from __future__ import annotations

import numpy as np

from deployft.serve.prefill import MAX_PREFILL_PADDING, MIN_PREFIX, PrefixCache, left_pad, prefill_groups


def test_prefill_groups_bound_the_padding():
    groups = prefill_groups([40, 3, 4, 41, 5, 200], lambda n: n)
    assert groups == [[3, 4, 5], [40, 41], [200]]
    for group in groups:
        assert max(group) * len(group) <= MAX_PREFILL_PADDING * sum(group)
    assert prefill_groups([], len) == []


def _kv(ids, layers=2):
    """A fake per-layer cache [1, 1, len, 2] whose column i holds token i's id: prefixes are checkable."""
    column = np.asarray(ids, dtype=np.float32)[None, None, :, None]
    return [np.concatenate([column, column + layer], axis=3) for layer in range(layers)]


def test_the_prefix_cache_gives_the_longest_shared_start_and_leaves_a_token():
    cache = PrefixCache(max_bytes=1 << 20)
    cache.store([1, 2, 3, 4, 5, 6], _kv([1, 2, 3, 4, 5, 6]))
    cache.store([1, 2, 3, 9, 9, 9, 9], _kv([1, 2, 3, 9, 9, 9, 9]))
    length, arrays = cache.lookup([1, 2, 3, 4, 5, 7, 8])
    assert length == 5 and [a.shape for a in arrays] == [(1, 1, 5, 2)] * 2
    np.testing.assert_array_equal(arrays[1][0, 0, :, 0], [1, 2, 3, 4, 5])
    assert cache.lookup([1, 2, 3, 4, 5, 6])[0] == 5  # the same prompt: its last token is computed again
    assert cache.lookup([1, 2, 3, 8, 8, 8]) is None  # 3 shared tokens: under MIN_PREFIX
    assert cache.lookup([7, 2, 3, 4, 5, 6]) is None
    assert MIN_PREFIX == 4


def test_the_prefix_cache_keeps_the_longer_of_two_prompts_and_evicts_the_least_recently_used():
    size = sum(a.nbytes for a in _kv(list(range(10))))
    cache = PrefixCache(max_bytes=2 * size)
    cache.store(list(range(6)), _kv(list(range(6))))
    cache.store(list(range(10)), _kv(list(range(10))))  # begins with the first: replaces it
    assert list(cache.entries) == [tuple(range(10))] and cache.bytes == size
    cache.store(list(range(5)), _kv(list(range(5))))  # covered by the stored one: nothing new
    assert list(cache.entries) == [tuple(range(10))]
    other, third = [50 + i for i in range(10)], [80 + i for i in range(10)]
    cache.store(other, _kv(other))
    assert cache.lookup(list(range(8)))[0] == 7  # the first one is now the most recently used
    cache.store(third, _kv(third))  # over budget: the least recently used (`other`) goes
    assert set(cache.entries) == {tuple(range(10)), tuple(third)} and cache.bytes == 2 * size
    cache.store(list(range(100, 200)), _kv(list(range(100, 200))))  # bigger than the whole budget: not kept
    assert set(cache.entries) == {tuple(range(10)), tuple(third)}


def test_left_pad_prepends_zeros_only_when_needed():
    row = np.ones((1, 3), dtype=np.int64)
    assert left_pad(row, 3, 1) is row
    np.testing.assert_array_equal(left_pad(row, 5, 1), [[0, 0, 1, 1, 1]])


def test_the_prefix_cache_keeps_copies_and_a_bounded_number_of_prompts(monkeypatch):
    from deployft.serve import prefill

    cache = PrefixCache(max_bytes=1 << 20)
    source = _kv([1, 2, 3, 4, 5, 6])
    cache.store([1, 2, 3, 4, 5, 6], source)
    for array in source:  # the batch buffer it came from is written in place later
        array[:] = -1
    np.testing.assert_array_equal(cache.lookup([1, 2, 3, 4, 5, 9])[1][0][0, 0, :, 0], [1, 2, 3, 4, 5])
    monkeypatch.setattr(prefill, "MAX_ENTRIES", 2)
    for start in (10, 20, 30):
        cache.store([start + i for i in range(6)], _kv([start + i for i in range(6)]))
    assert [key[0] for key in cache.entries] == [20, 30]


def test_a_prompt_resumes_alone_always_and_beside_others_when_half_of_it_is_cached():
    from deployft.serve.prefill import _worth_resuming

    assert _worth_resuming(cached=4, length=20, prompts=1)
    assert not _worth_resuming(cached=4, length=20, prompts=2)  # better prefilled whole in the group
    assert _worth_resuming(cached=10, length=20, prompts=3)
