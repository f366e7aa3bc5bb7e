"""What `aipc serve` was asked for, checked before anything is started or loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from aipc.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435  # one above Ollama's 11434, so both can run side by side
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_MESSAGES = 256
DEFAULT_DRAIN_TIMEOUT_S = 30.0


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
