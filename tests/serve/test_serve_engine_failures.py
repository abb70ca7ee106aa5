"""The engine's unhappy paths: a request that cannot start fails alone, and every generation that ends is counted,
cancelled, withdrawn or failed."""

from __future__ import annotations

import threading

import pytest

from asgi_call import metric
from deployft.errors import UsageError
from deployft.runtime import GenerationOptions, Predictor
from deployft.serve.engine import GenerationEngine, Ticket
from deployft.serve.metrics import ServeMetrics
from test_serve_engine import PROMPTS, Collect, _drain, _ticket


class Finished(Collect):
    """A sink that also says when the request's last chunk came (from the worker thread)."""

    def __init__(self):
        super().__init__()
        self.event = threading.Event()

    def __call__(self, chunk) -> None:
        super().__call__(chunk)
        if chunk.finish_reason:
            self.event.set()


@pytest.fixture
def predictor(runtime_bundle):
    return Predictor.load(runtime_bundle("llama"))


@pytest.fixture
def engine(predictor):
    return GenerationEngine(predictor, max_batch_size=4, max_queue=8, metrics=ServeMetrics())


def test_a_negative_seed_is_refused_by_the_options():
    with pytest.raises(UsageError, match=r"seed must be an integer >= 0, got -1; pass --seed"):
        GenerationOptions(temperature=0.7, seed=-1)


def test_a_request_that_cannot_start_fails_alone(predictor, engine):
    running, running_sink = _ticket(predictor, PROMPTS[0], max_new_tokens=20)
    engine.submit(running)
    engine.run_once()
    bad, bad_sink = _ticket(predictor, PROMPTS[1], max_new_tokens=5, temperature=0.7)
    bad.options.seed = -1  # past GenerationOptions' own check: the sampler's generator refuses it
    engine.submit(bad)
    engine.run_once()
    assert bad_sink.done.finish_reason == "error" and "generation failed" in bad_sink.done.error
    _drain(engine, [running_sink])
    assert running_sink.done.error is None
    assert running_sink.text == predictor.generate(PROMPTS[0], max_new_tokens=20)
    assert metric(engine, "deployft_generations_total", reason="error") == 1


def test_requests_cancelled_while_queued_are_counted(predictor, engine):
    cancelled, sink = _ticket(predictor, PROMPTS[0], max_new_tokens=4)
    withdrawn, _ = _ticket(predictor, PROMPTS[1], max_new_tokens=4)
    engine.submit(cancelled)
    engine.submit(withdrawn)
    assert engine.withdraw(withdrawn) and not engine.withdraw(withdrawn)  # counted once
    cancelled.cancel()
    engine.run_once()
    assert sink.done.finish_reason == "cancelled" and engine.active == 0 and not engine.pending
    assert metric(engine, "deployft_generations_total", reason="cancelled") == 2


def test_a_failed_step_answers_and_counts_every_live_request(predictor, engine, monkeypatch):
    sink = Finished()
    engine.submit(Ticket(predictor.prompt_ids(PROMPTS[0]), GenerationOptions(max_new_tokens=30), sink))
    engine.run_once()  # running in the batch before the worker thread starts
    assert engine.active == 1

    def broken(*args):
        raise RuntimeError("no memory")

    monkeypatch.setattr(engine.decoder, "step", broken)
    monkeypatch.setattr(engine.decoder, "step_shared", broken)
    engine.start()
    try:
        assert sink.event.wait(30)
    finally:
        engine.stop()
    assert sink.done.finish_reason == "error" and "no memory" in sink.done.error
    assert metric(engine, "deployft_generations_total", reason="error") == 1
