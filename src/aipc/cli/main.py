"""The `aipc` command. Parsing imports nothing heavy; each command imports its runtime when it runs.

Each subcommand's arguments live in its own `_add_<command>` function; help texts that name backends, devices,
precisions, models or defaults are built from the code that defines them (`aipc.cli.helptext`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aipc.cli import helptext as ht

RAW = argparse.RawDescriptionHelpFormatter
SPECULATE_HELP = (
    "speculative decoding: auto (prompt lookup where measured to pay; default), off, lookup, or draft:MODEL "
    "(a small model with the same tokenizer drafts)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: what was wrong and where to look, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aipc",
        description="Run small language models (Phi-3, Phi-3.5, Phi-4-mini, SmolLM2) on your NPU, GPU or CPU.",
        epilog="Models:\n" + ht.catalog_table() + "\n\n`aipc help COMMAND` (or `aipc COMMAND --help`) explains one.",
        formatter_class=RAW,
    )
    parser.add_argument("--version", action="version", version=f"aipc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (
        _add_run,
        _add_serve,
        _add_pull,
        _add_convert,
        _add_list,
        _add_show,
        _add_cp,
        _add_create,
        _add_rm,
        _add_prune,
        _add_bench,
        _add_eval,
        _add_devices,
        _add_doctor,
        _add_help,
    ):
        add(sub)
    return parser


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run",
        help="chat with a model, or answer one prompt, streaming",
        description=(
            "Answer PROMPT with MODEL, streaming; with no prompt in a terminal, open an interactive chat.\n\n"
            + ht.wrap(ht.MODEL_FORMS)
            + "\nWith no MODEL, the embedded smollm2:135m runs.\n\n"
            + ht.wrap(
                "The first word is the model when it names one: a known name or tag, a stored model, a model "
                "file or folder, or anything shaped like a model reference (name:tag, name@variant, a path, a "
                "name with a version such as phi5). One that names nothing is an error ('unknown model ... did "
                'you mean\'), never a prompt. Any other first word starts the prompt: `aipc run "Summarise:"` '
                "sends the prompt to the default model. `--` or -p/--prompt settle any doubt: `aipc run -- phi3` "
                "asks the default model about 'phi3'."
            )
            + "\n\n"
            + ht.wrap(
                "Piped text comes first, then the prompt words, as Ollama does: `cat notes.txt | aipc run phi3 "
                "Summarise this` sends the file followed by 'Summarise this'."
            )
        ),
        epilog="Models:\n" + ht.catalog_table() + "\n\nSampling defaults:\n" + ht.model_defaults(),
        formatter_class=RAW,
    )
    run.add_argument("words", nargs="*", metavar="[MODEL] [PROMPT]", help="model, then prompt words")
    run.add_argument("-m", "--model", help="the model (then every positional word is the prompt)")
    run.add_argument("-p", "--prompt", help="the prompt (then the only positional word is the model)")
    run.add_argument("--backend", default="auto", help=ht.backend_help())
    run.add_argument("--device", default="auto", help=f"{ht.devices()} (default: auto: NPU, then GPU, then CPU)")
    run.add_argument(
        "--max-tokens", type=int, help=f"most tokens to generate (>= 1; default {ht.default_value('max_tokens')})"
    )
    run.add_argument(
        "--temperature",
        type=float,
        help=f"sampling temperature (>= 0; 0 is greedy; default: the model's, see below, else "
        f"{ht.default_value('temperature')})",
    )
    run.add_argument(
        "--top-p",
        type=float,
        help=f"nucleus sampling mass, in (0, 1] (default: the model's, else {ht.default_value('top_p')})",
    )
    run.add_argument(
        "--top-k",
        type=int,
        help=f"sample from the K most likely tokens (>= 0; 0 disables; default {ht.default_value('top_k')})",
    )
    run.add_argument(
        "--min-p",
        type=float,
        help="keep only tokens at least this share as likely as the most likely one, in [0, 1] (0 disables; "
        "default: the model's, else 0)",
    )
    run.add_argument(
        "--repeat-penalty",
        type=float,
        help=f"penalise tokens already in the prompt or answer (> 0; 1 is off; default: the model's, see below, else "
        f"{ht.default_value('repetition_penalty')})",
    )
    run.add_argument("--stop", action="append", metavar="TEXT", help="stop when the answer writes TEXT (repeatable)")
    run.add_argument("--seed", type=int, help="random seed for reproducible sampling (>= 0; default: random)")
    run.add_argument("--system", help="system prompt (default: none, or a created model's own)")
    _add_load_options(run)
    run.add_argument("--speculate", default="auto", help=SPECULATE_HELP)
    run.add_argument(
        "--format",
        metavar="json|FILE.json",
        help="constrain the answer to JSON: 'json' for any JSON object, or a file holding a JSON Schema",
    )
    run.add_argument("-i", "--interactive", action="store_true", help="chat even when stdin is not a terminal")
    run.add_argument("--nowordwrap", action="store_true", help="don't wrap the answer at word boundaries in a terminal")
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print a stats line (load time, prompt tokens, TTFT, next-token latency, tokens/s, what ran) and "
        "show other tools' own output",
    )
    run.set_defaults(handler="aipc.cli.run:command")


def _add_serve(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve models over OpenAI's and Ollama's HTTP APIs, with a chat page",
        description="Serve models over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models) and "
        "Ollama's (/api/chat, /api/generate, /api/tags, /api/ps...), with /health, /metrics and a web chat page "
        "at /. MODEL (default: the embedded smollm2:135m) is loaded at start; requests may name any model, "
        "loaded on demand. Listens on 127.0.0.1 unless told otherwise; any other address needs --api-key.\n\n"
        + ht.wrap(ht.MODEL_FORMS),
        formatter_class=RAW,
    )
    serve.add_argument("model", nargs="?", metavar="MODEL", help="a model name, NAME@VARIANT or a model path")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=11435, help="port (default: 11435; 0 picks a free one)")
    serve.add_argument("--backend", default="auto", help=ht.backend_help())
    serve.add_argument("--device", default="auto", help=f"{ht.devices()} (default: auto)")
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
        "--repeat-penalty",
        type=float,
        help="the repetition penalty of requests that do not set one (default: the model's)",
    )
    _add_load_options(serve)
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM (default 30)"
    )
    serve.add_argument("--speculate", default="auto", help=SPECULATE_HELP)
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request")
    serve.add_argument(
        "--keep-alive", help="how long an idle model stays loaded: 5m, 1h, 30s, 0, -1 = forever (default: 5m)"
    )
    serve.add_argument("--max-loaded", type=int, default=2, help="models loaded at once (default 2)")
    serve.add_argument("--max-memory", help="memory for loaded models, e.g. 8G (default: free memory less a margin)")
    serve.add_argument("--read-only", action="store_true", help="refuse /api/pull, /api/delete and /api/copy")
    serve.add_argument("--allow-paths", action="store_true", help="let requests name model files and folders")
    serve.add_argument("--log-format", choices=("text", "json"), default="text", help="request log lines (with -v)")
    serve.set_defaults(handler="aipc.cli.serve:command")
    _add_server_client_commands(sub)


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
        help="KV-cache element type: f32, f16 or q8 (llama.cpp q8_0, OpenVINO u8; default: q8 on llama.cpp and "
        "OpenVINO CPU, f16 on OpenVINO GPU, the model's own on ONNX Runtime)",
    )


def _add_server_client_commands(sub) -> None:
    """ps and stop: ask a running `aipc serve` (at $AIPC_HOST) what it has loaded, and unload a model."""
    ps = sub.add_parser(
        "ps",
        help="list the models a running server has loaded",
        description="List the models a running `aipc serve` has loaded: size, device, backend and when each is "
        "unloaded. The server is found at $AIPC_HOST (default 127.0.0.1:11435), as `ollama ps` finds Ollama's.",
    )
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    ps.set_defaults(handler="aipc.cli.client:ps_command")
    stop = sub.add_parser(
        "stop",
        help="unload a model from a running server",
        description="Unload MODEL from a running `aipc serve` at $AIPC_HOST now, instead of when its keep-alive "
        "ends; requests already generating with it finish first.",
    )
    stop.add_argument("model", metavar="MODEL", help="the model's name, as `aipc ps` shows it")
    stop.set_defaults(handler="aipc.cli.client:stop_command")


def _add_pull(sub) -> None:
    pull = sub.add_parser(
        "pull",
        help="fetch a catalog model from the hub and convert it for this machine",
        description="Fetch NAME into the store for this machine's best device: OpenVINO's pre-converted int4 "
        "repository where one fits, else the original checkpoint converted here (needs aipc[hub]). Offline, "
        "the error names the repository to download on a connected machine; --from imports that folder.",
        epilog="Models:\n" + ht.catalog_table(),
        formatter_class=RAW,
    )
    pull.add_argument("name", metavar="NAME", help="a catalog name or tag (below)")
    pull.add_argument("--device", default="auto", help=f"{ht.devices()}: the device to convert for (default: auto)")
    pull.add_argument(
        "--from", dest="source", metavar="FOLDER", help="import a folder downloaded elsewhere instead of fetching"
    )
    pull.add_argument("-v", "--verbose", action="store_true", help="show the download and converter tools' output")
    pull.set_defaults(handler="aipc.cli.models:pull_command")


def _add_convert(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint into a backend's format and precision, into the store",
        description="Convert SOURCE (a Hugging Face folder, a hub id, a .gguf file or a catalog name) for one "
        f"backend. Precisions: {ht.precisions()}. Device targets: {ht.device_targets()}.",
    )
    convert.add_argument("source", metavar="SOURCE")
    convert.add_argument("--to", required=True, metavar="FORMAT", help=ht.formats())
    convert.add_argument("--precision", help=ht.precisions())
    convert.add_argument("--device-target", default="cpu", help=f"{ht.device_targets()} (default: cpu)")
    convert.add_argument("--name", help="the name in the store (default: from the source)")
    convert.add_argument("--allow-pickle", action="store_true", help="accept .bin/.pt weights (pickle can run code)")
    convert.add_argument("-v", "--verbose", action="store_true", help="show the converter tools' own output")
    convert.set_defaults(handler="aipc.cli.models:convert_command")


def _add_list(sub) -> None:
    ls = sub.add_parser(
        "list",
        aliases=["ls"],
        help="list the models: stored, created and embedded, with their derived caches",
        description="List every model aipc can run without a download: each stored variant (backend, "
        "precision, device target, size), created models (aipc create), the embedded model, and the derived "
        "caches each one owns (GGUF converted to OpenVINO IR, the NPU copy, compiled blobs). Caches nothing "
        "uses are totalled at the end: aipc prune frees them.",
    )
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler="aipc.cli.models:list_command")


def _add_show(sub) -> None:
    show = sub.add_parser(
        "show",
        help="show a model: architecture, parameters, context, quantization, template, licence, defaults",
        description="Show what NAME is (any name aipc run takes, stored or not): architecture, parameter "
        "count, context length, quantization, chat template, licence, default parameters, system prompt, "
        "and each stored variant with its source, recipe, size and caches.",
    )
    show.add_argument("name", metavar="NAME[@VARIANT]")
    show.add_argument("--json", action="store_true", help="machine-readable output (the variants' manifests)")
    what = show.add_mutually_exclusive_group()
    for flag, text in (
        ("--template", "only the chat template"),
        ("--parameters", "only the default parameters"),
        ("--system", "only the system prompt"),
        ("--license", "only the licence"),
        ("--modelfile", "only the Modelfile (a created model's, or one that makes the same)"),
    ):
        what.add_argument(flag, dest="only", action="store_const", const=flag[2:], help=text)
    show.set_defaults(handler="aipc.cli.show:command")


def _add_cp(sub) -> None:
    cp = sub.add_parser(
        "cp",
        help="copy a model under a new name (every variant; files hard-linked)",
        description="Copy SOURCE (every stored variant, one NAME@VARIANT, a created model, or the embedded "
        "model) to DESTINATION. Files are hard-linked where the disk allows (no extra space; the store never "
        "edits a file in place) and each variant is published atomically.",
    )
    cp.add_argument("source", metavar="SOURCE")
    cp.add_argument("destination", metavar="DESTINATION")
    cp.set_defaults(handler="aipc.cli.models:cp_command")


def _add_create(sub) -> None:
    create = sub.add_parser(
        "create",
        help="create a model from a Modelfile: a base model with its own defaults, system prompt, template",
        description="Create NAME from a Modelfile (Ollama's format): FROM (a model name, NAME@VARIANT or a "
        "path), SYSTEM, PARAMETER (temperature, top_p, top_k, min_p, seed, num_predict, repeat_penalty, stop, "
        "num_ctx), TEMPLATE (a Jinja2 chat template, as Hugging Face models ship; Ollama's Go templates are "
        "refused), LICENSE, MESSAGE. No weights are copied: NAME runs its base with these settings.",
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    create.set_defaults(handler="aipc.cli.models:create_command")


def _add_rm(sub) -> None:
    rm = sub.add_parser(
        "rm",
        help="remove a stored model (every variant) or one NAME@VARIANT, with its caches",
        description="Remove stored models, each with every variant, or one NAME@VARIANT, together with the "
        "derived caches they own (OpenVINO IR converted from their GGUF, compiled blobs). The embedded model "
        "cannot be removed; `aipc rm smollm2:135m` removes its caches and any stored variants.",
    )
    rm.add_argument("names", nargs="+", metavar="NAME[@VARIANT]")
    rm.set_defaults(handler="aipc.cli.models:rm_command")


def _add_prune(sub) -> None:
    prune = sub.add_parser(
        "prune",
        help="free what nothing uses: caches of removed models, old compiled blobs",
        description="Remove derived caches nothing can use again: conversions and compiled blobs whose "
        "model is gone, and compiled blobs from before per-model cache folders. Models are never touched.",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    prune.set_defaults(handler="aipc.cli.models:prune_command")


def _add_bench(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure speed side by side: TTFT, next-token latency, tokens/s, peak RSS, roofline",
        description="Measure every variant of MODEL (default: the embedded model) on every backend that loads "
        "it, interleaved, from the same event stream. Writes a table, and JSON/CSV/PNG on request.",
    )
    bench.add_argument("models", nargs="*", metavar="MODEL")
    bench.add_argument(
        "--backends", help=f"comma-separated, of {ht.backend_names()} (default: every backend that loads a variant)"
    )
    bench.add_argument("--devices", default="cpu", help="comma-separated devices (default: cpu)")
    bench.add_argument("--precisions", help="comma-separated (e.g. int4,fp16,q4_0; default: every variant)")
    bench.add_argument("--prompt-lengths", default="32,256,512,1024", help="input tokens (default 32,256,512,1024)")
    bench.add_argument("--gen-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    bench.add_argument("--repeats", type=int, default=3, help="measured runs per configuration (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="discarded runs first (default 1)")
    bench.add_argument(
        "--speculate", default="off", help="comma-separated speculate settings to compare, e.g. off,auto (default: off)"
    )
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument("--csv", metavar="FILE", help="write the results as CSV")
    bench.add_argument("--plot", metavar="FILE.png", help="next-token latency by input length (needs matplotlib)")
    bench.set_defaults(handler="aipc.cli.bench:command")


def _add_eval(sub) -> None:
    """eval: quality measured, teacher-forced, against the fp32 reference."""
    ev = sub.add_parser(
        "eval",
        help="measure quality: perplexity on a text, KL divergence and top-1 agreement against a reference",
        description="Score MODEL (default: the embedded smollm2:135m) on a text, teacher-forced in overlapping "
        "windows: its perplexity and, against a reference model with the same tokenizer, the mean "
        "KL(reference || model) of the next-token distributions and how often both rank the same token first. "
        "The reference defaults to the model's own weights at full precision: the Hugging Face folder a stored "
        "variant was converted from (PyTorch fp32), or the GGUF file it is or was made from, dequantized to f32 "
        "(llama.cpp, made once and kept in the store); with none, perplexity alone.",
    )
    ev.add_argument("model", nargs="?", metavar="MODEL", help="a model name, NAME@VARIANT, or a model path")
    ev.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default: the shipped Jargon File excerpt)")
    ev.add_argument(
        "--reference", metavar="MODEL", help="the model to compare with, or 'none' (default: its own weights at f32)"
    )
    ev.add_argument("--reference-backend", default="auto", help="the backend that runs --reference (default: auto)")
    ev.add_argument("--max-tokens", type=int, default=4096, help="tokens scored, from the text's start (default 4096)")
    ev.add_argument("--window", type=int, default=512, help="tokens per forward pass, overlapping half (default 512)")
    ev.add_argument("--backend", default="auto", help=ht.backend_help())
    ev.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu.N (default: auto: GPU, then CPU)")
    ev.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ev.set_defaults(handler="aipc.cli.eval:command")


def _add_devices(sub) -> None:
    devices = sub.add_parser(
        "devices",
        help="list what each backend can use here: CPU, GPU, NPU",
        description="List each backend (installed or not, and how to install it) and the devices it sees "
        "here: the CPU with its AVX2/AVX-512/VNNI/AMX flags, GPUs, the NPU and its driver or its emulation.",
    )
    devices.add_argument("--json", action="store_true", help="machine-readable output")
    devices.set_defaults(handler="aipc.cli.devices:devices_command")


def _add_doctor(sub) -> None:
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


def _add_help(sub) -> None:
    h = sub.add_parser("help", help="help for aipc or one command", description="Show help for COMMAND, or for aipc.")
    h.add_argument("topic", nargs="?", metavar="COMMAND")


def _split_dashes(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`aipc run [MODEL] -- PROMPT...`: the words after `--` are the prompt, whatever they look like."""
    if "--" not in argv:
        return argv, None
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    full = list(sys.argv[1:] if argv is None else argv)
    before, after = _split_dashes(full)
    args, extra = parser.parse_known_args(before)
    if after is not None and getattr(args, "command", None) != "run":
        args, extra = parser.parse_known_args(full)
        after = None
    args.prompt_words = after
    if extra:
        # `aipc run MODEL --verbose "prompt"`: argparse stops filling a '*' positional at the first option.
        if getattr(args, "command", None) == "run" and not any(e.startswith("-") for e in extra):
            args.words += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command", None) == "help":
        return _help(parser, args.topic)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    import importlib
    import logging

    from aipc import progress
    from aipc.cli.progress import TerminalReporter
    from aipc.errors import AipcError

    # Library notes (a fallback taken, a prompt routed off the NPU) are one line each on stderr; slow steps
    # (a conversion, a download, a load) a spinner or bar on a terminal.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("aipc: %(message)s"))
    logging.getLogger("aipc").addHandler(handler)
    logging.getLogger("aipc").propagate = False
    progress.install(TerminalReporter(verbose=bool(getattr(args, "verbose", False))))
    module, func = args.handler.split(":")
    try:
        if args.command not in ("devices", "doctor"):  # those diagnose; every other command uses the store
            from aipc.store import paths

            paths.home()  # an AIPC_HOME that cannot be a store is one line before any work
        return getattr(importlib.import_module(module), func)(args)
    except AipcError as exc:
        print(f"aipc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `aipc run ... | head`: the reader left
        return 0
    except OSError as exc:  # what no check foresaw (a disk that vanished, a file changed meanwhile): one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"aipc: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    """`aipc help [COMMAND]`."""
    if topic is None:
        parser.print_help()
        return 0
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if topic not in commands:
        parser.error(f"no command {topic!r}: valid commands are {', '.join(sorted(commands))}")
    commands[topic].print_help()
    return 0


def _version() -> str:
    from aipc import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
