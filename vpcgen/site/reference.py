"""docs/site-reference.md: every field of every site file, generated from the JSON Schemas.

``python -m vpcgen.site.reference > docs/site-reference.md`` regenerates the document; a test keeps it
equal to :func:`reference`. Types, defaults and constraints come from the schemas' keywords, the
prose from their ``description``s. An example value comes from the property's own ``examples``,
else from the shipped example site (``sites/example``, where the field is used), else from the
``examples`` of the value format it refers to.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .loader import load_site
from .schema import schema_text

EXAMPLE_SITE = Path(__file__).resolve().parents[2] / "sites" / "example"

# (schema kind, the file it describes, the folder of a complete example in sites/example)
FILES = (
    ("site", "site.yaml", "site.yaml"),
    ("zone", "zones/<zone>.yaml", "zones/zone1.yaml"),
    ("vpc", "vpcs/<vpc>.yaml", "vpcs/shop.yaml"),
    ("acl", "acls/<acl>.yaml", "acls/web.yaml"),
    ("lock", "allocations.lock.yaml", "allocations.lock.yaml"),
)
# what the keys of a mapping stand for, by the mapping's own key (additionalProperties)
MAP_KEYS = {"vpcs": "<vpc>", "transit": "<router>", "public_ips": "<public_ip>", "tiers": "<tier>",
            "reload": "<service>", "check": "<service>", "health": "<service>"}
MAX_EXAMPLE = 100  # characters: a longer example (a whole list of tiers) is left to the example site


@dataclass
class Field:
    path: str  # dotted: tiers[].dhcp.lease_s, vpcs.<vpc>.zone
    steps: tuple  # keys, "[]" for every item of a list, "<>" for every value of a mapping
    local: dict  # the property as written in its schema file
    node: dict  # the property with its $ref resolved (local keywords win)
    target: dict | None  # the value format ($defs entry) it refers to
    required: bool
    inherited: object = None  # the parent object's default for this key, if any
    has_inherited: bool = False
    shared: bool = False  # a property of a shared definition (defs.schema.json), not of this file


def _defs() -> dict:
    return json.loads(schema_text("defs"))["$defs"]


def _resolve(node: dict, defs: dict) -> tuple[dict, dict | None]:
    ref = node.get("$ref")
    if ref is None:
        return node, None
    target = defs[ref.split("#/$defs/", 1)[1]]
    inner, _ = _resolve(target, defs)
    return {**inner, **{k: v for k, v in node.items() if k != "$ref"}}, inner


def fields(kind: str) -> list[Field]:
    """Every field of a kind's documents, depth first in schema order."""
    defs = _defs()
    out: list[Field] = []

    def walk(node: dict, prefix: str, steps: tuple, shared: bool = False) -> None:
        required = set(node.get("required", ()))
        parent_default = node.get("default") if isinstance(node.get("default"), dict) else {}
        parent_words = node.get("x-default")  # a computed default of the whole object: of each field too
        for key, local in node.get("properties", {}).items():
            resolved, target = _resolve(local, defs)
            path = f"{prefix}{key}"
            if parent_words and "default" not in resolved and "x-default" not in resolved:
                resolved = {**resolved, "x-default": f"{parent_words}.{key}"}
            out.append(Field(path, steps + (key,), local, resolved, target, key in required,
                             parent_default.get(key), key in parent_default, shared))
            below(resolved, path, steps + (key,), shared or target is not None)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            resolved, target = _resolve(extra, defs)
            name = MAP_KEYS.get(steps[-1] if steps else "", "<name>")
            path = f"{prefix}{name}"
            if "properties" in resolved:
                walk(resolved, path + ".", steps + ("<>",), shared or target is not None)
            else:  # a mapping of plain values: the values are the fields, examples from the mapping's
                examples = [v for e in node.get("examples", ()) if isinstance(e, dict) for v in e.values()]
                local = {**extra, "examples": examples} if examples else extra
                out.append(Field(path, steps + ("<>",), local, resolved, target, False, shared=shared))

    def below(node: dict, path: str, steps: tuple, shared: bool) -> None:
        if "properties" in node or isinstance(node.get("additionalProperties"), dict):
            walk(node, path + ".", steps, shared)
        items = node.get("items")
        if isinstance(items, dict):
            resolved, target = _resolve(items, defs)
            if "properties" in resolved:
                walk(resolved, path + "[].", steps + ("[]",), shared or target is not None)

    walk(json.loads(schema_text(kind)), "", ())
    return out


