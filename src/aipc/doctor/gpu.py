"""The Intel GPU's chain on Linux: the PCI device (display class), the i915 or xe driver bound to it, its
/dev/dri/renderD* node and who may open it, and the compute runtime OpenVINO's GPU plugin runs on (the
OpenCL driver registered in /etc/OpenCL/vendors, plus Level Zero's GPU driver). Facts from OpenVINO's GPU
configuration page and https://github.com/intel/compute-runtime."""

from __future__ import annotations

import os

from aipc.doctor import links, pci
from aipc.doctor.check import FAIL, INFO, OK, WARN, Check
from aipc.doctor.cpu import Generation
from aipc.doctor.nodes import access_check
from aipc.doctor.sysroot import SysRoot, library_version

AREA = "gpu"
NEED = ("gpu",)
GPU_DRIVERS = ("i915", "xe")
OPENCL_FIX = "sudo apt install intel-opencl-icd (or the packages of the compute runtime release)"


def checks(root: SysRoot, gen: Generation | None) -> list[Check]:
    found = pci.gpus(root)
    intel = [g for g in found if g.vendor == pci.INTEL]
    if not intel:
        if root.exists("dev/dxg"):  # WSL 2: the GPU is paravirtualised, there is no PCI view of it
            return [
                Check(AREA, "GPU device", INFO, "WSL: the GPU is reached through /dev/dxg", needed_by=NEED),
                *_runtime(root),
            ]
        others = ", ".join(f"{g.vendor_name} [{g.ids}]" for g in found if g.vendor not in pci.NO_COMPUTE_VENDORS)
        detail = "no Intel GPU on the PCI bus"
        if others:
            detail += f" (found {others}; OpenVINO drives Intel GPUs, llama.cpp or ONNX Runtime GPU builds the others)"
        fix = "OpenVINO's GPU path needs an Intel GPU (the one built into Core processors, or an Arc card)"
        return [Check(AREA, "GPU device", FAIL, detail, fix, links.OV_GPU, NEED, quiet=gen is None)]
    listed = "; ".join(f"Intel [{g.ids}] at {g.address}" for g in intel)
    out = [Check(AREA, "GPU device", OK, listed, needed_by=NEED)]
    bound = [g for g in intel if g.driver in GPU_DRIVERS]
    if bound:
        out.append(
            Check(AREA, "GPU kernel driver", OK, ", ".join(f"{g.driver} ({g.address})" for g in bound), needed_by=NEED)
        )
    else:
        other = next((g.driver for g in intel if g.driver), None)
        detail = f"the GPU is bound to {other}, not i915 or xe" if other else "no i915 or xe driver bound to the GPU"
        out.append(
            Check(
                AREA,
                "GPU kernel driver",
                FAIL,
                detail,
                "boot a kernel that supports this GPU (Arc: 6.2 or newer), then check: sudo dmesg | grep -iE 'i915|xe'",
                links.GPU_KERNEL,
                NEED,
            )
        )
    nodes = _render_nodes(root, {g.address for g in intel})
    if nodes:
        out.append(Check(AREA, "/dev/dri render node", OK, ", ".join(nodes), needed_by=NEED))
        out.append(access_check(root, nodes[0], AREA, "gpu", links.OV_GPU))
    elif bound:
        out.append(
            Check(
                AREA,
                "/dev/dri render node",
                FAIL,
                "the GPU driver is bound but there is no /dev/dri/renderD* node",
                "look for errors: sudo dmesg | grep -iE 'i915|xe|drm'",
                links.GPU_KERNEL,
                NEED,
            )
        )
    return out + _runtime(root)


def _render_nodes(root: SysRoot, addresses: set[str]) -> list[str]:
    """The render nodes of the Intel GPUs (matched through /sys/class/drm/renderD*/device), or every render
    node when sysfs does not say which device each belongs to."""
    nodes = root.glob("dev/dri/renderD*")
    mine = []
    for node in nodes:
        link = root.path(f"sys/class/drm/{node.name}/device")
        if os.path.lexists(link) and os.path.basename(os.path.realpath(link)) in addresses:
            mine.append(root.rel(node))
    return mine or [root.rel(n) for n in nodes]


def _runtime(root: SysRoot) -> list[Check]:
    out = []
    icds = root.glob("etc/OpenCL/vendors/*.icd")
    intel_icd = None
    for icd in icds:
        text = (root.read(root.rel(icd)) or "").strip()
        if "intel" in icd.name.lower() or "igdrcl" in text:
            intel_icd = (icd, text)
            break
    if intel_icd is None:
        out.append(
            Check(
                AREA,
                "OpenCL driver",
                FAIL,
                "no Intel OpenCL driver registered in /etc/OpenCL/vendors",
                OPENCL_FIX,
                links.COMPUTE_RUNTIME,
                NEED,
            )
        )
    else:
        icd, lib = intel_icd
        present = root.exists(lib) if lib.startswith("/") else bool(root.find_library(os.path.basename(lib)))
        if present:
            out.append(Check(AREA, "OpenCL driver", OK, f"{icd.name} -> {lib}", needed_by=NEED))
        else:
            out.append(
                Check(
                    AREA,
                    "OpenCL driver",
                    FAIL,
                    f"{icd.name} names {lib or 'nothing'}, which is missing",
                    "reinstall: " + OPENCL_FIX,
                    links.COMPUTE_RUNTIME,
                    NEED,
                )
            )
    ze = root.find_library("libze_intel_gpu.so")
    if ze:
        v = library_version(ze, "libze_intel_gpu.so")
        out.append(Check(AREA, "Level Zero GPU driver", OK, f"libze_intel_gpu.so {v or ''}".strip(), needed_by=NEED))
    else:
        out.append(
            Check(
                AREA,
                "Level Zero GPU driver",
                WARN,
                "libze_intel_gpu.so not found (OpenVINO's GPU plugin runs on OpenCL; Level Zero programs need it)",
                "sudo apt install intel-level-zero-gpu (libze-intel-gpu1 on Ubuntu 24.04)",
                links.COMPUTE_RUNTIME,
                NEED,
            )
        )
    return out
