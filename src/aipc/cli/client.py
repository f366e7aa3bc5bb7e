"""`aipc ps` and `aipc stop`: ask a running `aipc serve` what it has loaded, and unload a model.

The server is at $AIPC_HOST (default http://127.0.0.1:11435; "host:port", "host" or ":port" work too, as
OLLAMA_HOST does), with $AIPC_API_KEY sent as a bearer key when set. The standard library's HTTP client only:
these commands import nothing heavy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from aipc.errors import AipcError, UsageError
from aipc.units import size_text

DEFAULT_HOST = "http://127.0.0.1:11435"
_FOREVER_YEARS = 100  # an expiry further away than this means "kept loaded"


def server_url(value: str | None = None) -> str:
    """The server's base URL from AIPC_HOST (or `value`): scheme and port filled in as OLLAMA_HOST's are."""
    raw = (value if value is not None else os.environ.get("AIPC_HOST", "")).strip()
    if not raw:
        return DEFAULT_HOST
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    if scheme not in ("http", "https"):
        raise UsageError(f"AIPC_HOST must be an http(s) URL or host:port, got {raw!r}")
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"AIPC_HOST has an invalid port: {raw!r}") from None
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        port = 11435 if not sep else (443 if scheme == "https" else 80)
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


class ServerError(AipcError):
    """The server answered with an error, or could not be reached."""


def call(method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
    """One JSON request to the server; its decoded answer, or a `ServerError` with its message."""
    base = server_url()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    key = os.environ.get("AIPC_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise ServerError(f"{_message(exc.read().decode(errors='replace'))} (HTTP {exc.code} from {base})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(
            f"cannot reach the server at {base} ({reason}): is `aipc serve` running? (AIPC_HOST)"
        ) from None
    return json.loads(text) if text.strip() else None


def _message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip()[:200]
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def ps_command(args: argparse.Namespace) -> int:
    models = call("GET", "/api/ps")["models"]
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("No models loaded.")
        return 0
    rows = [("NAME", "VARIANT", "PROCESSOR", "SIZE", "CONTEXT", "UNTIL")]
    for m in models:
        where = f"{m.get('backend', '')}/{m.get('device', '')}" if m.get("backend") else "-"
        context = str(m.get("context_length") or "-")
        rows.append((m["name"], m.get("variant") or "-", where, size_text(m.get("size") or 0), context, _until(m)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _until(m: dict[str, Any]) -> str:
    if m.get("state") == "loading":
        return "loading"
    if m.get("running") or m.get("queued"):
        return "busy"
    expires = m.get("expires_at")
    if not expires:
        return "Forever"
    when = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
    now = dt.datetime.now(dt.timezone.utc)
    if when - now > dt.timedelta(days=365 * _FOREVER_YEARS):
        return "Forever"
    seconds = max(int((when - now).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} seconds from now"
    if seconds < 7200:
        return f"{seconds // 60} minutes from now"
    return f"{seconds // 3600} hours from now"


def stop_command(args: argparse.Namespace) -> int:
    from aipc.store.resolve import canonical_ref

    loaded = {m["name"] for m in call("GET", "/api/ps")["models"]}
    name = args.model if args.model in loaded else canonical_ref(args.model)  # an alias: smollm2, phi3
    if name not in loaded:
        have = ", ".join(sorted(loaded)) or "none"
        raise ServerError(f"model {args.model!r} is not loaded (loaded: {have})")
    call("POST", "/api/generate", {"model": name, "keep_alive": 0})
    return 0
