"""PyTorch transformers on a Hugging Face checkpoint: the reference every other backend is checked against.

It is slow on purpose-free grounds (plain eager PyTorch, fp32 by default), never chosen by `auto` when a
faster backend can load the model, and loads safetensors only, without `trust_remote_code`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from time import perf_counter as _now
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from aipc.backends.base import (
    DeviceInfo,
    ModelInfo,
    TokenBytes,
    end_of_turn_ids,
    fit_to_context,
    folder_chat_template,
    markup_tokens,
    refuse_options,
    refuse_unsupported,
    stream_from_callback,
    tokenizer_json_bytes,
)
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.errors import UsageError
from aipc.store.resolve import ModelSource


class TorchBackend:
    name = "torch"
    formats = ("hf",)

    def devices(self) -> list[DeviceInfo]:
        found = [DeviceInfo("cpu", "cpu", "CPU (PyTorch)")]
        if torch.cuda.is_available():
            found.append(DeviceInfo("gpu", "cuda", f"GPU ({torch.cuda.get_device_name(0)}, CUDA)"))
        return found

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> TorchModel:
        from aipc.backends import speculate

        if speculate.parse(config.speculate).mode in ("lookup", "draft"):  # auto: plain decoding
            raise speculate.refuse(
                "the torch backend",
                config.speculate,
                "it is the reference the other backends are checked against, so it decodes one token at a time",
            )
        return TorchModel(source, config, device)


class TorchModel:
    def __init__(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> None:
        from aipc.convert.sources import check_no_remote_code

        config_json = (source.path / "config.json").read_text()
        import json

        check_no_remote_code(json.loads(config_json), source.path)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        dtype = torch.float32 if source.precision in ("", "fp32") else torch.bfloat16
        kv_type = "f32" if dtype == torch.float32 else "bf16"
        if config.kv_cache is not None and config.kv_cache != kv_type:
            raise UsageError(
                f"kv_cache {config.kv_cache} is not supported by the torch backend, which keeps the KV cache in the "
                f"model's own type ({kv_type}); use llamacpp or openvino for another"
            )
        self.token_bytes = TokenBytes(self.detokenize, lambda: tokenizer_json_bytes(source.path))
        try:
            self._tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=False)
            self._model = AutoModelForCausalLM.from_pretrained(
                source.path, dtype=dtype, trust_remote_code=False, use_safetensors=True
            ).to(device.runtime_name)
        except (OSError, ValueError) as exc:
            raise UsageError(f"transformers could not load {source.path}: {exc}") from None
        self._model.eval()
        self._device = device.runtime_name
        # The cache grows with the sequence (nothing is allocated up front), so the context is only a limit.
        trained = int(getattr(self._model.config, "max_position_embeddings", 4096) or 4096)
        self._context = config.context_length or trained
        self.vocab_size = getattr(self._model.config, "vocab_size", None)
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._stop_ids = eos_ids | end_of_turn_ids(
            self.tokenize, lambda ids: self._tok.decode(ids, skip_special_tokens=False)
        )
        self.info = ModelInfo(
            name=source.name,
            backend="torch",
            device=device.name,
            path=str(source.path),
            chat_template=folder_chat_template(source.path) or getattr(self._tok, "chat_template", None),
            bos_token=self._tok.bos_token or "",
            eos_token=self._tok.eos_token or "",
            max_prompt_tokens=self._context - 1,
            context_length=self._context,
            special_tokens=markup_tokens(str(t) for t in self._tok.added_tokens_decoder.values()),
            ref=source.ref,
        )

    def tokenize(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        refuse_unsupported(config, "torch")
        refuse_options(config, "torch", penalties=False, logit_bias=False)
        ids = [int(i) for i in prompt]
        n_prompt = len(ids)
        max_tokens = fit_to_context(n_prompt, self._context, config.max_tokens)
        kwargs: dict = {"min_new_tokens": max_tokens} if config.ignore_eos else {}
        kwargs |= {
            "max_new_tokens": max_tokens,
            "eos_token_id": sorted(self._stop_ids) or None,
            "pad_token_id": next(iter(self._stop_ids), 0),
            "repetition_penalty": config.repetition_penalty,
        }
        if config.greedy:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            kwargs |= {
                "do_sample": True,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "top_k": config.top_k or None,
                "min_p": config.min_p or None,
            }
        input_ids = torch.tensor([ids], device=self._device)

        def run(on_text) -> Finished:
            streamer = _TextStreamer(self._tok, self._stop_ids, on_text)
            if config.seed is not None:
                torch.manual_seed(config.seed)
            with torch.inference_mode():
                out = self._model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    **kwargs,
                )
            streamer.flush()
            new = out[0, n_prompt:].tolist()
            if cancel.is_set():
                reason = "cancelled"
            elif new and new[-1] in self._stop_ids:
                reason = "stop"
            else:
                reason = "length" if len(new) >= max_tokens else "stop"
            return Finished(reason, n_prompt, len(new), _now(), tuple(new))

        return stream_from_callback(run, cancel)

    def scorer(self) -> TorchScorer:
        """Teacher-forced next-token log-probs from one forward pass (see `aipc.backends.scoring`)."""
        return TorchScorer(self._model, self._device)

    def embedder(self) -> Any:
        """Text embeddings (see `aipc.backends.embedding`): the last hidden state, averaged."""
        from aipc.backends.embedding import TorchEmbedder

        return TorchEmbedder(self._model, self._device)

    def close(self) -> None:
        self._model = None


class TorchScorer:
    """One forward pass over the whole sequence, no KV cache: the reference's own logits for every position."""

    def __init__(self, model, device: str) -> None:
        self._model = model
        self._device = device

    def next_token_logprobs(self, token_ids) -> np.ndarray:
        from aipc.backends.scoring import check_ids

        ids = torch.tensor([check_ids(token_ids)], device=self._device)
        with torch.inference_mode():
            logits = self._model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()


class _Cancelled(StoppingCriteria):
    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool)


class _TextStreamer(BaseStreamer):
    """Incremental detokenization: decode everything generated so far, emit what is new and complete."""

    def __init__(self, tokenizer, stop_ids: set[int], on_text) -> None:
        self.tok = tokenizer
        self.stop_ids = stop_ids
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids:
                continue
            self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # an incomplete UTF-8 sequence: wait for the next token
        if len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)

    def end(self) -> None:
        pass

    def flush(self) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)
