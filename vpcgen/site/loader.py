"""Reading a site folder: YAML documents, with positions found only when a diagnostic needs one.

Only this module reads the site's files. A file is read by yaml-rs (a Rust parser, about ten times
faster than libyaml's ``CSafeLoader`` with PyYAML's resolver) whenever its text and values show that
the result is exactly what the positioned reader gives: no anchors, aliases, tags or directives, no
number in a form that YAML 1.1 and 1.2 read differently, no value that PyYAML would resolve to
another type. Every other file, and every file with a problem, takes the positioned reader: libyaml
composes node trees that keep a start mark on every node, and the nodes are turned into plain
values with every bound of the input enforced. A diagnostic found later (schema, semantics) composes
its one file again to find the line and column of the path it names.

Scalars are YAML 1.1 as PyYAML reads them, whichever reader ran: ``yes``/``no``/``on``/``off`` are
booleans, ``010`` is octal (8), ``0x10`` hexadecimal, ``1:20`` sexagesimal (80), ``1_000`` is 1000;
a fraction is refused, and so is a date.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
from itertools import accumulate
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from ..errors import Diagnostic, DiagnosticsError, Location
from ..forked import MAX_CHUNKS, Shared, processes

try:  # libyaml is an order of magnitude faster; fall back only where it is missing
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader



def _import_yaml_rs():
    """yaml-rs's allocator (mimalloc) reserves 1 GiB of address space when it loads: a process
    bounded by RLIMIT_AS (the fuzz tests run vpcgen so) would fail on it. Arenas of 64 MiB keep
    its speed; the variable is read once, at load, and then removed again."""
    previous = os.environ.get("MIMALLOC_ARENA_RESERVE")
    os.environ["MIMALLOC_ARENA_RESERVE"] = previous or "64MiB"
    try:
        return importlib.import_module("yaml_rs")
    finally:
        if previous is None:
            del os.environ["MIMALLOC_ARENA_RESERVE"]


yaml_rs = _import_yaml_rs()

KIND_DIRS = {"zones": "zone", "vpcs": "vpc", "acls": "acl"}
LOCK_FILE = "allocations.lock.yaml"

Path_ = tuple  # a JSON path: tuple of str keys and int indices


@dataclass
class Document:
    kind: str
    file: str  # as the user would open it
    data: object
    node: object = None  # the composed YAML node tree: positions are looked up in it when needed
    text: str | None = None  # the file's text, composed into ``node`` by the first ``loc``
    checked: list | None = None  # the problems load_site's ``check`` found in it, when it ran one
    json: bytes | None = None  # ``data`` as orjson's JSON, kept by a reading child that sends it on

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    def loc(self, path: Path_ = (), key: bool = False) -> Location:
        """The location of ``path``'s value (or of its key): else of its nearest existing parent."""
        if self.node is None and self.text is not None:
            try:
                self.node = yaml.compose(self.text, Loader=_Loader)
            except yaml.YAMLError:  # yaml-rs read what libyaml does not: the file is named, not placed
                self.text = None
        node, key_node = self.node, None
        for step in tuple(path):
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == step:
                        key_node, child = k, v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
                key_node, child = None, node.value[step]
            if child is None:
                key_node = None
                break
            node = child
        target = key_node if (key and key_node is not None) else node
        if target is None:
            return Location(self.file, 1, 1)
        return Location(self.file, target.start_mark.line + 1, target.start_mark.column + 1)


@dataclass
class SiteFiles:
    root: Path
    site: Document | None
    zones: list[Document]
    vpcs: list[Document]
    acls: list[Document]
    lock: Document | None
    known_hosts: str | None

    def documents(self) -> list[Document]:
        head = [self.site] if self.site else []
        return head + self.zones + self.vpcs + self.acls


_constructor = yaml.constructor.SafeConstructor()

_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
# the only value types a site document has (no schema takes a fraction, a date, a set or bytes)
_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "bool", "null", "float")}

