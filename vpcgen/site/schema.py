"""JSON Schema (Draft 2020-12) validation of the site's documents.

The schema files under ``vpcgen/site/schemas`` are the single source of truth for the input's shape;
this module only turns jsonschema's errors into located, readable diagnostics.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources

import jsonschema_rs

from ..errors import Diagnostic
from .loader import Document, Loading, start_load

KINDS = ("site", "zone", "vpc", "acl", "lock")  # lock: allocations.lock.yaml, untrusted like the rest
SECRET_DEF = "secret"  # defs.schema.json's secret reference: every field that takes a secret uses it


def schema_text(kind: str) -> str:
    return resources.files("vpcgen.site").joinpath("schemas", f"{kind}.schema.json").read_text(encoding="utf-8")


def _inline(node, defs: dict):
    """The schema with every reference to defs.schema.json replaced by the definition itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            name = ref.split("#/$defs/", 1)[1]
            target = _inline(copy.deepcopy(defs[name]), defs)
            rest = {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
            if "pattern" in target and "description" in target:  # what a value must look like, for errors
                rest["x-pattern-hint"] = target["description"]
            if name == SECRET_DEF:  # a field that takes a secret: its value is never shown in a message
                rest["x-secret"] = True
            return {**target, **rest}
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


@cache
def inlined(kind: str) -> dict:
    """The schema of ``kind`` with every reference to defs.schema.json resolved (do not modify it)."""
    return _inline(json.loads(schema_text(kind)), json.loads(schema_text("defs"))["$defs"])


def default(kind: str, *path: str):
    """The schema's ``default`` of a property, e.g. ``default("vpc", "tiers", "acl")`` -> "default_deny".

    ``path`` names properties only: arrays are stepped into (their items) on the way. The defaults
    of the input live in the schemas, so that editors, docs/site-reference.md and the intent agree.
    A KeyError means the schema gives no literal default there (it depends on other values).
    """
    value = _default(kind, path)
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


@cache
def _default(kind: str, path: tuple):
    node = inlined(kind)
    for key in path:
        while node.get("type") == "array":
            node = node["items"]
        node = node["properties"][key]
    return node["default"]


@cache
def _fast(kind: str):
    """jsonschema-rs's validator of ``kind``'s schema (Draft 2020-12, in Rust): the yes/no gate. It
    checks a site's documents 12x faster than fastjsonschema's generated Python and builds in 1 ms,
    where fastjsonschema took 0.18 s in every process that reads the site."""
    return jsonschema_rs.validator_for(inlined(kind))


@cache
def _exact(kind: str):
    """jsonschema's validator of ``kind`` (exact, located errors); imported only when a document
    fails the fast one (its import alone is a noticeable part of a build's start-up)."""
    from jsonschema import Draft202012Validator
    return Draft202012Validator(inlined(kind))


def _validators() -> dict[str, tuple]:
    """Per kind: the compiled yes/no validator (fast) and jsonschema's (exact). Both read the same
    schema files. Only documents the fast one rejects go through jsonschema, whose errors are the
    ones reported, so the messages never depend on the fast path."""
    return {kind: (_fast(kind), _exact(kind)) for kind in KINDS}


def validate_document(doc: Document) -> list[Diagnostic]:
    fast = _fast(doc.kind)
    try:
        if fast.is_valid(doc.data):
            return []
    except Exception:  # noqa: BLE001 - a value it cannot take (an integer beyond 64 bits): jsonschema decides
        fast = None
    found = [_diagnostic(doc, error) for error in _exact(doc.kind).iter_errors(doc.data)]
    if not found and fast is not None:  # the two validators disagree: the document is still refused, never passed
        rejected = next(iter(fast.iter_errors(doc.data)), None)
        path = tuple(rejected.instance_path) if rejected is not None else ()
        shown = "value not shown" if rejected is None or _secret_field(doc.kind, path) or \
            _holds_secret(doc.kind, path) else rejected.message
        found = [Diagnostic(doc.loc(path), f"{_describe(path)}: {shown}", "schema-rejected")]
    return found


def start_reading(site_dir) -> Loading:
    """The site's files being read (``loader.start_load``), each document checked against its
    schema by the process that reads it."""
    return start_load(site_dir, check=validate_document)


def secret_paths(kind: str) -> list[tuple]:
    """The JSON paths (array items as 0) of every field of ``kind`` that takes a secret."""
    out: list[tuple] = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        if node.get("x-secret"):
            out.append(path)
            return
        for key, child in node.get("properties", {}).items():
            walk(child, path + (key,))
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + (0,))
        for combinator in ("anyOf", "oneOf", "allOf"):
            for child in node.get(combinator, []):
                walk(child, path)

    walk(inlined(kind), ())
    return sorted(set(out), key=str)


@cache
def secret_paths_cached(kind: str) -> tuple:
    return tuple(secret_paths(kind))


