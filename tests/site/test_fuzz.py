"""Fuzzing the site reader and compiler with mutated site documents.

The contract under test: whatever a pull request puts into a site folder, `vpcgen validate` and
`vpcgen build` end with exit 0, or with exit 1 and nothing on stderr but located errors
(``FILE:LINE:COL: error: MESSAGE [code]``) and the final "N errors" line: never a traceback, an
"internal error", another exit code, a hang or a memory blow-up. A tree that builds with exit 0 is
accepted by the daemons' own checkers (`vpcgen check`, on a few of them: it takes seconds).

Every example starts from a real site (sites/example, tests/fixtures/sites/*), replaces values at
random JSON paths with hostile or edge values (wrong types, floats, huge numbers, control
characters, YAML tags, anchors and aliases, ...), deletes and adds keys, duplicates list items,
swaps names between objects, or mutates the YAML text itself; the site is written by this file's
own YAML writer, and vpcgen runs in a forked child bounded in time and address space.

VPCGEN_FUZZ_EXAMPLES raises the number of examples (default 80), VPCGEN_FUZZ_CHECKS the number of
built trees passed to `vpcgen check` (default 3); VPCGEN_FUZZ_RANDOM=1 draws new examples instead
of the fixed, derandomized set CI runs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLE, FIXTURE_SITES, run_cli

# ---------------------------------------------------------------------------------------------
# Running vpcgen bounded: a forked child with an address-space limit, killed after a timeout.

MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of the child: a blow-up is a MemoryError (a failure), not a swap storm
TIMEOUT_S = 10.0

# one located diagnostic; FILE may hold ':' only as part of LINE:COL
LOCATED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>[0-9]+):(?P<col>[0-9]+): (?P<severity>error|warning): "
                     r"(?P<message>.+) "
                     r"\[(?P<code>[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)\]$")
# a diagnostic located at a whole file (a file that cannot be read, a folder in the wrong place)
FILE_LEVEL = re.compile(r"^(?P<file>[^:\n]+): (?P<severity>error|warning): (?P<message>.+) \[(?P<code>[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)\]$")
COUNT = re.compile(r"^(?P<n>[0-9]+) errors?(, (?P<w>[0-9]+) warnings?)?$")


@dataclass
class Outcome:
    args: list
    exit_code: int | None
    stdout: str
    stderr: str
    error: str  # a Python exception that escaped the CLI (with its traceback), or why the child died
    seconds: float
    rss_growth: int  # bytes the child's resident set grew by (VmHWM at the end - VmRSS at the start)

    def describe(self) -> str:
        return (f"vpcgen {' '.join(map(str, self.args))}: exit {self.exit_code} in {self.seconds:.2f}s, "
                f"+{self.rss_growth >> 20} MiB\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
                + (f"--- escaped\n{self.error}" if self.error else ""))


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def run_bounded(*args, cwd=None, timeout: float = TIMEOUT_S, memory: int = MEMORY_LIMIT, env: dict | None = None,
                prepare=None) -> Outcome:
    """`vpcgen ARGS` in-process in a forked child: bounded address space, killed after ``timeout``.

    ``env`` replaces every VPCGEN_SECRET_* variable of the child's environment (the caller's
    shell must not leak secrets into a test); ``prepare`` runs in the child first (as root: e.g.
    entering a private mount namespace, which disappears with the child)."""
    from typer.testing import CliRunner

    from vpcgen.cli import app

    args = [str(a) for a in args]
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_fd)
            for key in [k for k in os.environ if k.startswith("VPCGEN_SECRET_")]:
                del os.environ[key]
            os.environ.update(env or {})
            if cwd is not None:
                os.chdir(cwd)
            if prepare is not None:
                prepare()
            rss_start = _status_kib("VmRSS")
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            result = CliRunner().invoke(app, args, catch_exceptions=True)
            escaped = ""
            if result.exc_info is not None and not issubclass(result.exc_info[0], SystemExit):
                escaped = "".join(traceback.format_exception(*result.exc_info))
            payload = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                       "error": escaped, "rss_growth": (_status_kib("VmHWM") - rss_start) * 1024}
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
            payload = {"exit_code": None, "stdout": "", "stderr": "", "error": traceback.format_exc(),
                       "rss_growth": 0}
            status = 3
        try:
            data = json.dumps(payload).encode("utf-8", "surrogateescape")
            with os.fdopen(write_fd, "wb") as handle:
                handle.write(data)
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks, killed = [], False
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                killed = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, wait_status = os.waitpid(pid, 0)
    seconds = time.monotonic() - start
    if killed:
        return Outcome(args, None, "", "", f"timed out after {timeout:.0f}s (killed)", seconds, 0)
    if not chunks:
        how = (f"killed by signal {os.WTERMSIG(wait_status)}" if os.WIFSIGNALED(wait_status)
               else f"exited {os.WEXITSTATUS(wait_status)}")
        return Outcome(args, None, "", "", f"the child died without a result ({how})", seconds, 0)
    payload = json.loads(b"".join(chunks).decode("utf-8", "surrogateescape"))
    return Outcome(args, payload["exit_code"], payload["stdout"], payload["stderr"], payload["error"], seconds,
                   payload["rss_growth"])


def diagnostics(outcome: Outcome, allow_file_level: bool = False) -> list[re.Match]:
    """The diagnostics of a failed run; asserts the stderr contract (FILE:LINE:COL: error: MESSAGE [code]) on the way."""
    text = outcome.describe()
    assert not outcome.error, text
    assert outcome.exit_code == 1, text
    for stream in (outcome.stdout, outcome.stderr):
        assert "Traceback" not in stream and "internal error" not in stream, text
    lines = outcome.stderr.splitlines()
    assert lines, "exit 1 without a word on stderr\n" + text
    count = COUNT.match(lines[-1])
    assert count, "stderr does not end with the 'N errors' line\n" + text
    found = []
    for line in lines[:-1]:
        m = LOCATED.match(line) or (FILE_LEVEL.match(line) if allow_file_level else None)
        assert m, f"not a located error: {line!r}\n{text}"
        found.append(m)
    assert int(count["n"]) == sum(m["severity"] == "error" for m in found), \
        "the count line does not count the errors\n" + text
    assert int(count["w"] or 0) == sum(m["severity"] == "warning" for m in found), text
    return [m for m in found if m["severity"] == "error"]


def check_contract(outcome: Outcome, site: Path | None = None) -> list[re.Match]:
    """Exit 0, or exit 1 with only located errors; on exit 1 the errors' files and lines exist."""
    text = outcome.describe()
    assert not outcome.error, text
    assert outcome.exit_code in (0, 1), text
    assert outcome.rss_growth < 512 << 20, "memory: " + text
    if outcome.exit_code == 0:
        assert "Traceback" not in outcome.stdout + outcome.stderr, text
        assert all(LOCATED.match(line) and LOCATED.match(line)["severity"] == "warning"
                   for line in outcome.stderr.splitlines()), "exit 0 with something other than warnings\n" + text
        return []
    found = diagnostics(outcome)
    if site is not None:  # FILE as the user would open it: a file of the site, LINE inside it
        for m in found:
            assert m["file"].startswith(site.name + "/"), f"{m['file']} is not a file of the site\n{text}"
            path = site.parent / m["file"]
            assert path.exists() or path.is_symlink(), f"{m['file']} does not exist\n{text}"
            if path.is_file():
                data = path.read_bytes().decode("utf-8", "replace")
                breaks = sum(data.count(c) for c in ("\n", "\x85", "\u2028", "\u2029")) + data.count("\r") \
                    - data.count("\r\n")
                assert 1 <= int(m["line"]) <= breaks + 1, f"line {m['line']} is not in {m['file']}\n{text}"
    return found