# Bounds that hold whatever the input: a site file is small text, so anything far beyond these is
# an attack (or an accident) that must end in a located error, not in memory or time exhaustion.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32  # the deepest site document nests 8 levels
MAX_ALIAS_VALUES = 100_000  # values an alias may add by repeating a subtree ("billion laughs")
MAX_SCALAR = 16 * 1024  # characters of one value; free text is at most 256
MAX_INT_DIGITS = 20
# characters that have no place in any value: a trailing newline would pass a `$`-anchored pattern
# and reach a generated file (a router name inside a shell script's comment, a folder name)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class _Bound(Exception):
    def __init__(self, node, message: str, code: str):
        self.node, self.message, self.code = node, message, code


class _Converter:
    """Node tree -> plain values, with every bound of the input enforced as it goes."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.problems: list[Diagnostic] = []
        self.sizes: dict[int, int] = {}  # id(collection node) -> values it holds, once converted
        self.open: set[int] = set()  # collection nodes being converted (an alias to one is a cycle)
        self.values = 0  # values converted so far
        self.alias_values = 0

    def run(self, node):
        try:
            return self.convert(node, 0)
        except _Bound as exc:
            self._problem(exc.node, exc.message, exc.code)
            return None

    def convert(self, node, depth: int):
        self.values += 1
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if depth >= MAX_DEPTH:
            raise _Bound(node, f"nested deeper than {MAX_DEPTH} levels", "yaml-too-deep")
        key = id(node)
        if key in self.open:
            raise _Bound(node, "an alias refers to a collection that contains it (recursive alias)",
                         "yaml-recursive-alias")
        if key in self.sizes:  # converted before: this is an alias repeating it
            self.alias_values += self.sizes[key]
            if self.alias_values > MAX_ALIAS_VALUES:
                raise _Bound(node, f"aliases expand to more than {MAX_ALIAS_VALUES} values", "yaml-alias-bomb")
        if node.tag not in (_SEQ, _MAP):  # !!set, !!omap, !!pairs, local tags
            raise _Bound(node, f"unsupported YAML tag {node.tag}", "yaml-tag")
        self.open.add(key)
        start = self.values
        if isinstance(node, yaml.SequenceNode):
            result = [self.convert(item, depth + 1) for item in node.value]
        else:
            result = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self._problem(key_node, "mapping keys must be plain strings", "yaml-key")
                    continue
                name = key_node.value  # keys are names: `80:` is the string "80"
                if _CONTROL.search(name) or len(name) > MAX_SCALAR:
                    self._problem(key_node, "key holds a control character or is too long",
                                  "yaml-control-character")
                    continue
                if name in result:
                    self._problem(key_node, f"duplicate key '{name}'", "yaml-duplicate-key")
                    continue
                result[name] = self.convert(value_node, depth + 1)
        self.open.discard(key)
        self.sizes.setdefault(key, self.values - start)  # what repeating it costs, nested aliases included
        return result

    def scalar(self, node):
        value = node.value
        if len(value) > MAX_SCALAR:
            raise _Bound(node, f"value longer than {MAX_SCALAR} characters", "yaml-too-long")
        if _CONTROL.search(value):
            where = _CONTROL.search(value)
            # values are never echoed here: the loader does not know which field takes a secret
            self._problem(node, f"value holds a control character ({value[where.start()]!r}); values are "
                          "single lines of printable text", "yaml-control-character")
            return None
        if node.tag == _STR:  # the common case, without the constructor's overhead
            return value
        if node.tag not in _TAGS:
            self._problem(node, f"unsupported YAML tag {node.tag}", "yaml-tag")
            return None
        if node.tag.endswith(":int") and len(value.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
            self._problem(node, f"number is too large (more than {MAX_INT_DIGITS} digits)", "yaml-value")
            return None
        try:
            result = _scalar(node)
        except Exception:  # any constructor failure (`!!int dc1`) is the input's fault
            self._problem(node, f"value is not a valid {node.tag.rsplit(':', 1)[1]}", "yaml-value")
            return None
        if isinstance(result, float):  # no field takes a fraction; 17.0 must not pass as 17
            self._problem(node, "value is not a whole number (no field takes a fraction)", "yaml-float")
            return None
        return result

    def _problem(self, node, message: str, code: str) -> None:
        mark = node.start_mark
        self.problems.append(Diagnostic(Location(self.doc.file, mark.line + 1, mark.column + 1), message, code))


def _scalar(node):
    constructor = _constructor.yaml_constructors.get(node.tag)
    if constructor is None:
        return node.value
    return constructor(_constructor, node)


def _within(text: str, file: str, line: int, column: int) -> Location:
    """A 0-based mark as a location inside the file: the parser places an error at the end of a file
    without a final newline on a line after the last one."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if line >= len(lines):
        last = lines[-1] if lines else ""
        return Location(file, max(len(lines), 1), len(last) + 1)
    return Location(file, line + 1, column + 1)


