"""Continuous batching: rows join a running batch mid-way and leave it at once, with the tokens they get alone."""

from __future__ import annotations

import numpy as np
import pytest

from deployft.runtime import GenerationOptions, Predictor
from deployft.serve.engine import Chunk, GenerationEngine, Ticket
from deployft.serve.queueing import QueueFull

PROMPTS = ["what is the capital of france", "bees", "where do fish live and what do they eat every day", "two"]


class Collect:
    def __init__(self):
        self.chunks: list[Chunk] = []

    def __call__(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def done(self) -> Chunk | None:
        return self.chunks[-1] if self.chunks and self.chunks[-1].finish_reason else None


def _ticket(predictor, prompt, **options) -> tuple[Ticket, Collect]:
    sink = Collect()
    return Ticket(predictor.prompt_ids(prompt), GenerationOptions(**options), sink), sink


def _drain(engine, sinks, limit=500):
    for _ in range(limit):
        if all(s.done for s in sinks):
            return
        engine.run_once()
    raise AssertionError("the engine did not finish its requests")


@pytest.fixture(scope="module")
def fused_bundle(tiny_generate_run, tmp_path_factory):
    """deployft's own export of a tiny Llama RUN: attention fused, its cache marked shareable (fp32 only)."""
    from deployft.exporter import ExportConfig, export

    return export(ExportConfig(run=tiny_generate_run, output=tmp_path_factory.mktemp("engine") / "bundle",
                               quantize="none", validate_samples=8))


@pytest.fixture(params=["gpt2", "llama"])
def predictor(request, runtime_bundle):
    return Predictor.load(runtime_bundle(request.param))


def test_rows_joining_mid_way_get_the_tokens_they_get_alone(predictor):
    engine = GenerationEngine(predictor, max_batch_size=8, max_queue=8)
    first, first_sink = _ticket(predictor, PROMPTS[0], max_new_tokens=40)
    engine.submit(first)
    for _ in range(3):
        engine.run_once()
    later = [_ticket(predictor, p, max_new_tokens=n) for p, n in zip(PROMPTS[1:], (5, 30, 12))]
    for ticket, _ in later:
        engine.submit(ticket)
    _drain(engine, [first_sink] + [s for _, s in later])
    for (ticket, sink), prompt, n in zip([(first, first_sink)] + later, PROMPTS, (40, 5, 30, 12)):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n)
    joined = [t.joined_step for t, _ in later if t.joined_step is not None]
    assert joined and all(first.joined_step < step for step in joined)  # they joined while the first was decoding
    assert engine.rows == [] and engine.cache is None


def test_a_finished_row_leaves_at_once(predictor):
    engine = GenerationEngine(predictor, max_batch_size=8, max_queue=8)
    short, short_sink = _ticket(predictor, PROMPTS[1], max_new_tokens=3)
    long, long_sink = _ticket(predictor, PROMPTS[0], max_new_tokens=30, stop=["\x00never"])
    engine.submit(long)
    engine.submit(short)
    _drain(engine, [short_sink, long_sink])
    assert short_sink.done.finish_reason == "length" and short_sink.done.completion_tokens == 3
    assert short.left_step == short.joined_step + 2  # prefill gave token 1, two steps gave 2 and 3
    assert long.left_step is None or long.left_step > short.left_step


def test_sampling_with_a_seed_is_reproduced_in_a_batch(predictor):
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    settings = dict(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7)
    tickets = [_ticket(predictor, p, **settings) for p in PROMPTS]
    for ticket, _ in tickets:
        engine.submit(ticket)
    _drain(engine, [s for _, s in tickets])
    assert [s.text for _, s in tickets] == [predictor.generate(p, **settings) for p in PROMPTS]


def test_a_cancelled_row_frees_its_slot_at_the_next_step(predictor):
    engine = GenerationEngine(predictor, max_batch_size=1, max_queue=8)
    first, first_sink = _ticket(predictor, PROMPTS[0], max_new_tokens=60, stop=["\x00never"])
    second, second_sink = _ticket(predictor, PROMPTS[1], max_new_tokens=4)
    engine.submit(first)
    engine.submit(second)
    engine.run_once()
    if first_sink.done is None:
        first.cancel()
        engine.run_once()
        assert first_sink.done.finish_reason == "cancelled" and engine.active == 0
    _drain(engine, [second_sink])
    assert second_sink.text == predictor.generate(PROMPTS[1], max_new_tokens=4)


