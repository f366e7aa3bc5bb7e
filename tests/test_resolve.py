import json

import numpy as np
import pytest

from aipc.errors import ModelNotFoundError, UsageError
from aipc.store import catalog, hub
from aipc.store.resolve import looks_like_model, resolve
from aipc.store.store import slug


def test_default_is_the_embedded_model():
    source = resolve(None)
    assert source.name == catalog.DEFAULT_MODEL == "smollm2:135m"
    assert source.format == "gguf" and source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.path.read_bytes()[:4] == b"GGUF"
    assert source.defaults["temperature"] == 0.2


def test_catalog_has_the_phi3_family():
    for name, hub_id in [
        ("phi3:mini", "microsoft/Phi-3-mini-4k-instruct"),
        ("phi3:mini-128k", "microsoft/Phi-3-mini-128k-instruct"),
        ("phi3.5:mini", "microsoft/Phi-3.5-mini-instruct"),
        ("phi4:mini", "microsoft/Phi-4-mini-instruct"),
    ]:
        assert catalog.CATALOG[name].hub_id == hub_id


def test_hub_model_unreachable_says_what_to_do():
    assert not hub.reachable(timeout=2)  # conftest points HF_ENDPOINT at a closed loopback port
    with pytest.raises(ModelNotFoundError) as info:
        resolve("phi4:mini")
    message = str(info.value)
    assert "'phi4:mini' is not in the store" in message and "cannot be reached" in message
    assert "hf download OpenVINO/Phi-4-mini-instruct-int4-ov" in message
    assert "aipc pull phi4:mini --from Phi-4-mini-instruct-int4-ov" in message and "\n" not in message


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelNotFoundError, match="unknown model 'llama9:70b': valid names are smollm2:135m"):
        resolve("llama9:70b")


def test_paths(tmp_path):
    gguf = resolve(None).path
    assert resolve(str(gguf)).format == "gguf"
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "openvino_model.xml").write_text("<net/>")
    assert resolve(str(tmp_path / "ir")).format == "openvino-ir"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="Hugging Face checkpoint without safetensors"):
        resolve(str(tmp_path / "hf"))
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="hidden_size is missing"):  # checked before any reader opens it
        resolve(str(tmp_path / "hf"))
    dims = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96}
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**dims, "vocab_size": 100}))
    with pytest.raises(UsageError, match="model.safetensors is not a valid safetensors file"):
        resolve(str(tmp_path / "hf"))
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(4, dtype=np.float32)}, str(tmp_path / "hf" / "model.safetensors"))
    assert resolve(str(tmp_path / "hf")).format == "hf"
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UsageError, match="unsupported model file weights.bin"):
        resolve(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        resolve(str(tmp_path / "absent.gguf"))


def test_model_or_prompt():
    assert looks_like_model("smollm2:135m") and looks_like_model("phi9:tiny") and looks_like_model("./m.gguf")
    assert not looks_like_model("What is the capital of France?")
    assert not looks_like_model("hello")
    assert not looks_like_model("Summarise:")  # a colon with nothing after it is prose, not a tag


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".", "/abs", "a\\b", "", "a:b:c", "x..y"])
def test_store_names_cannot_escape(bad):
    with pytest.raises(UsageError, match="invalid model name"):
        slug(bad)
    assert slug("phi3:mini") == "phi3--mini"