def _shape(path) -> tuple:
    return tuple(0 if isinstance(p, int) else p for p in path)


def _secret_field(kind: str, path: tuple) -> tuple | None:
    """The secret field that ``path`` is or lies inside of, if any."""
    shape = _shape(path)
    return next((s for s in secret_paths_cached(kind) if shape[:len(s)] == s), None)


def _holds_secret(kind: str, path: tuple) -> bool:
    """Whether the value at ``path`` contains a field that takes a secret."""
    shape = _shape(path)
    return any(s[:len(shape)] == shape for s in secret_paths_cached(kind))


# validators whose message shows the value (or a key) it rejected
_SHOWS_VALUE = {"type", "enum", "pattern", "anyOf", "oneOf", "const", "propertyNames", "format"}


def _describe(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "document"


def _diagnostic(doc: Document, error) -> Diagnostic:
    path = tuple(error.absolute_path)
    secret = _secret_field(doc.kind, path)
    if secret is not None:  # a secret field in any shape but {secret: NAME}: one message, no value, no key
        message = (f"{_describe(path[:len(secret)])} must be a reference {{secret: NAME}} to a secret, never the value "
                   "itself (value not shown; the value goes to VPCGEN_SECRET_<NAME> or secrets/<NAME>)")
        return Diagnostic(doc.loc(path[:len(secret)]), message, f"schema-{error.validator}")
    if _holds_secret(doc.kind, path) and error.validator == "type":  # the kind of value, never the value
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        message = (f"the document must be a mapping (got {_kind_of(error.instance)})" if path == () else
                   f"{_describe(path)} must be {_article(expected)} (got {_kind_of(error.instance)})")
        return Diagnostic(doc.loc(path), message, "schema-type")
    if _holds_secret(doc.kind, path) and (error.validator in _SHOWS_VALUE
                                          or "propertyNames" in error.relative_schema_path):
        message = f"{_describe(path)} is not valid: {_shape_hint(error)} (value not shown: it may hold a secret)"
        return Diagnostic(doc.loc(path), message, f"schema-{error.validator}")
    if "propertyNames" in error.relative_schema_path:  # a bad key: point at the key itself
        what = f"key {_short(error.instance)} of {_describe(path)}"
        return Diagnostic(doc.loc(path + (error.instance,), key=True),
                          f"{what} is not valid ({_pattern_hint(error.schema)})" if error.validator == "pattern"
                          else f"{what}: {error.message}", f"schema-{error.validator}")
    what = _describe(path)
    validator = error.validator
    key_loc = False
    if validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        path = path + (extra[0],)
        key_loc = True
        message = f"unknown key '{extra[0]}' in {what} (allowed: {allowed})"
        if len(extra) > 1:
            message = f"unknown keys {', '.join(repr(e) for e in extra)} in {what} (allowed: {allowed})"
    elif validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        message = f"{what} is missing the required key '{missing[0]}'"
    elif validator == "type":
        expected = error.validator_value
        if isinstance(expected, list):
            expected = " or ".join(expected)
        if path == ():
            message = f"the document must be a mapping (got {_kind_of(error.instance)})"
        else:
            message = f"{what} must be {_article(expected)} (got {_kind_of(error.instance)} {_short(error.instance)})"
    elif validator == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        message = f"{what} must be one of {choices} (got {_short(error.instance)})"
    elif validator == "pattern":
        message = f"{what}: {_short(error.instance)} is not valid ({_pattern_hint(error.schema)})"
    elif validator in ("minimum", "maximum"):
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        message = f"{what} must be between {low} and {high} (got {error.instance})"
    elif validator == "multipleOf":
        message = f"{what} must be a multiple of {error.validator_value} (got {error.instance})"
    elif validator == "maxLength":
        message = f"{what} is longer than {error.validator_value} characters"
    elif validator in ("minItems", "maxItems"):
        n = error.validator_value
        bound = "at least" if validator == "minItems" else "at most"
        message = f"{what} must have {bound} {n} item{'s' if n != 1 else ''}"
    elif validator == "anyOf":
        descr = error.schema.get("description", "one of the allowed forms")
        message = f"{what} must be {descr} (got {_short(error.instance)})"
    else:  # pragma: no cover - any keyword not mapped above still gets a located message
        message = f"{what}: {error.message}"
    return Diagnostic(doc.loc(path, key=key_loc), message, f"schema-{validator}")


def _shape_hint(error) -> str:
    expected = error.schema.get("type")
    if error.validator == "type" and expected:
        return f"it must be {_article(' or '.join(expected) if isinstance(expected, list) else expected)}"
    if error.validator == "additionalProperties":
        return f"allowed keys: {', '.join(sorted(error.schema.get('properties', {})))}"
    return error.validator


def _pattern_hint(schema: dict) -> str:
    return schema.get("x-pattern-hint") or schema.get("description") or f"expected to match {schema['pattern']}"


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _kind_of(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