# ---- what a field is -------------------------------------------------------------------------

def _type(node: dict, defs: dict) -> str:
    if "anyOf" in node:
        return " or ".join(dict.fromkeys(_type(_resolve(a, defs)[0], defs) for a in node["anyOf"]))
    if "enum" in node:
        kinds = dict.fromkeys("boolean" if isinstance(v, bool) else "integer" if isinstance(v, int) else "string"
                              for v in node["enum"])
        return " or ".join(kinds)
    t = node.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array":
        items = _resolve(node.get("items", {}), defs)[0]
        inner = _type(items, defs)
        return f"list of {'mappings' if inner == 'mapping' else inner + 's'}"
    if t == "object":
        props = node.get("properties", {})
        if list(props) == ["secret"] and node.get("required") == ["secret"]:
            return "secret reference {secret: NAME}"
        return "mapping"
    return t or "any"


def _code(value) -> str:
    text = _yaml(value)
    return f"`{text}`"


def _yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def _range(low, high, unit: str = "") -> str | None:
    if low is not None and high is not None:
        return f"{low} to {high}{unit}"
    if low is not None:
        return f"at least {low}{unit}"
    if high is not None:
        return f"at most {high}{unit}"
    return None


def _format(node: dict, target: dict | None, item: bool = False) -> list[str]:
    """Constraints on a value, in words."""
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    if "anyOf" in node:
        forms = []
        for alt in node["anyOf"]:
            if "enum" in alt:
                forms.append(", ".join(_code(v) for v in alt["enum"]))
            else:
                forms.append(f"{alt.get('type', 'a value')} {_range(alt.get('minimum'), alt.get('maximum'))}")
        out.append("one of " + ", or ".join(forms))
    value_range = _range(node.get("minimum"), node.get("maximum"))
    if value_range:
        out.append(value_range if node.get("type") == "integer" else f"as an integer: {value_range}")
    if "multipleOf" in node:
        out.append(f"a multiple of {node['multipleOf']}")
    length = _range(node.get("minLength"), node.get("maxLength"), " characters")
    if length:
        out.append(length)
    if "pattern" in node:
        if target is not None and "pattern" in target and "description" in target:
            out.append(f"format: {_prose(target['description'].rstrip('.'))}")
        else:
            out.append(f"matches `{node['pattern']}`")
    if "propertyNames" in node and "enum" in node["propertyNames"]:
        out.append("keys: " + ", ".join(_code(v) for v in node["propertyNames"]["enum"]))
    return [f"each item: {c}" if item else c for c in out]


def _constraints(f: Field, defs: dict) -> str:
    node = f.node
    out = ["required" if f.required else "optional"]
    items = _range(node.get("minItems"), node.get("maxItems"), " items")
    if items:
        out.append(items.replace("at least 1 items", "at least 1 item"))
    out += _format(node, f.target)
    if isinstance(node.get("items"), dict):
        item, item_target = _resolve(node["items"], defs)
        if "properties" not in item:
            out += _format(item, item_target, item=True)
    return "; ".join(out)


def _default(f: Field) -> str:
    if "default" in f.node:
        return _code(f.node["default"])
    if "x-default" in f.node:
        return f"*{f.node['x-default']}*"
    if f.has_inherited:
        return _code(f.inherited)
    return "—"


# ---- examples ---------------------------------------------------------------------------------

def _values(data, steps: tuple):
    """Every value at ``steps`` in a document, in document order (mapping values by sorted key)."""
    if not steps:
        yield data
        return
    step, rest = steps[0], steps[1:]
    if step == "[]":
        if isinstance(data, list):
            for item in data:
                yield from _values(item, rest)
    elif step == "<>":
        if isinstance(data, dict):
            for key in sorted(data):
                yield from _values(data[key], rest)
    elif isinstance(data, dict) and step in data:
        yield from _values(data[step], rest)


