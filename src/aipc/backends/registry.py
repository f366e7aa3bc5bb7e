"""The one place that knows backend names. Each maps to a lazily imported module, so choosing a backend
imports only that runtime, and `aipc --help` imports none."""

from __future__ import annotations

import importlib

from aipc.backends.base import BackendType, DeviceInfo
from aipc.engine.config import LoadConfig
from aipc.errors import BackendUnavailableError, DeviceNotAvailableError
from aipc.store.resolve import ModelSource

# name -> (module, class, the pip extra or package that provides its runtime)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "openvino": ("aipc.backends.openvino", "OpenVINOBackend", "openvino-genai"),
}
# Devices in the order `--device auto` prefers them: the NPU is the AI PC's efficient path.
DEVICE_PREFERENCE = ("npu", "gpu", "cpu")


def names() -> list[str]:
    return list(BACKENDS)


def get(name: str) -> BackendType:
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}: valid backends are auto, {', '.join(BACKENDS)}")
    module, cls, package = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} needs the {package} package, which is not importable ({exc}): pip install {package}"
        ) from None


def choose(source: ModelSource, config: LoadConfig) -> tuple[BackendType, DeviceInfo]:
    """The backend and device to open `source` with, honouring explicit choices and preferring the NPU."""
    candidates = names() if config.backend == "auto" else [config.backend]
    errors = []
    for name in candidates:
        backend = get(name)
        if source.format not in backend.formats:
            errors.append(f"{name} does not load {source.format} models")
            continue
        present = backend.devices()
        device = _pick_device(config.device, present)
        if device is not None:
            return backend, device
        names_present = ", ".join(d.name + (" (emulated)" if d.emulated else "") for d in present) or "none"
        errors.append(f"device {config.device!r} is not available to {name}; present: {names_present}")
    hint = "" if config.device != "npu" else " (set AIPC_EMULATE_NPU=1 to run the NPU pipeline on the CPU)"
    raise DeviceNotAvailableError("; ".join(errors) + hint)


def _pick_device(wanted: str, present: list[DeviceInfo]) -> DeviceInfo | None:
    if wanted == "auto":
        for kind in DEVICE_PREFERENCE:
            for d in present:
                if d.name.split(".")[0] == kind and not d.emulated:
                    return d
        return None
    for d in present:
        if d.name == wanted or (d.name.split(".")[0] == wanted and "." not in wanted):
            return d
    return None
