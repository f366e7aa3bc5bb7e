"""The JSON Schema subset aipc constrains decoding with, the same on every backend.

OpenVINO GenAI (XGrammar), ONNX Runtime GenAI (llguidance) and llama.cpp (its GBNF converter) each support a
different part of JSON Schema, and each ignores or fails differently on the rest. aipc accepts the part all
three enforce and refuses any other keyword by name before generation starts, so a schema either constrains
the same way everywhere or is a 400 that says what to change.
"""

from __future__ import annotations

from typing import Any

from aipc.errors import InvalidConfigError

# Keywords that shape what is generated, enforced by every runtime.
CONSTRAINING = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "minLength",
        "maxLength",
        "pattern",
    }
)
# Keywords that only describe (models may read them in a prompt; decoding ignores them).
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}
)
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
MAX_DEPTH = 32


def loosened(node: Any) -> Any:
    """`node` with only the keywords aipc constrains by (and annotations): validation keywords no grammar can
    enforce (minimum, format, multipleOf, uniqueItems...) dropped, OpenAPI's `nullable` as a null type. For a
    tool's parameters, which describe its arguments to the model; the full schema still goes into the prompt."""
    if isinstance(node, list):
        return [loosened(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: loosened(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = loosened(value)
        elif key in CONSTRAINING or key in ANNOTATIONS:
            out[key] = value
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


MAX_INLINE = 4  # levels of $ref followed when inlining; a deeper (recursive) reference allows any value


def inlined(schema: Any) -> Any:
    """`schema` with its local references (`#/$defs/X`, `#/definitions/X`) replaced by what they name, and the
    definitions dropped: for a schema nested inside another (a tool's parameters inside its call), where a
    reference from the outer root would name nothing."""
    if not isinstance(schema, dict):
        return schema
    defs = {**_mapping(schema.get("definitions")), **_mapping(schema.get("$defs"))}

    def walk(node: Any, depth: int) -> Any:
        if isinstance(node, list):
            return [walk(item, depth) for item in node]
        if not isinstance(node, dict):
            return node
        rest = {k: walk(v, depth) for k, v in node.items() if k not in ("$ref", "$defs", "definitions")}
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return rest
        name = ref.rsplit("/", 1)[-1] if ref.startswith(("#/$defs/", "#/definitions/")) else None
        if name in defs and depth < MAX_INLINE:
            return {**walk(defs[name], depth + 1), **rest}
        return rest

    return walk(schema, 0)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def check(schema: Any, where: str = "json_schema") -> None:
    """Refuse a schema that uses a keyword outside the supported subset, naming the keyword and where it is."""
    _walk(schema, where, 0)


def _walk(node: Any, at: str, depth: int) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise InvalidConfigError(f"json_schema: {at} must be a schema (an object or true/false)")
    if depth > MAX_DEPTH:
        raise InvalidConfigError(f"json_schema nests deeper than {MAX_DEPTH} levels at {at}")
    for key in node:
        if key not in CONSTRAINING and key not in ANNOTATIONS:
            raise InvalidConfigError(
                f"json_schema keyword {key!r} (at {at}) is not supported by constrained decoding: "
                f"supported keywords are {', '.join(sorted(CONSTRAINING))}"
            )
    kinds = node.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in TYPES:
            raise InvalidConfigError(
                f"json_schema type {kind!r} (at {at}) is unknown: valid types are {', '.join(TYPES)}"
            )
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        raise InvalidConfigError(f"json_schema $ref {ref!r} (at {at}) must point inside the schema (#/$defs/...)")
    for key in ("properties", "$defs", "definitions"):
        children = node.get(key)
        if children is None:
            continue
        if not isinstance(children, dict):
            raise InvalidConfigError(f"json_schema: {at}.{key} must map names to schemas")
        for name, child in children.items():
            _walk(child, f"{at}.{key}.{name}", depth + 1)
    for key in ("items", "additionalProperties"):
        if key in node:
            _walk(node[key], f"{at}.{key}", depth + 1)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node:
            items = node[key]
            if not isinstance(items, list) or not items:
                raise InvalidConfigError(f"json_schema: {at}.{key} must be a non-empty list of schemas")
            for i, child in enumerate(items):
                _walk(child, f"{at}.{key}[{i}]", depth + 1)
