"""Shared fixtures: one model store per test session, and the embedded model opened once per device.

The store lives in a temporary folder (set AIPC_TEST_HOME to keep one between runs). Models are real: the
embedded SmolLM2-135M-Instruct GGUF, converted to OpenVINO IR once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

PARIS_QUESTION = "What is the capital of France?"


def pytest_configure(config: pytest.Config) -> None:
    home = os.environ.get("AIPC_TEST_HOME") or tempfile.mkdtemp(prefix="aipc-test-home-")
    os.environ["AIPC_HOME"] = home
    os.environ.pop("AIPC_EMULATE_NPU", None)
    # The hub is unreachable here; point it at a closed loopback port so hub look-ups fail fast, not by timeout.
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"


@pytest.fixture(scope="session")
def model():
    import aipc

    with aipc.load(device="cpu") as m:
        yield m


@pytest.fixture(scope="session")
def npu_model():
    import aipc

    os.environ["AIPC_EMULATE_NPU"] = "1"
    try:
        with aipc.load(device="npu") as m:
            yield m
    finally:
        os.environ.pop("AIPC_EMULATE_NPU", None)


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 180):
    """`aipc ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "aipc", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input if input is not None else "",
        timeout=timeout,
    )
