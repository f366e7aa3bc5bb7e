"""An optional backend capability: text embeddings (Ollama's /api/embed, OpenAI's /v1/embeddings).

A generative model's embedding, as Ollama and llama.cpp compute one for it: the mean over the text's positions of
the last hidden state (after the final norm: what the language-model head reads), scaled to unit length by the
engine. A backend that can embed gives its opened model an `embedder()` returning an `Embedder`; each runs the
runtime's own graph and weights, in a second context beside the generating one (so an embedding never touches a
chat's KV cache), opened on the first request that needs it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aipc.errors import GenerationError, UsageError

if TYPE_CHECKING:
    import numpy as np


class Embedder(Protocol):
    def embed(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 [hidden]: the mean of the last hidden state over the positions of `token_ids`."""
        ...


def unit(vector: np.ndarray) -> list[float]:
    """`vector` scaled to length 1 (a zero vector stays zero), as plain floats."""
    import numpy as np

    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(np.float32).tolist()


class OpenVINOEmbedder:
    """The IR's stateful model cut before the language-model head: its one output is the head MatMul's input
    (the normed hidden state) at every position, so no logits are computed. fp32 math, state reset per text,
    as the scorer runs it."""

    def __init__(self, ir: Path, runtime_device: str) -> None:
        import openvino as ov

        from aipc.backends.openvino_scoring import last_line

        core = ov.Core()
        full = core.read_model(str(ir / "openvino_model.xml"))
        model = ov.Model([_head_input(full)], full.get_sinks(), full.get_parameters(), "aipc-embedder")
        props = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            compiled = core.compile_model(model, runtime_device, props)
        except RuntimeError as exc:
            raise UsageError(f"OpenVINO could not compile {ir.name} for embeddings: {last_line(exc)}") from None
        self._names = {i.get_any_name() for i in compiled.inputs}
        self._hidden = compiled.outputs[0]
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def embed(self, token_ids: Sequence[int]) -> np.ndarray:
        import numpy as np

        from aipc.backends.openvino_scoring import run_stateful

        n = len(token_ids)
        with self._lock:
            run_stateful(self._request, token_ids, self._names, "embed the text")
            hidden = np.array(self._request.get_tensor(self._hidden).data, dtype=np.float32)
        return hidden.reshape(-1, hidden.shape[-1])[-n:].mean(axis=0)


def _head_input(model: Any) -> Any:
    """The output feeding the logits' MatMul (through any Convert or scaling on the way to the result)."""
    result = next((o for o in model.outputs if "logits" in o.get_names()), model.outputs[0])
    node = result.get_node()
    for _ in range(8):
        if node.get_type_name() == "MatMul":
            return node.input_value(0)
        node = node.input_value(0).get_node()
    raise UsageError("this OpenVINO model's logits do not come from a MatMul: it cannot give embeddings")


class LlamaCppEmbedder:
    """A second llama.cpp context on the same file in embedding mode: every position's normed hidden state
    (a generative model's GGUF names no pooling, and asking llama.cpp for one logs a warning), averaged here."""

    def __init__(self, path: Path, gpu_layers: int, context: int) -> None:
        import llama_cpp

        from aipc.backends.llamacpp import templates_left_alone

        size = max(512, min(context, 8192))
        try:
            with templates_left_alone():
                self._llm = llama_cpp.Llama(
                    str(path),
                    n_ctx=size,
                    n_batch=size,
                    n_ubatch=min(size, 512),  # compute buffers for 512 positions at a time, not the whole context
                    n_threads=os.cpu_count(),
                    n_gpu_layers=gpu_layers,
                    embedding=True,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"llama.cpp could not open {path.name} for embeddings: {exc}") from None
        self.limit = size
        self._lock = threading.Lock()

    def embed(self, token_ids: Sequence[int]) -> np.ndarray:
        import llama_cpp
        import numpy as np

        llm = self._llm
        with self._lock:
            llm._batch.reset()
            llm._batch.add_sequence(list(token_ids), 0, True)
            llm._ctx.kv_cache_clear()
            try:
                llm._ctx.decode(llm._batch)
            except RuntimeError as exc:
                raise GenerationError(f"llama.cpp could not embed the text: {exc}") from None
            finally:
                llm._batch.reset()
            width, n = llm.n_embd(), len(token_ids)
            pointer = llama_cpp.llama_get_embeddings(llm._ctx.ctx)
            hidden = np.ctypeslib.as_array(pointer, shape=(n * width,)).reshape(n, width)
            return hidden.astype(np.float32).mean(axis=0)

    def close(self) -> None:
        self._llm.close()


class TorchEmbedder:
    """One forward pass of the model's decoder without its head and without a KV cache: the last hidden state
    (after the final norm), averaged over positions."""

    def __init__(self, model: Any, device: str) -> None:
        self._decoder = model.get_decoder()
        self._device = device

    def embed(self, token_ids: Sequence[int]) -> np.ndarray:
        import torch

        ids = torch.tensor([list(token_ids)], device=self._device)
        with torch.inference_mode():
            out = self._decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        return out.last_hidden_state[0].float().mean(dim=0).cpu().numpy()
