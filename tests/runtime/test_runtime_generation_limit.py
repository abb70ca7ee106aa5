"""Batches at the model's position limit: every row gets the tokens its prompt gets alone (`KVDecoder.budget` per
row), on the plain files and on the fused ones (GroupQueryAttention updating one cache in place)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import short_decoder
from deployft.runtime import GenerationOptions, Predictor

POSITIONS = 32
LENGTHS = (POSITIONS - 3, 5, 12, POSITIONS + 2)
"""Prompt lengths of one batch; alone, with 40 tokens asked, they get 4, 28, 21 and none (the last is longer than
the positions)."""


@pytest.fixture(scope="module", params=["llama", "mistral", "gpt2"])
def short_bundle(request, tmp_path_factory):
    """`deployft export` of a POSITIONS-position decoder: Optimum's plain file and deployft's fused one."""
    from deployft.exporter import ExportConfig, export

    folder = tmp_path_factory.mktemp(f"positions-{request.param}")
    return export(ExportConfig(run=short_decoder(request.param, folder, POSITIONS), output=folder / "bundle",
                               task="generate", quantize="none", validate_samples=4, max_accuracy_drop=1000))


def _files(bundle) -> list[str]:
    return list(json.loads((bundle / "deployft.json").read_text())["variants"])


def _prompts() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, 300, size=length).tolist() for length in LENGTHS]


def _batch_rows(predictor, prompts, options) -> tuple[list[list[int]], np.ndarray]:
    """Each row's tokens from one left-padded `iter_batch` of `prompts` (end tokens ignored), and its `done`."""
    ids, mask = predictor.codec.pad(prompts, side="left")
    done = np.zeros(len(prompts), dtype=bool)
    steps = list(predictor.decoder.iter_batch(ids, mask, options, done, ignore_eos=True))
    return [[int(step[row]) for step in steps] for row in range(len(prompts))], done


def test_every_row_of_a_batch_gets_its_own_budget_at_the_position_limit(short_bundle):
    """On every file; a fused one through its shared cache and through the copying cache too."""
    prompts = _prompts()
    for name in _files(short_bundle):
        predictor = Predictor.load(short_bundle, model_file=name)
        decoder = predictor.decoder
        assert decoder.max_positions == POSITIONS
        for shared in sorted({decoder.shares_cache, False}, reverse=True):
            decoder.shares_cache = shared
            alone = [list(predictor.iter_token_ids(p, max_new_tokens=40, ignore_eos=True)) for p in prompts]
            assert [len(tokens) for tokens in alone] == [4, 28, 21, 0]
            for batch in (prompts[:3], prompts):  # with and without a prompt that gets nothing
                rows, done = _batch_rows(predictor, batch, GenerationOptions(40))
                assert len(rows[0]) == 28, (name, shared)
                for own, row in zip(alone, rows):  # a row cut before the others gets padding after its budget
                    assert row[:len(own)] == own, (name, shared)
                    assert row[len(own):] == [decoder.pad_id] * (28 - len(own)), (name, shared)
                assert done.all(), (name, shared)


def test_generate_gives_a_prompt_in_a_batch_the_text_it_gets_alone(short_bundle):
    """Greedy and seeded sampling, on a batch whose long prompt reaches the limit long before its short ones."""
    predictor = Predictor.load(short_bundle)
    prompts = _prompts()
    texts = [f"p{i}" for i in range(len(prompts))]
    predictor.prompt_ids = dict(zip(texts, prompts)).__getitem__  # exact prompt lengths, whatever the tokenizer
    for settings in ({"max_new_tokens": 40}, {"max_new_tokens": 40, "temperature": 1.0, "seed": 5}):
        alone = [predictor.generate(text, **settings) for text in texts]
        assert predictor.generate(texts, **settings) == alone
        assert predictor.generate(texts[::-1], **settings) == alone[::-1]
        # the token finished rows are fed decodes to text here: a caller must stop reading a row once it is done
        predictor.decoder.pad_id = 42
        assert predictor.codec.decode([42]).strip()
        assert predictor.generate(texts, **settings) == [predictor.generate(text, **settings) for text in texts]
        streams = [predictor.iter_token_ids(p, **settings) for p in prompts[1:3]]
        longest = max(len([t for t in tokens if t not in predictor.decoder.eos_ids]) for tokens in streams)
        assert longest > 4, "a short prompt must outlive the long one (4 tokens) for the check to mean something"


