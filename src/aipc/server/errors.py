"""The one place that maps errors to HTTP: aipc's own errors, the server's, and anything unexpected.

`to_api_error` decides the status and fields once for every dialect; each dialect only says how an error's
body looks (`Dialect.body`): OpenAI's `{"error": {"message", "type", "param", "code"}}`, which the official
SDKs turn into their exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError...),
or Ollama's `{"error": "message"}`, which the `ollama` client raises as `ResponseError` with the status code.
Which dialect answers is decided by the request's path (`dialect_of`), so errors raised before any route runs
(the security middleware, unknown URLs) are shaped for the client that sent them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aipc.errors import (
    AipcError,
    BackendUnavailableError,
    ContextLengthError,
    DeviceNotAvailableError,
    InvalidConfigError,
    ModelNotFoundError,
    UsageError,
)

log = logging.getLogger("aipc.server")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error with its HTTP status and fields; raised anywhere in a request, answered once."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error body (the default dialect's)."""
        return openai_body(self)


class ClientGone(Exception):
    """The client closed its connection before the answer was ready: nothing is left to answer."""


def to_api_error(exc: BaseException, *, param: str | None = None) -> APIError:
    """The HTTP form of `exc`. `param` names the request field the error is about, when the caller knows it."""
    if isinstance(exc, APIError):
        return exc
    from aipc.server.library import HubUnreachableError, StoreUnavailableError

    message = str(exc)
    if isinstance(exc, StoreUnavailableError):
        return APIError(403, message, type="permission_error", code="read_only")
    if isinstance(exc, HubUnreachableError):
        return APIError(502, message, type=SERVER_ERROR, code="hub_unreachable")
    if isinstance(exc, ContextLengthError):
        return APIError(400, message, param=param or "messages", code="context_length_exceeded")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, message, param="model", code="model_not_found")
    if isinstance(exc, InvalidConfigError):
        return APIError(400, message, param=param or message.split(" ", 1)[0], code="invalid_value")
    if isinstance(exc, (DeviceNotAvailableError, BackendUnavailableError)):
        return APIError(500, message, type=SERVER_ERROR)
    if isinstance(exc, UsageError):  # e.g. a chat template that refuses the messages
        return APIError(400, message, param=param)
    if isinstance(exc, AipcError):
        return APIError(500, message, type=SERVER_ERROR)
    log.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "internal server error (see the server's log)", type=SERVER_ERROR)


# --- dialects: how an error looks to each kind of client ------------------------------------------------------
def openai_body(error: APIError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def openai_stream_error(error: APIError) -> bytes:
    """An error after an SSE stream has begun (the status line is already sent): one event, as OpenAI sends it."""
    return b"data: " + json_bytes(openai_body(error)) + b"\n\n"


@dataclass(frozen=True)
class Dialect:
    """An API dialect's error shapes, and the path prefixes whose requests it answers."""

    name: str
    prefixes: tuple[str, ...]
    body: Callable[[APIError], dict[str, Any]]
    stream_error: Callable[[APIError], bytes]


OPENAI = Dialect("openai", ("/v1/",), openai_body, openai_stream_error)
_DIALECTS: list[Dialect] = []


def register(dialect: Dialect) -> None:
    """Make `dialect` answer the errors of requests under its path prefixes (idempotent)."""
    if dialect not in _DIALECTS:
        _DIALECTS.append(dialect)


def dialect_of(path: str) -> Dialect:
    """The dialect of a request path; paths no dialect claims (/health, unknown URLs) answer as OpenAI does."""
    for dialect in _DIALECTS:
        if any(path.startswith(p) or path == p.rstrip("/") for p in dialect.prefixes):
            return dialect
    return OPENAI


def error_body(error: APIError, path: str) -> dict[str, Any]:
    return dialect_of(path).body(error)


def json_bytes(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sse_error(exc: BaseException) -> bytes:
    """An error after an OpenAI stream has begun."""
    return openai_stream_error(to_api_error(exc))


async def send_error(send: Any, error: APIError, path: str = "") -> None:
    """Answer with `error` straight through ASGI (used by middleware, before any route runs)."""
    body = json_bytes(error_body(error, path))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(app: Any) -> None:
    """Route every error a FastAPI app can meet through `to_api_error`, shaped for the request's dialect."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(request: Any, error: APIError) -> JSONResponse:
        body = error_body(error, request.url.path)
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    async def on_api_error(request: Any, exc: Exception) -> JSONResponse:
        return respond(request, to_api_error(exc))

    async def on_http_exception(request: Any, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = APIError(404, f"unknown URL: {request.method} {request.url.path}", code="unknown_url")
        elif exc.status_code == 405:
            error = APIError(405, f"method {request.method} is not allowed on {request.url.path}", code="bad_method")
        else:
            error = APIError(exc.status_code, str(exc.detail))
        error.headers.update(exc.headers or {})
        return respond(request, error)

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(AipcError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_api_error)
