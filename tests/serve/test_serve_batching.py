"""Dynamic batching of classifier requests, and a client leaving a stream mid-way."""

from __future__ import annotations

import asyncio
import threading

import pytest

from deployft.runtime import Predictor
from deployft.serve.workers import ClassifierBatcher, Job

TEXTS = ["the film was great", "this movie was awful the plot the cast the story", "dull", "every scene was superb",
         "the ending was tedious the script", "charming"]


class Sizes:
    def __init__(self):
        self.sizes: list[int] = []

    def classify_batch(self, rows: int) -> None:
        self.sizes.append(rows)

    def queue(self, waiting: int, running: int) -> None:
        pass


class Answers:
    def __init__(self, n: int):
        self.results: list = [None] * n
        self.left = n
        self.event = threading.Event()

    def job(self, i: int, ids) -> Job:
        def answer(predictions, error):
            assert error is None
            self.results[i] = predictions
            self.left -= 1
            if self.left == 0:
                self.event.set()

        return Job(ids, answer)


@pytest.fixture
def predictor(runtime_bundle):
    return Predictor.load(runtime_bundle("bert"))


def _run(predictor, jobs_texts, max_batch_size, max_wait_ms=50.0):
    sizes, answers = Sizes(), Answers(len(jobs_texts))
    batcher = ClassifierBatcher(predictor, max_batch_size, max_wait_ms, max_queue=64, metrics=sizes)
    for i, texts in enumerate(jobs_texts):  # all queued before the worker starts: it sees them together
        batcher.submit(answers.job(i, predictor.codec.encode(texts)))
    batcher.start()
    try:
        assert answers.event.wait(30)
    finally:
        batcher.stop()
    return answers.results, sizes.sizes


def test_concurrent_requests_share_one_call_and_get_their_own_answers(predictor):
    jobs = [[t] for t in TEXTS] + [TEXTS[:3]]
    results, sizes = _run(predictor, jobs, max_batch_size=32)
    assert sizes == [len(TEXTS) + 3]
    for texts, predictions in zip(jobs, results):
        for text, got in zip(texts, predictions):
            alone = predictor.predict(text)
            assert got.label == alone.label and got.scores == pytest.approx(alone.scores, abs=1e-6)


def test_batches_hold_at_most_max_batch_size_texts(predictor):
    results, sizes = _run(predictor, [TEXTS[:3], TEXTS[3:], TEXTS[:2]], max_batch_size=4)
    assert sizes == [3, 3, 2] and [len(r) for r in results] == [3, 3, 2]


def test_batching_off_runs_one_text_per_call(predictor):
    _, sizes = _run(predictor, [[t] for t in TEXTS], max_batch_size=1, max_wait_ms=0)
    assert sizes == [1] * len(TEXTS)


def test_a_client_leaving_a_stream_frees_its_row_at_the_next_step(runtime_bundle):
    from deployft.runtime import GenerationOptions
    from deployft.serve.config import ServeConfig
    from deployft.serve.service import Service

    service = Service(ServeConfig(bundle=runtime_bundle("llama"), max_batch_size=4))
    engine = service.worker  # driven step by step here, in place of its thread

    async def leave_after_one_chunk():
        options = GenerationOptions(max_new_tokens=90, stop=("\x00never",))
        chunks = await service.generate(service.prompt_ids("bees", "prompt"), options)
        first = asyncio.ensure_future(chunks.__anext__())
        while not first.done():
            engine.run_once()
            await asyncio.sleep(0)
        assert first.result().text and engine.active == 1
        await chunks.aclose()  # what Starlette does to the response's generator when the client disconnects
        engine.run_once()
        assert engine.active == 0 and engine.cache is None

    asyncio.run(leave_after_one_chunk())
    assert 'deployft_generations_total{reason="cancelled"} 1.0' in service.metrics.render()[0].decode()


