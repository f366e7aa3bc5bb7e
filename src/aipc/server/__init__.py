"""`aipc serve`: an OpenAI-compatible HTTP API and a web chat page over one opened model.

    app.py        routes, the model's lifetime, the shape of every response
    protocol.py   request bodies (pydantic, at the HTTP edge only) and response objects
    errors.py     the one map from aipc's errors to HTTP statuses and OpenAI error bodies
    security.py   Host and Origin checks, the API key, the body size limit (ASGI middleware)
    scheduler.py  generation slots and the wait queue, and the thread that runs each generation
    runner.py     the socket, uvicorn, start-up checks, and draining on SIGTERM
    static/       the chat page, one self-contained HTML file

Only `runner.serve` and `app.create_app` are entry points; fastapi and uvicorn are imported by them alone.
"""

from __future__ import annotations
