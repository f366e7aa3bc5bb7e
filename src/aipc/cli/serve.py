"""`aipc serve`: the OpenAI- and Ollama-compatible server (src/aipc/server), from the command line."""

from __future__ import annotations

import argparse
import os


def command(args: argparse.Namespace) -> int:
    from aipc.errors import InvalidConfigError, UsageError
    from aipc.server.settings import DEFAULT_KEEP_ALIVE_S, ServerSettings, parse_keep_alive, parse_size

    keep_alive = args.keep_alive if args.keep_alive is not None else os.environ.get("AIPC_KEEP_ALIVE")
    try:
        keep = DEFAULT_KEEP_ALIVE_S if keep_alive in (None, "") else parse_keep_alive(keep_alive)
    except InvalidConfigError as exc:
        raise UsageError(f"--keep-alive (or AIPC_KEEP_ALIVE): {exc}") from None
    settings = ServerSettings(
        model=args.model,
        backend=args.backend,
        device=args.device,
        host=args.host,
        port=args.port,
        parallel=args.parallel,
        max_queue=args.max_queue,
        # The environment keeps the key out of `ps`; the flag wins when both are given.
        api_key=args.api_key or os.environ.get("AIPC_API_KEY") or None,
        allowed_origins=tuple(args.allowed_origin),
        allowed_hosts=tuple(args.allowed_host),
        max_body_bytes=args.max_body_bytes,
        context_length=args.context_length,
        kv_cache=args.kv_cache,
        repetition_penalty=args.repeat_penalty,
        drain_timeout=args.drain_timeout,
        verbose=args.verbose,
        keep_alive=keep,
        max_loaded=args.max_loaded,
        max_memory=parse_size(args.max_memory) if args.max_memory else None,
        read_only=args.read_only,
        allow_paths=args.allow_paths,
        log_format=args.log_format,
        speculate=args.speculate,
    )
    settings.check()  # unsafe or impossible settings fail here, before fastapi or the runtime are imported
    from aipc.server.runner import serve

    return serve(settings)
