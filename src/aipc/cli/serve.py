"""`aipc serve`: the OpenAI-compatible server (src/aipc/server), from the command line."""

from __future__ import annotations

import argparse
import os


def command(args: argparse.Namespace) -> int:
    from aipc.server.settings import ServerSettings

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
    )
    settings.check()  # unsafe or impossible settings fail here, before fastapi or the runtime are imported
    from aipc.server.runner import serve

    return serve(settings)
