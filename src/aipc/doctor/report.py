"""The doctor's text report: one line per check (ok / warn / FAIL / -), a fix line with the vendor's page
under each problem, and a summary per device."""

from __future__ import annotations

from aipc.doctor.check import DEVICES, FAIL, INFO, OK, WARN, Report

LABELS = {OK: "ok", WARN: "warn", FAIL: "FAIL", INFO: "-"}


def render(report: Report) -> str:
    if report.device == "auto":
        head = "aipc doctor: every device path (the exit status follows the CPU's; --device npu|gpu checks one)"
    else:
        head = f"aipc doctor: can the {report.device.upper()} work here?"
    lines = [head]
    if report.sysroot != "/":
        lines.append(f"(reading the system under AIPC_SYSROOT={report.sysroot})")
    width = min(max((len(c.name) for c in report.checks), default=10), 28)
    area = None
    for c in report.checks:
        if c.area != area:
            area = c.area
            lines.append("")
            lines.append(area)
        shown = report.shown(c)
        lines.append(f"  {LABELS[shown]:<5} {c.name:<{width}}  {c.detail}")
        if shown in (WARN, FAIL):
            indent = " " * (10 + width)
            lines += [f"{indent}fix: {c.fix}"] if c.fix else []
            lines += [f"{indent}see: {c.url}"] if c.url else []
    lines += ["", "summary"]
    for device in DEVICES:
        v = report.verdict(device)
        if v.usable:
            label, text = OK, v.reason
        else:
            label, text = (FAIL if device == report.target else INFO), f"cannot work: {v.reason}"
        lines.append(f"  {LABELS[label]:<5} {device.upper():<4} {text}")
    return "\n".join(lines)
