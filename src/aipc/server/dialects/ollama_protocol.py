"""Ollama's request bodies (its `api/types.go`), validated, and the small values its responses carry.

As Ollama's server does, fields it does not know are ignored (clients send newer fields to older servers);
fields it knows are type-checked strictly (no "0.5" for 0.5), and a failure is a 400 naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aipc.server.dialects.openai_protocol import parse
from aipc.server.errors import APIError


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Options(BaseModel):
    """`options`: the sampling options aipc honours, those it refuses unless neutral, and runner tuning that
    it accepts and ignores (it has no meaning for aipc's runtimes)."""

    model_config = ConfigDict(extra="allow", strict=True)

    @field_validator("num_predict", "top_k", "seed", "num_ctx", "mirostat", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        """As Ollama reads its integer options from JSON numbers: 10.0 (as JavaScript clients send it) is 10, a
        fraction is cut off, and a number past 64 bits is the largest."""
        if isinstance(value, float) and math.isfinite(value):
            return max(-(2**63), min(int(value), 2**63 - 1))
        return value

    @field_validator("top_p", mode="after")
    @classmethod
    def _top_p(cls, value: float | None) -> float | None:
        """As Ollama's sampler takes it from a slider: 0 keeps the top token, past 1 keeps every token."""
        if value is None or not math.isfinite(value):
            return value
        return min(max(value, 1e-6), 1.0)

    @field_validator("presence_penalty", "frequency_penalty", mode="after")
    @classmethod
    def _penalty(cls, value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else min(max(value, -2.0), 2.0)

    @field_validator("num_ctx", mode="after")
    @classmethod
    def _num_ctx(cls, value: int | None) -> int | None:
        return value if value is None or value > 0 else None  # 0 or less: the model's own context

    @field_validator("top_k", mode="after")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        return 0 if value is not None and value < 0 else value  # as Ollama's sampler: <= 0 turns top-k off

    num_predict: int | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = None
    top_k: int | None = Field(default=None, le=2**31 - 1)
    seed: int | None = Field(default=None, le=2**63 - 1)
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(default=None, gt=0)
    num_ctx: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    # Sampling aipc cannot do: refused unless set to the value that turns them off.
    mirostat: int | None = None
    tfs_z: float | None = None
    typical_p: float | None = None


# Options that tune Ollama's runner (threads, GPU layers, memory mapping...): accepted, without effect here.
RUNNER_OPTIONS = frozenset(
    {
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
        "num_keep",
        "repeat_last_n",
        "penalize_newline",
        "use_numa",
        "mirostat_eta",  # only used by mirostat, which is refused unless off
        "mirostat_tau",
    }
)
# name -> the value that means "off"
NEUTRAL = {
    "mirostat": 0,
    "tfs_z": 1.0,
    "typical_p": 1.0,
}


class Message(_Body):
    role: str
    content: str | None = None
    images: list[Any] | None = None
    tool_calls: list[Any] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _Generating(_Body):
    model: str | None = None
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: float | int | str | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Generating):
    messages: list[Message] | None = None
    tools: list[Any] | None = None


class GenerateRequest(_Generating):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[Any] | None = None


class EmbedRequest(_Body):
    model: str | None = None
    input: str | list[str] | None = None
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: Options | None = None
    keep_alive: float | int | str | None = None


class EmbeddingsRequest(_Body):  # the older route: one prompt, one "embedding"
    model: str | None = None
    prompt: str | None = None
    options: Options | None = None
    keep_alive: float | int | str | None = None


class _Named(_Body):
    model: str | None = None
    name: str | None = None  # the older field name, still sent by some clients

    @property
    def model_name(self) -> str:
        value = self.model or self.name
        if not value:
            raise APIError(400, "model is required", param="model")
        return value


class ShowRequest(_Named):
    verbose: bool = False


class PullRequest(_Named):
    stream: bool = True
    insecure: bool = False


class DeleteRequest(_Named):
    pass


class CreateRequest(_Named):
    from_: str | None = Field(default=None, alias="from")
    stream: bool = True
    system: str | None = None
    template: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    modelfile: str | None = None  # older clients send a whole Modelfile
    files: dict[str, Any] | None = None  # file name -> blob digest (one GGUF file)
    # What aipc does not take: LoRA adapters, quantizing on creation.
    adapters: dict[str, Any] | None = None
    quantize: str | None = None
    quantization: str | None = None


class CopyRequest(_Body):
    source: str
    destination: str


def timestamp(when: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes times ("2024-06-01T12:00:00.123456Z")."""
    moment = dt.datetime.now(dt.timezone.utc) if when is None else dt.datetime.fromtimestamp(when, dt.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


__all__ = [
    "ChatRequest",
    "CopyRequest",
    "CreateRequest",
    "DeleteRequest",
    "GenerateRequest",
    "PullRequest",
    "ShowRequest",
    "parse",
]
