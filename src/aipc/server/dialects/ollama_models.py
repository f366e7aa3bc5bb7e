"""Ollama's model routes (/api/tags, /api/show, /api/ps, /api/pull, /api/delete, /api/copy, /api/create,
/api/blobs), beside its chat and generate routes (ollama.py), whose error shape they share.

The routes that change the store (pull, delete, copy, create, a blob upload) are refused on a --read-only
server; they do what the CLI's `aipc pull`, `aipc rm`, `aipc cp` and `aipc create` do, through `server.library`,
in worker threads. A GGUF file uploaded as a blob (`aipc.store.blobs`) becomes a stored model when /api/create
names it in `files`, as `ollama create` with a `FROM ./model.gguf` Modelfile sends it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from aipc.errors import AipcError
from aipc.server import core, library
from aipc.server.dialects import ollama_protocol as protocol
from aipc.server.dialects.ollama import NDJSON, _stream_error
from aipc.server.errors import APIError, json_bytes, to_api_error
from aipc.server.scheduler import EventPump

_FOREVER = dt.timedelta(days=365 * 290)  # what /api/ps says for a model kept loaded forever, as Ollama does
_FORMATS = {"openvino-ir": "openvino", "onnx-genai": "onnx", "gguf": "gguf", "hf": "safetensors"}


def register(app: FastAPI, state: core.ServerState) -> None:
    """Add Ollama's model routes to `app` (their error shape is the chat routes' dialect, registered there)."""

    @app.api_route("/api/tags", methods=["GET", "HEAD"])
    async def tags() -> JSONResponse:
        models = await run_in_threadpool(library.runnable)
        return JSONResponse({"models": [_tag(m) for m in models]})

    @app.post("/api/show")
    async def show(request: Request) -> JSONResponse:
        body = protocol.parse(protocol.ShowRequest, await core.read_json(request))
        name = state.check_name(body.model_name)
        s = state.settings
        facts = await run_in_threadpool(library.describe, name, allow_paths=s.allow_paths, pinned=state.pool.pinned)
        return JSONResponse(_show(facts))

    @app.get("/api/ps")
    async def ps() -> JSONResponse:
        entries = state.pool.running()
        known = {m.name: m for m in await run_in_threadpool(library.runnable)} if entries else {}
        return JSONResponse({"models": [_running(e, known.get(e.name) or known.get(e.ref)) for e in entries]})

    @app.post("/api/pull")
    async def pull(request: Request) -> Response:
        _check_writable(state)
        body = protocol.parse(protocol.PullRequest, await core.read_json(request))
        name = state.check_name(body.model_name)
        return await _pull(state, request, name, stream=body.stream)

    @app.delete("/api/delete")
    async def delete(request: Request) -> Response:
        _check_writable(state)
        body = protocol.parse(protocol.DeleteRequest, await core.read_json(request))
        name = state.check_name(body.model_name)
        await run_in_threadpool(library.check_deletable, name)
        entry = await state.pool.stop(name)
        if entry is not None and entry.state in ("loading", "ready"):
            doing = "loading" if entry.state == "loading" else "in use"
            raise APIError(409, f"model {name!r} is {doing}; delete it when its requests are done", code="in_use")
        await run_in_threadpool(library.delete, name)
        return Response(status_code=200)

    @app.post("/api/create")
    async def create(request: Request) -> Response:
        _check_writable(state)
        body = protocol.parse(protocol.CreateRequest, await core.read_json(request))
        mf = await run_in_threadpool(_modelfile, state, body)  # templates compile and render: off the loop
        if body.files:
            filename, digest = _gguf_file(body.files)
            name = await run_in_threadpool(library.create_from_blob, body.model_name, filename, digest, mf)
            steps = [f"using uploaded file {filename}", f"creating model {name}", "writing manifest", "success"]
        else:
            name = await run_in_threadpool(library.create, body.model_name, mf)
            steps = [f"using existing model {mf.base}", f"creating model {name}", "writing manifest", "success"]
        await state.pool.stop(name)  # a loaded earlier version of it is not served again: the next request loads
        if not body.stream:
            return JSONResponse({"status": "success"})
        return Response(b"".join(json_bytes({"status": s}) + b"\n" for s in steps), media_type=NDJSON)

    @app.head("/api/blobs/{digest}")
    async def has_blob(digest: str) -> Response:
        from aipc.store import blobs

        found = await run_in_threadpool(blobs.has, _digest(digest))
        return Response(status_code=200 if found else 404)

    @app.post("/api/blobs/{digest}")
    async def upload_blob(digest: str, request: Request) -> Response:
        _check_writable(state)
        return await _upload(_digest(digest), request)

    @app.post("/api/copy")
    async def copy(request: Request) -> Response:
        _check_writable(state)
        body = protocol.parse(protocol.CopyRequest, await core.read_json(request))
        source = state.check_name(body.source)
        await run_in_threadpool(library.copy, source, body.destination)
        return Response(status_code=200)


def _check_writable(state: core.ServerState) -> None:
    if state.settings.read_only:
        raise library.StoreUnavailableError("this server is read-only (--read-only): it does not change its store")


# --- models --------------------------------------------------------------------------------------------------
def _details(fmt: str, family: str, parameter_size: str, precision: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": _FORMATS.get(fmt, fmt),
        "family": family,
        "families": [family] if family else None,
        "parameter_size": parameter_size,
        "quantization_level": precision.upper(),
    }


def _tag(m: library.Runnable) -> dict[str, Any]:
    return {
        "name": m.name,
        "model": m.name,
        "modified_at": protocol.timestamp(m.modified),
        "size": m.size_bytes,
        "digest": m.digest,
        "details": _details(m.format, m.family, m.parameter_size, m.precision),
    }


# aipc's option names -> Ollama's, as a Modelfile's PARAMETER lines and /api/show's parameters spell them
_OLLAMA_OPTION = {"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"}


def _each(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _show(facts: dict[str, Any]) -> dict[str, Any]:
    defaults = {_OLLAMA_OPTION.get(k, k): v for k, v in facts["defaults"].items()}
    if facts.get("num_ctx"):
        defaults["num_ctx"] = facts["num_ctx"]
    # As Ollama writes them: one line per value (a list, such as stop, on several), strings quoted
    pairs = [(k, json.dumps(v) if isinstance(v, str) else v) for k, vs in defaults.items() for v in _each(vs)]
    parameters = "\n".join(f"{k:<30} {v}" for k, v in pairs)
    lines = [f"# Modelfile generated by aipc for {facts['ref']}", f"FROM {facts['path']}"]
    if facts["template"]:
        lines.append(f'TEMPLATE """{facts["template"]}"""')
    if facts["system"]:
        lines.append(f'SYSTEM """{facts["system"]}"""')
    lines += [f"PARAMETER {k} {v}" for k, v in pairs]
    info = dict(facts["model_info"])
    if facts["context_length"]:
        info.setdefault(f"{facts['family'] or 'general'}.context_length", facts["context_length"])
    return {
        "license": facts["license"],
        "modelfile": "\n".join(lines) + "\n",
        "parameters": parameters,
        "template": facts["template"],
        "system": facts["system"],
        "details": _details(facts["format"], facts["family"], facts["parameter_size"], facts["precision"]),
        "model_info": info,
        # every model takes tools: in its own format where its template has one, else a generic instruction
        "capabilities": ["completion", "tools"],
        "modified_at": protocol.timestamp(facts["modified"]),
    }


def _running(e: Any, listed: library.Runnable | None) -> dict[str, Any]:
    """One loaded (or loading) model as /api/ps shows it; `listed`: the same model as /api/tags lists it, for
    its details and digest (None for a model opened from a path)."""
    info = e.model.info if e.model is not None else None
    if e.state != "ready":
        expires = None
    elif e.keep_alive is None or e.external:
        expires = protocol.timestamp((dt.datetime.now(dt.timezone.utc) + _FOREVER).timestamp())
    else:
        expires = protocol.timestamp(e.expires_at or time.time() + e.keep_alive)
    ref = e.ref
    fmt = ""
    if info is not None:
        fmt = "openvino" if info.backend == "openvino" else info.backend
    return {
        "name": e.name,
        "model": e.name,
        "size": e.size_bytes or e.estimate_bytes,
        "digest": listed.digest if listed is not None else "",
        "details": _tag(listed)["details"] if listed is not None else _details(fmt, "", "", ""),
        "expires_at": expires,
        "size_vram": e.size_bytes if info is not None and info.device.startswith("gpu") else 0,
        "context_length": e.context_length,
        # aipc's own fields (clients ignore them): what `aipc ps` shows
        "state": e.state,
        "variant": ref.partition("@")[2],
        "backend": info.backend if info is not None else "",
        "device": info.device if info is not None else "",
        "keep_alive": None if e.external else e.keep_alive,
        "running": e.slots.running if e.slots is not None else 0,
        "queued": e.waiting,
    }


# --- create ---
_CREATE_FIELDS = ("system", "template", "license", "parameters", "messages", "modelfile")


def _digest(digest: str) -> str:
    from aipc.store import blobs

    try:
        blobs.parse(digest)
    except AipcError as exc:
        raise APIError(400, str(exc), param="digest") from None
    return digest


async def _upload(digest: str, request: Request) -> Response:
    """POST /api/blobs/{digest}: the body kept under its digest when it has that digest (201), as Ollama does;
    a blob the server has already is 200, its body unread."""
    from aipc.store import blobs

    if await run_in_threadpool(blobs.has, digest):
        return Response(status_code=200)
    upload = await run_in_threadpool(blobs.Upload, digest)
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(upload.write, chunk)
    except blobs.DiskFullError as exc:
        raise APIError(507, str(exc), code="insufficient_storage") from None
    except BaseException:
        upload.discard()
        raise
    if not await run_in_threadpool(upload.finish):
        raise APIError(400, f"the uploaded bytes do not have the digest {digest}", param="digest")
    return Response(status_code=201)


def _gguf_file(files: dict[str, Any]) -> tuple[str, str]:
    """/api/create's `files` (file name -> blob digest): one GGUF file is what aipc makes a model from."""
    ggufs = [(name, digest) for name, digest in files.items() if str(name).lower().endswith(".gguf")]
    if len(files) != 1 or len(ggufs) != 1 or not isinstance(ggufs[0][1], str):
        raise APIError(
            400,
            f"files must name one .gguf file and its blob digest, got {sorted(map(str, files))[:4]}: a model from "
            "safetensors or several files is made with aipc convert",
            param="files",
        )
    return ggufs[0][0], _digest(ggufs[0][1])


