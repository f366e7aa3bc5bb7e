"""Every command's help, walked: each has a description, the names it lists come from the code, and no help
imports a runtime."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from aipc.backends import registry
from aipc.cli.main import build_parser
from aipc.convert.recipes import PRECISIONS
from aipc.engine.config import GenerationConfig
from aipc.store import catalog
from tests.conftest import run_cli


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name != "ls"}


def test_every_command_has_a_description_and_help_for_each_option():
    commands = _commands()
    assert {"run", "serve", "pull", "convert", "list", "show", "cp", "create", "rm", "prune", "help"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 20, f"{name} has no description"
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_each_commands_help_in_a_subprocess_is_quick_and_imports_no_runtime(command):
    code = (
        "import sys\nfrom aipc.cli.main import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('openvino', 'openvino_genai', 'onnxruntime_genai', 'llama_cpp', 'torch', 'jinja2',"
        " 'numpy', 'transformers') if m in sys.modules]\nprint('HEAVY', heavy, 'EXIT', code)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY [] EXIT 0" in out.stdout, out.stdout + out.stderr
    assert f"usage: aipc {command}" in out.stdout


def test_run_help_is_generated_from_the_code():
    text = run_cli("run", "--help").stdout
    flat = " ".join(text.split())
    for backend in registry.names():
        assert backend in flat
    for entry in catalog.CATALOG.values():
        assert entry.name in text and all(alias in text for alias in entry.aliases)
    assert "ONNX Runtime GenAI folder" in flat and "Hugging Face folder" in flat
    assert f"else {GenerationConfig().temperature})" in flat  # the default temperature, from GenerationConfig
    assert "smollm2:135m: temperature" in flat  # each model's own defaults, from the catalog
    assert "Piped text comes first" in flat and "-- phi3" in flat


def test_pull_and_convert_help_list_the_catalog_and_precisions():
    pull = run_cli("pull", "--help").stdout
    for entry in catalog.CATALOG.values():
        assert entry.name in pull
    assert "--from FOLDER" in pull
    convert = " ".join(run_cli("convert", "--help").stdout.split())
    for to, precisions in PRECISIONS.items():
        assert to in convert and all(p in convert for p in precisions)


def test_aipc_help_command_matches_command_help():
    assert run_cli("help", "show").stdout == run_cli("show", "--help").stdout
    assert "COMMAND" in run_cli("help").stdout
    bad = run_cli("help", "nosuch")
    assert bad.returncode == 2 and "no command 'nosuch'" in bad.stderr
