"""The processor: which generation it is (an AI PC with an NPU, or not) and the vector/matrix extensions the
CPU runtimes pick their kernels by."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

from aipc.doctor import links
from aipc.doctor.check import INFO, OK, WARN, Check
from aipc.doctor.sysroot import SysRoot

# Extensions that decide which kernels OpenVINO, ONNX Runtime and llama.cpp use (as /proc/cpuinfo names them).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

# Intel (family, model) -> (codename, marketing series), from Linux's arch/x86/include/asm/intel-family.h.
# Every one of these has an NPU (Intel's NPU driver supports Meteor Lake and newer).
AI_PC_MODELS: dict[tuple[int, int], tuple[str, str]] = {
    (6, 0xAA): ("Meteor Lake", "Core Ultra Series 1"),
    (6, 0xAC): ("Meteor Lake", "Core Ultra Series 1"),
    (6, 0xB5): ("Arrow Lake", "Core Ultra Series 2"),
    (6, 0xC5): ("Arrow Lake", "Core Ultra Series 2"),
    (6, 0xC6): ("Arrow Lake", "Core Ultra Series 2"),
    (6, 0xBD): ("Lunar Lake", "Core Ultra Series 2"),
    (6, 0xCC): ("Panther Lake", "Core Ultra Series 3"),
    (6, 0xD5): ("Wildcat Lake", ""),
    (18, 0x01): ("Nova Lake", ""),
    (18, 0x03): ("Nova Lake", ""),
}


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # GenuineIntel, AuthenticAMD, "" when unknown
    family: int | None
    model: int | None
    name: str
    flags: frozenset[str] | None  # None where the OS does not expose them here


@dataclass(frozen=True)
class Generation:
    codename: str
    series: str

    def __str__(self) -> str:
        return f"{self.series} ({self.codename})" if self.series else self.codename


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor block of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return CpuInfo(
        vendor=fields.get("vendor_id", ""),
        family=_int(fields.get("cpu family")),
        model=_int(fields.get("model")),
        name=fields.get("model name", ""),
        flags=frozenset(fields.get("flags", "").split()) if "flags" in fields else None,
    )


def parse_caption(caption: str, name: str = "", vendor: str = "") -> CpuInfo:
    """Windows' processor caption ("Intel64 Family 6 Model 170 Stepping 4, GenuineIntel", as
    `platform.processor()` and Win32_Processor.Caption give it)."""
    m = re.search(r"Family (\d+) Model (\d+)", caption)
    if not vendor:
        vendor = next((v for v in ("GenuineIntel", "AuthenticAMD") if v in caption), "")
    if not vendor and "Intel" in (caption + name):
        vendor = "GenuineIntel"
    return CpuInfo(vendor, int(m.group(1)) if m else None, int(m.group(2)) if m else None, name or caption, None)


def read(root: SysRoot) -> CpuInfo:
    """This machine's processor: /proc/cpuinfo under the root, else what Python's platform module says."""
    text = root.read("proc/cpuinfo")
    if text:
        return parse_cpuinfo(text)
    if root.platform == "windows":
        from aipc.doctor import windows

        return windows.read(root).cpu
    return CpuInfo("", None, None, platform.processor() or platform.machine(), None)


def generation(cpu: CpuInfo) -> Generation | None:
    """The AI PC generation, or None for a processor without an Intel NPU."""
    if cpu.vendor and cpu.vendor != "GenuineIntel":
        return None
    if cpu.family is not None and cpu.model is not None and (cpu.family, cpu.model) in AI_PC_MODELS:
        return Generation(*AI_PC_MODELS[(cpu.family, cpu.model)])
    if "Core(TM) Ultra" in cpu.name or "Core Ultra" in cpu.name:
        return Generation("a generation this aipc does not know yet", "Core Ultra")
    return None


def isa_flags(cpu: CpuInfo) -> list[str]:
    return [f for f in CPU_FLAGS if cpu.flags and f in cpu.flags]


def checks(cpu: CpuInfo) -> list[Check]:
    gen = generation(cpu)
    where = f" (family {cpu.family}, model {cpu.model})" if cpu.family is not None else ""
    name = cpu.name or "unknown processor"
    if gen:
        first = Check("processor", "processor", OK, f"{name}{where}: {gen}, with an NPU")
    elif cpu.vendor == "AuthenticAMD":
        first = Check(
            "processor", "processor", INFO, f"{name}{where}: AMD; its NPU (Ryzen AI) is not one OpenVINO drives"
        )
    else:
        first = Check(
            "processor",
            "processor",
            INFO,
            f"{name}{where}: not a Core Ultra, so no NPU is expected",
            url=links.NPU_HAS,
        )
    if cpu.flags is None:
        isa = Check("processor", "CPU extensions", INFO, "not readable on this system (no /proc/cpuinfo)")
    elif "avx2" in cpu.flags:
        isa = Check("processor", "CPU extensions", OK, ", ".join(isa_flags(cpu)))
    else:
        isa = Check(
            "processor",
            "CPU extensions",
            WARN,
            "no AVX2: the runtimes fall back to slower generic kernels",
            fix="expect several times lower CPU speed; a GPU or NPU, where present, is the faster path",
        )
    return [first, isa]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
