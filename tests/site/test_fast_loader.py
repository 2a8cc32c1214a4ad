"""The fast reader (yaml-rs) and the positioned reader (libyaml) agree: whenever the fast one
accepts a file, its values are exactly, type for type, what the positioned one gives without a
problem; otherwise the positioned one decides (and reports). Scalars are YAML 1.1 either way."""

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from vpcgen.site.loader import _Converter, _Loader, _fast_read, Document, parse_document

# plain scalars where YAML 1.1 and 1.2 (or PyYAML and yaml-rs) differ, and ordinary ones
TOKENS = ["yes", "no", "on", "off", "Yes", "OFF", "y", "n", "true", "False", "~", "null", "NULL", "", "010", "0o10",
          "0b10", "0x10", "0X10", "0x1_0", "+10", "-10", "00", "1_000", "_1", "+_1", "1:20", "-1:20", "190:20:30",
          "1.5", "1e3", "1.0e+3", "1e400", "1.0e400", ".5", "+.5", ".inf", "-.Inf", ".nan", "2001-12-14",
          "2001-12-14T21:59:43Z", "=", "<<", "08", "1e", "12abc", "10.0.0.1", "10.0.0.0/24", "0.0.0.0/0", "web-01",
          "a b", "9" * 21, "18446744073709551616", "9223372036854775807", "x#y", "é", "\u2028", "@x", "a: b", "'q'",
          '"d"', '"\\t"', '"\\x85"', "'yes'", '"010"', "''", "-", "?", "[]", "{}", "&a x", "*a", "!!int 7", "!!str 7",
          "!x 1", "|\n  block\n", ">\n  a\n\n  b\n", "tab\there"]
KEYS = ["a", "80", "yes", "true", "~", "'q'", "<<", "0x1", "_k", "a b", "é"]


def _fast(text: str):
    """The values the fast reader gives, as the reading process keeps them (read back from JSON)."""
    read = _fast_read(text)
    return None if read is None else orjson.loads(read[1])


def _slow(text: str):
    nodes = list(yaml.compose_all(text, Loader=_Loader))
    converter = _Converter(Document("acl", "f.yaml", None))
    data = converter.run(nodes[0])
    return data, converter.problems


def _typed(value):
    """Values with their types: True and 1, 8 and 8.0 must not compare equal."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, value)


@st.composite
def documents(draw):
    def value(depth):
        kind = draw(st.sampled_from(["scalar", "scalar", "flow", "block"] if depth < 3 else ["scalar"]))
        if kind == "scalar":
            return " " + draw(st.sampled_from(TOKENS))
        if kind == "flow":
            items = draw(st.lists(st.sampled_from(TOKENS[:60]), max_size=3))
            return " [" + ", ".join(items) + "]"
        indent = "  " * (depth + 1)
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))
        return "\n" + "".join(f"{indent}{k}:{value(depth + 1)}\n" for k in keys).rstrip("\n")
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4))
    return "".join(f"{k}:{value(0)}\n" for k in keys)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_fast_reader_agrees_with_the_positioned_reader(text):
    fast = _fast(text)
    if fast is None:
        return
    slow, problems = _slow(text)
    assert problems == []
    assert _typed(fast) == _typed(slow)


@pytest.mark.parametrize("text, expected", [
    ("a: yes\n", True), ("a: on\n", True), ("a: Off\n", False), ("a: y\n", "y"), ("a: 010\n", 8),
    ("a: 0x10\n", 16), ("a: 0o10\n", "0o10"), ("a: 1:20\n", 80), ("a: 1_000\n", 1000), ("a: 'yes'\n", "yes"),
    ("a: \"010\"\n", "010"), ("a: ~\n", None), ("a: 10.0.0.0/24\n", "10.0.0.0/24"), ("a: web-01\n", "web-01"),
])
def test_yaml_1_1_scalars(text, expected):
    """What a site may write: scalars mean what YAML 1.1 (PyYAML) says, whichever reader ran."""
    doc, problems = parse_document(text.encode(), "f.yaml", "acl")
    assert problems == []
    assert _typed(doc.data["a"]) == _typed(expected)


@pytest.mark.parametrize("text, code", [
    ("a: 1.5\n", "yaml-float"), ("a: 1e400\n", None), ("a: .inf\n", "yaml-float"), ("a: 2001-12-14\n", "yaml-tag"),
    ("a: 1\na: 2\n", "yaml-duplicate-key"), ("a: \"x\\ty\"\n", "yaml-control-character"),
])
def test_refusals_keep_their_located_diagnostics(text, code):
    doc, problems = parse_document(text.encode(), "f.yaml", "acl")
    if code is None:  # 1e400 is a string in YAML 1.1 (a float needs a dot there)
        assert problems == [] and doc.data == {"a": "1e400"}
    else:
        assert [p.code for p in problems] == [code]
        assert (problems[0].location.line, problems[0].location.column) >= (1, 1)


def test_common_documents_take_the_fast_reader():
    """The benchmark's shapes are read by yaml-rs (else the speed is gone, silently)."""
    acl = "name: x-t0\nrules:\n" + "".join(
        f"  - {{number: {n * 10}, action: allow, traffic: ingress, protocol: tcp, ports: {1000 + n}, "
        f"cidrs: [172.{16 + n}.0.0/24]}}\n" for n in range(1, 31))
    vpc = ("name: web-01\nzone: z0\ncidr: 10.0.0.0/22\nrouters:\n  - {name: web-01-a, mgmt: 198.18.0.0}\n"
           "tiers:\n  - {name: t0, netmask: 25, acl: x-t0}\npublic_ips:\n  - {name: www}\n")
    for text in (acl, vpc):
        assert _fast(text) is not None
        doc, problems = parse_document(text.encode(), "f.yaml", "acl")
        assert problems == [] and doc.node is None and _typed(doc.data) == _typed(_slow(text)[0])


def test_a_late_diagnostic_finds_its_position():
    doc, _ = parse_document(b"name: a\nrules:\n  - {number: 10, action: allow}\n", "f.yaml", "acl")
    assert doc.node is None
    loc = doc.loc(("rules", 0, "action"))
    assert (loc.line, loc.column) == (3, 26)
    assert (doc.loc(("rules", 0, "action"), key=True).column) == 18


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_a_reading_child_checks_and_sends_the_same_values(text):
    """A reading child keeps yaml-rs's values (to check them) and their JSON (to send on): the
    values the reading process rebuilds from that JSON are, type for type, the ones it reads itself."""
    kept, found = parse_document(text.encode(), "f.yaml", "acl")
    sent, found_sent = parse_document(text.encode(), "f.yaml", "acl", kept=False)
    assert [str(d) for d in found_sent] == [str(d) for d in found]
    assert _typed(sent.data) == _typed(kept.data)
    if sent.json is not None:
        assert kept.json is None and _typed(orjson.loads(sent.json)) == _typed(kept.data)


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(" [,{:\n+-0_a1.\t\r#'\"~x9"), max_size=40))
def test_the_ascii_number_scan_finds_what_the_pattern_finds(text):
    from vpcgen.site.loader import _NUMBER_HINT, _NUMBER_MARKS
    assert (b"\x01\x02" in text.encode("ascii").translate(_NUMBER_MARKS)) == bool(_NUMBER_HINT.search(text))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6), max_size=4))
def test_the_ascii_json_scan_finds_what_the_pattern_finds(words):
    from vpcgen.site.loader import _JSON_UNSAFE
    encoded = orjson.dumps(words)
    if encoded.isascii():
        assert (b"\\" in encoded or b"\x7f" in encoded) == bool(_JSON_UNSAFE.search(encoded))
