"""The one place that knows backend names. Each maps to a lazily imported module, so choosing a backend
imports only that runtime, and `aipc --help` imports none."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from aipc.backends.base import BackendType, DeviceInfo
from aipc.engine.config import LoadConfig
from aipc.errors import BackendUnavailableError, DeviceNotAvailableError
from aipc.store.resolve import ModelSource

# name -> (module, class, the pip extra or package that provides its runtime, model formats it loads).
# The formats live here so choosing a backend imports only the runtimes that could load the model.
BACKENDS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "openvino": ("aipc.backends.openvino", "OpenVINOBackend", "openvino-genai", ("openvino-ir", "gguf")),
    "onnxruntime": ("aipc.backends.onnxruntime", "OnnxRuntimeBackend", "aipc[onnx]", ("onnx-genai",)),
    "llamacpp": ("aipc.backends.llamacpp", "LlamaCppBackend", "aipc[llamacpp]", ("gguf",)),
    "torch": ("aipc.backends.torch", "TorchBackend", "aipc[convert]", ("hf",)),
}
# Backends with a second, continuous-batching mode, opened when LoadConfig.parallel > 1 on a device it supports.
BATCHED: dict[str, tuple[str, str]] = {
    "openvino": ("aipc.backends.openvino_batched", "OpenVINOBatchedBackend"),
}
# Backends whose opened models have `scorer()` (teacher-forced log-probs, for `aipc eval`).
SCORING = ("openvino", "onnxruntime", "llamacpp", "torch")
# Backends whose opened models have `embedder()` (text embeddings: /api/embed, /v1/embeddings).
EMBEDDING = ("openvino", "llamacpp", "torch")
# Devices in the order `--device auto` prefers them: the NPU is the AI PC's efficient path.
DEVICE_PREFERENCE = ("npu", "gpu", "cpu")


def names() -> list[str]:
    return list(BACKENDS)


def get(name: str) -> BackendType:
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}: valid backends are auto, {', '.join(BACKENDS)}")
    module, cls, package, _formats = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} needs the {package} package, which is not importable ({exc}): pip install {package}"
        ) from None


def choose(source: ModelSource, config: LoadConfig) -> tuple[BackendType, DeviceInfo]:
    """The backend and device to open `source` with, honouring explicit choices and preferring the NPU."""
    backend, device, _ = choose_source([source], config)
    return backend, device


def choose_source(sources: list[ModelSource], config: LoadConfig) -> tuple[BackendType, DeviceInfo, ModelSource]:
    """The first of `candidates`; none at all is an error naming what is present."""
    for choice in candidates(sources, config):
        return choice
    raise AssertionError("unreachable: candidates() raises when it has nothing")


def candidates(sources: list[ModelSource], config: LoadConfig) -> Iterator[tuple[BackendType, DeviceInfo, ModelSource]]:
    """(backend, device, source) choices, best first: the most preferred device first, then the best source a
    backend can load there. An explicit backend or device narrows the search. The engine falls back along
    this order when a load fails; if there is no choice at all, the error names what is present."""
    errors: list[str] = []
    wanted = names() if config.backend == "auto" else [config.backend]
    if config.backend != "auto":
        get(config.backend)  # an unknown or uninstalled explicit backend is an error at once
    formats = {s.format for s in sources}
    opened: dict[str, BackendType | None] = {}
    present: dict[str, list[DeviceInfo]] = {}
    found = False

    def backend(name: str) -> BackendType | None:
        """Import a runtime the first time it could serve, remembering why one is unavailable."""
        if name not in opened:
            try:
                opened[name] = get(name)
                present[name] = opened[name].devices()
            except BackendUnavailableError as exc:
                opened[name] = None
                errors.append(str(exc))
        return opened[name]

    for kind in _device_order(config.device):
        fastest = _measured_fastest(sources, kind)
        for source in sorted(sources, key=lambda s: (s.device_target != kind, fastest is None or s != fastest[1])):
            first = fastest[0] if fastest and source == fastest[1] else source.backend
            for name in sorted(wanted, key=lambda n: n != first):
                if source.format not in BACKENDS[name][3] or (b := backend(name)) is None:
                    continue
                device = _pick_device(kind, present[name], auto=config.device == "auto")
                if device is not None and _suits(source, device):
                    found = True
                    yield _batched(name, config, device) or b, device, source
    if found:
        return
    loaders = [n for n in wanted if formats & set(BACKENDS[n][3]) and backend(n) is not None]
    if loaders:
        have = ", ".join(
            f"{n} (present: {', '.join(d.name + (' emulated' if d.emulated else '') for d in present[n])})"
            for n in loaders
        )
        problem = f"device {config.device!r} is not available to {have}"
    else:
        who = "no backend" if config.backend == "auto" else f"backend {config.backend!r} does not"
        valid = "; ".join(f"{n}: {', '.join(BACKENDS[n][3])}" for n in wanted)
        problem = "; ".join([f"{who} load {'/'.join(sorted(formats))} models (formats: {valid})", *errors])
    hint = "" if config.device != "npu" else " (set AIPC_EMULATE_NPU=1 to run the NPU pipeline on the CPU)"
    raise DeviceNotAvailableError(problem + hint)


def _measured_fastest(sources: list[ModelSource], kind: str) -> tuple[str, ModelSource] | None:
    """The (backend, source) `aipc bench` measured fastest for this model on this device kind, if recorded."""
    from aipc.bench.record import preferred

    if not sources:
        return None
    best = preferred(sources[0].name, kind)
    if best is None:
        return None
    backend, variant = best
    match = next((s for s in sources if s.variant == variant), None)
    return (backend, match) if match is not None else None


def _device_order(wanted: str) -> tuple[str, ...]:
    """auto: NPU, GPU, CPU; otherwise the device, or the user's own preference list (`npu,cpu`)."""
    return DEVICE_PREFERENCE if wanted == "auto" else tuple(wanted.split(","))


def _suits(source: ModelSource, device: DeviceInfo) -> bool:
    """NPU-targeted variants run only on the NPU; the others run anywhere their backend does."""
    on_npu = device.name.startswith("npu")
    return on_npu if source.device_target == "npu" else True


def _batched(name: str, config: LoadConfig, device: DeviceInfo) -> BackendType | None:
    """The batching mode of backend `name` when more than one generation should run at once and it can."""
    if config.parallel <= 1 or name not in BATCHED:
        return None
    module, cls = BATCHED[name]
    batched = getattr(importlib.import_module(module), cls)()
    return batched if batched.supports(device) else None


def _pick_device(wanted: str, present: list[DeviceInfo], *, auto: bool = False) -> DeviceInfo | None:
    """The present device of kind `wanted` (cpu, gpu, gpu.1, npu); `auto` skips emulated devices."""
    for d in present:
        if auto and d.emulated:
            continue
        if d.name == wanted or (d.name.split(".")[0] == wanted and "." not in wanted):
            return d
    return None
