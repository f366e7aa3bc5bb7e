"""`aipc doctor`: can the NPU, GPU and CPU paths work on this machine, and if not, which link breaks and how
to fix it. One module per area (cpu, npu, gpu, windows, openvino, backends, store), each returning `Check`s;
all system reads go through `SysRoot` so tests fake the machine with a folder (AIPC_SYSROOT)."""

from __future__ import annotations

import os

from aipc.doctor.check import EMULATED_NOTE, INFO, Check, Report, relaxed
from aipc.doctor.sysroot import SysRoot

__all__ = ["Check", "Report", "SysRoot", "diagnose"]


def diagnose(device: str = "auto", root: SysRoot | str | os.PathLike | None = None) -> Report:
    """Every check, in chain order: processor, NPU, GPU (Linux or Windows), OpenVINO, other backends, cache."""
    from aipc.doctor import backends, cpu, gpu, npu, openvino, store, windows

    root = root if isinstance(root, SysRoot) else SysRoot(root)
    emulated = _npu_emulated()
    info = cpu.read(root)
    gen = cpu.generation(info)
    found = cpu.checks(info)
    if root.platform == "linux":
        found += npu.checks(root, gen, emulated)
        found += gpu.checks(root, gen)
    elif root.platform == "windows":
        win = windows.checks(root, gen)
        found += relaxed(win, "npu", EMULATED_NOTE) if emulated else win
    else:
        found.append(Check("npu", "NPU and GPU", INFO, "Intel NPU and GPU drivers are checked on Linux and Windows"))
    found += openvino.checks(root, found, emulated)
    found += backends.checks(root)
    if root.platform == "windows":
        found.append(windows.directml(root))
    found += store.checks()
    return Report(device, str(root.root), root.platform, found)


def _npu_emulated() -> bool:
    try:
        from aipc.backends.openvino import npu_emulation_enabled
    except ImportError:  # OpenVINO GenAI absent: nothing could emulate the NPU
        return False
    return npu_emulation_enabled()
