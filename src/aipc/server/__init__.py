"""`aipc serve`: OpenAI's and Ollama's HTTP APIs over many models loaded on demand, and a web chat page.

    app.py        the application: shared routes (/health, /metrics, the chat page), the dialects, the middleware
    core.py       the serving core every dialect shares: bodies, the request's model, prompts, slots, generation
    pool.py       the model pool: load on demand, keep-alive, least-recently-used eviction under budgets
    memory.py     RSS, free memory, a model's estimated size, giving memory back after an unload
    library.py    what requests may name (validated, local only), listing, show facts, pull/delete/copy
    metrics.py    Prometheus metrics and the per-request log line (text or JSON)
    dialects/     one thin adapter per API dialect (openai.py, ollama.py, each with its pydantic protocol)
    errors.py     the one map from aipc's errors to HTTP statuses; each dialect's error body
    security.py   Host and Origin checks, the API key, the body size limit (ASGI middleware)
    scheduler.py  generation slots and the wait queue, and the thread that runs each generation
    runner.py     the socket, uvicorn, logging, start-up checks, and draining on SIGTERM
    settings.py   what `aipc serve` was asked for, checked; keep-alive and size parsing
    static/       the chat page, one self-contained HTML file

Only `runner.serve` and `app.create_app` are entry points; fastapi and uvicorn are imported in this package alone.
"""

from __future__ import annotations