class CountingCondition(threading.Condition):
    def __init__(self):
        super().__init__()
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_the_worker_is_woken_by_the_first_request_and_by_a_full_batch_only(predictor):
    batcher = ClassifierBatcher(predictor, max_batch_size=4, max_wait_ms=50.0, max_queue=64)
    batcher._wake = CountingCondition()  # not started: only what submit does is counted
    wakes = []
    for text in TEXTS[:5]:
        batcher.submit(Job(predictor.codec.encode([text]), lambda *_: None))
        wakes.append(batcher._wake.notified)
    assert wakes == [1, 1, 1, 2, 3]  # the first request, then the 4th (the batch is full) and after


def test_a_request_with_no_other_in_flight_runs_without_waiting(predictor):
    answered = threading.Event()
    batcher = ClassifierBatcher(predictor, max_batch_size=32, max_wait_ms=60_000.0, max_queue=64,
                                in_flight=lambda: 1)
    batcher.start()
    try:
        batcher.submit(Job(predictor.codec.encode(["dull"]), lambda p, e: answered.set()))
        assert answered.wait(10)  # not the 60 s window
    finally:
        batcher.stop()


def test_requests_on_their_way_are_waited_for(predictor):
    sizes, answers = Sizes(), Answers(2)
    batcher = ClassifierBatcher(predictor, max_batch_size=2, max_wait_ms=60_000.0, max_queue=64, metrics=sizes,
                                in_flight=lambda: 2)  # the HTTP side holds two requests: wait for the second
    batcher.start()
    try:
        batcher.submit(answers.job(0, predictor.codec.encode(["dull"])))
        assert not answers.event.wait(0.3)
        batcher.submit(answers.job(1, predictor.codec.encode(["charming"])))
        assert answers.event.wait(10)  # the batch is full: it runs at once
    finally:
        batcher.stop()
    assert sizes.sizes == [2]


def test_a_cancelled_job_is_dropped_not_run(predictor):
    sizes, answers = Sizes(), Answers(2)
    batcher = ClassifierBatcher(predictor, max_batch_size=32, max_wait_ms=0, max_queue=64, metrics=sizes)
    gone = Job(predictor.codec.encode(TEXTS[:3]), lambda *_: pytest.fail("a cancelled job was answered"))
    gone.cancelled = True  # its request timed out, or its client left
    batcher.submit(answers.job(0, predictor.codec.encode(["dull"])))
    batcher.submit(gone)
    batcher.submit(answers.job(1, predictor.codec.encode(["charming"])))
    batcher.start()
    try:
        assert answers.event.wait(30)
    finally:
        batcher.stop()
    assert sizes.sizes == [2]


def test_the_worker_survives_a_failure_and_answers_the_jobs_it_touched(predictor):
    failed, answered = [], threading.Event()
    batcher = ClassifierBatcher(predictor, max_batch_size=32, max_wait_ms=float("inf"), max_queue=64,
                                in_flight=lambda: 2)  # waits "forever" for a second request: the wait itself fails
    batcher.start()
    try:
        batcher.submit(Job(predictor.codec.encode(["dull"]), lambda p, e: (failed.append(e), answered.set())))
        assert answered.wait(30) and "classification failed" in failed[0]
        assert batcher._thread.is_alive()
        batcher.max_wait, answered = 0.0, threading.Event()  # the next request is served
        batcher.submit(Job(predictor.codec.encode(["dull"]), lambda p, e: answered.set() if p else None))
        assert answered.wait(30)
    finally:
        batcher.stop()


def test_an_answer_that_fails_does_not_stop_the_worker(predictor):
    answered = threading.Event()

    def closed_loop(predictions, error):
        raise RuntimeError("Event loop is closed")

    batcher = ClassifierBatcher(predictor, max_batch_size=32, max_wait_ms=0, max_queue=64)
    batcher.start()
    try:
        batcher.submit(Job(predictor.codec.encode(["dull"]), closed_loop))
        batcher.submit(Job(predictor.codec.encode(["charming"]), lambda p, e: answered.set()))
        assert answered.wait(30) and batcher._thread.is_alive()
    finally:
        batcher.stop()
