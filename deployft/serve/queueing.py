"""What both serving engines share: a bounded queue of waiting requests and the worker thread that owns the session.

The event loop calls `submit` (never blocks: a full queue raises `QueueFull`, answered 429) and `withdraw` (a
request that timed out or whose client left gives its place back at once); the worker thread runs the subclass's
`_loop`, woken through `_wake` when `stop` is called or when a request arrives that it may be waiting for
(`_needs_wake`: by default the first one in an empty queue). Waking the worker for every request would make the
two threads trade the GIL on each one while the worker has nothing to do yet.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ..errors import DeployftError

__all__ = ["QueueFull", "QueueWorker", "WorkerBusy"]


class QueueFull(DeployftError):
    """The waiting queue is at its bound; the caller answers 429."""


class WorkerBusy(DeployftError):
    """`start` was called while the worker thread of an earlier start still runs."""


class QueueWorker:
    """A bounded request queue drained by one worker thread; subclasses implement `_loop` (and `_gauge`)."""

    thread_name = "deployft-worker"

    def __init__(self, max_queue: int, metrics=None):
        self.max_queue = max_queue
        self.metrics = metrics
        self.pending: deque[Any] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, request: Any) -> None:
        """Queue a request. Raises QueueFull when `max_queue` requests already wait."""
        with self._wake:
            if len(self.pending) >= self.max_queue:
                raise QueueFull(f"the queue holds {len(self.pending)} waiting requests (--max-queue {self.max_queue})")
            self.pending.append(request)
            if self._needs_wake():
                self._wake.notify()
        self._gauge()

    @property
    def queue_depth(self) -> int:
        return len(self.pending)

    def start(self) -> None:
        """Start the worker thread, again after `stop` (an app's lifespan entered a second time).

        Raises:
            WorkerBusy: the previous thread is still running (its last call outlived `stop`'s timeout).
        """
        with self._wake:
            if self._thread is not None and self._thread.is_alive():
                raise WorkerBusy(f"the {self.thread_name} thread of the previous start is still running; stop it "
                                 "and wait for its current call to end before starting again")
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current call; what is still queued or running is answered as cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def withdraw(self, request: Any) -> bool:
        """Take `request` out of the queue (its client timed out or left): True when it was still waiting."""
        with self._wake:
            index = next((i for i, waiting in enumerate(self.pending) if waiting is request), None)
            if index is not None:
                del self.pending[index]
        if index is not None:
            self._gauge()
        return index is not None

    def take_waiting(self) -> list[Any]:
        """Empty the queue and return what waited in it (to answer it as failed or cancelled)."""
        with self._wake:
            waiting, self.pending = list(self.pending), deque()
        return waiting

    def _loop(self) -> None:
        raise NotImplementedError

    def _needs_wake(self) -> bool:
        """Called under the lock after a request was queued: True when the worker may be waiting for it.

        The worker only waits while the queue is empty, so only the request that ends that wait wakes it.
        """
        return len(self.pending) == 1

    def _gauge(self) -> None:
        """Publish the queue depth (subclasses with metrics)."""