def _line_col(text: str, index: int) -> tuple[int, int]:
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


# What sends a file to the positioned reader before yaml-rs reads it: anchors, aliases and tags
# (their bounds and refusals live there), tabs and carriage returns, directives and document markers,
# and a plain number that YAML 1.2 reads differently from YAML 1.1 because it starts with 0 or an
# underscore (010, 0o10, 0X10, _1), found where a plain scalar may start.
_NOT_FAST_TEXT = ("&", "*", "!", "\t", "\r", "\n%", "\n---", "\n...")
# a character libyaml's reader refuses anywhere in a file, comments included
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PRINTABLE_ASCII = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F)])
_NUMBER_HINT = re.compile(r"[ \[,{:\n+-][0_]")  # a cheap scan first: rarely any match
# the same scan for printable ASCII text, at C speed: the characters before and after marked with two
# bytes such a text never holds, then one substring search
_NUMBER_MARKS = bytes.maketrans(b" [,{:\n+-0_", b"\x01" * 8 + b"\x02" * 2)
_NUMBER_FORM = re.compile(r"(?:[:\[,{?\n]|- ) *[-+]?(?:0\w|_)")
# where the JSON shows a null: yaml-rs reads .inf, .nan and 1e400 as floats that JSON writes as null
_INFINITE = re.compile(r"\d[eE]|\.(?:inf|Inf|INF|nan|NaN|NAN)")


def _implicit_pattern() -> re.Pattern:
    """A line holding a text that PyYAML's resolver gives another type than str when it is plain
    (bool, int, float, null, timestamp, merge, value, yaml): `yes`, `1:20`, an empty line..."""
    patterns = {regexp.pattern for resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.values()
                for _tag, regexp in resolvers}
    return re.compile(b"|".join(sorted(f"(?:{p})".encode() for p in patterns)), re.X | re.M)


