"""`aipc serve`: OpenAI's (and, through adapters, other clients') HTTP API and a web chat page.

    app.py        the application: shared routes (health, the chat page), the dialects, the security middleware
    core.py       the serving core every dialect shares: the model, bodies, prompts, slots, running a generation
    dialects/     one thin adapter per API dialect (openai.py + its pydantic protocol), registered in __init__.py
    errors.py     the one map from aipc's errors to HTTP statuses, with each dialect's error body
    security.py   Host and Origin checks, the API key, the body size limit (ASGI middleware)
    scheduler.py  generation slots and the wait queue, and the thread that runs each generation
    runner.py     the socket, uvicorn, start-up checks, and draining on SIGTERM
    static/       the chat page, one self-contained HTML file

Only `runner.serve` and `app.create_app` are entry points; fastapi and uvicorn are imported in this package alone.
"""

from __future__ import annotations
