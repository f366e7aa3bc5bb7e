"""`aipc devices` (what each backend can use here) and `aipc doctor` (what is missing for each path, and how
to fix it)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

from aipc.backends import registry
from aipc.errors import BackendUnavailableError

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> dict:
    """The CPU's model and the vector/matrix extensions that decide which kernels runtimes can use."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def survey() -> dict:
    """Every backend: installed or not (and how to install it), and the devices it sees."""
    backends = {}
    for name in registry.names():
        try:
            backend = registry.get(name)
        except BackendUnavailableError as exc:
            backends[name] = {"installed": False, "reason": str(exc), "devices": []}
            continue
        backends[name] = {
            "installed": True,
            "formats": list(backend.formats),
            "devices": [asdict(d) for d in backend.devices()],
        }
    npu = _npu_details()
    return {"cpu": cpu_description(), "npu": npu, "os": platform.platform(), "backends": backends}


def _npu_details() -> dict:
    """The Intel NPU as OpenVINO sees it: present, its driver, or emulated on the CPU."""
    from aipc.backends.openvino import npu_emulation_enabled

    try:
        import openvino as ov

        core = ov.Core()
        if "NPU" in core.available_devices:
            details = {"present": True, "emulated": False}
            for prop in ("FULL_DEVICE_NAME", "NPU_DRIVER_VERSION", "DEVICE_ARCHITECTURE"):
                try:
                    details[prop.lower()] = str(core.get_property("NPU", prop))
                except RuntimeError:
                    continue
            return details
    except ImportError:
        return {"present": False, "emulated": False, "reason": "openvino is not installed"}
    if npu_emulation_enabled():
        return {"present": True, "emulated": True, "note": "NPU pipeline compiled for the CPU (NPUW_DEVICES=CPU)"}
    return {"present": False, "emulated": False}


def devices_command(args: argparse.Namespace) -> int:
    info = survey()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cpu = info["cpu"]
    print(f"CPU  {cpu['model']}, {cpu['cores']} cores; {', '.join(cpu['flags']) or 'no AVX2'}")
    npu = info["npu"]
    if npu["present"]:
        what = "emulated on the CPU" if npu["emulated"] else npu.get("full_device_name", "Intel NPU")
        driver = f", driver {npu['npu_driver_version']}" if npu.get("npu_driver_version") else ""
        print(f"NPU  {what}{driver}")
    else:
        print("NPU  none (AIPC_EMULATE_NPU=1 runs the NPU pipeline on the CPU)")
    for name, b in info["backends"].items():
        if not b["installed"]:
            print(f"{name:<12} not installed: {b['reason']}")
            continue
        devs = "; ".join(f"{d['name']} ({d['description']})" for d in b["devices"])
        print(f"{name:<12} {devs}")
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    """One line per path: ok, or what is missing and the command or driver that fixes it."""
    info = survey()
    lines = []
    for name, b in info["backends"].items():
        kinds = {d["name"].split(".")[0] for d in b["devices"]}
        if not b["installed"]:
            lines.append(("missing", name, "all devices", b["reason"]))
            continue
        lines.append(("ok", name, "cpu", ", ".join(info["cpu"]["flags"]) or "generic x86 kernels"))
        if name == "openvino":
            lines.append(_path(kinds, "gpu", name, "install Intel's GPU driver (intel-opencl-icd / level-zero)"))
            npu_fix = "install the Intel NPU driver (linux-npu-driver); AIPC_EMULATE_NPU=1 tests the path on the CPU"
            if info["npu"].get("emulated"):
                lines.append(
                    ("ok", name, "npu", "emulated on the CPU (AIPC_EMULATE_NPU=1); a real NPU needs its driver")
                )
            else:
                lines.append(_path(kinds, "npu", name, npu_fix))
        elif name == "onnxruntime":
            fix = "CUDA: pip install onnxruntime-genai-cuda; DirectML (Windows): pip install onnxruntime-genai-directml"
            lines.append(_path(kinds, "gpu", name, fix))
        elif name in ("llamacpp", "torch"):
            lines.append(_path(kinds, "gpu", name, "a GPU build of the package (CUDA, Vulkan or SYCL)"))
    converters = [m for m in ("optimum.intel", "onnxruntime_genai.models.builder", "gguf") if not _importable(m)]
    from aipc.convert.targets import llama_cpp_dir

    try:
        llama_cpp_dir()
        has_gguf_tool = True
    except Exception:
        has_gguf_tool = False
    if converters or not has_gguf_tool:
        missing = ", ".join(converters + ([] if has_gguf_tool else ["llama.cpp's convert_hf_to_gguf.py"]))
        lines.append(("missing", "convert", "-", f"{missing}: run scripts/setup.sh convert"))
    else:
        lines.append(("ok", "convert", "-", "openvino, onnx and gguf exporters"))
    for status, name, device, detail in lines:
        print(f"{'✓' if status == 'ok' else '✗'} {name:<12} {device:<12} {detail}")
    return 0


def _path(kinds: set[str], kind: str, backend: str, fix: str) -> tuple[str, str, str, str]:
    if kind in kinds:
        return ("ok", backend, kind, "present")
    return ("missing", backend, kind, f"no {kind.upper()} found: {fix}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