def example_documents(site: Path = EXAMPLE_SITE) -> dict[str, list]:
    """The example site's documents per kind, in file order."""
    if not (site / "site.yaml").is_file():
        raise FileNotFoundError(f"{site}: the example site is needed for the examples of the reference")
    files, problems = load_site(site)
    if problems:
        raise ValueError(f"{site}: the example site does not load: {problems[0]}")
    return {"site": [files.site.data], "zone": [d.data for d in files.zones], "vpc": [d.data for d in files.vpcs],
            "acl": [d.data for d in files.acls], "lock": [files.lock.data] if files.lock else []}


def _example(f: Field, docs: list) -> str | None:
    """The field's own examples, else the example site's first value, else the shared examples."""
    candidates = list(f.local["examples"]) if "examples" in f.local and not f.shared else []
    if not candidates:
        candidates = [v for doc in docs for v in _values(doc, f.steps)][:1]
    if not candidates:
        candidates = list(f.local.get("examples", ())) or list((f.target or {}).get("examples", ()))
    shown = [_code(v) for v in candidates if len(_yaml(v)) <= MAX_EXAMPLE]
    return ", ".join(shown) or None


# ---- the document -----------------------------------------------------------------------------

def _entry(f: Field, defs: dict, docs: list) -> list[str]:
    lines = [f"#### `{f.path}`", "", _prose(f.node.get("description", "")), "",
             f"- Type: {_type(f.node, defs)}",
             f"- Default: {_default(f)}",
             f"- Constraints: {_constraints(f, defs)}"]
    example = _example(f, docs)
    if example:
        lines.append(f"- Example: {example}")
    return lines + [""]


def _prose(text: str) -> str:
    """A description as markdown text: nothing in it is read as HTML or emphasis."""
    text = text.strip().replace("\\", "\\\\").replace("<", "\\<").replace("*", "\\*")
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)  # advert_interval_ms stays as it is


def _value_formats(defs: dict) -> list[str]:
    lines = ["## Value formats", "",
             "Formats shared by the files above (`defs.schema.json`). Where a field refers to one, its "
             "constraints say `format:` and quote the format's description.", ""]
    for name, node in defs.items():
        resolved, _ = _resolve(node, defs)
        line = f"- **`{name}`** ({_type(resolved, defs)}): {_prose(resolved.get('description', '').rstrip('.'))}"
        if "properties" in resolved:
            line += ". Keys: " + ", ".join(f"`{key}`" for key in resolved["properties"])
        if "examples" in resolved:
            line += f". Example: {', '.join(_code(v) for v in resolved['examples'])}"
        lines.append(line + ("" if line.endswith(".") else "."))
    return lines + [""]


def reference(site: Path = EXAMPLE_SITE) -> str:
    """The markdown text of docs/site-reference.md."""
    defs = _defs()
    examples = example_documents(site)
    lines = [
        "<!-- Generated from vpcgen/site/schemas/*.json by `python -m vpcgen.site.reference > docs/site-reference.md`;",
        "     do not edit: change the schemas and regenerate. -->",
        "# Site file reference",
        "",
        "Every field of every file of a site folder `sites/<site>/`. The folder a file lives in decides its "
        "kind; every file holds one YAML document whose `name` equals the file's name without `.yaml`. "
        "Unknown keys are errors. The JSON Schemas these entries come from are in `schemas/` "
        "(`vpcgen schema --output DIR` writes them too); the complete example is `sites/example/`.",
        "",
        "Paths are dotted: `tiers[].acl` is the `acl` of every item of the list `tiers`, and "
        "`vpcs.<vpc>.zone` the `zone` under any key of the mapping `vpcs`. A default in *italics* is "
        "computed from other values; a field without a default is absent from the result when not given.",
        "",
        "## Contents",
        "",
    ]
    for kind, title, _ in FILES:
        lines.append(f"- [`{title}`](#{_anchor(title)})")
    lines += ["- [Value formats](#value-formats)", ""]
    for kind, title, example in FILES:
        schema = json.loads(schema_text(kind))
        lines += [f"## `{title}`", "", _prose(schema.get("description", "")), "",
                  f"Schema: `schemas/{kind}.schema.json`. Example: "
                  f"[`sites/example/{example}`](../sites/example/{example}).", ""]
        for f in fields(kind):
            lines += _entry(f, defs, examples[kind])
    lines += _value_formats(defs)
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation other than '-' and '_' dropped, spaces as '-'."""
    text = f"`{title}`".lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


if __name__ == "__main__":  # pragma: no cover - exercised through tests/test_reference.py
    sys.stdout.write(reference())
