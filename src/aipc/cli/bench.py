"""`aipc bench`: every configuration of the given models side by side, from the same event stream."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aipc import progress
from aipc.cli.progress import messages_into
from aipc.errors import UsageError


def configurations(
    models: list[str],
    backends: list[str] | None,
    devices: list[str],
    precisions: list[str] | None,
    speculate: list[str] | None = None,
) -> list:
    """Every (model variant, backend, device, speculate setting) the filters allow and a backend can load."""
    from aipc.backends import registry
    from aipc.bench.runner import Config
    from aipc.engine.config import LoadConfig
    from aipc.store.resolve import resolve_all

    wanted = backends or registry.names()
    for name in wanted:
        if name not in registry.BACKENDS:
            raise UsageError(f"unknown backend {name!r}: valid backends are {', '.join(registry.names())}")
    settings = speculate or ["off"]
    for setting in settings:
        LoadConfig(speculate=setting)  # a bad setting fails before anything loads
    configs = []
    for model in models:
        for source in resolve_all(model):
            label = source.precision or source.format
            if precisions and label not in precisions:
                continue
            # Each configuration names its own source (`smollm2:135m@embedded`, `...@gguf-q8_0`): a bare model
            # name would let the worker load whichever variant ranks first, and measure it under this label.
            ref = source.ref if source.variant else str(source.path)
            for backend in wanted:
                if source.format not in registry.BACKENDS[backend][3]:
                    continue
                for device in devices:
                    for setting in settings:
                        name = f"{source.name} {backend} {label} {device}"
                        if len(settings) > 1 or setting != "off":
                            name += f" speculate={setting}"
                        configs.append(Config(ref, backend, device, name, {"speculate": setting}))
    if not configs:
        raise UsageError("nothing to measure: no backend among the filters loads these models' variants")
    return configs


def command(args: argparse.Namespace) -> int:
    from aipc.bench import record, report, runner

    lengths = _ints(args.prompt_lengths, "--prompt-lengths")
    configs = configurations(
        args.models or [None],
        _list(args.backends),
        _list(args.devices) or ["cpu"],
        _list(args.precisions),
        _list(args.speculate),
    )
    with progress.step("benchmarking") as step:
        result = runner.run(
            configs,
            lengths,
            gen_tokens=args.gen_tokens,
            repeats=args.repeats,
            warmup=args.warmup,
            progress=messages_into(step),
        )
    print(report.table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote the results as JSON to {Path(args.json).resolve()}")
    if args.csv:
        report.write_csv(result, Path(args.csv))
        print(f"wrote the results as CSV to {Path(args.csv).resolve()}")
    if args.plot:
        report.plot(result, Path(args.plot))
        print(f"wrote the chart (next-token latency by input length) to {Path(args.plot).resolve()}")
    fastest = record.remember_fastest(result)
    for key, best in fastest.items():
        print(f"fastest for {key}: {best['config']} ({best['tokens_per_s']:.1f} tokens/s); auto will choose it")
    return 0


def _list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _ints(value: str, flag: str) -> list[int]:
    try:
        numbers = [int(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated token counts such as 32,256,512,1024, got {value!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise UsageError(f"{flag} values must be positive token counts, got {value!r}")
    return numbers
