"""What one check found, and how the whole set answers "can this device work here?".

A check is one link of a chain (the NPU's PCI device, its kernel driver, its device node, ...). Links say which
device paths they are part of (`needed_by`); runtimes that can actually run a device say so (`serves`). A
device works when some runtime serves it. A failed link is shown as FAIL only when the device asked for cannot
work; otherwise it is a warning (or, for hardware this machine is not expected to have, a note).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
DEVICES = ("npu", "gpu", "cpu")
# AIPC_EMULATE_NPU runs the NPU pipeline on the CPU, so the real NPU chain is then informative only.
EMULATED_NOTE = " (not needed while AIPC_EMULATE_NPU=1 runs the NPU path on the CPU)"


@dataclass(frozen=True)
class Check:
    area: str  # processor, npu, gpu, openvino, backends, cache
    name: str  # the link: "intel_vpu driver", "/dev/accel access"
    status: str  # ok, warn, fail, info
    detail: str  # what was found
    fix: str = ""  # what to do about it (warn and fail)
    url: str = ""  # the vendor's page for the fix
    needed_by: tuple[str, ...] = ()  # device paths this link is part of
    serves: tuple[str, ...] = ()  # devices this runtime can run (when ok)
    quiet: bool = False  # absent hardware this machine is not expected to have: a note unless asked for


@dataclass(frozen=True)
class Verdict:
    device: str
    usable: bool
    reason: str  # which runtimes serve it, or the first link that fails


@dataclass
class Report:
    device: str  # what was asked: npu, gpu, cpu or auto
    sysroot: str
    platform: str
    checks: list[Check] = field(default_factory=list)

    @property
    def target(self) -> str:
        """The device whose path decides the exit code: the one asked for; the CPU path for auto."""
        return "cpu" if self.device == "auto" else self.device

    def verdict(self, device: str) -> Verdict:
        servers = [c for c in self.checks if device in c.serves and c.status == OK]
        if servers:
            names = []
            for c in servers:
                if c.name not in names:
                    names.append(c.name)
            return Verdict(device, True, "works with " + ", ".join(names))
        blocker = next((c for c in self.checks if device in c.needed_by and c.status == FAIL), None)
        if blocker is None:
            return Verdict(device, False, f"no runtime here can use the {device.upper()}")
        return Verdict(device, False, f"{blocker.name}: {blocker.detail}")

    def shown(self, check: Check) -> str:
        """The status to display: a failed link is FAIL only when it stops the asked-for device."""
        if check.status != FAIL:
            return check.status
        if self.target in check.needed_by and not self.verdict(self.target).usable:
            return FAIL
        if check.quiet and self.target not in check.needed_by:
            return INFO
        return WARN

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict(self.target).usable else 1

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "sysroot": self.sysroot,
            "platform": self.platform,
            "exit_code": self.exit_code,
            "verdicts": {d: asdict(self.verdict(d)) for d in DEVICES},
            "checks": [asdict(c) | {"shown": self.shown(c)} for c in self.checks],
        }


def relaxed(checks: list[Check], device: str, note: str) -> list[Check]:
    """`checks` with the failures of `device`'s chain turned into warnings, or notes for hardware this machine
    is not expected to have (the device runs another way: emulated)."""
    from dataclasses import replace

    return [
        replace(c, status=INFO if c.quiet else WARN, detail=c.detail + note)
        if c.status == FAIL and device in c.needed_by
        else c
        for c in checks
    ]
