"""Reading a site folder: YAML documents with positions kept in a side table.

Only this module reads the site's files. Parsing uses libyaml (``CSafeLoader``) to compose node
trees, which keep a start mark on every node; the nodes are then turned into plain Python values
while every value's and key's position is recorded under its JSON path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import Diagnostic, DiagnosticsError, Location

try:  # libyaml is an order of magnitude faster; fall back only where it is missing
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader

KIND_DIRS = {"zones": "zone", "vpcs": "vpc", "acls": "acl"}
LOCK_FILE = "allocations.lock.yaml"

Path_ = tuple  # a JSON path: tuple of str keys and int indices


@dataclass
class Document:
    kind: str
    file: str  # as the user would open it
    data: object
    node: object = None  # the composed YAML node tree: positions are looked up in it when needed

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    def loc(self, path: Path_ = (), key: bool = False) -> Location:
        """The location of ``path``'s value (or of its key): else of its nearest existing parent."""
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


_STR = "tag:yaml.org,2002:str"


class _Converter:
    def __init__(self, doc: Document):
        self.doc = doc
        self.problems: list[Diagnostic] = []

    def convert(self, node):
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR:  # the common case, without the constructor's overhead
                return node.value
            if node.tag.startswith("tag:yaml.org,2002:") and node.tag != "tag:yaml.org,2002:merge":
                try:
                    return _scalar(node)
                except yaml.YAMLError as exc:
                    self._problem(node, f"invalid value: {exc}", "yaml-value")
                    return None
            self._problem(node, f"unsupported YAML tag {node.tag}", "yaml-tag")
            return None
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item) for item in node.value]
        result = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, "mapping keys must be plain strings", "yaml-key")
                continue
            key = key_node.value  # keys are names: `80:` is the string "80"
            if key in result:
                self._problem(key_node, f"duplicate key '{key}'", "yaml-duplicate-key")
                continue
            result[key] = self.convert(value_node)
        return result

    def _problem(self, node, message: str, code: str) -> None:
        mark = node.start_mark
        self.problems.append(Diagnostic(Location(self.doc.file, mark.line + 1, mark.column + 1), message, code))


def _scalar(node):
    constructor = _constructor.yaml_constructors.get(node.tag)
    if constructor is None:
        return node.value
    return constructor(_constructor, node)


def parse_document(text: bytes, file: str, kind: str) -> tuple[Document, list[Diagnostic]]:
    """Parse one file's bytes into a Document; problems are returned, never raised."""
    doc = Document(kind=kind, file=file, data=None)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = text.count(b"\n", 0, exc.start) + 1
        column = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
        return doc, [Diagnostic(Location(file, line, column), "file is not valid UTF-8", "not-utf8")]
    if decoded.startswith("\ufeff"):
        decoded = decoded[1:]
    try:
        nodes = list(yaml.compose_all(decoded, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or str(exc)
        if exc.context:
            cm = exc.context_mark
            started = f" (from line {cm.line + 1}, column {cm.column + 1})" if cm and cm is not mark else ""
            message = f"{exc.context}{started}: {message}"
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        return doc, [Diagnostic(loc, f"invalid YAML: {message}", "yaml-syntax")]
    except yaml.YAMLError as exc:
        return doc, [Diagnostic(Location(file), f"invalid YAML: {exc}", "yaml-syntax")]
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return doc, [Diagnostic(Location(file, 1, 1), "file is empty: it must hold one document", "empty-file")]
    if len(nodes) > 1:
        mark = nodes[1].start_mark
        return doc, [Diagnostic(Location(file, mark.line + 1, mark.column + 1),
                                "file holds more than one YAML document", "multiple-documents")]
    converter = _Converter(doc)
    doc.node = nodes[0]
    doc.data = converter.convert(nodes[0])
    return doc, converter.problems


def display_path(path: Path, root_arg: Path, root: Path) -> str:
    """The file as the user would open it: under the SITE_DIR they typed."""
    return os.path.normpath(os.path.join(str(root_arg), os.path.relpath(path, root)))


def load_site(site_dir: str | os.PathLike) -> tuple[SiteFiles, list[Diagnostic]]:
    """Discover and parse every file of a site, in sorted order; files that fail are left out."""
    root_arg = Path(site_dir)
    root = root_arg.resolve()
    problems: list[Diagnostic] = []
    if not root.is_dir():
        raise DiagnosticsError([Diagnostic(Location(str(root_arg)), "site folder not found", "no-site")])

    def read(path: Path, kind: str) -> Document | None:
        shown = display_path(path, root_arg, root)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            problems.append(Diagnostic(Location(shown), f"cannot read: {exc.strerror}", "unreadable"))
            return None
        doc, found = parse_document(raw, shown, kind)
        problems.extend(found)
        return doc if not found else None

    site_file = root / "site.yaml"
    site = None
    if site_file.is_file():
        site = read(site_file, "site")
    else:
        problems.append(Diagnostic(Location(display_path(site_file, root_arg, root)),
                                   "site.yaml is missing: a site folder holds exactly one", "no-site"))
    for other in ("site.yml",):
        if (root / other).exists():
            problems.append(Diagnostic(Location(display_path(root / other, root_arg, root)),
                                       "the site document must be named site.yaml", "bad-file-name"))

    kinds: dict[str, list[Document]] = {}
    for folder, kind in sorted(KIND_DIRS.items()):
        docs: list[Document] = []
        directory = root / folder
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.name.startswith("."):
                    continue
                if path.suffix != ".yaml" or not path.is_file():
                    problems.append(Diagnostic(Location(display_path(path, root_arg, root)),
                                               f"unexpected entry in {folder}/: only *.yaml files belong here",
                                               "bad-file-name"))
                    continue
                doc = read(path, kind)
                if doc is not None:
                    docs.append(doc)
        kinds[kind] = docs

    lock = None
    lock_path = root / LOCK_FILE
    if lock_path.is_file():
        lock = read(lock_path, "lock")
    known_hosts = None
    if (root / "known_hosts").is_file():
        known_hosts = (root / "known_hosts").read_text(encoding="utf-8", errors="replace")

    files = SiteFiles(root=root, site=site, zones=kinds["zone"], vpcs=kinds["vpc"], acls=kinds["acl"],
                      lock=lock, known_hosts=known_hosts)
    return files, problems
