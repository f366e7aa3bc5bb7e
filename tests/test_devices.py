import json

from tests.conftest import run_cli


def test_devices_lists_every_backend_with_cpu_flags():
    result = run_cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["cpu"]["cores"] >= 1 and "avx2" in info["cpu"]["flags"]
    assert set(info["backends"]) == {"openvino", "onnxruntime", "llamacpp", "torch"}
    for name, backend in info["backends"].items():
        assert backend["installed"], name
        assert "cpu" in [d["name"] for d in backend["devices"]]
    assert info["npu"] == {"present": False, "emulated": False}


def test_devices_reports_the_emulated_npu():
    info = json.loads(run_cli("devices", "--json", env={"AIPC_EMULATE_NPU": "1"}).stdout)
    assert info["npu"]["present"] and info["npu"]["emulated"]
    npu = [d for d in info["backends"]["openvino"]["devices"] if d["name"] == "npu"]
    assert npu and npu[0]["emulated"]
    text = run_cli("devices", env={"AIPC_EMULATE_NPU": "1"}).stdout
    assert "NPU  emulated on the CPU" in text
