"""Windows: what Device Manager shows for the Intel NPU and GPU (name, state, problem, driver version) and
whether ONNX Runtime GenAI has DirectML.

The readers take the text of commands and parse it, so they are tested on captured outputs: on Windows they
run PowerShell (`Get-PnpDevice` with each device's DEVPKEY_Device_DriverVersion, as JSON, which does not change
with the display language), falling back to `pnputil /enum-devices /connected /drivers` (English output);
under a fixture root they read the same outputs from `windows/pnp.json` or `windows/pnputil.txt`.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache

from aipc.doctor import links, pci
from aipc.doctor.check import FAIL, INFO, OK, Check
from aipc.doctor.cpu import CpuInfo, Generation, parse_caption
from aipc.doctor.sysroot import SysRoot

POWERSHELL = r"""
$ErrorActionPreference = 'SilentlyContinue'
$cpu = Get-CimInstance Win32_Processor | Select-Object -First 1 Name, Caption, Manufacturer
$dev = Get-PnpDevice -PresentOnly | Where-Object { $_.InstanceId -like 'PCI\VEN_8086*' } | ForEach-Object {
  [pscustomobject]@{
    FriendlyName = $_.FriendlyName; Class = $_.Class; Status = $_.Status; Problem = [string]$_.Problem
    InstanceId = $_.InstanceId
    DriverVersion = (Get-PnpDeviceProperty -InstanceId $_.InstanceId -KeyName 'DEVPKEY_Device_DriverVersion').Data
  }
}
[pscustomobject]@{ Processor = $cpu; Devices = @($dev) } | ConvertTo-Json -Depth 4 -Compress
"""
PNPUTIL = ["pnputil", "/enum-devices", "/connected", "/drivers"]
NO_DRIVER_NAMES = ("Multimedia Video Controller", "Microsoft Basic Display Adapter", "Video Controller")


@dataclass(frozen=True)
class PnpDevice:
    name: str
    cls: str
    status: str  # Get-PnpDevice: OK, Error, Degraded, Unknown; pnputil: Started, Disabled, Problem
    problem: str  # "" when none
    instance_id: str
    driver_version: str = ""

    @property
    def ids(self) -> tuple[int, int] | None:
        m = re.search(r"VEN_([0-9A-F]{4})&DEV_([0-9A-F]{4})", self.instance_id, re.I)
        return (int(m.group(1), 16), int(m.group(2), 16)) if m else None

    @property
    def working(self) -> bool:
        return self.status in ("OK", "Started") and not self.problem


@dataclass(frozen=True)
class WindowsView:
    cpu: CpuInfo
    devices: list[PnpDevice] = field(default_factory=list)
    source: str = ""
    error: str = ""


def parse_pnp_json(text: str) -> tuple[dict, list[PnpDevice]]:
    """The PowerShell script's JSON: (processor fields, devices). ConvertTo-Json writes a lone item as an
    object rather than a one-item list; both are accepted."""
    data = json.loads(text)
    proc = data.get("Processor") or {}
    if isinstance(proc, list):
        proc = proc[0] if proc else {}
    devs = data.get("Devices") or []
    if isinstance(devs, dict):
        devs = [devs]
    found = []
    for d in devs:
        problem = str(d.get("Problem") or "")
        if problem in ("0", "CM_PROB_NONE"):
            problem = ""
        found.append(
            PnpDevice(
                name=str(d.get("FriendlyName") or ""),
                cls=str(d.get("Class") or ""),
                status=str(d.get("Status") or ""),
                problem=problem,
                instance_id=str(d.get("InstanceId") or ""),
                driver_version=str(d.get("DriverVersion") or ""),
            )
        )
    return proc, found


def parse_pnputil(text: str) -> list[PnpDevice]:
    """`pnputil /enum-devices [/drivers]` (English): a device starts at "Instance ID:"; under "Matching
    Drivers:" each indented "Driver Name:" starts a driver, and the one installed on the device gives the
    version (the last word of "Driver Version: 08/22/2024 32.0.100.3053")."""
    devices: list[dict] = []
    current: dict | None = None
    driver: dict | None = None
    for raw in text.splitlines():
        if ":" not in raw:
            continue
        indented = raw.startswith((" ", "\t"))
        key, _, value = raw.strip().partition(":")
        key, value = key.strip(), value.strip()
        if key == "Instance ID" and not indented:
            current = {"drivers": []}
            devices.append(current)
            driver = None
        if current is None:
            continue
        if indented and key == "Driver Name":
            driver = {}
            current["drivers"].append(driver)
        if indented and driver is not None:
            driver[key] = value
        elif not indented:
            current[key] = value
    found = []
    for d in devices:
        installed = next(
            (
                x
                for x in d["drivers"]
                if x.get("Driver Name") == d.get("Driver Name") or "Installed" in x.get("Driver Status", "")
            ),
            None,
        )
        version = (installed or {}).get("Driver Version", "").split()
        found.append(
            PnpDevice(
                name=d.get("Device Description", ""),
                cls=d.get("Class Name", ""),
                status=d.get("Status", ""),
                problem=d.get("Problem Code", "") or d.get("Problem Status", ""),
                instance_id=d.get("Instance ID", ""),
                driver_version=version[-1] if version else "",
            )
        )
    return found


@lru_cache(maxsize=4)
def _read_cached(root_path: str, real: bool) -> WindowsView:
    root = SysRoot(root_path)
    if not real:
        text = root.read("windows/pnp.json")
        if text is not None:
            proc, devices = parse_pnp_json(text)
            return WindowsView(_cpu(proc), devices, "windows/pnp.json")
        caption = (root.read("windows/processor.txt") or "").strip()
        text = root.read("windows/pnputil.txt") or ""
        return WindowsView(parse_caption(caption), parse_pnputil(text), "windows/pnputil.txt")
    errors = []
    try:
        run = subprocess.run(
            ["powershell", "-NoProfile", "-NonInteractive", "-Command", POWERSHELL],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        proc, devices = parse_pnp_json(run.stdout)
        return WindowsView(_cpu(proc), devices, "Get-PnpDevice")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        errors.append(f"PowerShell: {exc}")
    caption = platform.processor()
    try:
        run = subprocess.run(PNPUTIL, capture_output=True, text=True, timeout=60, check=True)
        return WindowsView(parse_caption(caption), parse_pnputil(run.stdout), "pnputil")
    except (OSError, subprocess.SubprocessError) as exc:
        errors.append(f"pnputil: {exc}")
    return WindowsView(parse_caption(caption), [], "", "; ".join(errors))


def read(root: SysRoot) -> WindowsView:
    return _read_cached(str(root.root), root.is_real)


def _cpu(proc: dict) -> CpuInfo:
    vendor = str(proc.get("Manufacturer") or "")
    return parse_caption(str(proc.get("Caption") or ""), str(proc.get("Name") or "").strip(), vendor)


def checks(root: SysRoot, gen: Generation | None) -> list[Check]:
    view = read(root)
    if view.error:
        return [
            Check(
                "npu",
                "Device Manager",
                FAIL,
                f"could not list devices: {view.error}",
                "run in PowerShell: Get-PnpDevice -PresentOnly | Where-Object InstanceId -like 'PCI\\VEN_8086*'",
                needed_by=("npu", "gpu"),
            )
        ]
    intel = [d for d in view.devices if d.ids and d.ids[0] == pci.INTEL]
    npus = [
        d
        for d in intel
        if d.ids[1] in pci.NPU_IDS or d.cls == "ComputeAccelerator" or re.search(r"\bNPU\b|AI Boost", d.name)
    ]
    gpus = [d for d in intel if d.cls == "Display" and d not in npus]
    return [
        _device(
            "npu", "NPU", npus, gen, links.WINDOWS_NPU, "the Intel NPU driver (Windows Update, or Intel's download)"
        ),
        _device("gpu", "GPU", gpus, gen, links.WINDOWS_GPU, "the Intel graphics driver"),
    ]


def _device(kind: str, label: str, found: list[PnpDevice], gen, url: str, driver: str) -> Check:
    name = f"{label} device"
    need = (kind,)
    if not found:
        detail = f"Device Manager lists no Intel {label}"
        fix = (
            f"an Intel {label} comes with Core Ultra processors"
            if gen is None
            else "enable it in the firmware (BIOS) setup"
        )
        return Check(kind, name, FAIL, detail, fix, links.NPU_HAS if kind == "npu" else url, need, quiet=gen is None)
    dev = next((d for d in found if d.working), found[0])
    ids = f"[{dev.ids[0]:04x}:{dev.ids[1]:04x}]" if dev.ids else ""
    if dev.working and dev.name not in NO_DRIVER_NAMES:
        version = f", driver {dev.driver_version}" if dev.driver_version else ""
        return Check(kind, name, OK, f"{dev.name} {ids}{version}", needed_by=need)
    if dev.name in NO_DRIVER_NAMES or not dev.driver_version:
        return Check(
            kind,
            name,
            FAIL,
            f"{dev.name or 'unknown device'} {ids} has no Intel driver",
            f"install {driver}",
            url,
            need,
        )
    problem = f" ({dev.problem})" if dev.problem else ""
    return Check(
        kind,
        name,
        FAIL,
        f"{dev.name} {ids}: {dev.status}{problem}, driver {dev.driver_version}",
        f"reinstall {driver}; Device Manager's device status explains the problem code",
        url,
        need,
    )


def directml(root: SysRoot) -> Check:
    """Whether ONNX Runtime GenAI can reach the GPU through DirectML (Windows' GPU path for it)."""
    if not root.is_real:
        return Check("backends", "DirectML", INFO, "not probed under AIPC_SYSROOT")
    try:
        import onnxruntime_genai as og
    except ImportError:
        return Check("backends", "DirectML", INFO, "onnxruntime-genai is not installed", url=links.ORT_GENAI)
    if og.is_dml_available():
        return Check("backends", "DirectML", OK, "ONNX Runtime GenAI can use the GPU through DirectML", serves=("gpu",))
    return Check(
        "backends",
        "DirectML",
        INFO,
        "this onnxruntime-genai build has no DirectML (pip install onnxruntime-genai-directml)",
        url=links.ORT_GENAI,
    )
