"""Fake machines for `aipc doctor`: folders laid out like /proc, /sys, /dev, /etc and /lib, read through
AIPC_SYSROOT. Permissions are real (chmod on the fixture files); who "the user" is comes from the fixture's
proc/self/status and etc/group, with the device node's group id taken from the file the test just made."""

from __future__ import annotations

import json
import os
from pathlib import Path

MTL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 170
model name\t: Intel(R) Core(TM) Ultra 7 155H
flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni
"""
RAPTOR_LAKE_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 186
model name\t: 13th Gen Intel(R) Core(TM) i7-13700H
flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni
"""
LIB = "usr/lib/x86_64-linux-gnu"
# The user the fixtures describe: any uid but the one running the tests, so the owner bits never decide.
USER_UID = 4242 if os.geteuid() != 4242 else 4243


class Machine:
    """A fixture root built step by step; each method adds one part of the system and returns self."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str = "", mode: int | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if mode is not None:
            path.chmod(mode)
        return path

    def link(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def cpu(self, cpuinfo: str = MTL_CPUINFO, kernel: str = "6.8.0-45-generic") -> Machine:
        self.write("proc/cpuinfo", cpuinfo)
        self.write("proc/sys/kernel/osrelease", kernel + "\n")
        return self

    def modules(self, *names: str) -> Machine:
        lines = [f"{n} 290816 0 - Live 0x0000000000000000" for n in names]
        self.write("proc/modules", "\n".join(lines) + ("\n" if lines else ""))
        return self

    def pci(self, address: str, vendor: int, device: int, cls: int, driver: str | None = None) -> Machine:
        base = f"sys/bus/pci/devices/{address}"
        self.write(f"{base}/vendor", f"0x{vendor:04x}\n")
        self.write(f"{base}/device", f"0x{device:04x}\n")
        self.write(f"{base}/class", f"0x{cls:06x}\n")
        if driver:
            (self.root / f"sys/bus/pci/drivers/{driver}").mkdir(parents=True, exist_ok=True)
            self.link(f"{base}/driver", f"../../../bus/pci/drivers/{driver}")
        return self

    def npu(self, driver: bool = True, node: bool = True, firmware: bool = True) -> Machine:
        """A Meteor Lake NPU at 0000:00:0b.0, with (by default) intel_vpu bound, /dev/accel/accel0 (0660) and
        its firmware."""
        self.pci("0000:00:0b.0", 0x8086, 0x7D1D, 0x120000, "intel_vpu" if driver else None)
        if node:
            self.write("dev/accel/accel0", mode=0o660)
        if firmware:
            self.write("lib/firmware/updates/intel/vpu/vpu_37xx_v1.bin", "fw")
        return self

    def gpu(self, driver: str | None = "i915", node: bool = True) -> Machine:
        self.pci("0000:00:02.0", 0x8086, 0x7D55, 0x030000, driver)
        if node:
            self.write("dev/dri/renderD128", mode=0o660)
            self.link("sys/class/drm/renderD128/device", "../../../bus/pci/devices/0000:00:02.0")
        return self

    def library(self, name: str, version: str) -> Machine:
        """lib.so.1.2.3 and its lib.so.1 link, as the distribution packages install them."""
        self.write(f"{LIB}/{name}.{version}", "\x7fELF")
        self.link(f"{LIB}/{name}.{version.split('.')[0]}", f"{name}.{version}")
        return self

    def level_zero(self, loader: str | None = "1.21.9", npu: str | None = "1.35.0", compiler: bool = True) -> Machine:
        if loader:
            self.library("libze_loader.so", loader)
        if npu:
            self.library("libze_intel_npu.so", npu)
        if compiler:
            self.write(f"{LIB}/libnpu_driver_compiler.so", "\x7fELF")
        return self

    def compute_runtime(self, opencl: bool = True, level_zero: bool = True) -> Machine:
        if opencl:
            lib = f"/{LIB}/intel-opencl/libigdrcl.so"
            self.write(lib.lstrip("/"), "\x7fELF")
            self.write("etc/OpenCL/vendors/intel.icd", lib + "\n")
        if level_zero:
            self.library("libze_intel_gpu.so", "1.6.32224")
        return self

    def user(self, in_render: bool = True, listed_in_render: bool | None = None) -> Machine:
        """The user ada: /etc/passwd, /etc/group and the process's groups in proc/self/status. The render
        group's id is the group the test process gave the device nodes it created."""
        nodes = [self.root / p for p in ("dev/accel/accel0", "dev/dri/renderD128") if (self.root / p).exists()]
        render = nodes[0].stat().st_gid if nodes else os.getegid()
        listed = in_render if listed_in_render is None else listed_in_render
        self.write("etc/passwd", f"root:x:0:0::/root:/bin/sh\nada:x:{USER_UID}:{USER_UID}::/home/ada:/bin/bash\n")
        self.write("etc/group", f"render:x:{render}:{'ada' if listed else ''}\nada:x:{USER_UID}:\n")
        groups = f"{USER_UID} {render}" if in_render else f"{USER_UID}"
        self.write(
            "proc/self/status",
            f"Name:\tpython\nUid:\t{USER_UID}\t{USER_UID}\t{USER_UID}\t{USER_UID}\n"
            f"Gid:\t{USER_UID}\t{USER_UID}\t{USER_UID}\t{USER_UID}\nGroups:\t{groups}\n",
        )
        return self

    def windows(self, devices: list[dict], caption: str = "Intel64 Family 6 Model 170 Stepping 4") -> Machine:
        """The captured JSON of the doctor's PowerShell query (Get-PnpDevice + driver versions)."""
        proc = {"Name": "Intel(R) Core(TM) Ultra 7 155H", "Caption": caption, "Manufacturer": "GenuineIntel"}
        self.write("windows/pnp.json", json.dumps({"Processor": proc, "Devices": devices}))
        return self


def meteor_lake(root: Path) -> Machine:
    """A healthy Core Ultra 7 155H laptop: NPU and GPU drivers, firmware, Level Zero, compute runtime."""
    return Machine(root).cpu().modules("intel_vpu", "i915").npu().gpu().level_zero().compute_runtime().user()


WINDOWS_NPU = {
    "FriendlyName": "Intel(R) AI Boost",
    "Class": "ComputeAccelerator",
    "Status": "OK",
    "Problem": "CM_PROB_NONE",
    "InstanceId": "PCI\\VEN_8086&DEV_7D1D&SUBSYS_0CB21028&REV_04\\3&11583659&0&58",
    "DriverVersion": "32.0.100.3104",
}
WINDOWS_GPU = {
    "FriendlyName": "Intel(R) Arc(TM) Graphics",
    "Class": "Display",
    "Status": "OK",
    "Problem": "CM_PROB_NONE",
    "InstanceId": "PCI\\VEN_8086&DEV_7D55&SUBSYS_0CB21028&REV_08\\3&11583659&0&10",
    "DriverVersion": "32.0.101.6129",
}
