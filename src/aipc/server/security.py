"""What every request passes before any route runs: Host, Origin, API key, body size.

Safe by default, because a model server on a laptop is reachable by every web page the laptop's browser opens:

- Host: only loopback names, this machine's hostname, the address listened on and `--allowed-host` names. A
  DNS-rebinding page reaches 127.0.0.1 under its own name, so its requests carry a foreign Host and get 403.
- Origin: a browser request from another origin is refused (403) unless that origin was passed with
  `--allowed-origin`, and only such origins get CORS headers; there is no wildcard. This also stops the
  "simple" cross-site POSTs (text/plain, no preflight) that CORS alone lets through.
- API key: with `--api-key`, every route but the health check and the (static) chat page needs
  `Authorization: Bearer KEY`, compared in constant time.
- Body size: over `max_body_bytes` is 413, from Content-Length at once or while a chunked body is read (a
  model file uploaded to /api/blobs/ is bounded by the store's free disk instead, in its route).

Plain ASGI, no framework imports, so the CLI can use `is_loopback` without loading fastapi.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from aipc.server.errors import APIError, send_error

PUBLIC_PATHS = frozenset({"/health", "/"})  # no secrets: a status word, and a static page that asks for the key
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "authorization, api-key, content-type"

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this server's limit of {limit} bytes", code="body_too_large")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 with or without brackets) only ever means this machine."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8080" -> "::1", "Example.com." -> "example.com"."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_host_names(listen_host: str, extra: Iterable[str]) -> frozenset[str]:
    """The Host names this server answers to (loopback is always allowed, checked separately)."""
    names = {socket.gethostname().lower()}
    names |= {host_name(h) for h in extra}
    wildcard = listen_host.strip("[]") in ("0.0.0.0", "::", "")
    if not wildcard:
        names.add(host_name(listen_host if ":" not in listen_host else f"[{listen_host.strip('[]')}]"))
    return frozenset(n for n in names if n)


def normalize_origin(origin: str) -> str:
    """ "HTTP://Example.com:80/" -> "http://example.com:80": what browsers send in the Origin header."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(origin)
    return f"{parts.scheme}://{parts.netloc.lower()}"


class Guard:
    """ASGI middleware applying the checks above, in that order, before the app sees the request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: frozenset[str],
        origins: Iterable[str],
        api_key: str | None,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(normalize_origin(o) for o in origins)
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        origin, cors = "", False
        try:
            host = headers.get(b"host", b"").decode("latin-1")
            self._check_host(host)
            origin = headers.get(b"origin", b"").decode("latin-1")
            cors = self._check_origin(origin, host)
            if cors and scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                return await _preflight(send, origin)
            if self.api_key is not None and scope["path"] not in PUBLIC_PATHS:
                self._check_key(headers.get(b"authorization", b""), headers.get(b"api-key", b""))
            # An uploaded model file (Ollama's blobs) is bounded by the store's free disk, in its route
            limit = (
                None if scope["method"] == "POST" and scope["path"].startswith("/api/blobs/") else self.max_body_bytes
            )
            length = headers.get(b"content-length")
            if limit is not None and length is not None and (not length.isdigit() or int(length) > limit):
                raise BodyTooLarge(limit)
        except APIError as error:
            if cors:
                error.headers.update(_cors_headers(origin))
            return await send_error(send, error, scope["path"])
        if cors:
            send = _with_cors(send, origin)
        await self.app(scope, receive if limit is None else _limited(receive, limit), send)

    def _check_host(self, host: str) -> None:
        name = host_name(host)
        if not name or not (is_loopback(name) or name in self.hosts):
            raise APIError(
                403,
                f"Host {host!r} is not allowed (a guard against DNS rebinding); "
                f"start the server with --allowed-host NAME to accept it",
                type="permission_error",
                code="host_not_allowed",
            )

    def _check_origin(self, origin: str, host: str) -> bool:
        """True when `origin` should get CORS headers; raises for a cross-origin request from elsewhere."""
        if not origin:
            return False
        try:
            normal = normalize_origin(origin)
        except ValueError:
            normal = origin  # "null" (a sandboxed frame, a file:// page) and other oddities: never allowed
        if normal in self.origins:
            return True
        if normal.split("://", 1)[-1] == host.strip().lower():
            return False  # same origin: the chat page served here
        raise APIError(
            403,
            f"origin {origin!r} is not allowed; start the server with --allowed-origin {origin} to allow it",
            type="permission_error",
            code="origin_not_allowed",
        )

    def _check_key(self, authorization: bytes, api_key: bytes = b"") -> None:
        """`Authorization: Bearer KEY`, or Azure OpenAI's `api-key: KEY` (what AzureOpenAI clients send)."""
        scheme, _, key = authorization.partition(b" ")
        if not authorization and api_key.strip():
            scheme, key = b"bearer", api_key
        if scheme.lower() != b"bearer" or not key.strip():
            raise _auth_error("missing API key: send it as 'Authorization: Bearer KEY'")
        if not hmac.compare_digest(key.strip(), self.api_key or b""):
            raise _auth_error("incorrect API key provided")


def _auth_error(message: str) -> APIError:
    return APIError(
        401, message, type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def _cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


async def _preflight(send: Any, origin: str) -> None:
    headers = _cors_headers(origin) | {
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": "600",
        "Content-Length": "0",
    }
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 204, "headers": raw})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Any, origin: str) -> Any:
    extra = [(k.lower().encode(), v.encode()) for k, v in _cors_headers(origin).items()]

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def _limited(receive: Any, limit: int) -> Any:
    """`receive`, raising `BodyTooLarge` once a (chunked) body passes `limit` bytes."""
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped
