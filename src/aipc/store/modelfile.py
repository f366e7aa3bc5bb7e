"""A Modelfile, as Ollama writes them, for `aipc create NAME -f FILE`.

    FROM smollm2:135m               # a model name or alias, NAME@VARIANT, or a path (.gguf, IR/ONNX/HF folder)
    SYSTEM You are a pirate.
    PARAMETER temperature 0.4
    PARAMETER stop "<|im_end|>"     # repeatable
    TEMPLATE \"\"\"{% for m in messages %}...{% endfor %}\"\"\"
    LICENSE \"\"\"...\"\"\"
    MESSAGE user Hello              # example turns shown when a chat starts

Instructions are case-insensitive, `#` starts a comment line, and a value may span lines between triple quotes.
TEMPLATE is a Jinja2 chat template (as Hugging Face models ship), not Ollama's Go template: `{{ .Prompt }}` is
refused with a message naming the difference. Parameters take Ollama's names and map to aipc's options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import UsageError

# Ollama's parameter names -> aipc's GenerationConfig fields (num_ctx caps the context instead).
PARAMETERS = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "seed": ("seed", int),
    "num_predict": ("max_tokens", int),
    "repeat_penalty": ("repetition_penalty", float),
    "stop": ("stop", str),
    "num_ctx": ("context_length", int),
}
INSTRUCTIONS = ("from", "system", "parameter", "template", "license", "message", "adapter")
ROLES = ("system", "user", "assistant")
MAX_BYTES = 1 << 20
_GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.[A-Za-z]|range\b|end\b|if\s+\.|else\b|with\b|template\b)")


@dataclass
class Modelfile:
    base: str = ""
    system: str | None = None
    template: str | None = None
    license: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # aipc's option names
    context_length: int | None = None
    messages: list[dict[str, str]] = field(default_factory=list)


def parse_file(path: Path) -> Modelfile:
    """Read and parse a Modelfile; FROM paths are taken relative to the file's folder."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the Modelfile {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"the Modelfile {path} is over {MAX_BYTES // 1024} KB: is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the Modelfile {path} is not UTF-8 text") from None
    return parse(text, base_dir=path.parent)


def parse(text: str, base_dir: Path | None = None, *, paths: bool = True) -> Modelfile:
    """Parse Modelfile text; every mistake is one line naming the line number and what is valid. `paths=False`
    (a server's request) refuses a FROM path without looking at the file system."""
    mf = Modelfile()
    for number, instruction, value in _commands(text):
        where = f"Modelfile line {number}"
        if instruction == "from":
            mf.base = base_of(value, base_dir, where, paths=paths)
        elif instruction == "system":
            mf.system = value
        elif instruction == "template":
            mf.template = check_template(value, f"{where}: TEMPLATE")
        elif instruction == "license":
            mf.license = value
        elif instruction == "parameter":
            apply_parameter(mf, value, where)
        elif instruction == "message":
            role, _, content = value.partition(" ")
            if role.lower() not in ROLES or not content.strip():
                raise UsageError(f"{where}: MESSAGE takes a role ({', '.join(ROLES)}) and its text, got {value!r:.60}")
            mf.messages.append({"role": role.lower(), "content": content.strip()})
        elif instruction == "adapter":
            raise UsageError(f"{where}: ADAPTER (LoRA) is not supported by aipc; convert the merged model instead")
    if not mf.base:
        raise UsageError("the Modelfile has no FROM line: name the base model (e.g. FROM smollm2:135m)")
    return mf


def _commands(text: str):
    """(line number, instruction, value) per instruction, values with triple quotes joined across lines."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number = i + 1
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        instruction = word.lower()
        if instruction not in INSTRUCTIONS:
            valid = ", ".join(w.upper() for w in INSTRUCTIONS if w != "adapter")
            raise UsageError(f"Modelfile line {number}: unknown instruction {word!r}: valid are {valid}")
        rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            if body.endswith('"""'):
                rest = body[:-3]
            else:
                parts = [body]
                while True:
                    if i >= len(lines):
                        raise UsageError(f'Modelfile line {number}: {word.upper()} opens """ but never closes it')
                    following = lines[i].rstrip()
                    i += 1
                    if following.endswith('"""'):
                        parts.append(following[:-3])
                        break
                    parts.append(following)
                rest = "\n".join(parts).strip("\n")
        elif len(rest) >= 2 and rest[0] == rest[-1] == '"' and instruction != "parameter":
            rest = rest[1:-1]
        if not rest.strip() and instruction != "system":
            raise UsageError(f"Modelfile line {number}: {word.upper()} needs a value")
        yield number, instruction, rest


def base_of(value: str, base_dir: Path | None, where: str, *, paths: bool = True) -> str:
    from aipc.store import resolve

    value = value.strip()
    if not paths and (resolve._looks_like_path(value) or "/" in value or "\\" in value):
        raise UsageError(
            f"{where}: FROM {value!r}: this server does not open model files or folders (start it with --allow-paths)"
        )
    if resolve._looks_like_path(value) or (base_dir is not None and (base_dir / value).exists()):
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.exists():
            raise UsageError(f"{where}: FROM {value}: no such file or folder")
        return str(path.resolve())
    if any(c.isspace() for c in value):
        raise UsageError(f"{where}: FROM takes one model name or path, got {value!r}")
    return resolve.canonical_ref(value)