# ---------------------------------------------------------------------------------------------
# The site documents and this file's own YAML writer.

BASES = {"example": EXAMPLE, "edge": FIXTURE_SITES / "edge", "services": FIXTURE_SITES / "services"}


def documents(site: Path) -> dict[str, object]:
    """relative path -> parsed document, for every YAML file of a site."""
    return {str(p.relative_to(site)): yaml.safe_load(p.read_text(encoding="utf-8"))
            for p in sorted(site.rglob("*.yaml"))}


def _fix_up(docs: dict) -> set[str]:
    """Bring a base in line with the current contract where its fixture lags behind (an ACL rule of
    protocol 0 is refused: iptables reads -p 0 as every protocol); returns the documents changed."""
    fixed = set()
    for rel, doc in docs.items():
        if rel.startswith("acls/") and isinstance(doc, dict):
            for rule in doc.get("rules", []):
                if rule.get("protocol") == 0:
                    rule["protocol"] = 4
                    fixed.add(rel)
    return fixed


DOCS = {name: documents(path) for name, path in BASES.items()}
FIXED = {name: _fix_up(docs) for name, docs in DOCS.items()}


class Raw:
    """Verbatim YAML text for one value (a tag, a plain scalar YAML resolves its own way, a nest)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


class Block:
    """A block scalar (| |- |+ > >-) holding ``text``."""

    def __init__(self, style: str, text: str):
        self.style, self.text = style, text

    def __repr__(self):
        return f"Block({self.style!r}, {self.text!r})"


class Anchor:
    def __init__(self, name: str, value):
        self.name, self.value = name, value

    def __repr__(self):
        return f"Anchor({self.name!r}, {self.value!r})"


class Alias:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Alias({self.name!r})"


_PLAIN = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._/-]*$")


def _scalar(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Alias):
        return f"*{value.name}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        return text if "." in text else text.replace("e", ".0e", 1)  # PyYAML's floats need a dot
    text = str(value)
    if _PLAIN.match(text):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def flow(value) -> str:
    if isinstance(value, Anchor):
        return f"&{value.name} {flow(value.value)}"
    if isinstance(value, Block):
        return json.dumps(block_value(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return _scalar(value)


def block_value(b: Block) -> str:
    """What YAML reads from a block scalar (for the flow fallback)."""
    return yaml.safe_load(f"v: {b.style}\n" + "".join(f"  {line}\n" for line in b.text.split("\n")))["v"]


def _is_block_container(value) -> bool:
    return isinstance(value, (dict, list)) and bool(value) and any(isinstance(v, (dict, list, Anchor, Block))
                                                                  for v in (value.values() if isinstance(value, dict)
                                                                            else value))


def block(value, indent: int = 0) -> list[str]:
    """Block-style lines of a mapping or sequence; leaf collections in flow style, like the sites."""
    pad = " " * indent
    lines: list[str] = []
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        head = f"{pad}{_scalar(key)}:" if isinstance(value, dict) else f"{pad}-"
        if isinstance(item, Block):
            lines.append(f"{head} {item.style}")
            lines += [f"{pad}  {line}" if line else "" for line in item.text.split("\n")]
        elif _is_block_container(item):
            if isinstance(value, list) and isinstance(item, dict):
                inner = block(item, indent + 2)
                lines.append(f"{pad}- " + inner[0][indent + 2:])
                lines += inner[1:]
            else:
                lines.append(head)
                lines += block(item, indent + 2)
        else:
            lines.append(f"{head} {flow(item)}")
    return lines


def dump(doc) -> str:
    if _is_block_container(doc) or (isinstance(doc, (dict, list)) and doc):
        return "\n".join(block(doc)) + "\n"
    return flow(doc) + "\n"


# ---------------------------------------------------------------------------------------------
# Mutations

def paths(value, prefix=()) -> list[tuple]:
    """Every JSON path of a document (not into this file's own markers)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def get(doc, path):
    for step in path:
        doc = doc[step]
    return doc


def put(doc, path, value):
    if not path:
        return value
    get(doc, path[:-1])[path[-1]] = value
    return doc


def nest(depth: int, unclosed: bool = False) -> Raw:
    return Raw("[" * depth + ("" if unclosed else "x" + "]" * depth))


HOSTILE_STRINGS = [
    "", " ", "web\n", "web\r", "web\r\n", "\nweb", "web\x00", "web\t", "web\u2028", "web\u2029", "web\x85",
    "web\x7f", "web\x1b[31m", "web\ud800", "\ufeffweb", "web\u200b", "wéb", "ｗｅｂ", "WEB", " web", "web ",
    "-web", "web-", "a" * 32, "a" * 33, "a" * 257, "x" * 5000, "y" * 20000, "../../etc/passwd", "/etc/passwd",
    "$(reboot)", "`id`", "a;b", "a b", "%s%n", "{{ 7*7 }}", "[[ name ]]", "10.10.1.0/24\n", "10.10.1.0/24 ",
    "010.010.001.000/24", "10.10.1.0/024", "10.10.1.0/+24", "10.10.1.0/255.255.255.0", "10.10.1.0/33",
    "256.1.1.1", "1.1.1", "0.0.0.0/0", "255.255.255.255", "::1", "fe80::/64", "1-65535", "0-1", "65535-1",
    "1-65536", "00080", "080-090", "1000-999", "4094-4095", "0x50", "1e3", "1_000", "true", "null", "~",
    "default_deny", "default_allow", "source-nat", "tcp", "all", "icmp", "/", "/healthz\n", "root\n",
    "aes256-sha256-modp2048", "aes256-sha256-modp2048\n", "- a", "a: b", "#", "&a", "*a", "!!str", "/it's",
    "/$HOME", "/a b", "/%00", "/a;b", 'a"b', "a'b", "a\\b", "a{b}", "-----BEGIN CERTIFICATE-----",
]
HOSTILE_RAW = [
    "yes", "no", "on", "off", "y", "n", "0x1F", "0o17", "017", "0b101", "1_000", "1:30", "190:20:30", ".inf",
    "-.inf", ".nan", "~", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "=", "<<", "1.0e+3", "17.", "+17",
    "-0", "0.", "!!set {a}", "!!set {a, b}", "!!timestamp x", "!!timestamp 2001-12-14", "!!binary aGVsbG8=",
    "!!python/object:os.system {}", "!!python/object/apply:os.system [id]", "!!python/name:os.system",
    "!!python/tuple [1, 2]", "!!int dc1", "!!int 0x10", "!!int ''", "!!float 17", "!!float x", "!!str 17",
    "!!bool yes", "!!bool maybe", "!!null ''", "!!null x", "!!omap [a: 1]", "!!pairs [a: 1]", "!!map {}",
    "!!seq []", "!!map [a]", "!!seq {a: 1}", "!custom x", "!<tag:yaml.org,2002:int> 5", "!<!> x", "!!merge <<",
    "!!value =", "!!float .nan", "!!str", "!!int", "'single ''quoted'''", '"\\x00"', '"\\N"', '"\\L"', '"\\P"',
    '"\\_"', '"\\e"', '"\\U0001F600"', '"\\ud800"', "{? [a, b]: c}", "{[a]: b}", "{{a: b}: c}", "[a, [b, [c]]]",
    "{a: 1, a: 2}", "&x [*x]", "&x {a: *x}", "*undefined", "[*undefined]", "1" * 21, "1" * 5000, "-" + "9" * 25,
    "{" * 40 + "}" * 40, "[]", "{}", "''", '""',
]
BLOCK_STYLES = ["|", "|-", "|+", ">", ">-", "|2"]
INTS = [0, -1, 1, 2, 7, 8, 9, 10, 17, 24, 29, 30, 31, 32, 33, 50, 99, 255, 256, 576, 1000, 1200, 3922, 4094, 4095,
        9000, 40950, 40960, 65535, 65536, 604800, 604801, 3600000, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64, 10 ** 20,
        10 ** 25, -(10 ** 30)]
FLOATS = [17.0, 0.0, -0.0, 0.5, 1200.0, 200.0, 24.0, 80.0, 1e308, 1e-308, math.inf, -math.inf, math.nan, 2.5e10]
UNKNOWN_KEYS = ["prot", "Name", "name ", "NAME", "x-extra", "description", "<<", "80", "", "a" * 40, "true",
                "null", "name\n", "zone", "cidr", "netmask", "vlan", "secret", "vxlan", "mtu", "dhcp", "hosts"]


_IP = re.compile(r"^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)(/[0-9]+)?$")


@st.composite
def nearby_values(draw, doc, value, site_strings):
    """A plausible value: near the original, or another value of the site (references, collisions)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(st.sampled_from([value + 1, value - 1, value * 2, value // 2, 1, value + 10]) | st.sampled_from(INTS))
    if isinstance(value, str):
        m = _IP.match(value)
        if m:
            octets = [int(x) for x in m.groups()[:4]]
            i = draw(st.integers(0, 3))
            octets[i] = draw(st.sampled_from([0, 1, 2, 10, 128, 254, 255, octets[i] + 1]))
            prefix = m.group(5) or ""
            if prefix and draw(st.booleans()):
                prefix = f"/{draw(st.integers(0, 32))}"
            return ".".join(map(str, octets)) + prefix
        return draw(st.sampled_from(site_strings))
    if isinstance(value, list) and value:  # reversed, shortened, lengthened (a duplicate), emptied
        return draw(st.sampled_from([value[::-1], value[:1], value + value[:1], []]))
    return draw(hostile_values(doc))


@st.composite
def hostile_values(draw, doc):
    kind = draw(st.sampled_from(["string", "raw", "int", "float", "bool", "none", "empty", "block", "copy",
                                 "nest", "list", "map", "bigint"]))
    if kind == "string":
        return draw(st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=20))
    if kind == "raw":
        return Raw(draw(st.sampled_from(HOSTILE_RAW)))
    if kind == "int":
        return draw(st.sampled_from(INTS) | st.integers())
    if kind == "bigint":  # as text: Python itself refuses to print an int of more than 4300 digits
        return Raw(draw(st.sampled_from(["", "-", "+"])) + "9" * draw(st.integers(19, 6000)))
    if kind == "float":
        return draw(st.sampled_from(FLOATS) | st.floats())
    if kind == "bool":
        return draw(st.booleans())
    if kind == "none":
        return None
    if kind == "empty":
        return draw(st.sampled_from(["", [], {}]))
    if kind == "block":
        return Block(draw(st.sampled_from(BLOCK_STYLES)), draw(st.sampled_from(["web", "web\n", "10.10.1.0/24",
                                                                                 "a\nb", "", "1200", "\n"])))
    if kind == "copy":  # a value of the right syntax at the wrong place
        return copy.deepcopy(get(doc, draw(st.sampled_from(paths(doc)))))
    if kind == "nest":
        return nest(draw(st.sampled_from([30, 31, 32, 33, 64, 900, 1001])), unclosed=draw(st.booleans()))
    if kind == "list":
        return draw(st.lists(st.sampled_from(HOSTILE_STRINGS[:20]) | st.integers(), max_size=4))
    return draw(st.dictionaries(st.sampled_from(UNKNOWN_KEYS), st.sampled_from(HOSTILE_STRINGS[:20]) | st.integers(),
                                max_size=3))


class Mutant:
    def __init__(self, base: str, docs: dict, command: str, changed: set):
        self.base = base
        self.docs = docs  # relative path -> document (possibly holding Raw/Block/Anchor/Alias markers)
        self.command = command
        self.changed = changed  # documents to write with this file's writer
        self.ops: list = []  # what was done, for the report
        self.text_ops: list = []  # (file, operation, argument) on the written text

    def __repr__(self):
        return f"Mutant(base={self.base!r}, command={self.command!r}, ops={self.ops!r}, text_ops={self.text_ops!r})"


RAW_INSERTS = ["\x00", "\t", "\r", "\x85", "\u2028", "\ufeff", "\x1b", ":", "- ", "{", "[", "]", "}", "&a ", "*a ",
               "!!set ", "\"", "'", "#", "|", ">", "%YAML 1.1\n", "---\n", "...\n", "\n  ", " ", "? ", "@", "`"]
RAW_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x80", b"\xf4\x90\x80\x80", b"\xfe\xff"]


@st.composite
def mutants(draw):
    base = draw(st.sampled_from(["example"] * 4 + ["edge", "services"]))
    docs = copy.deepcopy(DOCS[base])
    mutant = Mutant(base, docs, command=draw(st.sampled_from(["build"] * 3 + ["validate"])),
                    changed=set(FIXED[base]))
    files = sorted(docs)
    anchors = 0
    # a third of the examples stay plausible (values near the original, other names of the site): they
    # get past the schema into the semantic checks, allocation and rendering, and some build
    plausible = draw(st.integers(0, 2)) == 0
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["nearby"] * 6 + ["delete", "duplicate", "swap_names"] if plausible else
                                  ["replace"] * 6 + ["nearby"] * 6 + ["delete", "delete", "add_key", "duplicate",
                                                                      "swap_names", "alias", "merge", "text"]))
        rel = draw(st.sampled_from(files))
        doc = docs[rel]
        all_paths = [p for p in paths(doc) if not any(isinstance(s, str) and s == "" for s in p)]
        if op == "replace":
            path = draw(st.sampled_from(all_paths))
            value = draw(hostile_values(doc))
            docs[rel] = put(doc, path, value)
        elif op == "nearby":
            path = draw(st.sampled_from(all_paths))
            strings = sorted({v for r in files for p in paths(docs[r]) if isinstance(v := get(docs[r], p), str)})
            value = draw(nearby_values(doc, get(doc, path), strings))
            docs[rel] = put(doc, path, value)
        elif op == "delete":
            candidates = [p for p in all_paths if p]
            if not candidates:
                continue
            path = draw(st.sampled_from(candidates))
            del get(doc, path[:-1])[path[-1]]
            value = None
        elif op == "add_key":
            maps = [p for p in all_paths if isinstance(get(doc, p), dict)]
            if not maps:
                continue
            path = draw(st.sampled_from(maps))
            key = draw(st.sampled_from(UNKNOWN_KEYS))
            value = draw(hostile_values(doc))
            get(doc, path)[key] = value
            path = path + (key,)
        elif op == "duplicate":
            lists = [p for p in all_paths if isinstance(get(doc, p), list) and get(doc, p)]
            if not lists:
                continue
            path = draw(st.sampled_from(lists))
            items = get(doc, path)
            index = draw(st.integers(0, len(items) - 1))
            items.insert(index, copy.deepcopy(items[index]))
            value = index
        elif op == "swap_names":  # across every document of the site: names of other objects, other kinds
            named = [(r, p) for r in files for p in paths(docs[r]) if p and p[-1] == "name"
                     and isinstance(get(docs[r], p), str)]
            if len(named) < 2:
                continue
            (r1, p1), (r2, p2) = draw(st.lists(st.sampled_from(named), min_size=2, max_size=2, unique=True))
            a, b = get(docs[r1], p1), get(docs[r2], p2)
            put(docs[r1], p1, b)
            put(docs[r2], p2, a)
            mutant.changed |= {r1, r2}
            mutant.ops.append(("swap_names", r1, p1, r2, p2))
            continue
        elif op in ("alias", "merge"):  # anchor a collection, refer to it from a later (or inner) place
            containers = [p for p in all_paths if p and isinstance(get(doc, p), (dict, list)) and get(doc, p)]
            if not containers:
                continue
            source = draw(st.sampled_from(containers))
            anchors += 1
            name = f"m{anchors}"
            put(doc, source, Anchor(name, get(doc, source)))
            order = [p for p in paths(doc)]
            later = [p for p in order if p and order.index(p) > order.index(source)
                     and not any(isinstance(get(doc, p[:i]), (Anchor, Alias, Raw, Block)) for i in range(len(p)))]
            if op == "alias":
                if not later:
                    continue
                path = draw(st.sampled_from(later))
                docs[rel] = put(doc, path, Alias(name))
            else:
                maps = [p for p in later + [()] if isinstance(get(doc, p), dict)]
                if not maps:
                    continue
                path = draw(st.sampled_from(maps))
                target = get(doc, path)
                target["<<"] = Alias(name)
                path = path + ("<<",)
            value = Alias(name)
        else:  # a mutation of the text itself, once written
            how = draw(st.sampled_from(["insert", "insert_bytes", "delete", "duplicate_line", "swap_lines", "tab",
                                        "bom", "truncate", "crlf", "replace_colon"]))
            arg = {"insert": st.tuples(st.integers(0, 10 ** 6), st.sampled_from(RAW_INSERTS)),
                   "insert_bytes": st.tuples(st.integers(0, 10 ** 6), st.sampled_from(RAW_BYTES)),
                   "delete": st.tuples(st.integers(0, 10 ** 6), st.integers(1, 40)),
                   "duplicate_line": st.integers(0, 10 ** 6), "swap_lines": st.tuples(st.integers(0, 10 ** 6),
                                                                                       st.integers(0, 10 ** 6)),
                   "tab": st.integers(0, 10 ** 6), "bom": st.just(None), "truncate": st.integers(0, 10 ** 6),
                   "crlf": st.just(None), "replace_colon": st.integers(0, 10 ** 6)}[how]
            mutant.text_ops.append((rel, how, draw(arg)))
            mutant.changed.add(rel)
            continue
        mutant.changed.add(rel)
        mutant.ops.append((op, rel, path, value))
    return mutant


def mutate_text(data: bytes, how: str, arg) -> bytes:
    n = max(len(data), 1)
    if how == "insert":
        at, text = arg
        return data[:at % n] + text.encode() + data[at % n:]
    if how == "insert_bytes":
        at, raw = arg
        return data[:at % n] + raw + data[at % n:]
    if how == "delete":
        at, length = arg
        return data[:at % n] + data[at % n + length:]
    if how == "truncate":
        return data[:arg % n]
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "crlf":
        return data.replace(b"\n", b"\r\n")
    lines = data.split(b"\n")
    if how == "duplicate_line":
        i = arg % len(lines)
        lines.insert(i, lines[i])
    elif how == "swap_lines":
        i, j = arg[0] % len(lines), arg[1] % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    elif how == "tab":
        i = arg % len(lines)
        lines[i] = b"\t" + lines[i].lstrip(b" ")
    elif how == "replace_colon":
        colons = [i for i, c in enumerate(data) if c == ord(":")]
        if colons:
            i = colons[arg % len(colons)]
            return data[:i] + b"=" + data[i + 1:]
    return b"\n".join(lines)


def write_mutant(mutant: Mutant, root: Path) -> Path:
    site = root / mutant.base
    shutil.copytree(BASES[mutant.base], site)
    for rel in sorted(mutant.changed):
        if rel in mutant.docs:
            (site / rel).write_text(dump(mutant.docs[rel]), encoding="utf-8", errors="surrogatepass")
    for rel, how, arg in mutant.text_ops:
        path = site / rel
        path.write_bytes(mutate_text(path.read_bytes(), how, arg))
    return site


def shown_files(site: Path, mutant: Mutant) -> str:
    out = []
    for rel in sorted(mutant.changed):
        data = (site / rel).read_bytes()
        out.append(f"--- {rel} ({len(data)} bytes)\n{data[:3000]!r}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The tests

EXAMPLES = int(os.environ.get("VPCGEN_FUZZ_EXAMPLES", "80"))
CHECKS = int(os.environ.get("VPCGEN_FUZZ_CHECKS", "3"))
RANDOM = os.environ.get("VPCGEN_FUZZ_RANDOM") == "1"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
_checked: list[str] = []  # built trees passed to `vpcgen check` so far (at most CHECKS of them)


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Load and compile the schemas and templates once in this process: every forked child inherits them."""
    with tempfile.TemporaryDirectory() as tmp:
        code, out, err = run_cli("build", EXAMPLE, "--output", tmp, "--placeholder-secrets")
        assert code == 0, out + err


def netns_list() -> set[str]:
    """This process's network namespaces (check names them vpcgen-chk-PID-N; other test runs on the
    machine have their own)."""
    import subprocess
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return {n for n in names if f"-{os.getpid()}-" in n}


def assert_checks(tree: Path, context: str = "") -> None:
    """`vpcgen check` passes on a built tree, and leaves no network namespace behind."""
    before = netns_list()
    code, stdout, stderr = run_cli("check", tree)
    assert code == 0, f"{context}\nvpcgen check {tree}: exit {code}\n{stdout}{stderr}"
    assert netns_list() == before, "check must remove the namespaces it creates"


@pytest.mark.parametrize("base", sorted(BASES))
def test_writer_round_trips_the_bases(base, tmp_path):
    """The fuzzer's own writer is faithful: every base, rewritten by it, reads back equal and builds."""
    site = tmp_path / base
    shutil.copytree(BASES[base], site)
    for rel, doc in DOCS[base].items():
        text = dump(doc)
        assert yaml.safe_load(text) == doc, rel
        (site / rel).write_text(text, encoding="utf-8")
    outcome = run_bounded("build", base, "--output", "out", "--placeholder-secrets", cwd=tmp_path)
    assert outcome.exit_code == 0, outcome.describe()


@FUZZ
@given(mutant=mutants())
def test_mutated_sites_fail_cleanly_or_build(mutant):
    with tempfile.TemporaryDirectory(prefix="vpcgen-fuzz-") as tmp:
        root = Path(tmp)
        site = write_mutant(mutant, root)
        args = ["validate", mutant.base] if mutant.command == "validate" else \
            ["build", mutant.base, "--output", "out", "--placeholder-secrets"]
        outcome = run_bounded(*args, cwd=root)
        context = f"{mutant!r}\n{shown_files(site, mutant)}"
        try:
            found = check_contract(outcome, site)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{context}") from None
        event(f"{mutant.command}: exit {outcome.exit_code}" + (f" [{found[0]['code']}]" if found else ""))
        if mutant.command == "build" and outcome.exit_code == 0 and len(_checked) < CHECKS \
                and (mutant.ops or mutant.text_ops):
            _checked.append(repr(mutant))
            assert_checks(root / "out" / json.loads(next((root / "out").glob("*/site.json")).read_text())["site"],
                          context)
