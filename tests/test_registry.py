import pytest

from aipc.backends import registry
from aipc.engine.config import LoadConfig
from aipc.errors import BackendUnavailableError, DeviceNotAvailableError
from aipc.store.resolve import resolve


def test_only_known_backends():
    assert registry.names() == ["openvino", "onnxruntime", "llamacpp", "torch"]
    with pytest.raises(BackendUnavailableError, match="unknown backend 'mlc': valid backends are auto, openvino, onnx"):
        registry.get("mlc")


def test_auto_picks_a_present_device_and_never_the_emulated_npu(monkeypatch):
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    backend, device = registry.choose(resolve(None), LoadConfig())
    assert backend.name == "openvino"
    assert not device.emulated
    names = [d.name for d in backend.devices()]
    assert "cpu" in names and "npu" in names


def test_absent_device_lists_present_ones(monkeypatch):
    monkeypatch.delenv("AIPC_EMULATE_NPU", raising=False)
    with pytest.raises(DeviceNotAvailableError, match=r"device 'npu' is not available to openvino \(present: cpu\)"):
        registry.choose(resolve(None), LoadConfig(device="npu"))
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    _, device = registry.choose(resolve(None), LoadConfig(device="npu"))
    assert device.emulated and device.runtime_name == "NPU"
