"""`aipc devices` (what each backend can use here) and `aipc doctor` (the front end of aipc.doctor: which
link of each device's chain breaks, and how to fix it)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict

from aipc.backends import registry
from aipc.errors import BackendUnavailableError


def cpu_description() -> dict:
    """The CPU's model and the vector/matrix extensions that decide which kernels runtimes can use (read as
    the doctor reads them: /proc/cpuinfo under AIPC_SYSROOT)."""
    from aipc.doctor import cpu
    from aipc.doctor.sysroot import SysRoot

    info = cpu.read(SysRoot())
    model = info.name or platform.processor() or platform.machine()
    return {"model": model, "cores": os.cpu_count(), "flags": cpu.isa_flags(info)}


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
    """The checks live in aipc.doctor; this prints them and returns 1 when the device asked for cannot work."""
    from aipc.doctor import diagnose
    from aipc.doctor.report import render

    report = diagnose(args.device)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render(report))
    return report.exit_code
