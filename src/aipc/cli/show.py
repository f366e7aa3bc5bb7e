"""`aipc show NAME`: what a model is, as Ollama's `show` tells it (architecture, parameters, context length,
quantization, chat template, licence, default parameters, system prompt), then each stored variant.

Facts come from the files: a GGUF header (`store.gguf_header`), a Hugging Face config.json, the store manifests,
and the catalog. Any name `aipc run` takes works, stored or not: the embedded model on a fresh store, a catalog
model not yet pulled (what the catalog knows), a created model (its base's facts, its own settings), a path.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import AipcError
from aipc.store import catalog, store


@dataclass
class Described:
    name: str
    title: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    license: str | None = None
    modelfile: str = ""
    variants: list[store.Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def command(args: argparse.Namespace) -> int:
    damaged = _damaged(args.name)
    if damaged:  # never described (nothing in it is trusted): what is wrong, and how to remove it
        if args.json:
            rows = [{"ref": v.ref, "damaged": v.problem, "path": str(v.path)} for v in damaged]
            print(json.dumps(rows, indent=2))
        else:
            print(
                "\n".join(
                    f"{v.ref}\n  DAMAGED     {v.problem}\n  path        {v.path}\n  remove it   aipc rm {v.ref}"
                    for v in damaged
                )
            )
        return 0
    info = describe(args.name)
    if args.json:
        print(json.dumps([{**v.manifest, "path": str(v.path)} for v in info.variants], indent=2, default=str))
        return 0
    if args.only:
        print(part(info, args.only))
        return 0
    print(render(info))
    return 0


def _damaged(spec: str) -> list[store.Variant]:
    """The damaged stored variants `spec` names, when it names only damaged ones (a linked or corrupt folder)."""
    from aipc.store.resolve import canonical_ref

    try:
        ref = canonical_ref(spec)
        found = store.find(ref, damaged=True)
    except AipcError:
        return []
    return found if found and all(v.problem for v in found) else []


def part(info: Described, which: str) -> str:
    """One section alone, for `show --template` etc. and the chat's `/show`."""
    if which == "template":
        return info.template or "No prompt template was specified for this model."
    if which == "system":
        return info.system or "No system message was specified for this model."
    if which == "license":
        return info.license or "No license was specified for this model."
    if which == "parameters":
        return parameter_lines(info.parameters) or "No parameters were specified for this model."
    if which == "modelfile":
        return info.modelfile
    return render(info)


