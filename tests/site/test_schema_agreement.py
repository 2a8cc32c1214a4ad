"""The fast schema gate must never accept what jsonschema rejects (it would hide errors)."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EXAMPLE
from vpcgen.site.loader import parse_document
from vpcgen.site.schema import _validators

DOCS = {kind: parse_document(path.read_bytes(), str(path), kind)[0].data
        for kind, path in [("site", EXAMPLE / "site.yaml"), ("zone", EXAMPLE / "zones/zone1.yaml"),
                           ("vpc", EXAMPLE / "vpcs/shop.yaml"), ("acl", EXAMPLE / "acls/web.yaml")]}
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.sampled_from(
    ["", "x", "Web", "10.0.0.0/8", "10.0.0.1/8", "1-2", "80-", "a" * 40, "de\nsc", "tcp", "http", "$"]),
    st.lists(st.integers(0, 3), max_size=2), st.just({}))


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(DOCS)), pick=st.integers(0, 10_000), value=VALUES, add_key=st.booleans())
def test_fast_gate_agrees_with_jsonschema(kind, pick, value, add_key):
    doc = copy.deepcopy(DOCS[kind])
    candidates = [p for p in paths(doc) if p]
    target = candidates[pick % len(candidates)]
    parent = doc
    for step in target[:-1]:
        parent = parent[step]
    if add_key and isinstance(parent, dict):
        parent["extra_key"] = value
    else:
        parent[target[-1]] = value
    fast, exact = _validators()[kind]
    assert fast.is_valid(doc) == exact.is_valid(doc), (kind, target, value)


def test_where_the_validators_disagree_the_document_is_refused_and_located():
    """Python's `$` matches before a final newline, so jsonschema lets a name "web\\n" through; the
    fast gate (jsonschema-rs) does not, and the document is refused, never passed."""
    from vpcgen.site.loader import Document
    from vpcgen.site.schema import validate_document
    doc = Document(kind="acl", file="acls/x.yaml", data={"name": "web\n", "rules": []},
                   text='name: "web\\n"\nrules: []\n')
    found = [str(d) for d in validate_document(doc)]
    assert found == ['acls/x.yaml:1:7: error: name: "web\\n" does not match '
                     '"^([a-z]|[a-z][a-z0-9-]{0,30}[a-z0-9])$" [schema-rejected]'], found
