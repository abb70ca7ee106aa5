"""`Guard`: the ASGI middleware around the app that no request gets past without being limited and counted.

It reads the request body itself, up to `--max-body-bytes` whether or not a content-length announced it (a chunked
body too), and answers a bigger one 413 before the app sees it; the app is then handed the body it read. An
exception the app does not handle is logged and answered as a JSON 500 in the OpenAI error shape, never as
text. Every request is counted in /metrics by route and status when it ends, however it ends: 500 when the app
failed, 499 (client closed request) when the client left before its response was complete.
"""

from __future__ import annotations

import json
import logging
import time

from .http import ROUTES, error_body

logger = logging.getLogger("deployft.serve")


class Guard:
    """Refuse bodies over `max_body` bytes (413), answer unhandled exceptions as a JSON 500, and record every
    request's route, status and time to its last byte; `state.inflight` counts the requests inside."""

    def __init__(self, app, max_body: int, metrics, state) -> None:
        self.app, self.max_body, self.metrics, self.state = app, max_body, metrics, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        exchange = _Exchange(send)
        too_big = f"the request body is over {self.max_body} bytes (--max-body-bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        self.state.inflight += 1
        try:
            if not length.isdigit() or int(length) > self.max_body:
                return await exchange.answer(413, too_big)
            body = await self._body(receive, exchange)
            if body is None:
                return await exchange.answer(413, too_big)
            await self.app(scope, exchange.replaying(body, receive), exchange.send)
        except Exception as exc:
            if exchange.gone or _client_left(exc):
                exchange.gone = True
            elif exchange.status is None:
                logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
                await exchange.answer(500, f"internal server error ({type(exc).__name__}); the server's log has "
                                           "the details")
            else:  # the response has begun: only the server can end it (it closes the connection)
                logger.exception("%s %s failed while answering", scope.get("method"), scope.get("path"))
                raise
        finally:
            self.state.inflight -= 1
            status = exchange.status if exchange.ended else 499 if exchange.gone else 500
            self.metrics.request(_route(scope), status, (exchange.ended or time.perf_counter()) - started)

    async def _body(self, receive, exchange: _Exchange) -> list[dict] | None:
        """The request's messages up to the end of its body, as one body message (None: over `max_body`)."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app sees that
                exchange.gone = message["type"] == "http.disconnect"
                return [message]
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                return [{"type": "http.request", "body": b"".join(parts), "more_body": False}]


class _Exchange:
    """One request's side of the middleware: what was answered, and whether the client left."""

    def __init__(self, send) -> None:
        self._send = send
        self.status: int | None = None
        """The status of the response begun (None: not begun)."""
        self.ended: float | None = None
        """When the response's last byte was sent (None: not yet)."""
        self.gone = False
        """The client disconnected."""

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        try:
            await self._send(message)
        except OSError:  # the server could not write: the client is gone
            self.gone = True
            raise
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = time.perf_counter()

    def replaying(self, messages: list[dict], receive):
        """A receive channel that gives `messages` first, then the client's own (noting a disconnect)."""

        async def replay() -> dict:
            if messages:
                return messages.pop(0)
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
            return message

        return replay

    async def answer(self, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message)).encode()
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(b"content-type", b"application/json"),
                                     (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})


def _route(scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    path = path[len(root):] if root and path.startswith(root) else path  # mounted under a prefix
    return path if path in ROUTES else "other"


def _client_left(exc: Exception) -> bool:
    """The exception is Starlette's word that the client is gone."""
    from starlette.requests import ClientDisconnect

    return isinstance(exc, ClientDisconnect)