def test_a_full_queue_refuses(predictor):
    engine = GenerationEngine(predictor, max_batch_size=1, max_queue=2)
    for prompt in PROMPTS[:2]:
        engine.submit(_ticket(predictor, prompt)[0])
    with pytest.raises(QueueFull, match="--max-queue 2"):
        engine.submit(_ticket(predictor, PROMPTS[2])[0])


def test_finished_rows_are_compacted_once_they_are_as_many_as_the_live_ones(predictor):
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    never = ("\x00never",)
    tickets = [_ticket(predictor, p, max_new_tokens=n, stop=never) for p, n in zip(PROMPTS, (2, 3, 40, 40))]
    for ticket, _ in tickets:
        engine.submit(ticket)
    physical = []
    while not all(s.done for _, s in tickets[:2]):
        engine.run_once()  # the first one prefills all four (token 1) and steps once (token 2)
        physical.append((len(engine.rows), engine.active))
    if all(s.done.completion_tokens == n for (_, s), n in zip(tickets[:2], (2, 3))):
        assert physical == [(4, 3), (2, 2)]  # one finished row is kept (25 % waste), two are dropped
    _drain(engine, [s for _, s in tickets])
    for (_, sink), prompt, n in zip(tickets, PROMPTS, (2, 3, 40, 40)):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n, stop=never)


def test_the_engine_drops_finished_rows_at_the_runtimes_share(predictor, monkeypatch):
    """The continuous batch compacts by `generation.DROP_FINISHED_SHARE`, the share `Predictor.generate` uses: at a
    quarter, one finished row of four is dropped at once."""
    from deployft.serve import engine as engine_module

    monkeypatch.setattr(engine_module, "DROP_FINISHED_SHARE", 0.25)
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    never = ("\x00never",)
    tickets = [_ticket(predictor, p, max_new_tokens=n, stop=never) for p, n in zip(PROMPTS, (2, 40, 40, 40))]
    for ticket, _ in tickets:
        engine.submit(ticket)
    engine.run_once()  # prefills all four (token 1) and steps once (token 2): the first row is done
    assert tickets[0][1].done and tickets[0][1].done.completion_tokens == 2  # greedy: the same every run
    assert (len(engine.rows), engine.active) == (3, 3)
    _drain(engine, [s for _, s in tickets])
    for (_, sink), prompt, n in zip(tickets, PROMPTS, (2, 40, 40, 40)):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n, stop=never)


def test_requests_admitted_together_are_prefilled_in_one_call(predictor):
    engine = GenerationEngine(predictor, max_batch_size=8, max_queue=8)
    prompts = ["what do bees eat", "where do the fish live", "who wrote this book", "what do cats eat today"]
    tickets = [_ticket(predictor, p, max_new_tokens=n) for p, n in zip(prompts, (6, 9, 12, 15))]
    assert len({len(t.prompt_ids) for t, _ in tickets}) > 1  # the prefill batch really is padded
    prefills = []
    step = engine.decoder.step

    def spy(ids, mask, positions, past):
        if past is None:
            prefills.append(ids.shape)
        return step(ids, mask, positions, past)

    engine.decoder.step = spy
    for ticket, _ in tickets:
        engine.submit(ticket)
    _drain(engine, [s for _, s in tickets])
    assert len(prefills) == 1 and prefills[0][0] == 4
    assert all(t.joined_step == 0 for t, _ in tickets)
    for (_, sink), prompt, n in zip(tickets, prompts, (6, 9, 12, 15)):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n)


def _prefix_engine(predictor, max_batch_size=4):
    """An engine with a prefix cache, its reuse counted through real metrics."""
    from deployft.serve.metrics import ServeMetrics

    return GenerationEngine(predictor, max_batch_size=max_batch_size, max_queue=8, metrics=ServeMetrics(),
                            prefix_cache_bytes=1 << 24)


def _reused(engine) -> tuple[float, float]:
    return engine.metrics.prefix_hits._value.get(), engine.metrics.prefix_tokens._value.get()


def test_prompts_that_start_alike_resume_from_the_cached_prefix_with_the_same_tokens(predictor):
    """The second and third requests begin like the first: they are prefilled from its cache (only their own
    tokens computed, while the first still decodes) and get the tokens they get alone."""
    _check_prefix_reuse(predictor)


