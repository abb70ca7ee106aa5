"""Dynamic batching for a classifier bundle.

One worker thread owns the session. Requests queue their token ids; the worker takes the first waiting request,
waits up to `max_wait_ms` after its arrival for more (or until `max_batch_size` texts are there), sorts the
gathered texts by length (`Predictor.predict_ids`, so similar lengths share a call and padding stays small),
runs them as one ONNX Runtime call per `max_batch_size` texts, and answers each request with its own rows.
It does not wait when every request the HTTP side holds is already queued (`in_flight`): no other request is on
its way to join, so waiting would only add `max_wait_ms` to this one (a lone client would pay it on every call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .queueing import QueueWorker

logger = logging.getLogger("deployft.serve")


@dataclass
class Job:
    """One classification request: token ids per text, and the callback the worker answers it through."""

    ids: list[list[int]]
    answer: Callable[[list | None, str | None], None]
    """Called from the worker thread with `(predictions, None)` or `(None, error message)`."""
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    """Set by the caller (timeout, client gone): the worker drops the job instead of running it."""
    counted: bool = True
    """False for the server's own warm-up: a batch of it alone is kept out of /metrics."""


class ClassifierBatcher(QueueWorker):
    """Gathers concurrent classification requests into batches run by one worker thread."""

    thread_name = "deployft-classify"

    def __init__(self, predictor, max_batch_size: int, max_wait_ms: float, max_queue: int, metrics=None,
                 in_flight: Callable[[], int] | None = None):
        super().__init__(max_queue, metrics)
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.in_flight = in_flight
        """Requests the HTTP side holds, queued or not yet (None: unknown, always wait the window)."""

    def _loop(self) -> None:
        while True:
            jobs: list[Job] | None = []
            try:
                jobs = self._gather()
                if jobs is None:
                    break
                if jobs:  # empty when every job it took had been cancelled
                    self.run(jobs)
            except Exception as exc:  # a bug: fail the jobs it touched (else every waiting one), keep serving
                logger.exception("the classification worker failed")
                _answer_all(jobs or self.take_waiting(), f"classification failed: {exc}")
        _answer_all(self.take_waiting(), "the server is shutting down")

    def _gather(self) -> list[Job] | None:
        """Wait for a first request, then for more until the batch is full or the first one waited max_wait."""
        with self._wake:
            while not self._stopping and not self.pending:
                self._wake.wait()
            if self._stopping:
                return None
            deadline = self.pending[0].arrived + self.max_wait
            if self.in_flight is not None and self.in_flight() <= len(self.pending):
                deadline = 0.0  # nothing else is on its way
            while not self._full() and (left := deadline - time.perf_counter()) > 0:
                self._wake.wait(left)
            jobs, texts = [], 0
            while self.pending and (not jobs or texts + len(self.pending[0].ids) <= self.max_batch_size):
                job = self.pending.popleft()
                if not job.cancelled:
                    jobs.append(job)
                    texts += len(job.ids)
        self._gauge()
        return jobs

    def _texts(self) -> int:
        return sum(len(job.ids) for job in self.pending)

    def _needs_wake(self) -> bool:
        # the worker waits for a first request, then (in the window) for a full batch; nothing in between
        return len(self.pending) == 1 or self._full()

    def _full(self) -> bool:
        return self._texts() >= self.max_batch_size

    def run(self, jobs: list[Job]) -> None:
        """Classify the texts of `jobs` together and answer each job with its own predictions."""
        rows = [row for job in jobs for row in job.ids]
        try:
            predictions = self.predictor.predict_ids(rows, batch_size=self.max_batch_size)
        except Exception as exc:  # an ONNX Runtime failure: answer the requests, keep serving
            logger.exception("classification batch failed")
            _answer_all(jobs, f"classification failed: {exc}")
            return
        if self.metrics is not None and any(job.counted for job in jobs):
            for start in range(0, len(rows), self.max_batch_size):
                self.metrics.classify_batch(min(self.max_batch_size, len(rows) - start))
        start = 0
        for job in jobs:
            _answer(job, predictions[start:start + len(job.ids)], None)
            start += len(job.ids)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue(len(self.pending), 0)


def _answer(job: Job, predictions: list | None, error: str | None) -> None:
    """Answer one job; an answer that fails (its event loop is closed) is logged, and the others still go out."""
    try:
        job.answer(predictions, error)
    except Exception:
        logger.exception("a classification request could not be answered")


def _answer_all(jobs: list[Job], error: str) -> None:
    for job in jobs:
        _answer(job, None, error)
