"""HTTP plumbing: errors in the OpenAI error shape and the API key (`guard.py` limits bodies and records metrics).

Every refusal is a JSON body `{"error": {"message", "type", "param", "code"}}`, as OpenAI's API answers, so
clients show the message; bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import hmac
import re

from fastapi import Request

from ..errors import DeployftError
from .schemas import LONE_SURROGATE

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/classify", "/predict", "/health", "/ready",
          "/metrics", "/", "/docs", "/openapi.json")
"""Paths counted by name in /metrics; any other path is counted as `other`."""
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         499: "client_closed_request", 500: "server_error", 503: "service_unavailable", 504: "timeout"}


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
    path's 404 says what `routes` the server has. (Any other exception is `Guard`'s: a JSON 500.)"""
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
        return answer(400, *validation_message(exc.errors(), request.headers.get("content-type", "")))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; {routes}"
        return answer(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(DeployftError)
    async def _deployft(request, exc: DeployftError):
        return answer(400, str(exc))


def validation_message(errors: list[dict], content_type: str) -> tuple[str, str | None]:
    """The message and param of a refused body: pydantic's first error, without its "Value error, " prefix and
    the union branches (`str`, `list[str]`) in its location; of a union's errors, the deepest of that field."""
    if not errors:
        return "invalid request", None
    located = [(_field(error), error) for error in errors]
    field = located[0][0]
    where, first = max((e for e in located if e[0] == field or e[0].startswith(field + ".")),
                       key=lambda e: e[0].count("."))
    message = first.get("msg", "invalid request").removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON; send a JSON object", None
    if first.get("type") == LONE_SURROGATE:  # found in the raw body: the model's loc is not the text's
        where = first["ctx"]["field"]
    elif not where and first.get("type") in ("missing", "model_attributes_type", "model_type", "dict_type"):
        return _body_hint(first.get("type"), content_type), None
    return (f"{where}: {message}" if where else message), where or None


def _body_hint(kind: str, content_type: str) -> str:
    """Why a body that is not a JSON object was refused: usually a form (curl -d without a content type)."""
    if "json" not in content_type.lower():
        return ("the request body must be a JSON object sent with the header Content-Type: application/json (this "
                f"one came as {content_type or 'no content type'}); with curl add -H 'Content-Type: application/json'")
    if kind == "missing":
        return "the request body is empty; send a JSON object"
    return "the request body must be a JSON object ({...}), not another JSON value"


_BRANCH = re.compile(r"[\w-]*\[.*\]|str|int|float|bool|dict|list|none")
"""A step of pydantic's error location that names a union branch (`str`, `list[TextPart]`), not a field."""


def _field(error: dict) -> str:
    return ".".join(str(step) for step in error.get("loc", ())
                    if step != "body" and not (isinstance(step, str) and _BRANCH.fullmatch(step)))


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