def test_the_server_gives_a_request_the_tokens_it_gets_alone(short_bundle):
    """Continuous batching budgets each request on its own prompt already (`GenerationEngine._new_row`)."""
    from deployft.serve.engine import GenerationEngine, Ticket

    prompts = _prompts()[:3]
    for name in _files(short_bundle):
        predictor = Predictor.load(short_bundle, model_file=name)
        engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
        sinks = [[] for _ in prompts]
        for prompt, sink in zip(prompts, sinks):
            engine.submit(Ticket(prompt, GenerationOptions(40), sink.append))
        for _ in range(80):
            if all(sink and sink[-1].finish_reason for sink in sinks):
                break
            engine.run_once()
        for prompt, sink in zip(prompts, sinks):
            alone = list(predictor.iter_token_ids(prompt, max_new_tokens=40))
            assert sink[-1].error is None and sink[-1].completion_tokens == len(alone), name
            assert "".join(chunk.text for chunk in sink) == predictor.codec.decode(alone), name


def test_a_batch_logs_one_line_for_all_the_prompts_it_cuts(runtime_bundle, caplog):
    """One warning per batch however many prompt lengths it cuts; a single prompt keeps its own line."""
    decoder = Predictor.load(runtime_bundle("gpt2")).decoder
    positions = decoder.max_positions
    lengths = np.array([positions - 3, 5, positions - 1, positions - 3, positions + 2])
    mask = (np.arange(lengths.max()) >= lengths.max() - lengths[:, None]).astype(np.int64)  # left-padded
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        budgets = decoder.budgets(mask, 8)
    assert budgets.tolist() == [4, 8, 2, 4, 0]  # each prompt's own budget
    cuts = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert cuts == [f"max_new_tokens 8 cut to 0-4 for 4 of 5 prompts: the model has {positions} positions and they "
                    f"use {positions - 3}-{positions + 2}"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        assert decoder.budgets(mask[2:3], 8).tolist() == [2]
    assert [r.getMessage() for r in caplog.records] == [
        f"max_new_tokens 8 cut to 2: the model has {positions} positions and the prompt uses {positions - 1}"]


def test_kept_rows_drop_rows_and_shared_padding_and_views_when_nothing_is_dropped():
    """The cut that `Predictor.generate`'s compaction and the serve engine's both make (`kv_cache.kept_rows`)."""
    from deployft.runtime.kv_cache import kept_rows, with_room

    mask = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=np.int64)
    arrays = [np.arange(3 * 2 * 7 * 4, dtype=np.float32).reshape(3, 2, 7, 4) + layer for layer in range(2)]
    kept, kept_mask = kept_rows(arrays, mask, [0, 2])  # row 1 finished: columns 0-1 are padding in both rows left
    assert kept_mask.tolist() == [[0, 1, 1], [1, 1, 1]] and len(kept) == 2
    for layer, array in zip(arrays, kept):
        assert np.array_equal(array, layer[[0, 2]][:, :, 2:5, :]) and not np.shares_memory(array, layer)
    mask[1, 0] = 1  # a row with no padding: every row and column is kept
    whole, whole_mask = kept_rows(arrays, mask, [0, 1, 2])
    assert whole_mask.tolist() == mask.tolist()
    assert all(np.shares_memory(a, b) and np.array_equal(a, b[:, :, :5, :]) for a, b in zip(whole, arrays))
    roomy = with_room(kept, 3)
    for array, source in zip(roomy, kept):
        assert array.shape == (2, 2, 6, 4) and array.flags.c_contiguous and not np.shares_memory(array, source)
        assert np.array_equal(array[:, :, :3], source) and not array[:, :, 3:].any()