def _modelfile(state: core.ServerState, body: protocol.CreateRequest) -> Any:
    """The Modelfile an /api/create body describes, its base a name this server may open (or, with `files`,
    the uploaded file's settings: its base is that file)."""
    from aipc.store.modelfile import from_fields, parse

    if body.adapters:
        message = "adapters (LoRA) are not supported: merge them into the model, or aipc convert it"
        raise APIError(400, message, param="adapters")
    if body.quantize or body.quantization:
        message = "quantize is not supported on create: aipc convert MODEL --precision int4 makes a quantized model"
        raise APIError(400, message, param="quantize")
    if body.files and (body.from_ or body.modelfile):
        raise APIError(400, "files and from cannot both be set: a model is made from one or the other", param="files")
    try:
        if body.modelfile:
            mf = parse(body.modelfile, paths=state.settings.allow_paths)
        elif body.from_ or body.files:
            mf = from_fields(
                state.check_name(body.from_) if body.from_ else "uploaded-file",
                system=body.system,
                template=body.template,
                license=body.license,
                parameters=body.parameters,
                messages=[m.model_dump() for m in body.messages or []],
                ignored=protocol.RUNNER_OPTIONS,
            )
        else:
            raise APIError(400, "from is required: the name of the model to create this one from", param="from")
    except AipcError as exc:
        field = str(exc).split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
        raise to_api_error(exc, param=field if field in _CREATE_FIELDS else "from") from None
    if not body.files:
        mf.base = state.check_name(mf.base)  # a path only on a server started with --allow-paths
    return mf


# --- pull ----------------------------------------------------------------------------------------------------
async def _pull(state: core.ServerState, request: Request, name: str, *, stream: bool) -> Response:
    """Progress objects from `library.pull` (run in a thread); its first step (the catalog, the hub's reach)
    comes before any answer, so an offline pull is a plain error response."""
    device = state.settings.device

    def finished() -> None:
        state.pumps.discard(pump)

    pump = EventPump(lambda: library.pull(name, device), on_exit=finished)
    state.pumps.add(pump)
    try:
        first = await core.or_gone(request, pump.__anext__(), on_gone=pump.stop, on_error=pump.stop)
    except StopAsyncIteration:
        first = {"status": "success"}
    except AipcError as exc:
        raise to_api_error(exc, param="model") from None
    if first is None:
        return core.gone()
    if not stream:
        last = first
        async for item in pump:
            last = item
        return JSONResponse(last)

    async def lines() -> AsyncIterator[bytes]:
        yield json_bytes(first) + b"\n"
        try:
            async for item in pump:
                yield json_bytes(item) + b"\n"
        except Exception as exc:
            yield _stream_error(to_api_error(exc))

    return core.StreamResponse(lines(), pump, NDJSON)