def test_the_shared_cache_engine_resumes_cached_prefixes_with_the_same_tokens(fused_bundle):
    predictor = Predictor.load(fused_bundle, model_file="model_optimized.onnx")
    assert predictor.decoder.shares_cache
    _check_prefix_reuse(predictor)


def _check_prefix_reuse(predictor):
    engine = _prefix_engine(predictor)
    prompts = ["where do fish live and eat", "where do fish live and nap", "where do fish live and go"]
    never = ("\x00never",)
    first, first_sink = _ticket(predictor, prompts[0], max_new_tokens=12, stop=never)
    engine.submit(first)
    engine.run_once()
    assert _reused(engine) == (0, 0)
    later = [_ticket(predictor, p, max_new_tokens=n, stop=never) for p, n in zip(prompts[1:], (9, 6))]
    for ticket, _ in later:
        engine.submit(ticket)
    _drain(engine, [first_sink] + [s for _, s in later])
    shared = [next(i for i, (a, b) in enumerate(zip(first.prompt_ids, t.prompt_ids)) if a != b)
              if t.prompt_ids != first.prompt_ids[:len(t.prompt_ids)] else len(t.prompt_ids) - 1 for t, _ in later]
    assert all(n >= 4 for n in shared)
    assert _reused(engine) == (2, sum(shared))
    for (_, sink), prompt, n in zip([(first, first_sink)] + later, prompts, (12, 9, 6)):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n, stop=never)


def test_the_shared_cache_engine_decodes_what_each_row_gets_alone(fused_bundle):
    """On a fused file the running batch's cache is one buffer per layer updated in place (past = present):
    rows joining mid-way, rows leaving and compactions give each request the tokens it gets alone."""
    predictor = Predictor.load(fused_bundle, model_file="model_optimized.onnx")
    assert predictor.decoder.shares_cache
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    calls = {"shared": 0, "copying": 0}
    shared, copying = engine.decoder.step_shared, engine.decoder.step

    def count_shared(*args):
        calls["shared"] += 1
        return shared(*args)

    def count_copying(ids, mask, positions, past):
        calls["copying"] += past is not None
        return copying(ids, mask, positions, past)

    engine.decoder.step_shared, engine.decoder.step = count_shared, count_copying
    never = ("\x00never",)
    # the tiny RUN's model ends most prompts within two tokens; these two it runs on
    long_prompts = ["where do fish live and what do they eat every day", "what is the best way to cook rice"]
    first, first_sink = _ticket(predictor, long_prompts[0], max_new_tokens=20, stop=never)
    engine.submit(first)
    for _ in range(3):
        engine.run_once()
    later = [_ticket(predictor, p, max_new_tokens=n, stop=never)
             for p, n in ((long_prompts[1], 12), (PROMPTS[1], 5), (long_prompts[0], 8))]
    for ticket, _ in later:
        engine.submit(ticket)
    room = []
    while not all(s.done for s in [first_sink] + [s for _, s in later]):
        engine.run_once()
        if engine.cache is not None:
            keys, width = engine.cache[0].numpy(), engine.mask.shape[1]
            room.append(keys.shape[2] - width)
            assert (np.abs(keys[:, :, width - 1, :]).sum(axis=(1, 2)) > 0).all()  # the step wrote in place
            assert not keys[:, :, width:, :].any()  # and nothing past it
    expected = [(long_prompts[0], 20), (long_prompts[1], 12), (PROMPTS[1], 5), (long_prompts[0], 8)]
    for (_, sink), (prompt, n) in zip([(first, first_sink)] + later, expected):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n, stop=never)
    assert calls["shared"] == 19 and calls["copying"] == 0  # the first row: a prefill, then 19 steps
    assert room and min(room) >= 1  # the buffers always had room for the next step's column
    assert any(t.joined_step and t.joined_step > first.joined_step for t, _ in later)


