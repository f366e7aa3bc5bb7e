"""The `aipc` command. Parsing imports nothing heavy; each command imports its runtime when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEVICE_CHOICES = "auto, cpu, gpu, gpu.N, npu, or a preference list such as npu,cpu"


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
    run.add_argument(
        "--repeat-penalty",
        type=float,
        help="divide the logits of tokens already in the prompt or answer by this (> 0; 1 disables; "
        "default: the model's, else 1.1)",
    )
    _add_load_options(run)
    run.add_argument("--system", help="system prompt")
    run.add_argument("-i", "--interactive", action="store_true", help="chat even when stdin is not a terminal")
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print a stats line: load time, prompt tokens, TTFT, next-token latency, tokens/s",
    )
    run.set_defaults(handler="aipc.cli.run:command")
    _add_serve(sub)
    _add_model_commands(sub)
    _add_eval(sub)
    return parser


def _add_serve(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a chat page",
        description="Serve MODEL (default: the embedded smollm2:135m) over an OpenAI-compatible API "
        "(/v1/chat/completions, /v1/completions, /v1/models, /health) with a web chat page at /. "
        "Listens on 127.0.0.1 unless told otherwise; any other address needs --api-key.",
    )
    serve.add_argument("model", nargs="?", metavar="MODEL", help="catalog name, .gguf file or OpenVINO IR folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=11435, help="port (default: 11435; 0 picks a free one)")
    serve.add_argument("--backend", default="auto", help="auto or openvino (default: auto)")
    serve.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default: auto)")
    serve.add_argument(
        "--parallel", type=int, default=1, help="generations at once (default 1; >1 batches them on CPU/GPU)"
    )
    serve.add_argument("--max-queue", type=int, default=16, help="requests that may wait beyond those (default 16)")
    serve.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: $AIPC_API_KEY); needed off loopback"
    )
    serve.add_argument(
        "--allowed-origin", action="append", default=[], metavar="ORIGIN", help="a web origin allowed to call (CORS)"
    )
    serve.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME", help="another Host name to answer to"
    )
    serve.add_argument(
        "--repeat-penalty", type=float, help="the default repetition penalty of requests that do not set one"
    )
    _add_load_options(serve)
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM (default 30)"
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request")
    serve.set_defaults(handler="aipc.cli.serve:command")


def _add_load_options(parser) -> None:
    """Options fixed when the model is opened, the same for run and serve."""
    parser.add_argument(
        "--context-length",
        type=int,
        metavar="N",
        help="prompt + answer tokens the model holds (default: its trained context, capped to fit free memory)",
    )
    parser.add_argument(
        "--kv-cache",
        metavar="TYPE",
        help="KV-cache element type: f32, f16 or q8 (llama.cpp q8_0, OpenVINO u8; default: the runtime's)",
    )


def _add_model_commands(sub) -> None:
    """convert, pull, list, show, rm: the model store."""
    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint into a backend's format and precision, into the store",
        description="Convert SOURCE (a Hugging Face folder, a hub id, a .gguf file or a catalog name) for one "
        "backend: openvino (int4, int8, fp16), onnx (int4, int8, fp16, fp32) or gguf (f16, q8_0, q4_0, q4_k_m).",
    )
    convert.add_argument("source", metavar="SOURCE")
    convert.add_argument("--to", required=True, metavar="FORMAT", help="openvino, onnx or gguf")
    convert.add_argument("--precision", help="default: int4 for openvino and onnx, q4_k_m for gguf")
    convert.add_argument("--device-target", default="cpu", help="cpu, gpu or npu (openvino); cpu, cuda or dml (onnx)")
    convert.add_argument("--name", help="the name in the store (default: from the source)")
    convert.add_argument("--allow-pickle", action="store_true", help="accept .bin/.pt weights (pickle can run code)")
    convert.set_defaults(handler="aipc.cli.models:convert_command")

    pull = sub.add_parser("pull", help="fetch a catalog model from the hub and convert it for this machine")
    pull.add_argument("name", metavar="NAME")
    pull.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES}: the device to convert for")
    pull.set_defaults(handler="aipc.cli.models:pull_command")

    ls = sub.add_parser("list", aliases=["ls"], help="list the models in the store")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler="aipc.cli.models:list_command")

    show = sub.add_parser("show", help="show a stored model: source, recipe, backend, precision, size, created")
    show.add_argument("name", metavar="NAME[@VARIANT]")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler="aipc.cli.models:show_command")

    bench = sub.add_parser(
        "bench",
        help="measure speed side by side: TTFT, next-token latency, tokens/s, peak RSS, roofline",
        description="Measure every variant of MODEL (default: the embedded model) on every backend that loads "
        "it, interleaved, from the same event stream. Writes a table, and JSON/CSV/PNG on request.",
    )
    bench.add_argument("models", nargs="*", metavar="MODEL")
    bench.add_argument("--backends", help="comma-separated (default: every backend that loads a variant)")
    bench.add_argument("--devices", default="cpu", help="comma-separated devices (default: cpu)")
    bench.add_argument("--precisions", help="comma-separated (e.g. int4,fp16,q4_0; default: every variant)")
    bench.add_argument("--prompt-lengths", default="32,256,512,1024", help="input tokens (default 32,256,512,1024)")
    bench.add_argument("--gen-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    bench.add_argument("--repeats", type=int, default=3, help="measured runs per configuration (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="discarded runs first (default 1)")
    bench.add_argument("--json", metavar="FILE")
    bench.add_argument("--csv", metavar="FILE")
    bench.add_argument("--plot", metavar="FILE.png", help="next-token latency by input length (needs matplotlib)")
    bench.set_defaults(handler="aipc.cli.bench:command")

    devices = sub.add_parser("devices", help="list what each backend can use here: CPU, GPU, NPU")
    devices.add_argument("--json", action="store_true", help="machine-readable output")
    devices.set_defaults(handler="aipc.cli.devices:devices_command")
    doctor = sub.add_parser(
        "doctor",
        help="check each device's chain (processor, driver, device node, runtime) and say how to fix what fails",
        description="Check, link by link, whether the NPU, GPU and CPU paths can work here: the processor, the "
        "kernel driver and its firmware, the device node and whether you may open it, Level Zero and the "
        "compute runtime, OpenVINO and its plugins, the other backends and the compiled-model cache. Each "
        "problem comes with its fix and the vendor's page. Exits 1 when the device asked for cannot work "
        "(with no --device: when the CPU path cannot). AIPC_SYSROOT reads /proc, /sys, /dev, /etc and /lib "
        "under another folder.",
    )
    doctor.add_argument(
        "--device",
        choices=("auto", "npu", "gpu", "cpu"),
        default="auto",
        help="the device that must work (default: auto: report all, fail only if the CPU path is broken)",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(handler="aipc.cli.devices:doctor_command")

    rm = sub.add_parser("rm", help="remove a stored model (every variant) or one NAME@VARIANT")
    rm.add_argument("names", nargs="+", metavar="NAME[@VARIANT]")
    rm.set_defaults(handler="aipc.cli.models:rm_command")


def _add_eval(sub) -> None:
    """eval: quality measured, teacher-forced, against the fp32 reference."""
    ev = sub.add_parser(
        "eval",
        help="measure quality: perplexity on a text, KL divergence and top-1 agreement against a reference",
        description="Score MODEL (default: the embedded smollm2:135m) on a text, teacher-forced in overlapping "
        "windows: its perplexity and, against a reference model with the same tokenizer, the mean "
        "KL(reference || model) of the next-token distributions and how often both rank the same token first. "
        "The reference defaults to the fp32 PyTorch form of the Hugging Face folder a stored variant was "
        "converted from.",
    )
    ev.add_argument("model", nargs="?", metavar="MODEL", help="catalog name, NAME@VARIANT, or a model path")
    ev.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default: the shipped Jargon File excerpt)")
    ev.add_argument(
        "--reference", metavar="MODEL", help="the model to compare with, or 'none' (default: the variant's source)"
    )
    ev.add_argument("--reference-backend", default="auto", help="the backend that runs --reference (default: auto)")
    ev.add_argument("--max-tokens", type=int, default=4096, help="tokens scored, from the text's start (default 4096)")
    ev.add_argument("--window", type=int, default=512, help="tokens per forward pass, overlapping half (default 512)")
    ev.add_argument("--backend", default="auto", help="auto, openvino, onnxruntime, llamacpp or torch (default: auto)")
    ev.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu.N (default: auto: GPU, then CPU)")
    ev.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ev.set_defaults(handler="aipc.cli.eval:command")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `aipc run MODEL --verbose "prompt"`: argparse stops filling a '*' positional at the first option.
        if getattr(args, "command", None) == "run" and not any(e.startswith("-") for e in extra):
            args.words += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    import importlib
    import logging

    from aipc.errors import AipcError

    # Library notes (a fallback taken, a prompt routed off the NPU) are one line each on stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("aipc: %(message)s"))
    logging.getLogger("aipc").addHandler(handler)
    logging.getLogger("aipc").propagate = False
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
