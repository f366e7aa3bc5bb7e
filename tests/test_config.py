import math

import pytest

from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.errors import InvalidConfigError, UsageError


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens must be an integer from 1 to 2147483647"),
        ({"max_tokens": -5}, "max_tokens must be an integer from 1"),
        ({"max_tokens": 10**20}, "max_tokens must be an integer from 1 to 2147483647, got 100000000000000000000"),
        ({"max_tokens": 2.5}, "max_tokens must be an integer from 1"),
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"temperature": math.nan}, "temperature must be a finite number >= 0"),
        ({"temperature": math.inf}, "temperature must be a finite number >= 0 (0 is greedy), got inf"),
        ({"top_p": 0}, "top_p must be a number in (0, 1]"),
        ({"top_p": 1.01}, "top_p must be a number in (0, 1]"),
        ({"top_k": -1}, "top_k must be an integer from 0 to 2147483647"),
        ({"top_k": 10**20}, "top_k must be an integer from 0 to 2147483647"),
        ({"seed": -1}, "seed must be an integer from 0 to 9223372036854775807"),
        ({"seed": 2**64}, "seed must be an integer from 0 to 9223372036854775807"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": math.inf}, "repetition_penalty must be a finite number > 0"),
        ({"stop": [""]}, "stop strings must be non-empty"),
    ],
)
def test_generation_config_rejects_out_of_range(options, fragment):
    with pytest.raises(InvalidConfigError) as info:
        GenerationConfig(**options)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_generation_config_accepts_edges_and_updates():
    cfg = GenerationConfig(temperature=0, top_p=1.0, top_k=0, max_tokens=1, stop="###")
    assert cfg.greedy and cfg.stop == ("###",)
    assert cfg.updated(temperature=None).temperature == 0  # None keeps the current value
    assert cfg.updated(temperature=0.5).temperature == 0.5


def test_a_top_p_too_small_for_a_32_bit_float_keeps_the_top_token_as_it_means():
    assert GenerationConfig(top_p=1e-300).top_p == 1e-6  # the runtimes' float32 would make it 0, which they refuse
    assert GenerationConfig(top_p=0.5).top_p == 0.5


def test_context_length_is_bounded():
    with pytest.raises(InvalidConfigError, match="context_length must be an integer from 16 to 2147483647"):
        LoadConfig(context_length=99999999999999999999)


def test_an_asked_context_is_honoured_unless_its_kv_cache_could_never_fit(caplog):
    from aipc.engine.context import KVShape, ModelDims, check_asked

    dims = ModelDims(8192, KVShape(layers=30, kv_heads=3, head_dim=64))
    check_asked(8192, dims, "f16", total_bytes=2**30)
    with caplog.at_level("WARNING", logger="aipc"):
        check_asked(8193, dims, "f16", name="smollm", total_bytes=2**40)  # past the trained context: said
    assert "over smollm's trained context of 8192 tokens" in caplog.text
    with pytest.raises(InvalidConfigError, match=r"context length 8192 needs 0\.2 GiB of f16 KV cache.*0\.1 GiB"):
        check_asked(8192, dims, "f16", total_bytes=2**27)
    check_asked(10**6, ModelDims(None, None), "f16")  # nothing known: nothing to refuse


def test_unknown_generation_option_names_the_valid_ones():
    with pytest.raises(InvalidConfigError, match="unknown generation option.*temprature.*valid options are"):
        GenerationConfig().updated(temprature=0.3)


def test_load_config_devices():
    assert LoadConfig(device="GPU.1").device == "gpu.1"
    with pytest.raises(InvalidConfigError, match="unknown device 'tpu': valid devices are auto, cpu, gpu, npu"):
        LoadConfig(device="tpu")
    with pytest.raises(InvalidConfigError, match="npu_max_prompt_len"):
        LoadConfig(npu_max_prompt_len=0)
