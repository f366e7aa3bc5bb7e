"""Running the server: bind the socket, start uvicorn, load the model behind it, drain on SIGTERM.

The socket is bound here, before uvicorn starts, so a busy port is one line and exit code 2 rather than a log
record, and `--port 0` can report the port it got. On SIGTERM (or Ctrl-C) the server stops accepting (new
connections are refused, requests on open ones get 503), lets requests in flight finish for up to
`--drain-timeout` seconds, ends what is left with an error event, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from aipc.errors import AipcError, UsageError
from aipc.server.app import create_app
from aipc.server.core import ServerState
from aipc.server.settings import ServerSettings

# What is left after the drain timeout gets this long to end its streams before uvicorn cancels it.
_AFTER_DRAIN_S = 5.0


class _Server(uvicorn.Server):
    """uvicorn, with a graceful drain on the first SIGTERM/SIGINT and exit code 0 after it.

    uvicorn re-raises a caught signal once it has shut down, which would end the process with "killed by
    SIGTERM" after a clean drain; a drained shutdown here is a normal exit.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        self.should_exit = True
        self.state.draining = True  # at once: requests that arrive before the loop runs the drain get 503
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.state.begin_drain)


def _log_to_stderr(settings: ServerSettings) -> None:
    """The server's log lines on stderr, as text or JSON (--log-format); request lines only with -v."""
    from aipc.server.metrics import LogFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(settings.log_format))
    logger = logging.getLogger("aipc.server")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if settings.verbose else logging.WARNING)
    logging.basicConfig(level=logging.INFO if settings.verbose else logging.WARNING, format="aipc: %(message)s")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6), or a one-line `UsageError`."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code. Prints one line with the URL once the model is ready."""
    settings.check()
    _log_to_stderr(settings)
    sock = bind(settings.host, settings.port)
    url = url_of(sock)
    app, state = create_app(settings)
    config = uvicorn.Config(
        app,
        log_level="info" if settings.verbose else "warning",
        access_log=False,  # RequestLog (metrics.py) logs each request, with its model and tokens
        timeout_graceful_shutdown=settings.drain_timeout + _AFTER_DRAIN_S,
        lifespan="on",
        server_header=False,
        timeout_keep_alive=5,
    )
    server = _Server(config, state)
    exit_code = 0

    def ready(st: ServerState, entry: Any) -> None:
        info = entry.model.info
        lanes = f"{entry.slots.parallel} at once, {settings.max_queue} queued"
        more = f"other models load on demand, {settings.max_loaded} at most"
        print(f"aipc: serving {entry.name} on {info.backend}/{info.device} at {url}/ ({lanes}; {more})", flush=True)
        if settings.parallel > entry.slots.parallel:
            print(f"aipc: note: {info.device} runs one generation at a time; requests queue", file=sys.stderr)

    def failed(exc: BaseException) -> None:
        nonlocal exit_code
        if isinstance(exc, AipcError):
            print(f"aipc: error: {exc}", file=sys.stderr, flush=True)
            exit_code = exc.exit_code
        else:
            logging.getLogger("aipc.server").error("the model failed to load", exc_info=exc)
            exit_code = 1
        server.should_exit = True

    state.on_ready = ready
    state.on_failed = failed

    async def main() -> None:
        server.loop = asyncio.get_running_loop()
        await server.serve(sockets=[sock])

    try:
        asyncio.run(main())
    finally:
        sock.close()
    return exit_code
