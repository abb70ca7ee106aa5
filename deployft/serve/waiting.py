"""`Waiting`: how a route awaits the worker thread's answer, up to the request's deadline and while its client stays.

A request whose client disconnects, or whose deadline passes, must give its place back at once (its queue place or
batch slot goes to the next request), so every wait races the answer against both: the deadline is a 504, the
client leaving a 499 (never seen by the client, counted in /metrics), and the caller then withdraws its work.
The client leaving is seen by reading the request's ASGI channel, whose next message after the body is
`http.disconnect`. A streamed response listens to that channel itself, so a stream stops watching (`stop_watching`)
once its first chunk is there, before the response starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from .http import ApiError

T = TypeVar("T")


class Waiting:
    """The deadline and the client of one request (`request` None: no client to watch, the deadline only)."""

    def __init__(self, request, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = asyncio.get_running_loop().time() + timeout_s
        self._receive = request.receive if request is not None else None
        self._gone: asyncio.Future | None = None

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """The result of `awaitable`.

        Raises:
            ApiError: 504 when the deadline passes first, 499 when the client disconnects first; either way
                `awaitable` is cancelled (and its cleanup has run) before this returns.
        """
        work = asyncio.ensure_future(awaitable)
        watched = {work}
        if self._receive is not None:
            if self._gone is None:
                self._gone = asyncio.ensure_future(_disconnect(self._receive))
            watched.add(self._gone)
        left = self.deadline - asyncio.get_running_loop().time()
        try:
            done, _ = await asyncio.wait(watched, timeout=max(left, 0.0), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this request's own task is cancelled (the server shuts down)
            work.cancel()
            raise
        if work in done:
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)  # let its cleanup run now
        if self._gone is not None and self._gone in done:
            raise ApiError(499, "the client closed the connection before its answer was ready")
        raise ApiError(504, f"the request took over {self.timeout_s} s (--request-timeout)")

    def stop_watching(self) -> None:
        """Stop reading the request's channel (a streamed response reads it from here on)."""
        self._receive = None
        if self._gone is not None:
            self._gone.cancel()
            self._gone = None


async def _disconnect(receive) -> None:
    """Return when the client disconnects (the body was read already: nothing else comes on the channel)."""
    while (await receive())["type"] != "http.disconnect":
        pass