def test_position_budget_is_the_one_cut_of_the_runtime_and_the_export_check():
    """One prompt or many, the runtime's cut and export validation's greedy length agree (LENGTHS' docstring)."""
    from deployft.exporter.validate import GREEDY_TOKENS, _greedy_tokens
    from deployft.runtime.generation import position_budget

    assert position_budget(np.array(LENGTHS), 40, POSITIONS).tolist() == [4, 28, 21, 0]
    assert [int(position_budget(n, 40, POSITIONS)) for n in LENGTHS] == [4, 28, 21, 0]
    assert position_budget(np.array(LENGTHS), 40, None).tolist() == [40] * 4 and position_budget(7, 40, 0) == 40
    assert [_greedy_tokens(n, POSITIONS) for n in (POSITIONS - 1, POSITIONS + 1)] == [min(GREEDY_TOKENS, 2), 0]
    assert _greedy_tokens(5, None) == GREEDY_TOKENS


def _rows_finished_by_the_caller(predictor, prompts, options, finish_at: dict[int, int]) -> list[list[int]]:
    """Each row's tokens from one `iter_batch`, the caller marking row i done after step finish_at[i] (as a stop
    string does); end tokens ignored."""
    ids, mask = predictor.codec.pad(prompts, side="left")
    done = np.zeros(len(prompts), dtype=bool)
    rows: list[list[int]] = [[] for _ in prompts]
    for step, tokens in enumerate(predictor.decoder.iter_batch(ids, mask, options, done, ignore_eos=True), 1):
        for i in np.flatnonzero(~done):
            rows[i].append(int(tokens[i]))
            done[i] |= finish_at.get(int(i)) == step
    return rows


def test_a_batch_drops_its_finished_rows_and_the_others_go_on_as_alone(short_bundle, monkeypatch):
    """Once half the rows are done the batch drops them (`DROP_FINISHED_SHARE`), far from the position limit, on
    every file and both caches; the rows left get the tokens they get alone."""
    from deployft.runtime import generation, kv_cache

    compactions = []
    for cache in (kv_cache.SharedCache, kv_cache.CopyingCache):
        def counted(self, keep, room, _compact=cache.compact):
            compactions.append(len(keep))
            return _compact(self, keep, room)
        monkeypatch.setattr(cache, "compact", counted)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 300, size=n).tolist() for n in (3, 9, 5, 7)]
    finish_at = {0: 2, 2: 3}  # two of four rows done after step 3
    shipped = generation.DROP_FINISHED_SHARE
    assert 0.25 < shipped <= 0.5  # the first finished row alone is not dropped, the second makes the batch drop both
    for name in _files(short_bundle):
        predictor = Predictor.load(short_bundle, model_file=name)
        for shared in sorted({predictor.decoder.shares_cache, False}, reverse=True):
            predictor.decoder.shares_cache = shared
            alone = [list(predictor.iter_token_ids(p, max_new_tokens=12, ignore_eos=True)) for p in prompts]
            compactions.clear()
            rows = _rows_finished_by_the_caller(predictor, prompts, GenerationOptions(12), finish_at)
            assert compactions == [2], (name, shared)
            assert rows == [alone[0][:2], alone[1], alone[2][:3], alone[3]], (name, shared)
            monkeypatch.setattr(generation, "DROP_FINISHED_SHARE", float("inf"))
            compactions.clear()
            assert _rows_finished_by_the_caller(predictor, prompts, GenerationOptions(12), finish_at) == rows
            assert compactions == [], (name, shared)
            monkeypatch.setattr(generation, "DROP_FINISHED_SHARE", shipped)