def parameter_lines(parameters: dict[str, Any], indent: str = "") -> str:
    from aipc.store.modelfile import PARAMETERS

    names = {aipc: ollama for ollama, (aipc, _) in PARAMETERS.items()}
    lines = []
    for key, value in parameters.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            lines.append(f"{indent}{names.get(key, key):<16}{json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


def render(info: Described) -> str:
    out = [f"{info.name}" + (f"  ({info.title})" if info.title else ""), "  Model"]
    out += [f"    {k:<18}{v}" for k, v in info.facts.items()]
    if info.parameters:
        out += ["", "  Parameters", parameter_lines(info.parameters, "    ")]
    if info.system:
        out += ["", "  System", *_first_lines(info.system)]
    if info.template:
        out += ["", "  Template (show --template prints it whole)", *_first_lines(info.template, 2, 96)]
    if info.license:
        out += ["", "  License", *_first_lines(info.license)]
    if info.variants:
        out += ["", "  Variants"]
        for v in info.variants:
            out += _variant_lines(v)
    for note in info.notes:
        out += ["", f"  {note}"]
    return "\n".join(out)


def _first_lines(text: str, n: int = 2, width: int = 100) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    shown = [f"    {ln[:width]}{'…' if len(ln) > width else ''}" for ln in lines[:n]]
    return shown + (["    …"] if len(lines) > n else [])


def _variant_lines(v: store.Variant) -> list[str]:
    from aipc.store import caches
    from aipc.units import size_text

    m = v.manifest
    if v.variant == "alias":
        return [f"    {v.ref}", f"      from        {m.get('from')}", f"      path        {v.path}"]
    source = m.get("source", {}) if isinstance(m.get("source"), dict) else {}
    src = source.get("repo") or source.get("path") or source.get("name") or source.get("shape") or "?"
    owned = caches.owned_by(v.ref)
    cache = sum(c.size_bytes for c in owned)
    lines = [
        f"    {v.ref}",
        f"      source      {source.get('kind', '?')}: {src}",
        f"      backend     {m.get('backend') or 'any that loads ' + v.format} ({v.format})",
        f"      precision   {v.precision} for {v.device_target}",
        f"      size        {size_text(v.size_bytes)} in {_files(len(m.get('files', [])))}"
        + (f"; derived caches {size_text(cache)}" if cache else ""),
        f"      path        {v.path}",
    ]
    digest = source.get("sha256") or source.get("commit")
    if digest:
        lines.insert(2, f"      source hash {digest}")
    if m.get("recipe"):
        lines.insert(5, f"      recipe      {json.dumps(m.get('recipe', {}))}")
    if m.get("created"):
        lines.append(f"      created     {m['created']}")
    if v.synthetic:
        lines.insert(1, "      SYNTHETIC   random weights for tests and benchmarks: not a real model")
    lines += [f"      note        {note}" for note in m.get("notes", [])]
    tools = ", ".join(f"{k} {val}" for k, val in m.get("tools", {}).items())
    if tools:
        lines.append(f"      tools       {tools}")
    return lines


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n} files"


def describe(spec: str, depth: int = 0) -> Described:
    """Everything known about `spec` without loading it."""
    from aipc.store import embedded, resolve

    resolve.check(spec)
    spec = resolve.canonical_ref(spec)
    name, _, variant = spec.partition("@")
    created = resolve._created(name)
    if created is not None and depth < 8:
        return _describe_created(created, variant, depth)
    entry = catalog.CATALOG.get(name)
    path = Path(spec).expanduser()
    if entry is None and not store.find(name) and path.exists():
        return _describe_path(path)
    variants = [v for v in store.find(spec) if v.variant != resolve._CREATED]
    if variant in ("", resolve.EMBEDDED):
        variants += embedded.variants(name)
        if variant:
            variants = [v for v in variants if v.variant == variant]
    if variant and not variants:
        store.get(spec)  # raises, naming what the store has
    info = Described(name if not variant else spec)
    if entry is not None:
        info.title = entry.description
        info.parameters = dict(entry.defaults)
        info.license = entry.license or None
        if entry.parameters:
            info.facts["parameters"] = entry.parameters
    for v in variants:
        _facts_from(v.path, v.manifest, info)
    if variants:
        quant = sorted({v.precision for v in variants if v.precision})
        info.facts["quantization"] = ", ".join(quant) if quant else "-"
    elif entry is not None:
        info.notes.append(f"not in the store yet: aipc pull {name} fetches it")
    info.parameters = _sampling(spec, info.parameters) if variants else _sampling(None, info.parameters)
    info.variants = variants
    info.modelfile = _modelfile_for(info, spec)
    return info