def test_prompts_prefilled_together_keep_their_cache_while_the_heap_is_reused(fused_bundle, monkeypatch):
    """Prompts of different lengths admitted at one step are prefilled in one left-padded call (run right-padded
    on this file, which rotates inside its attention) and join the batch from views of that call's cache: the
    memory must be theirs, so filling the heap with arrays of the cache's sizes before they join changes no
    row's tokens."""
    import gc

    from deployft.serve import engine as engine_module

    real_prefill, sizes = engine_module.prefill, []

    def prefill_then_litter(*args, **kwargs):
        results = real_prefill(*args, **kwargs)
        if results:  # the freed arrays a call's rows could view: any of its row counts and lengths
            gc.collect()
            _, kv_heads, _, head_dim = results[0][1][0].shape
            lengths = {cache[0].shape[2] for _, cache in results}
            litter = [np.full((rows, kv_heads, length, head_dim), 7.0, dtype=results[0][1][0].dtype)
                      for rows in range(1, len(results) + 1) for length in lengths for _ in range(8)]
            sizes.append(len(litter))
        return results

    monkeypatch.setattr(engine_module, "prefill", prefill_then_litter)
    predictor = Predictor.load(fused_bundle, model_file="model_optimized.onnx")
    assert predictor.decoder.rotates_in_attention
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    never = ("\x00never",)
    jobs = [("where do fish live and what do they eat every day", 10), ("what is the best way to cook rice", 8),
            ("what do fish eat", 6)]
    tickets = [_ticket(predictor, p, max_new_tokens=n, stop=never) for p, n in jobs]
    for ticket, _ in tickets:
        engine.submit(ticket)
    _drain(engine, [sink for _, sink in tickets])
    assert sizes and sizes[0] > 0
    for (_, sink), (prompt, n) in zip(tickets, jobs):
        assert sink.text == predictor.generate(prompt, max_new_tokens=n, stop=never)


def test_a_request_joins_a_finished_rows_slot_of_the_shared_cache_in_place(fused_bundle):
    """A newcomer whose prompt and budget fit is written into a finished row's slot of the live buffers: no
    rebuild (the same arrays), and every request still gets the tokens it gets alone."""
    predictor = Predictor.load(fused_bundle, model_file="model_optimized.onnx")
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    never = ("\x00never",)
    long_prompts = ["where do fish live and what do they eat every day", "what is the best way to cook rice"]
    first = [_ticket(predictor, p, max_new_tokens=n, stop=never)
             for p, n in ((long_prompts[0], 16), (long_prompts[1], 16), (long_prompts[0], 3))]
    for ticket, _ in first:
        engine.submit(ticket)
    while not first[2][1].done:
        engine.run_once()
    assert [r.dead for r in engine.rows] == [False, False, True]  # one finished of three: no compaction
    buffers, width = list(engine.host), engine.mask.shape[1]
    newcomer, sink = _ticket(predictor, long_prompts[1], max_new_tokens=6, stop=never)
    engine.submit(newcomer)
    engine.run_once()
    assert all(now is before for now, before in zip(engine.host, buffers))  # written in place, not rebuilt
    assert engine.rows[2].ticket is newcomer and newcomer.joined_step is not None
    start = width - len(newcomer.prompt_ids)
    assert engine.mask.shape[1] == width + 1 and not engine.mask[2, :start].any() and engine.mask[2, start:].all()
    ids = np.asarray([newcomer.prompt_ids], dtype=np.int64)
    _, alone = predictor.decoder.step(ids, np.ones_like(ids), np.arange(ids.shape[1])[None], None)
    for buffer, present in zip(engine.host, alone):  # the slot holds the prompt's keys / values, right-aligned
        np.testing.assert_allclose(buffer[2, :, start:width, :], present.numpy()[0], rtol=1e-5, atol=1e-5)
    _drain(engine, [s for _, s in first] + [sink])
    for (_, s), (prompt, n) in zip(first + [(newcomer, sink)],
                                  ((long_prompts[0], 16), (long_prompts[1], 16), (long_prompts[0], 3),
                                   (long_prompts[1], 6))):
        assert s.text == predictor.generate(prompt, max_new_tokens=n, stop=never)


def test_a_request_that_does_not_fit_a_free_slot_joins_by_a_rebuild(fused_bundle, monkeypatch):
    """No spare columns: a newcomer whose budget is over the room left joins through a rebuilt cache."""
    import deployft.serve.engine as module

    monkeypatch.setattr(module, "JOIN_HEADROOM", 0)
    predictor = Predictor.load(fused_bundle, model_file="model_optimized.onnx")
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    never = ("\x00never",)
    prompt = "where do fish live and what do they eat every day"
    first = [_ticket(predictor, prompt, max_new_tokens=n, stop=never) for n in (8, 8, 2)]
    for ticket, _ in first:
        engine.submit(ticket)
    while not first[2][1].done:
        engine.run_once()
    buffers = list(engine.host)
    newcomer, sink = _ticket(predictor, prompt, max_new_tokens=12, stop=never)
    engine.submit(newcomer)
    engine.run_once()
    assert not any(now is before for now, before in zip(engine.host, buffers))
    assert [r.ticket for r in engine.rows][-1] is newcomer and not any(r.dead for r in engine.rows)
    _drain(engine, [s for _, s in first] + [sink])
    assert sink.text == predictor.generate(prompt, max_new_tokens=12, stop=never)


