"""The HTTP application: the routes every dialect shares (health, metrics, the chat page) and each dialect's
adapter.

A request goes: Guard (security.py) -> a dialect's adapter (dialects/) parses the body -> the core
(core.py) prepares the prompt in a worker thread, waits for a generation slot (scheduler.py) while watching
for the client to leave, and generates in the request's own thread (EventPump) -> the adapter shapes the
events: JSON, or a stream as the tokens come.

The HTTP server starts before the default model is loaded: /health says 503 "loading" until it is, so a
supervisor sees the process alive at once and ready later. Outermost, RequestLog (metrics.py) counts every
request, rejected ones included, and logs one line per request with -v.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from aipc import __version__
from aipc.server import errors
from aipc.server.core import ServerState
from aipc.server.dialects import register_all
from aipc.server.errors import APIError
from aipc.server.metrics import CONTENT_TYPE, RequestLog
from aipc.server.security import Guard, allowed_host_names
from aipc.server.settings import ServerSettings

log = logging.getLogger("aipc.server")


def create_app(settings: ServerSettings, *, model: Any = None) -> tuple[Any, ServerState]:
    """The ASGI app and its state. With `model`, serve that already opened model (the caller closes it) as the
    default; otherwise preload `settings.model` in the background once the server has started. Either way,
    requests may name any model this server can run (pool.py loads it on demand)."""
    state = ServerState(settings, model)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        yield
        await state.close()

    app = FastAPI(title="aipc", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    errors.install(app)
    page, page_csp = _chat_page()

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        status, body = state.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"])
    async def chat_page() -> HTMLResponse:
        if page is None:
            raise APIError(404, "the chat page is missing from this installation (aipc/server/static/index.html)")
        headers = {"Content-Security-Policy": page_csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
        return HTMLResponse(page, headers=headers)

    register_all(app, state)

    hosts = allowed_host_names(settings.host, settings.allowed_hosts)
    guarded = Guard(
        app,
        hosts=hosts,
        origins=settings.allowed_origins,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
    )
    routes = frozenset(getattr(r, "path", "") for r in app.routes)
    return RequestLog(guarded, state.metrics, routes, settings.verbose), state


def _chat_page() -> tuple[str | None, str]:
    """The page, and a Content-Security-Policy that admits exactly its own inline script and style."""
    try:
        page = resources.files("aipc.server").joinpath("static/index.html").read_text(encoding="utf-8")
    except OSError:  # an install without the package data: the API still works
        log.warning("the chat page (aipc/server/static/index.html) is not installed; / answers 404")
        return None, ""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, csp