def _sampling(spec: str | None, curated: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults `aipc run` applies (`aipc.engine.defaults`: the catalog's, else the model file's, else
    Ollama's) with the curated parameters (stop, ...) kept; `spec` None: a model not stored, nothing to read."""
    from aipc.engine import defaults

    if spec is not None:
        from aipc.store import resolve

        try:
            return {**curated, **defaults.for_source(resolve.resolve_all(spec)[0])}
        except (AipcError, IndexError):
            pass
    return {**defaults.OLLAMA, **curated}


def _describe_created(created: store.Variant, variant: str, depth: int) -> Described:
    m = created.manifest
    base = describe(m.get("from", ""), depth + 1)
    info = Described(created.name, f"made from {m.get('from')}")
    info.facts = dict(base.facts)
    info.parameters = {**base.parameters, **(m.get("parameters") or {})}
    if m.get("context_length"):
        info.facts["context length"] = (
            f"{m['context_length']} (num_ctx; the model's: {base.facts.get('context length', '?')})"
        )
    info.system = m.get("system") or base.system
    info.template = m.get("template") or base.template
    info.license = m.get("license") or base.license
    info.modelfile = m.get("modelfile") or ""
    info.variants = [created, *[v for v in base.variants if not variant or v.variant == variant]]
    return info


def _describe_path(path: Path) -> Described:
    info = Described(str(path))
    _facts_from(path, {}, info)
    info.parameters = _sampling(str(path), {})
    info.modelfile = f"FROM {path.resolve()}\n"
    return info


def _facts_from(path: Path, manifest: dict[str, Any], info: Described) -> None:
    """Fill what is not known yet from one variant's files: GGUF header, config.json, the manifest."""
    from aipc.store.gguf_header import precision, read_metadata

    facts = info.facts
    if path.is_file():
        gguf = path if path.suffix.lower() == ".gguf" else None
    else:
        gguf = next(iter(sorted(path.glob("*.gguf"))), None) if path.is_dir() else None
    if gguf is not None:
        try:
            meta = read_metadata(gguf)
        except (OSError, AipcError, ValueError) as exc:  # a broken file still shows what else is known
            info.notes.append(f"could not read {gguf.name}: {exc}")
            meta = {}
        arch = meta.get("general.architecture")
        _set(facts, "architecture", arch)
        _set(facts, "parameters", meta.get("general.size_label"))
        _set(facts, "context length", meta.get(f"{arch}.context_length"))
        _set(facts, "embedding length", meta.get(f"{arch}.embedding_length"))
        _set(facts, "layers", meta.get(f"{arch}.block_count"))
        if precision(meta) and not manifest:
            _set(facts, "quantization", precision(meta))
        if isinstance(meta.get("tokenizer.chat_template"), str) and not info.template:
            info.template = meta["tokenizer.chat_template"]
        if isinstance(meta.get("general.license"), str) and not info.license:
            info.license = meta["general.license"]
    folder = path if path.is_dir() else None
    config = _json(folder / "config.json") if folder else {}
    if config:
        _set(facts, "architecture", (config.get("architectures") or [None])[0])
        _set(facts, "context length", config.get("max_position_embeddings"))
        _set(facts, "embedding length", config.get("hidden_size"))
        _set(facts, "layers", config.get("num_hidden_layers"))
        try:
            from aipc.convert.recipes import parameter_count

            count = parameter_count(config)
            _set(facts, "parameters", f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M")
        except (KeyError, TypeError, ValueError):
            pass
    _set(facts, "architecture", manifest.get("architecture"))
    _set(facts, "context length", manifest.get("context_length"))
    if folder and not info.template:
        info.template = _folder_template(folder)


def _set(facts: dict[str, str], key: str, value: Any) -> None:
    if key not in facts and value not in (None, ""):
        facts[key] = str(value)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_template(folder: Path) -> str | None:
    """A folder's chat template: chat_template.jinja, tokenizer_config.json, or the OpenVINO tokenizer's rt_info."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(errors="replace")
    template = _json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, str):
        return template
    xml = folder / "openvino_tokenizer.xml"
    if xml.is_file():
        import xml.etree.ElementTree as ET

        try:
            for _, element in ET.iterparse(xml):
                if element.tag == "chat_template" and element.get("value"):
                    return element.get("value")
        except ET.ParseError:
            return None
    return None


def _modelfile_for(info: Described, spec: str) -> str:
    """A Modelfile that makes a model like this one (`show --modelfile`), to start `aipc create` from."""
    from aipc.store.modelfile import Modelfile, render

    params = {k: v for k, v in info.parameters.items() if k != "stop"}
    return render(Modelfile(base=spec, parameters=params))