_IMPLICIT = _implicit_pattern()
# a backslash (an escaped control character, quote or backslash), C1 controls, U+2028/2029
_JSON_UNSAFE = re.compile(rb"\\|\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
_LONG_LINE = re.compile(b"^.{%d}" % (MAX_SCALAR + 1), re.M)
_JSON_FRACTION = re.compile(rb"\d[.eE]")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_STEP = tuple(1 if c in b"[{" else -1 for c in range(256))
_FAST_DEPTH = MAX_DEPTH - 2  # deeper documents take the positioned reader, which draws the line


def _fast_read(decoded: str) -> tuple[object, bytes] | None:
    """The document as yaml-rs reads it and orjson's JSON of it, or ``None`` where the positioned
    reader must decide (read back from that JSON, the values share the text of repeated keys, which
    yaml-rs gives each its own copy of: a site's documents take 40% less memory so).

    The value tree is checked as orjson's compact JSON of it, at C speed: orjson refuses a key
    that is not a string (`80:` is "80" in the positioned reader) and a number beyond 64 bits;
    once the JSON holds no backslash, every '"' opens or closes a string, so splitting at them
    separates the strings (which must hold no control character and nothing PyYAML resolves to
    another type) from the structure (no fraction, no nesting deeper than ``_FAST_DEPTH``)."""
    if decoded[:1] in ("", "%", "-", "+", "0", "_") or any(t in decoded for t in _NOT_FAST_TEXT):
        return None
    text = decoded.encode("ascii") if decoded.isascii() else None
    if not (text is not None and not text.translate(None, _PRINTABLE_ASCII)) and \
            _NOT_PRINTABLE.search(decoded):  # the translation: most sites are plain ASCII, 6x faster
        return None
    hint = b"\x01\x02" in text.translate(_NUMBER_MARKS) if text is not None else _NUMBER_HINT.search(decoded)
    if hint and _NUMBER_FORM.search(decoded):
        return None
    try:
        data = yaml_rs.loads(decoded, parse_datetime=False)
        encoded = orjson.dumps(data)
    except Exception:  # a duplicate key, a syntax error, a limit: the positioned reader reports it
        return None
    # JSON of ASCII (values from escapes may not be) can hold only the first two of _JSON_UNSAFE
    unsafe = (b"\\" in encoded or b"\x7f" in encoded) if encoded.isascii() else _JSON_UNSAFE.search(encoded)
    if type(data) not in (dict, list) or unsafe:
        return None
    parts = encoded.split(b'"')
    strings = b"\n".join(set(parts[1::2]))  # keys and words repeat: each distinct text once
    if _IMPLICIT.search(strings) or (len(strings) > MAX_SCALAR and _LONG_LINE.search(strings)):
        return None
    skeleton = b"".join(parts[0::2])
    if _JSON_FRACTION.search(skeleton) or (b"null" in skeleton and _INFINITE.search(decoded)):
        return None
    if max(accumulate(map(_DEPTH_STEP.__getitem__, skeleton.translate(None, _NOT_BRACKET)))) > _FAST_DEPTH:
        return None
    return data, encoded


def parse_document(text: bytes, file: str, kind: str, kept: bool = True) -> tuple[Document, list[Diagnostic]]:
    """Parse one file's bytes into a Document; problems are returned, never raised. Unless the
    document is ``kept`` (a reading child only checks it and sends its JSON on), values read by
    yaml-rs are read back from their JSON: they then share the text of repeated keys."""
    doc = Document(kind=kind, file=file, data=None)
    if len(text) > MAX_FILE_BYTES:
        return doc, [Diagnostic(Location(file, 1, 1), f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB",
                                "file-too-large")]
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = text.count(b"\n", 0, exc.start) + 1
        column = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
        return doc, [Diagnostic(Location(file, line, column), "file is not valid UTF-8", "not-utf8")]
    if decoded.startswith("\ufeff"):
        decoded = decoded[1:]
    read = _fast_read(decoded)
    if read is not None:
        data, encoded = read
        if kept:
            doc.data = orjson.loads(encoded)
        else:
            doc.data, doc.json = data, encoded
        doc.text = decoded
        return doc, []
    try:
        nodes = list(yaml.compose_all(decoded, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or str(exc)
        if exc.context:
            cm = exc.context_mark
            at = _within(decoded, file, cm.line, cm.column) if cm else None
            started = f" (from line {at.line}, column {at.column})" if cm and cm is not mark else ""
            message = f"{exc.context}{started}: {message}"
        loc = _within(decoded, file, mark.line, mark.column) if mark else Location(file, 1, 1)
        return doc, [Diagnostic(loc, f"invalid YAML: {message}", "yaml-syntax")]
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, other controls)
        line, column = _line_col(decoded, exc.position) if isinstance(exc.position, int) else (1, 1)
        return doc, [Diagnostic(Location(file, line, column), f"invalid YAML: character {exc.character!r} is not "
                                "allowed", "yaml-syntax")]
    except yaml.YAMLError as exc:
        return doc, [Diagnostic(Location(file, 1, 1), f"invalid YAML: {exc}", "yaml-syntax")]
    except RecursionError:  # a parser without its own nesting limit
        return doc, [Diagnostic(Location(file, 1, 1), "invalid YAML: nested too deeply", "yaml-too-deep")]
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return doc, [Diagnostic(Location(file, 1, 1), "file is empty: it must hold one document", "empty-file")]
    if len(nodes) > 1:
        mark = nodes[1].start_mark
        return doc, [Diagnostic(Location(file, mark.line + 1, mark.column + 1),
                                "file holds more than one YAML document", "multiple-documents")]
    converter = _Converter(doc)
    doc.node, doc.text = nodes[0], decoded
    doc.data = converter.run(nodes[0])
    return doc, converter.problems


def read_inside(root: Path, path: Path, limit: int = MAX_FILE_BYTES, folder_inside: bool = False) -> bytes:
    """A regular file of the site, never through a symlink that leads outside the site folder (a pull
    request could point one at the CI runner's credentials), and never more than ``limit`` bytes.
    With ``folder_inside`` (the caller checked that the file's folder lies inside the site), a file
    that is no symlink is opened at once, without resolving its path component by component."""
    fd = None
    if folder_inside:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # a symlink (or nothing): resolved below
            fd = None
    if fd is None:
        real = path.resolve()
        if not real.is_relative_to(root):
            raise OSError(f"{path.name} is a symlink that leads outside the site folder: refusing to read it")
        if not real.is_file():
            raise OSError(f"{path.name} is not a regular file")
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # never waits on a FIFO swapped in meanwhile
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"larger than {limit // (1024 * 1024)} MiB")
    return data


def display_path(path: Path, root_arg: Path, root: Path) -> str:
    """The file as the user would open it: under the SITE_DIR they typed."""
    text, top = str(path), str(root)
    # a file found under the site folder: its path there, without relpath's work for each file
    rel = text[len(top) + 1:] if text.startswith(top) and text[len(top):len(top) + 1] == os.sep \
        else os.path.relpath(path, root)
    return os.path.normpath(os.path.join(str(root_arg), rel))


def _read(root: Path, root_arg: Path, path: Path, kind: str, inside: bool, check,
          kept: bool = True) -> tuple[Document | None, list[Diagnostic]]:
    """One file of the site parsed (and checked by ``check``): the document, if it parsed without
    a problem, and the problems (``kept``: as parse_document's)."""
    shown = display_path(path, root_arg, root)
    try:
        raw = read_inside(root, path, folder_inside=inside)
    except OSError as exc:
        return None, [Diagnostic(Location(shown), f"cannot read: {exc.strerror or exc}", "unreadable")]
    doc, found = parse_document(raw, shown, kind, kept)
    if found:
        return None, found
    if check is not None:
        doc.checked = check(doc)
    return doc, []


# Files each reading process needs before another one pays: a fork and sending the parsed documents
# back cost about as much as parsing a few dozen files.
_PARALLEL_FILES = 256
# files handed out at a time to whichever reading process is free: small enough that none waits
# long for the others at the end, large enough that taking one costs nothing
_CHUNK_FILES = 16


def _read_all(root: Path, root_arg: Path, jobs: list[tuple[Path, str, bool]], check) -> Shared:
    """Every job read, in chunks taken by whichever process is free: this one and, when the site is
    large, forked children (one per further core, up to 4 in all), which start at once. A child
    sends its documents back as orjson's JSON of their values and their text (four times faster to
    send and rebuild than pickled values), never their node trees: a later diagnostic composes the
    text again. ``finish()`` of what this returns gives the results, in order, in chunks."""
    size = max(_CHUNK_FILES, -(-len(jobs) // MAX_CHUNKS))
    chunks = [jobs[k:k + size] for k in range(0, len(jobs), size)]

    def read_chunk(k: int, here: bool) -> list:
        results = [_read(root, root_arg, path, kind, inside, check, here) for path, kind, inside in chunks[k]]
        return results if here else sent(results)

    def sent(results: list) -> list:
        out = []
        for doc, found in results:
            if doc is None:
                out.append((None, found))
                continue
            try:
                value = doc.json if doc.json is not None else orjson.dumps(doc.data)
            except TypeError:  # an integer beyond 64 bits: sent as it is
                value = ("value", doc.data)
            out.append(((doc.kind, doc.file, value, doc.text, doc.checked), found))
        return out

    def received(results: list) -> list:
        out = []
        for fields, found in results:
            if fields is not None:
                kind, file, value, text, checked = fields
                data = value[1] if isinstance(value, tuple) else orjson.loads(value)
                fields = Document(kind=kind, file=file, data=data, text=text, checked=checked)
            out.append((fields, found))
        return out

    return Shared(len(chunks), processes(len(jobs), _PARALLEL_FILES) - 1, read_chunk, received)


def load_site(site_dir: str | os.PathLike, check=None) -> tuple[SiteFiles, list[Diagnostic]]:
    """Discover and parse every file of a site, in sorted order; files that fail are left out.
    ``check(doc)`` runs on every document that parsed, in the process that parsed it: its problems
    are the document's ``checked``."""
    return start_load(site_dir, check).finish()


def start_load(site_dir: str | os.PathLike, check=None) -> Loading:
    """``load_site`` begun: the site's files listed and, on a large site, being read by forked
    processes from now on, while this one does something else (imports the rest of a build);
    ``finish()`` (or leaving its ``with`` block, which stops the readers) must follow."""
    root_arg = Path(site_dir)
    root = root_arg.resolve()
    if not root.is_dir():
        raise DiagnosticsError([Diagnostic(Location(str(root_arg)), "site folder not found", "no-site")])
    # the site's entries in order: a problem found while listing, or a file to read (path, kind)
    entries: list = []

    site_file = root / "site.yaml"
    if site_file.is_file():
        entries.append((site_file, "site", True))
    else:
        entries.append(Diagnostic(Location(display_path(site_file, root_arg, root)),
                                  "site.yaml is missing: a site folder holds exactly one", "no-site"))
    for other in ("site.yml",):
        if (root / other).exists():
            entries.append(Diagnostic(Location(display_path(root / other, root_arg, root)),
                                      "the site document must be named site.yaml", "bad-file-name"))
    for folder, kind in sorted(KIND_DIRS.items()):
        directory = root / folder
        if directory.exists() and not directory.is_dir():
            entries.append(Diagnostic(Location(display_path(directory, root_arg, root)),
                                      f"{folder} must be a folder of *.yaml files", "bad-file-name"))
        elif directory.is_dir():
            inside = directory.resolve().is_relative_to(root)
            with os.scandir(directory) as listing:  # an entry's type comes with the listing: no stat
                found = sorted((entry.name, entry.is_file()) for entry in listing)
            for name, is_file in found:
                path = directory / name
                if name.startswith("."):
                    continue
                if path.suffix != ".yaml" or not is_file:
                    entries.append(Diagnostic(Location(display_path(path, root_arg, root)),
                                              f"unexpected entry in {folder}/: only *.yaml files belong here",
                                              "bad-file-name"))
                    continue
                entries.append((path, kind, inside))
    lock_path = root / LOCK_FILE
    if lock_path.is_file():
        entries.append((lock_path, "lock", True))
    return Loading(root, root_arg, entries, _read_all(root, root_arg, [e for e in entries if isinstance(e, tuple)], check))


class Loading:
    """A site whose files are being read (``start_load``)."""

    def __init__(self, root: Path, root_arg: Path, entries: list, reading: Shared):
        self._root, self._root_arg, self._entries, self._reading = root, root_arg, entries, reading

    def __enter__(self) -> Loading:
        return self

    def __exit__(self, *exc) -> None:
        self._reading.cancel()  # nothing once finished

    def finish(self) -> tuple[SiteFiles, list[Diagnostic]]:
        """What ``load_site`` gives: this process reads the files still left, then gathers all."""
        root, root_arg = self._root, self._root_arg
        results = (result for chunk in self._reading.finish() for result in chunk)
        problems: list[Diagnostic] = []
        docs: dict[str, list[Document]] = {kind: [] for kind in (*KIND_DIRS.values(), "site", "lock")}
        for entry in self._entries:
            if isinstance(entry, Diagnostic):
                problems.append(entry)
                continue
            doc, found = next(results)
            problems.extend(found)
            if doc is not None:
                docs[entry[1]].append(doc)

        known_hosts = None
        if (root / "known_hosts").is_file() or (root / "known_hosts").is_symlink():
            shown = display_path(root / "known_hosts", root_arg, root)
            try:
                known_hosts = read_inside(root, root / "known_hosts").decode("utf-8")
            except OSError as exc:
                problems.append(Diagnostic(Location(shown), f"cannot read: {exc.strerror or exc}", "unreadable"))
            except UnicodeDecodeError:
                problems.append(Diagnostic(Location(shown), "file is not valid UTF-8", "not-utf8"))

        files = SiteFiles(root=root, site=next(iter(docs["site"]), None), zones=docs["zone"], vpcs=docs["vpc"],
                          acls=docs["acl"], lock=next(iter(docs["lock"]), None), known_hosts=known_hosts)
        return files, problems
