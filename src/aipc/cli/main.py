"""The `aipc` command. Parsing imports nothing heavy; each command imports its runtime when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEVICE_CHOICES = "auto, cpu, gpu, gpu.N or npu"


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: what was wrong and where to look, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aipc",
        description="Run small language models (Phi-3, Phi-3.5, Phi-4-mini, SmolLM2) on your NPU, GPU or CPU.",
    )
    parser.add_argument("--version", action="version", version=f"aipc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="chat with a model, or answer one prompt, streaming",
        description="Answer PROMPT with MODEL, streaming; with no prompt, open an interactive chat. "
        "MODEL is a catalog name (smollm2:135m, phi3:mini, phi3:mini-128k, phi3.5:mini, phi4:mini), "
        "a .gguf file or an OpenVINO IR folder; it defaults to the embedded smollm2:135m.",
    )
    run.add_argument("words", nargs="*", metavar="[MODEL] [PROMPT]", help="model, then prompt")
    run.add_argument("-m", "--model", help="the model (then every positional word is the prompt)")
    run.add_argument("--backend", default="auto", help="auto or openvino (default: auto)")
    run.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default: auto: NPU, then GPU, then CPU)")
    run.add_argument("--max-tokens", type=int, help="most tokens to generate (>= 1; default 512)")
    run.add_argument("--temperature", type=float, help="sampling temperature (>= 0; 0 is greedy)")
    run.add_argument("--top-p", type=float, help="nucleus sampling mass, in (0, 1]")
    run.add_argument("--top-k", type=int, help="sample from the K most likely tokens (>= 0; 0 disables)")
    run.add_argument("--seed", type=int, help="random seed for reproducible sampling (>= 0)")
    run.add_argument("--system", help="system prompt")
    run.add_argument("-i", "--interactive", action="store_true", help="chat even when stdin is not a terminal")
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print a stats line: load time, prompt tokens, TTFT, next-token latency, tokens/s",
    )
    run.set_defaults(handler="aipc.cli.run:command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    import importlib

    from aipc.errors import AipcError

    module, func = args.handler.split(":")
    try:
        return getattr(importlib.import_module(module), func)(args)
    except AipcError as exc:
        print(f"aipc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `aipc run ... | head`: the reader left
        return 0


def _version() -> str:
    from aipc import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
