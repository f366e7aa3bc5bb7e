"""vLLM's tokenizer routes: GET /tokenizer_info, POST /tokenize, POST /detokenize.

Evaluation tools (lm-evaluation-harness's `tokenizer_backend=remote`) tokenize through these so that the token
ids they send to /v1/completions are exactly the served model's. Tokenizing here is the engine's: text becomes
ids the way a raw prompt does (control-token strings become control tokens, no BOS is added: aipc's prompts
get theirs from the chat template), and `messages` are rendered with the model's chat template, as a chat
request would be. Errors take OpenAI's shape (these paths belong to no dialect's prefix).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from aipc.errors import AipcError
from aipc.server import core
from aipc.server.errors import APIError, to_api_error

MAX_DETOKENIZE = 1_000_000  # token ids in one /detokenize body


def register(app: FastAPI, state: core.ServerState) -> None:
    """Add the tokenizer routes to `app`."""

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request, model: str | None = None) -> JSONResponse:
        def info(entry: core.Entry) -> dict[str, Any]:
            m = entry.model
            i = m.info
            return {
                "model": entry.name,
                "eos_token": i.eos_token or None,
                "bos_token": i.bos_token or None,
                # aipc never pads (one sequence per generation); the EOS token is what tokenizers that need one use.
                "pad_token": i.eos_token or None,
                "chat_template": m.chat_template,
                "model_max_length": entry.context_length,
                "backend": i.backend,
            }

        return await _with_model(state, request, model, info)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        body = _object(
            await core.read_json(request),
            ("model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", "return_token_strs"),
        )
        prompt, messages = body.get("prompt"), body.get("messages")
        if (prompt is None) == (messages is None):
            raise APIError(400, "give either prompt (a string) or messages (a list of chat messages)", param="prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string", param="prompt")
        if messages is not None and not isinstance(messages, list):
            raise APIError(400, "messages must be a list of chat messages", param="messages")
        for name in ("add_special_tokens", "add_generation_prompt", "return_token_strs"):
            if not isinstance(body.get(name, False), bool):
                raise APIError(400, f"{name} must be true or false", param=name)

        def run(entry: core.Entry) -> dict[str, Any]:
            m = entry.model
            try:
                ids = m.tokenize(prompt) if prompt is not None else m.encode(messages)
            except AipcError as exc:
                raise to_api_error(exc, param="prompt" if prompt is not None else "messages") from None
            out: dict[str, Any] = {"count": len(ids), "max_model_len": entry.context_length, "tokens": ids}
            if body.get("return_token_strs"):
                out["token_strs"] = [m.token_text(i) for i in ids]
            return out

        return await _with_model(state, request, body.get("model"), run)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> JSONResponse:
        body = _object(await core.read_json(request), ("model", "tokens"))
        tokens = body.get("tokens")
        if (
            not isinstance(tokens, list)
            or len(tokens) > MAX_DETOKENIZE
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in tokens)
        ):
            raise APIError(400, "tokens must be a list of token ids (integers >= 0)", param="tokens")

        def run(entry: core.Entry) -> dict[str, Any]:
            try:
                return {"prompt": entry.model.detokenize(entry.model.check_ids(tokens))}
            except AipcError as exc:
                raise to_api_error(exc, param="tokens") from None

        return await _with_model(state, request, body.get("model"), run)


def _object(data: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", param=None)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise APIError(
            400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0], code="unknown_parameter"
        )
    if data.get("model") is not None and not isinstance(data["model"], str):
        raise APIError(400, "model must be a string", param="model")
    return data


async def _with_model(state: core.ServerState, request: Request, name: str | None, work: Any) -> JSONResponse:
    """`work(entry)` in a worker thread on the named (or default) model, loaded on demand, then released."""
    state.check_serving()
    entry = await state.acquire(request, name)
    if entry is None:
        return core.gone()
    try:
        return JSONResponse(await run_in_threadpool(work, entry))
    finally:
        state.pool.release(entry)
