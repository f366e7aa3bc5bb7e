"""What `aipc serve` was asked for, checked before anything is started or loaded."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from aipc.errors import InvalidConfigError, UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435  # one above Ollama's 11434, so both can run side by side
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_MESSAGES = 256
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_KEEP_ALIVE_S = 300.0  # as Ollama: an idle model stays loaded 5 minutes
DEFAULT_MAX_LOADED = 2
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ServerSettings:
    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    parallel: int = 1
    max_queue: int = DEFAULT_MAX_QUEUE
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_messages: int = DEFAULT_MAX_MESSAGES
    # Load options (LoadConfig): prompt + completion tokens (None: the model's trained context, capped to fit
    # free memory) and the KV cache's element type (None: the runtime's own).
    context_length: int | None = None
    kv_cache: str | None = None
    # The default repetition penalty of requests that do not set one (None: the model's default).
    repetition_penalty: float | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
    verbose: bool = False
    # How long an idle model stays loaded, in seconds; None keeps it until it must make room.
    keep_alive: float | None = DEFAULT_KEEP_ALIVE_S
    max_loaded: int = DEFAULT_MAX_LOADED
    max_memory: int | None = None  # bytes for loaded models; None: what is free at start, less a margin
    read_only: bool = False  # refuse the routes that change the store (pull, delete, copy)
    allow_paths: bool = False  # let requests name model files and folders, not only names
    log_format: str = "text"
    speculate: str = "auto"

    def check(self) -> None:
        """Refuse unsafe or impossible settings with one line (exit code 2), before the slow model load."""
        from aipc.engine.config import GenerationConfig, LoadConfig
        from aipc.server.security import is_loopback, normalize_origin

        if self.context_length is not None:
            _positive("--context-length", self.context_length)
        LoadConfig(
            backend=self.backend,
            device=self.device,
            parallel=max(self.parallel, 1),
            context_length=self.context_length,
            kv_cache=self.kv_cache,
            speculate=self.speculate,
        )
        if self.repetition_penalty is not None:
            GenerationConfig(repetition_penalty=self.repetition_penalty)
        if not is_loopback(self.host) and not self.api_key:
            raise UsageError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach it could use the "
                f"model; pass --api-key KEY (or set AIPC_API_KEY), or listen on 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in 0..65535 (0 picks a free port), got {self.port}")
        _positive("--parallel", self.parallel)
        _positive("--max-body-bytes", self.max_body_bytes)
        _positive("--max-messages", self.max_messages)
        if self.max_queue < 0:
            raise UsageError(f"--max-queue must be >= 0, got {self.max_queue}")
        if not self.drain_timeout >= 0:
            raise UsageError(f"--drain-timeout must be >= 0 seconds, got {self.drain_timeout}")
        _positive("--max-loaded", self.max_loaded)
        if self.max_memory is not None:
            _positive("--max-memory", self.max_memory)
        if self.log_format not in LOG_FORMATS:
            raise UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.api_key is not None and (len(self.api_key) < 8 or not self.api_key.isprintable()):
            raise UsageError("--api-key must be at least 8 printable characters")
        for origin in self.allowed_origins:
            try:
                normalize_origin(origin)
            except ValueError:
                raise UsageError(
                    f"--allowed-origin takes an origin such as http://localhost:3000 (no wildcard, no path), "
                    f"got {origin!r}"
                ) from None


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
KEEP_ALIVE_FOREVER_S = 100 * 365.25 * 86400
KEEP_ALIVE_HINT = "a duration such as 5m, 1h30m or 30s, or a number of seconds (0 unloads at once, negative never)"


def parse_keep_alive(value: object) -> float | None:
    """Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m", "-1s"); 0 unloads after the
    request; negative keeps the model loaded (None). Anything else is an `InvalidConfigError`."""
    if isinstance(value, bool) or value is None:
        raise InvalidConfigError(f"keep_alive must be {KEEP_ALIVE_HINT}, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise InvalidConfigError(f"keep_alive must be {KEEP_ALIVE_HINT}, got {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise InvalidConfigError(f"keep_alive must be {KEEP_ALIVE_HINT}, got {value!r}")
    if math.isnan(seconds):
        raise InvalidConfigError(f"keep_alive must be {KEEP_ALIVE_HINT}, got {value!r}")
    # as Ollama: a duration too long to count (here: past a century, beyond any clock's dates) is forever
    return None if seconds < 0 or seconds > KEEP_ALIVE_FOREVER_S else seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "8GiB", "8G", "512MB", "1.5g" or a plain number of bytes (a `UsageError` otherwise)."""
    match = _SIZE.match(text or "")
    if not match:
        raise UsageError(f"--max-memory takes a size such as 8G, 8GiB or 512MB, got {text!r}")
    number, unit, binary = match.groups()
    base = 1024 if binary or unit else 1
    power = "_kmgt".index(unit.lower()) if unit else 0
    return int(float(number) * base**power)
