"""Choosing again when the first choice fails: a load that fails, a prompt over the NPU pipeline's limit."""

from __future__ import annotations

import logging

import pytest

import aipc
import aipc.errors
from aipc.convert.api import convert
from tests.conftest import PARIS_QUESTION


@pytest.mark.npu
def test_prompt_over_the_npu_limit_is_answered_on_the_next_device(monkeypatch, caplog):
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    with aipc.load(device="npu,cpu", npu_max_prompt_len=64) as model:
        assert model.info.device == "npu (emulated)"
        *_, short = model.stream(PARIS_QUESTION, temperature=0)
        assert short.device == "npu (emulated)"
        with caplog.at_level(logging.WARNING, logger="aipc"):
            *_, long = model.stream("Summarize: " + "the cat sat on the mat. " * 40, temperature=0, max_tokens=8)
        assert long.device == "cpu" and long.usage.prompt_tokens > 64
        [note] = [r.getMessage() for r in caplog.records if "NPU pipeline" in r.getMessage()]
        assert f"the prompt has {long.usage.prompt_tokens} tokens, over the NPU pipeline's 64" in note
        assert "answering on openvino/cpu" in note


@pytest.mark.npu
def test_without_another_device_the_npu_limit_is_an_error(monkeypatch):
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    with aipc.load(device="npu", npu_max_prompt_len=64) as model, pytest.raises(aipc.errors.ContextLengthError):
        model.generate("the cat sat on the mat. " * 40)


def test_a_variant_that_fails_to_load_falls_back_to_the_next(phi3_fixtures, caplog):
    broken = convert(str(phi3_fixtures["tiny"]), "openvino", "int4", name="fallback")
    convert(str(phi3_fixtures["tiny"]), "onnx", "fp32", name="fallback")
    (broken.path / "openvino_model.bin").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="aipc"), aipc.load("fallback", device="cpu") as model:
        assert model.info.backend == "onnxruntime"
        assert model.generate("Paris is", raw=True, max_tokens=4, temperature=0) is not None
    [note] = [r.getMessage() for r in caplog.records if "could not load" in r.getMessage()]
    assert note.startswith("could not load on openvino/cpu") and note.endswith("trying the next choice")
    assert "\n" not in note