def apply_parameter(mf: Modelfile, value: str, where: str) -> None:
    """One `PARAMETER name value` line's text."""
    name, _, raw = value.partition(" ")
    name = name.strip().lower()
    raw = raw.strip()
    if name not in PARAMETERS:
        raise UsageError(f"{where}: unknown parameter {name!r}: valid are {', '.join(PARAMETERS)}")
    if not raw:
        raise UsageError(f"{where}: PARAMETER {name} needs a value")
    kind = PARAMETERS[name][1]
    if kind is str:
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = _unquoted(raw)
        set_parameter(mf, name, raw, where)
        return
    try:
        number = kind(raw)
    except ValueError:
        raise UsageError(
            f"{where}: PARAMETER {name} takes {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None
    set_parameter(mf, name, number, where)


def _unquoted(raw: str) -> str:
    """A quoted value, its escapes read as JSON's (`"\\n"` is a newline, as `render` writes one); a value that
    is not valid JSON (a lone backslash) keeps its text between the quotes."""
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        return raw[1:-1]
    return value if isinstance(value, str) else raw[1:-1]


def set_parameter(mf: Modelfile, name: str, value: Any, where: str) -> None:
    """Ollama's parameter `name` (a known one) set to a typed value: a number, or a string for `stop` (each one
    more stop string)."""
    field_name, kind = PARAMETERS[name]
    if kind is str:
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: {name} takes a non-empty string, got {value!r:.60}")
        mf.parameters.setdefault("stop", []).append(value)
        return
    whole = isinstance(value, float) and value.is_integer()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not (isinstance(value, int) or whole))
    ):
        raise UsageError(f"{where}: {name} takes {'an integer' if kind is int else 'a number'}, got {value!r:.60}")
    number = kind(value)
    if field_name == "max_tokens" and number < 0:  # Ollama's -1 (no limit) and -2 (fill the context)
        mf.parameters.pop("max_tokens", None)
        return
    if field_name == "context_length":
        if number < 2:
            raise UsageError(f"{where}: num_ctx must be at least 2 tokens, got {number}")
        mf.context_length = number
        return
    from aipc.engine.config import GenerationConfig
    from aipc.errors import InvalidConfigError

    try:
        GenerationConfig().updated(**{field_name: number})  # the same validation as --temperature etc.
    except InvalidConfigError as exc:
        raise UsageError(f"{where}: {exc}") from None
    mf.parameters[field_name] = number


def from_fields(
    base: str,
    *,
    system: str | None = None,
    template: str | None = None,
    license: str | list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
    ignored: frozenset[str] = frozenset(),
    where: str = "",
) -> Modelfile:
    """A Modelfile from its instructions as separate values (Ollama's /api/create body): `parameters` by
    Ollama's names, each a value or a list of values; names in `ignored` (runner tuning) are skipped."""
    mf = Modelfile(base=base_of(base, None, f"{where}from"), system=system or None, license=None)
    if isinstance(license, list):
        license = "\n\n".join(str(part) for part in license)
    mf.license = license or None
    if template:
        mf.template = check_template(template, f"{where}template")
    for name, value in (parameters or {}).items():
        key = str(name).lower()
        if key in ignored:
            continue
        if key not in PARAMETERS:
            raise UsageError(f"{where}parameters: unknown parameter {name!r}: valid are {', '.join(PARAMETERS)}")
        for item in value if isinstance(value, list) else [value]:
            set_parameter(mf, key, item, f"{where}parameters.{key}")
    for i, m in enumerate(messages or []):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str) or not content.strip():
            raise UsageError(f"{where}messages[{i}] takes a role ({', '.join(ROLES)}) and its text")
        mf.messages.append({"role": role, "content": content.strip()})
    return mf


def check_template(source: str, where: str = "TEMPLATE") -> str:
    """A Jinja2 chat template that compiles and renders a sample conversation in the sandbox; Go templates refused."""
    if _GO_TEMPLATE.search(source):
        raise UsageError(
            f"{where} uses Go template syntax ({{{{ .Prompt }}}}, {{{{ range .Messages }}}}), which is "
            "Ollama's; aipc's templates are Jinja2 chat templates as Hugging Face models ship them: loop over "
            "messages ({% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}) and open the "
            "answer when add_generation_prompt is true"
        )
    from aipc.engine import template

    sample = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}]
    try:
        text = template.render(source, sample)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if "Hello" not in text:
        raise UsageError(f"{where} never writes the messages' content (m['content'])")
    return source


def render(mf: Modelfile) -> str:
    """The Modelfile text of a created model (for `aipc show --modelfile`); `parse` reads it back as it was."""
    import json

    out = [f"FROM {mf.base}"]
    if mf.system:
        out.append(f'SYSTEM """{mf.system}"""')
    for key, value in mf.parameters.items():
        name = next(n for n, (f, _) in PARAMETERS.items() if f == key)
        for v in value if isinstance(value, list) else [value]:
            out.append(f"PARAMETER {name} {json.dumps(v)}" if isinstance(v, str) else f"PARAMETER {name} {v}")
    if mf.context_length:
        out.append(f"PARAMETER num_ctx {mf.context_length}")
    if mf.template:
        out.append(f'TEMPLATE """{mf.template}"""')
    if mf.license:
        out.append(f'LICENSE """{mf.license}"""')
    out += [f"MESSAGE {m['role']} {m['content']}" for m in mf.messages]
    return "\n".join(out) + "\n"
