"""The JSON files of a built tree (site.json, manifests, secret sums) are written by orjson: byte for
byte what the standard library's indenting encoder writes, for every value a tree holds (no floats:
the site refuses fractions and nothing computes one; orjson would write 1e-7 where json writes 1e-07)."""

import json

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from vpcgen.compiler.allocate import LOCK_HEADER, dump_lock
from vpcgen.compiler.write import promote_tree
from vpcgen.tree import dump_json


def _reference(data) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # no lone surrogates: not UTF-8
_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _text
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                       max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_same_bytes_as_the_standard_library(data):
    assert dump_json(data) == _reference(data)


def test_edges():
    for data in ({}, [], {"a": {}, "b": []}, {"é": "ü\u2028", "z": "\x7f\t\n\"\\"}, 2**64, {"k": -(2**63) - 1},
                 [0, -1, 2**63 - 1], "snowman ☃ and 😀"):
        assert dump_json(data) == _reference(data), data
    assert dump_json({"b": 1, "a": 2}).endswith(b"}\n")


_lock_names = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=10)
_lock = st.fixed_dictionaries({"vpcs": st.dictionaries(_lock_names, st.fixed_dictionaries(
    {"vlan": st.integers(2, 4094), "tiers": st.dictionaries(_lock_names, st.fixed_dictionaries(
        {"cidr": st.just("10.0.0.0/24"), "vlan": st.integers(2, 4094)}), max_size=3)}), max_size=4)})


@settings(max_examples=200, deadline=None)
@given(_lock)
def test_lock_text_as_the_pure_python_emitter_writes_it(data):
    """The lock is emitted by libyaml: the same text PyYAML's own emitter writes."""
    expected = LOCK_HEADER + yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=1000)
    assert dump_lock(data) == expected


def test_a_failure_while_streaming_leaves_the_previous_tree(tmp_path):
    """The tree is written as it is rendered: a failure half-way (here the third file) leaves the
    previous output as it was and no staging folder behind."""
    target = tmp_path / "out" / "site"
    promote_tree(iter([("site.json", (b"{}\n", 0o644)), ("r1/etc/a.conf", (b"old\n", 0o600))]), target)

    def files():
        yield "site.json", (b'{"new": 1}\n', 0o644)
        yield "r1/etc/a.conf", (b"new\n", 0o600)
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        promote_tree(files(), target)
    assert (target / "site.json").read_bytes() == b"{}\n"
    assert (target / "r1/etc/a.conf").read_bytes() == b"old\n"
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".site.new")) == []


def test_streamed_tree_modes_and_folders(tmp_path):
    target = tmp_path / "site"
    promote_tree(iter([("a/b/c/x", (b"1", 0o600)), ("a/b/y", (b"2", 0o755)), ("z", (b"3", 0o644))]), target)
    assert oct((target / "a/b/c/x").stat().st_mode & 0o7777) == "0o600"
    assert oct((target / "a/b/y").stat().st_mode & 0o7777) == "0o755"
    assert oct((target / "a/b").stat().st_mode & 0o7777) == "0o755"
    with pytest.raises(ValueError):
        promote_tree(iter([("../escape", (b"1", 0o644))]), tmp_path / "other")
    assert not (tmp_path / "escape").exists()
