"""Whole sequences through an OpenVINO IR's stateful model compiled directly (not `LLMPipeline`): the scorer's
teacher-forced log-probs (`aipc eval`, log-probs) and, through `run_stateful`, the embedder's hidden states
(`aipc.backends.embedding`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aipc.errors import GenerationError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from aipc.backends.base import DeviceInfo


class OpenVINOScorer:
    """The IR's stateful model run directly (`Core.compile_model`), which returns every position's logits, where
    `LLMPipeline` slices them to the last one. Its KV-cache state is reset before each sequence. Math is fp32
    (INFERENCE_PRECISION_HINT): the CPU plugin otherwise computes in bf16 where the CPU has it, which would add
    its own rounding to what the weights' precision costs."""

    def __init__(self, ir: Path, device: DeviceInfo) -> None:
        import openvino as ov

        props = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if device.name == "cpu":
            props["KV_CACHE_PRECISION"] = "f32"
        try:
            compiled = ov.Core().compile_model(str(ir / "openvino_model.xml"), device.runtime_name, props)
        except RuntimeError as exc:
            raise UsageError(f"OpenVINO could not compile {ir.name} for scoring: {last_line(exc)}") from None
        self._names = {i.get_any_name() for i in compiled.inputs}
        self._request = compiled.create_infer_request()

    def next_token_logprobs(self, token_ids) -> np.ndarray:
        from aipc.backends.scoring import check_ids, log_softmax

        ids = check_ids(token_ids)
        n = len(ids)
        run_stateful(self._request, ids, self._names, "score the sequence")
        logits = self._request.get_tensor("logits").data
        if logits.shape[1] != n:
            raise GenerationError(f"OpenVINO returned logits for {logits.shape[1]} of {n} positions")
        return log_softmax(logits[0])


def run_stateful(request, ids: Sequence[int], names: set[str], doing: str) -> None:
    """One sequence through a stateful IR's infer request, from an empty KV-cache state (the scorer's and the
    embedder's pass: every position at once)."""
    import numpy as np

    array = np.asarray([list(ids)], dtype=np.int64)
    inputs = {
        "input_ids": array,
        "attention_mask": np.ones_like(array),
        "position_ids": np.arange(array.shape[1], dtype=np.int64)[None, :],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }
    request.reset_state()
    try:
        request.infer({k: v for k, v in inputs.items() if k in names})
    except RuntimeError as exc:
        raise GenerationError(f"OpenVINO could not {doing}: {last_line(exc)}") from None


def last_line(exc: BaseException) -> str:
    """The last line of a runtime's (often many-line) error message."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
