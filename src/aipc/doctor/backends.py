"""The other runtimes, briefly: installed or not, which devices each can use here (ONNX Runtime GenAI's
execution providers, llama.cpp's GPU offload), and the converters `aipc convert` needs. OpenVINO has its own
section (doctor/openvino.py)."""

from __future__ import annotations

import importlib.util

from aipc.doctor import links
from aipc.doctor.check import INFO, OK, WARN, Check
from aipc.doctor.sysroot import SysRoot

AREA = "backends"
OWN_SECTION = "openvino"  # diagnosed in depth by doctor/openvino.py
# How each runtime gains a GPU, for the line that says it has none.
GPU_HINTS = {
    "onnxruntime": (
        "pip install onnxruntime-genai-cuda (NVIDIA) or onnxruntime-genai-directml (Windows)",
        links.ORT_GENAI,
    ),
    "llamacpp": ("reinstall llama-cpp-python built with CUDA, Vulkan or SYCL", links.LLAMA_CPP_PYTHON),
    "torch": ("a CUDA or XPU build of torch", ""),
}


def checks(root: SysRoot) -> list[Check]:
    from aipc.backends import registry
    from aipc.errors import BackendUnavailableError

    if not root.is_real:  # importing every runtime only to describe another machine would cost seconds
        return [Check(AREA, "other runtimes", INFO, "not probed under AIPC_SYSROOT"), _converters()]
    out = []
    for name in registry.names():
        if name == OWN_SECTION:
            continue
        try:
            backend = registry.get(name)
        except BackendUnavailableError as exc:
            out.append(Check(AREA, name, INFO, f"not installed: {exc}"))
            continue
        try:
            kinds = sorted({d.name.split(".")[0] for d in backend.devices()}, key=("npu", "gpu", "cpu").index)
        except Exception as exc:  # a runtime that fails to enumerate is reported, not fatal
            out.append(Check(AREA, name, WARN, f"installed, but listing its devices failed: {exc}"))
            continue
        detail = ", ".join(kinds)
        if "gpu" not in kinds and name in GPU_HINTS:
            detail += f"; no GPU in this build ({GPU_HINTS[name][0]})"
        out.append(Check(AREA, name, OK, detail, serves=tuple(kinds)))
    out.append(_converters())
    return out


def _converters() -> Check:
    missing = [m for m in ("optimum.intel", "onnxruntime_genai.models.builder", "gguf") if not _importable(m)]
    from aipc.convert.targets import llama_cpp_dir

    try:
        llama_cpp_dir()
    except Exception:  # any reason it cannot be found is "missing"
        missing.append("llama.cpp's convert_hf_to_gguf.py")
    if missing:
        return Check(AREA, "converters", WARN, "missing: " + ", ".join(missing), "scripts/setup.sh convert")
    return Check(AREA, "converters", OK, "OpenVINO, ONNX and GGUF exporters")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
