"""OpenVINO: its version, which device plugins the package ships, what `Core().available_devices` lists, and
whether a tiny model compiles on each listed device. These are the lines that say a device really works.

Under a fixture root (AIPC_SYSROOT) the runtime is not asked: it would describe the real machine, not the
fixture. OpenVINO then counts as able to use a device when that device's driver chain checked out and the
package ships its plugin."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from pathlib import Path

from aipc.doctor import links
from aipc.doctor.check import FAIL, INFO, OK, Check
from aipc.doctor.sysroot import SysRoot

AREA = "openvino"
KINDS = ("cpu", "gpu", "npu")
FIX = {
    "npu": (
        "see the driver's own view: ZE_INTEL_NPU_LOGLEVEL=INFO python -c "
        "'import openvino as ov; print(ov.Core().available_devices)'",
        links.NPU_TROUBLESHOOTING,
    ),
    "gpu": ("check that the compute runtime sees the GPU: clinfo -l", links.OV_GPU),
    "cpu": ("reinstall OpenVINO: pip install --force-reinstall openvino-genai", links.OV_INSTALL),
}


def checks(root: SysRoot, prior: list[Check], emulated: bool) -> list[Check]:
    """`prior` holds the driver chains' checks; `emulated` is AIPC_EMULATE_NPU."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return [
            Check(
                AREA,
                "OpenVINO",
                FAIL,
                "the openvino package is not installed",
                "pip install openvino-genai",
                links.OV_INSTALL,
                needed_by=("npu", "gpu", "cpu"),
            )
        ]
    plugins = _plugins(Path(next(iter(spec.submodule_search_locations))))
    out = [Check(AREA, "OpenVINO", OK, _versions() + "; plugins: " + (", ".join(plugins) or "none found"))]
    for kind in ("gpu", "npu"):
        if plugins and kind.upper() not in plugins:
            out.append(
                Check(
                    AREA,
                    f"OpenVINO {kind.upper()} plugin",
                    FAIL,
                    f"this OpenVINO package has no {kind.upper()} plugin",
                    "pip install --force-reinstall openvino",
                    links.OV_INSTALL,
                    needed_by=(kind,),
                )
            )
    if not root.is_real:
        out.append(
            Check(
                AREA,
                "devices",
                INFO,
                f"not probed: AIPC_SYSROOT={root.root} is a fixture, and OpenVINO would describe the real machine",
            )
        )
        for kind in KINDS:
            if kind == "npu" and emulated:
                out.append(_emulated())
            elif (kind == "cpu" or _chain_ok(prior, kind)) and (not plugins or kind.upper() in plugins):
                detail = "plugin present" if kind == "cpu" else "driver chain complete and plugin present"
                out.append(Check(AREA, f"OpenVINO on {kind.upper()}", OK, detail + " (not probed)", serves=(kind,)))
        return out
    return out + _probe(prior, emulated)


def _probe(prior: list[Check], emulated: bool) -> list[Check]:
    import openvino as ov

    out = []
    try:
        core = ov.Core()
        listed = list(core.available_devices)
    except Exception as exc:  # a broken plugin can raise anything from the C++ side
        fix, url = FIX["cpu"]
        return [Check(AREA, "devices", FAIL, f"OpenVINO could not list devices: {_line(exc)}", fix, url, ("cpu",))]
    out.append(Check(AREA, "devices", OK if listed else FAIL, ", ".join(listed) or "none"))
    for kind in KINDS:
        names = [d for d in listed if d.split(".")[0].lower() == kind]
        if not names:
            if kind == "npu" and emulated:
                out.append(_emulated())
            elif kind != "cpu" and _chain_ok(prior, kind):
                fix, url = FIX[kind]
                out.append(
                    Check(
                        AREA,
                        f"OpenVINO on {kind.upper()}",
                        FAIL,
                        f"the driver chain looks complete, but OpenVINO does not list the {kind.upper()}",
                        fix,
                        url,
                        needed_by=(kind,),
                    )
                )
            continue
        for name in names:
            out.append(_compile_check(core, name, kind))
    return out


def _compile_check(core, name: str, kind: str) -> Check:
    """Compile a one-operation model on `name`: proof the plugin, driver and (on the NPU) compiler work."""
    label = f"OpenVINO on {name}"
    what = _property(core, name, "FULL_DEVICE_NAME") or name
    if kind == "npu":
        version = _property(core, name, "NPU_DRIVER_VERSION")
        what += f", driver {version}" if version else ""
    try:
        seconds = compile_tiny_model(core, name)
    except Exception as exc:  # whatever the plugin raises is the diagnosis
        fix, url = FIX[kind]
        return Check(AREA, label, FAIL, f"{what}: compiling a tiny model failed: {_line(exc)}", fix, url, (kind,))
    return Check(AREA, label, OK, f"{what}; a tiny model compiled in {seconds * 1000:.0f} ms", serves=(kind,))


def compile_tiny_model(core, device: str) -> float:
    """Seconds to compile and run y = relu(x) on `device` (no cache, so it is a real compile)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 16], np.float32, name="x")
    model = ov.Model([ops.relu(x)], [x], "aipc-doctor")
    start = time.perf_counter()
    compiled = core.compile_model(model, device)
    out = compiled(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))[0]
    if float(out.min()) < 0:
        raise RuntimeError("the compiled model computed a wrong result")
    return time.perf_counter() - start


def _emulated() -> Check:
    return Check(
        AREA,
        "OpenVINO on NPU",
        OK,
        "emulated: AIPC_EMULATE_NPU=1 runs the NPU pipeline's parts on the CPU",
        serves=("npu",),
    )


def _chain_ok(prior: list[Check], kind: str) -> bool:
    """A device's driver chain checked out: some link passed and none failed."""
    mine = [c for c in prior if kind in c.needed_by]
    return any(c.status == OK for c in mine) and not any(c.status == FAIL for c in mine)


def _plugins(package: Path) -> list[str]:
    """Device plugins the installed package ships (libopenvino_intel_npu_plugin.so, openvino_intel_npu_plugin.dll)."""
    libs = package / "libs"
    names = [p.name for p in libs.iterdir()] if libs.is_dir() else []
    return [k.upper() for k in KINDS if any(f"openvino_intel_{k}_plugin" in n for n in names)]


def _versions() -> str:
    found = []
    for dist in ("openvino", "openvino-genai"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found) or "version unknown"


def _property(core, device: str, name: str) -> str | None:
    try:
        return str(core.get_property(device, name))
    except Exception:  # a property this plugin version lacks
        return None


def _line(exc: Exception) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__
