import math

import pytest

from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.errors import InvalidConfigError, UsageError


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens must be an integer >= 1"),
        ({"max_tokens": -5}, "max_tokens must be an integer >= 1"),
        ({"max_tokens": 2.5}, "max_tokens must be an integer >= 1"),
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"temperature": math.nan}, "temperature must be a finite number >= 0"),
        ({"temperature": math.inf}, "temperature must be a finite number >= 0 (0 is greedy), got inf"),
        ({"top_p": 0}, "top_p must be a number in (0, 1]"),
        ({"top_p": 1.01}, "top_p must be a number in (0, 1]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
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


def test_unknown_generation_option_names_the_valid_ones():
    with pytest.raises(InvalidConfigError, match="unknown generation option.*temprature.*valid options are"):
        GenerationConfig().updated(temprature=0.3)


def test_load_config_devices():
    assert LoadConfig(device="GPU.1").device == "gpu.1"
    with pytest.raises(InvalidConfigError, match="unknown device 'tpu': valid devices are auto, cpu, gpu, npu"):
        LoadConfig(device="tpu")
    with pytest.raises(InvalidConfigError, match="npu_max_prompt_len"):
        LoadConfig(npu_max_prompt_len=0)
