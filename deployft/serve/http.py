"""HTTP plumbing: errors in the OpenAI error shape, the API key, the body size limit, request metrics.

Every refusal is a JSON body `{"error": {"message", "type", "param", "code"}}`, as OpenAI's API answers, so
clients show the message; bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import hmac
import json
import time

from fastapi import Request

from ..errors import DeployftError

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/classify", "/predict", "/health", "/ready",
          "/metrics", "/", "/docs", "/openapi.json")
"""Paths counted by name in /metrics; any other path is counted as `other`."""
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    """A refusal the client gets as a JSON error body with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param,
                      "code": status}}


def install_error_handlers(app, routes: str) -> None:
    """Answer validation errors, HTTP errors and deployft errors in the OpenAI error shape; an unknown
    path's 404 says what `routes` the server has."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def answer(status, message, param=None, headers=None):
        return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api(request, exc: ApiError):
        return answer(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON; send a JSON object", None
        return answer(400, f"{where}: {message}" if where else message, where or None)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; {routes}"
        return answer(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(DeployftError)
    async def _deployft(request, exc: DeployftError):
        return answer(400, str(exc))


def check_key(expected: str | None, headers) -> None:
    """Refuse a request without the right key (`Authorization: Bearer KEY` or `x-api-key`), in constant time."""
    if expected is None:
        return
    header = headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        problem = "wrong" if given else "missing"
        raise ApiError(401, f"{problem} API key; send the server's key as 'Authorization: Bearer KEY'",
                       headers={"WWW-Authenticate": "Bearer"})


def key_dependency(expected: str | None):
    """A FastAPI dependency that applies `check_key` to each request of the routes that declare it."""

    async def auth(request: Request) -> None:
        check_key(expected, request.headers)

    return auth


class Guard:
    """ASGI middleware: refuse bodies over `max_body` bytes (413) and record every request's route, status
    and time to its last byte."""

    def __init__(self, app, max_body: int, metrics, state) -> None:
        self.app, self.max_body, self.metrics, self.state = app, max_body, metrics, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        route = scope["path"] if scope["path"] in ROUTES else "other"
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            await self._refuse(send, 413, f"the request body is over {self.max_body} bytes (--max-body-bytes)")
            return self.metrics.request(route, 413, time.perf_counter() - started)
        seen = [0]

        async def limited_receive():
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                raise ApiError(413, f"the request body is over {self.max_body} bytes (--max-body-bytes)")
            return message

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.request(route, status[0], time.perf_counter() - started)

        self.state.inflight += 1
        try:
            await self.app(scope, limited_receive, recording_send)
        finally:
            self.state.inflight -= 1

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
