"""What each target format accepts, and the weight-compression recipe for a given model.

Everything here is decided before any tool runs, from `config.json` alone, so an impossible request fails in
a second with the valid choices, never half an hour into an export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aipc.errors import UsageError

PRECISIONS = {
    "openvino": ("int4", "int8", "fp16"),
    "onnx": ("int4", "int8", "fp16", "fp32"),
    "gguf": ("f16", "q8_0", "q4_0", "q4_k_m"),
}
DEVICE_TARGETS = {
    "openvino": ("cpu", "gpu", "npu"),
    "onnx": ("cpu", "cuda", "dml"),
    "gguf": ("cpu", "gpu"),
}
DEFAULT_PRECISION = {"openvino": "int4", "onnx": "int4", "gguf": "q4_k_m"}
# The seed's OpenVINO recipe: symmetric int4, group size 128, 60% of layers in int4 (the rest int8).
SEED_INT4 = {"sym": True, "group_size": 128, "ratio": 0.6}
NPU_CHANNELWISE_ABOVE = 1_000_000_000  # parameters; OpenVINO's NPU guidance for int4


@dataclass(frozen=True)
class Recipe:
    to: str
    precision: str
    device_target: str
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def check_request(to: str, precision: str | None, device_target: str) -> tuple[str, str]:
    if to not in PRECISIONS:
        raise UsageError(f"unknown target format {to!r}: valid formats are {', '.join(PRECISIONS)}")
    precision = (precision or DEFAULT_PRECISION[to]).lower()
    if precision not in PRECISIONS[to]:
        raise UsageError(f"precision {precision!r} is not available for {to}: valid are {', '.join(PRECISIONS[to])}")
    if device_target not in DEVICE_TARGETS[to]:
        raise UsageError(
            f"device target {device_target!r} is not available for {to}: valid are {', '.join(DEVICE_TARGETS[to])}"
        )
    return precision, device_target


def linear_input_dims(config: dict[str, Any]) -> list[int]:
    """The input widths of the transformer's linear layers: group sizes must divide each of them."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    dims = [hidden, heads * head_dim, int(config["intermediate_size"])]
    return sorted(set(dims))


def parameter_count(config: dict[str, Any]) -> int:
    """An estimate from the config (embeddings, attention, MLP), good enough for recipes and disk checks."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    attn = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden
    mlp = 3 * hidden * inter
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attn + mlp) + embed


def fitting_group_size(wanted: int, dims: list[int]) -> int:
    """The largest power-of-two group size <= `wanted` that divides every dim; -1 (per channel) if none does."""
    size = wanted
    while size >= 16:
        if all(d % size == 0 for d in dims):
            return size
        size //= 2
    return -1


def openvino_recipe(precision: str, device_target: str, config: dict[str, Any]) -> Recipe:
    notes: list[str] = []
    if precision != "int4":
        return Recipe("openvino", precision, device_target, {"weight_format": precision})
    if device_target == "npu":
        params = parameter_count(config)
        if params > NPU_CHANNELWISE_ABOVE:
            options = {"sym": True, "group_size": -1, "ratio": 1.0}
            notes.append(f"NPU recipe: symmetric int4, channel-wise ({params / 1e9:.1f}B parameters > 1B)")
        else:
            options = {"sym": True, "group_size": 128, "ratio": 1.0}
            notes.append(f"NPU recipe: symmetric int4, group size 128 ({params / 1e6:.0f}M parameters <= 1B)")
    else:
        options = dict(SEED_INT4)
    wanted = options["group_size"]
    if wanted > 0:
        dims = linear_input_dims(config)
        fitted = fitting_group_size(wanted, dims)
        if fitted != wanted:
            options["group_size"] = fitted
            shown = "channel-wise" if fitted == -1 else str(fitted)
            notes.append(
                f"group size {wanted} does not divide the layer widths {dims}; used {shown}, the nearest that fits"
            )
    return Recipe("openvino", "int4", device_target, {"weight_format": "int4", **options}, tuple(notes))


def onnx_recipe(precision: str, device_target: str, config: dict[str, Any]) -> Recipe:
    options: dict[str, Any] = {"precision": precision, "execution_provider": device_target}
    notes: list[str] = []
    if precision in ("int4", "int8"):
        dims = linear_input_dims(config)
        block = fitting_group_size(32, dims)
        if block != 32:
            notes.append(f"block size 32 does not divide {dims}; used {block}")
        options["block_size"] = max(block, 16)
    return Recipe("onnx", precision, device_target, options, tuple(notes))


def gguf_recipe(precision: str, device_target: str, config: dict[str, Any]) -> Recipe:
    notes: list[str] = []
    dims = linear_input_dims(config) if config else []  # GGUF -> GGUF: llama.cpp reads the shapes itself
    block = 256 if precision == "q4_k_m" else 32
    if any(d % block for d in dims):
        notes.append(f"{precision} needs widths divisible by {block}; llama.cpp falls back per tensor for {dims}")
    return Recipe("gguf", precision, device_target, {"outtype": precision}, tuple(notes))


def recipe_for(to: str, precision: str | None, device_target: str, config: dict[str, Any]) -> Recipe:
    precision, device_target = check_request(to, precision, device_target)
    make = {"openvino": openvino_recipe, "onnx": onnx_recipe, "gguf": gguf_recipe}[to]
    return make(precision, device_target, config)
