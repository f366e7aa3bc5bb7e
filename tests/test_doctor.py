"""`aipc doctor` run as a user runs it, on fake machines (AIPC_SYSROOT fixture roots) and on this one."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.doctor_fixtures import (
    RAPTOR_LAKE_CPUINFO,
    WINDOWS_GPU,
    WINDOWS_NPU,
    Machine,
    meteor_lake,
)


def doctor(root, *args: str, env: dict | None = None):
    result = run_cli("doctor", *args, env={"AIPC_SYSROOT": str(root), **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def line(text: str, name: str) -> str:
    """The report line of check `name` (plus its fix line, when it has one)."""
    lines = text.splitlines()
    for i, current in enumerate(lines):
        parts = current.split(None, 1)
        if len(parts) == 2 and parts[1].startswith(name + "  "):
            more = []
            for following in lines[i + 1 :]:
                if not following.strip().startswith(("fix:", "see:")):
                    break
                more.append(following)
            return "\n".join([current, *more])
    raise AssertionError(f"no line for {name!r} in:\n{text}")


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_healthy_meteor_lake_passes_every_link(tmp_path):
    root = meteor_lake(tmp_path / "mtl").root
    result = doctor(root, "--device", "npu")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "Core Ultra Series 1 (Meteor Lake), with an NPU" in line(out, "processor")
    assert line(out, "NPU device").startswith("  ok") and "[8086:7d1d]" in line(out, "NPU device")
    assert "bound to 0000:00:0b.0" in line(out, "intel_vpu driver")
    assert "vpu_37xx_v1.bin" in line(out, "NPU firmware")
    assert "you are in group render" in line(out, "/dev/accel/accel0 access")
    assert "1.21.9" in line(out, "Level Zero loader") and "1.35.0" in line(out, "NPU Level Zero driver")
    assert "libigdrcl.so" in line(out, "OpenCL driver")
    assert "FAIL" not in out and "warn" not in out
    report = json.loads(doctor(root, "--device", "gpu", "--json").stdout)
    assert report["exit_code"] == 0 and report["device"] == "gpu"
    assert all(v["usable"] for v in report["verdicts"].values()), report["verdicts"]


def test_npu_module_not_loaded_names_the_driver_and_its_fix(tmp_path):
    m = Machine(tmp_path / "m").cpu().modules("i915").npu(driver=False, node=False).gpu()
    m.level_zero().compute_runtime().user()
    m.write("lib/modules/6.8.0-45-generic/kernel/drivers/accel/ivpu/intel_vpu.ko.zst", "ko")
    result = doctor(m.root, "--device", "npu")
    assert result.returncode == 1
    bad = line(result.stdout, "intel_vpu driver")
    assert bad.startswith("  FAIL") and "not loaded" in bad
    assert "sudo modprobe intel_vpu" in bad and "github.com/intel/linux-npu-driver" in bad
    assert "cannot work: intel_vpu driver" in result.stdout
    # Without --device the CPU path decides: exit 0, the NPU's problem is a warning.
    plain = doctor(m.root)
    assert plain.returncode == 0
    assert line(plain.stdout, "intel_vpu driver").startswith("  warn")
    assert checks(doctor(m.root, "--json"))["intel_vpu driver"]["shown"] == "warn"


def test_kernel_without_intel_vpu_says_to_change_kernel(tmp_path):
    m = Machine(tmp_path / "m").cpu(kernel="6.2.0-39-generic").modules().npu(driver=False, node=False)
    m.level_zero().user()
    result = doctor(m.root, "--device", "npu")
    assert result.returncode == 1
    assert "intel_vpu driver arrived in 6.3" in line(result.stdout, "kernel")
    assert "no intel_vpu module" in line(result.stdout, "intel_vpu driver")


def test_missing_dev_accel_is_named(tmp_path):
    m = Machine(tmp_path / "m").cpu().modules("intel_vpu").npu(node=False).gpu().level_zero().user()
    result = doctor(m.root, "--device", "npu")
    assert result.returncode == 1
    bad = line(result.stdout, "/dev/accel")
    assert bad.startswith("  FAIL") and "no /dev/accel/accel* node" in bad and "dmesg" in bad


def test_user_outside_the_render_group_cannot_open_the_npu(tmp_path):
    m = meteor_lake(tmp_path / "m").user(in_render=False)
    result = doctor(m.root, "--device", "npu")
    assert result.returncode == 1
    bad = line(result.stdout, "/dev/accel/accel0 access")
    assert bad.startswith("  FAIL") and "ada cannot open /dev/accel/accel0" in bad
    assert "-rw-rw---- " in bad and ":render" in bad
    assert "sudo usermod -a -G render ada" in bad
    # Added to the group in /etc/group but still in the old session: log out and in.
    m.user(in_render=False, listed_in_render=True)
    bad = line(doctor(m.root, "--device", "npu").stdout, "/dev/accel/accel0 access")
    assert "log out and back in" in bad and "newgrp render" in bad
    # A node nobody but root may open: the fix gives it a group.
    (m.root / "dev/accel/accel0").chmod(0o600)
    m.user()
    bad = line(doctor(m.root, "--device", "npu").stdout, "/dev/accel/accel0 access")
    assert "chmod g+rw /dev/accel/accel0" in bad


def test_missing_level_zero_fails_the_npu_only(tmp_path):
    m = Machine(tmp_path / "m").cpu().modules("intel_vpu", "i915").npu().gpu().compute_runtime().user()
    m.level_zero(loader=None, npu=None)
    npu = doctor(m.root, "--device", "npu")
    assert npu.returncode == 1
    assert "libze_loader.so.1 not found" in line(npu.stdout, "Level Zero loader")
    assert "libze_intel_npu.so.1 not found" in line(npu.stdout, "NPU Level Zero driver")
    assert "github.com/oneapi-src/level-zero" in line(npu.stdout, "Level Zero loader")
    assert doctor(m.root, "--device", "gpu").returncode == 0


def test_old_loader_cannot_find_the_renamed_npu_driver(tmp_path):
    m = Machine(tmp_path / "m").cpu().modules("intel_vpu").npu().level_zero(loader="1.16.0").user()
    result = doctor(m.root, "--device", "npu")
    assert result.returncode == 1
    assert "predates 1.17.17" in line(result.stdout, "Level Zero loader version")


def test_not_a_core_ultra_expects_no_npu(tmp_path):
    m = Machine(tmp_path / "m").cpu(RAPTOR_LAKE_CPUINFO).modules("i915").gpu().compute_runtime().user()
    plain = doctor(m.root)
    assert plain.returncode == 0
    assert "not a Core Ultra, so no NPU is expected" in line(plain.stdout, "processor")
    npu_line = line(plain.stdout, "NPU device")
    assert npu_line.startswith("  -") and "Core Ultra" in npu_line and "fix:" not in npu_line
    asked = doctor(m.root, "--device", "npu")
    assert asked.returncode == 1
    assert line(asked.stdout, "NPU device").startswith("  FAIL")
    assert "NPU  cannot work: NPU device: no Intel NPU" in asked.stdout
    assert doctor(m.root, "--device", "gpu").returncode == 0


def test_emulated_npu_works_without_one(tmp_path):
    m = Machine(tmp_path / "m").cpu(RAPTOR_LAKE_CPUINFO).modules().user()
    result = doctor(m.root, "--device", "npu", env={"AIPC_EMULATE_NPU": "1"})
    assert result.returncode == 0, result.stdout
    assert "emulated" in line(result.stdout, "OpenVINO on NPU")
    assert line(result.stdout, "NPU device").startswith("  -")  # not a Core Ultra: a note, not a warning


def test_gpu_without_compute_runtime(tmp_path):
    m = Machine(tmp_path / "m").cpu().modules("intel_vpu", "i915").npu().gpu().level_zero().user()
    result = doctor(m.root, "--device", "gpu")
    assert result.returncode == 1
    bad = line(result.stdout, "OpenCL driver")
    assert bad.startswith("  FAIL") and "intel-opencl-icd" in bad and "github.com/intel/compute-runtime" in bad
    assert line(result.stdout, "Level Zero GPU driver").startswith("  warn")
    assert "GPU  cannot work: OpenCL driver" in result.stdout
    assert doctor(m.root, "--device", "npu").returncode == 0


def test_gpu_without_kernel_driver(tmp_path):
    m = Machine(tmp_path / "m").cpu().modules().gpu(driver=None, node=False).compute_runtime().user()
    result = doctor(m.root, "--device", "gpu")
    assert result.returncode == 1
    assert "no i915 or xe driver bound" in line(result.stdout, "GPU kernel driver")


def test_server_with_another_vendors_gpu(tmp_path):
    xeon = RAPTOR_LAKE_CPUINFO.replace("13th Gen Intel(R) Core(TM) i7-13700H", "Intel(R) Xeon(R) Platinum 8480+")
    m = Machine(tmp_path / "m").cpu(xeon.replace("186", "143")).modules().user()
    m.pci("0000:02:00.0", 0x1A03, 0x2000, 0x030000, "ast")  # the management console's VGA
    m.pci("0000:17:00.0", 0x10DE, 0x2335, 0x030200, "nvidia")
    result = doctor(m.root, "--device", "gpu")
    assert result.returncode == 1
    gpu = line(result.stdout, "GPU device")
    assert "found NVIDIA [10de:2335]" in gpu and "1a03" not in gpu and "llama.cpp" in gpu
    assert line(doctor(m.root).stdout, "GPU device").startswith("  -")  # no GPU expected, none asked for


def test_this_machine(tmp_path):
    """This machine has neither NPU nor GPU: asking for the NPU fails with the reason; plain doctor passes."""
    asked = run_cli("doctor", "--device", "npu", env={"AIPC_SYSROOT": "/"})
    assert asked.returncode == 1, asked.stdout
    assert "NPU  cannot work: NPU device: no Intel NPU on the PCI bus" in asked.stdout
    assert "a tiny model compiled in" in line(asked.stdout, "OpenVINO on CPU")
    report = json.loads(run_cli("doctor", "--json", env={"AIPC_SYSROOT": "/"}).stdout)
    assert report["exit_code"] == 0 and report["verdicts"]["cpu"]["usable"]
    assert not report["verdicts"]["npu"]["usable"] and not report["verdicts"]["gpu"]["usable"]
    names = {c["name"] for c in report["checks"]}
    assert {"onnxruntime", "llamacpp", "torch", "compiled-model cache"} <= names


def test_cache_reports_size_and_empty_blobs(tmp_path):
    home = tmp_path / "home"
    cache = home / "cache" / "openvino"
    cache.mkdir(parents=True)
    (cache / "a.blob").write_bytes(b"x" * 2048)
    (cache / "b.blob").write_bytes(b"")
    m = meteor_lake(tmp_path / "m")
    result = doctor(m.root, env={"AIPC_HOME": str(home)})
    assert result.returncode == 0
    assert "2.0 KB in 2 files, writable" in line(result.stdout, "compiled-model cache")
    empty = line(result.stdout, "empty cache files")
    assert empty.startswith("  warn") and "-empty -delete" in empty


def test_windows_device_manager_view(tmp_path):
    good = Machine(tmp_path / "win").windows([WINDOWS_NPU, WINDOWS_GPU])
    result = doctor(good.root, "--device", "npu")
    assert result.returncode == 0, result.stdout
    assert "Intel(R) AI Boost [8086:7d1d], driver 32.0.100.3104" in line(result.stdout, "NPU device")
    assert "Intel(R) Arc(TM) Graphics [8086:7d55], driver 32.0.101.6129" in line(result.stdout, "GPU device")
    assert "Core Ultra Series 1 (Meteor Lake)" in line(result.stdout, "processor")
    assert json.loads(doctor(good.root, "--json").stdout)["platform"] == "windows"
    # The NPU without its driver shows as a "Multimedia Video Controller" under Other devices.
    bare = {**WINDOWS_NPU, "FriendlyName": "Multimedia Video Controller", "Class": "", "Status": "Error"}
    bare |= {"Problem": "CM_PROB_FAILED_INSTALL", "DriverVersion": None}
    bad = Machine(tmp_path / "win2").windows([bare, WINDOWS_GPU])
    result = doctor(bad.root, "--device", "npu")
    assert result.returncode == 1
    npu = line(result.stdout, "NPU device")
    assert "has no Intel driver" in npu and "intel.com/content/www/us/en/download/794734" in npu


@pytest.mark.parametrize("device", ["tpu", ""])
def test_doctor_refuses_unknown_devices(device):
    result = run_cli("doctor", "--device", device)
    assert result.returncode == 2 and "invalid choice" in result.stderr and "npu" in result.stderr