def test_a_failed_prefill_answers_the_requests_it_took_from_the_queue(predictor, monkeypatch):
    engine = GenerationEngine(predictor, max_batch_size=4, max_queue=8)
    ticket, sink = _ticket(predictor, PROMPTS[0], max_new_tokens=4)

    def broken(*args):
        raise RuntimeError("no memory")

    monkeypatch.setattr(engine.decoder, "step", broken)
    engine.submit(ticket)
    with pytest.raises(RuntimeError):
        engine.run_once()
    assert sink.done.finish_reason == "error" and "no memory" in sink.done.error and not engine.pending


def test_a_finished_answer_is_kept_so_the_next_turn_resumes_after_it(predictor):
    """A chat's next turn begins with the previous prompt and answer: both come from the prefix cache (all the
    answer's tokens that were fed back, that is all but its last), and the turn gets the tokens it gets alone."""
    _check_answer_reuse(predictor)


def test_the_shared_cache_engine_keeps_finished_answers_too(fused_bundle):
    predictor = Predictor.load(fused_bundle, model_file="model_optimized.onnx")
    assert predictor.decoder.shares_cache
    _check_answer_reuse(predictor, "where do fish live and what do they eat every day")  # one it runs on


def _check_answer_reuse(predictor, prompt="where do fish live"):
    engine = _prefix_engine(predictor)
    never = ("\x00never",)
    first, first_sink = _ticket(predictor, prompt, max_new_tokens=6, stop=never)
    engine.submit(first)
    _drain(engine, [first_sink])
    answer = [int(t) for t in predictor.iter_token_ids(first.prompt_ids, max_new_tokens=6)]
    assert first_sink.done.completion_tokens == len(answer) > 2
    more = predictor.codec.tokenizer.encode(" and bees", add_special_tokens=False).ids
    turn = first.prompt_ids + answer[:-1] + more
    second = Ticket(turn, GenerationOptions(max_new_tokens=5, stop=never), Collect())
    engine.submit(second)
    _drain(engine, [second.sink])
    assert _reused(engine) == (1, len(first.prompt_ids) + len(answer) - 1)
    alone = [int(t) for t in predictor.iter_token_ids(turn, max_new_tokens=5)]
    assert second.sink.done.completion_tokens == len(alone)
    assert second.sink.text == predictor.codec.decode(alone)


def test_rows_finishing_at_the_same_step_are_all_kept_from_one_copy_of_the_cache(predictor, monkeypatch):
    engine = _prefix_engine(predictor)
    copies, remembering = [], []
    host_cache, remember = engine._host_cache, engine._remember

    def counted():
        if remembering:  # compactions copy too; only the copies made to remember rows are counted
            copies.append(engine.steps)
        return host_cache()

    def flagged(indices):
        remembering.append(True)
        try:
            return remember(indices)
        finally:
            remembering.pop()

    monkeypatch.setattr(engine, "_host_cache", counted)
    monkeypatch.setattr(engine, "_remember", flagged)
    never = ("\x00never",)
    tickets = [_ticket(predictor, p, max_new_tokens=3, stop=never) for p in ("where do fish live", "bees")]
    for ticket, _ in tickets:
        engine.submit(ticket)
    _drain(engine, [s for _, s in tickets])
    for ticket, sink in tickets:
        answer = [int(t) for t in predictor.iter_token_ids(ticket.prompt_ids, max_new_tokens=3)]
        assert sink.done.completion_tokens == len(answer)
        if len(answer) > 1:  # finished in a decode step: prompt and the answer fed back are kept
            assert tuple(ticket.prompt_ids + answer[:-1]) in engine.prefix_cache.entries
    finishing_steps = {t.left_step for t, s in tickets if s.done.completion_tokens > 1}
    assert len(finishing_steps) == 1  # both ran their 3 tokens: they finished at the same step
    assert sorted(copies) == sorted(finishing_steps)  # one copy per step, however many rows finished in it
