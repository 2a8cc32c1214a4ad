"""The pipeline: load -> schema -> intent -> verify -> allocate -> per-router model -> render.

Pure apart from reading the site (load) and, in ``write_build``, writing the results. The CLI
passes small option objects in and prints what comes back; nothing here prints or exits.
"""

from __future__ import annotations

import gc
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator
from pathlib import Path

from .compiler import render
from .site import verify
from .compiler.allocate import Allocation, allocate, dump_lock
from .errors import Diagnostic, DiagnosticsError
from .site.intent import Site, build_intent
from .site.loader import LOCK_FILE, SiteFiles, load_site
from .site.schema import validate_document
from .site.secrets import REDACTED, resolve
from .tree import KNOWN_HOSTS, SECRET_SUMS, dump_json
from .compiler.topology import router_views, site_json
from .compiler.write import StagedFile, check_output_target, promote_tree



@dataclass(frozen=True)
class BuildOptions:
    output: Path = Path("output")
    locked: bool = False
    placeholder_secrets: bool = False
    redacted_view: bool = False  # also render the secret-bearing files with every secret as <redacted>
    environ: dict = field(default_factory=lambda: dict(os.environ), compare=False)


@dataclass
class Validated:
    files: SiteFiles
    site: Site
    alloc: Allocation


@dataclass
class BuildResult:
    site: str
    # (relative path, (bytes, mode)) of the whole tree, router by router: rendered as it is consumed,
    # so writing it holds one router's files at a time, never the whole output
    render: Callable[[], Iterator[tuple[str, tuple[bytes, int]]]] = field(repr=False)
    lock_text: str
    lock_changed: bool
    routers: list[str]
    output_dir: Path | None = None
    intent: Site | None = field(default=None, repr=False)
    # secret-bearing files rendered with every secret value as <redacted> (redacted_view): what a
    # person may see of them; never written
    redacted: dict = field(default_factory=dict, repr=False)
    _tree: dict | None = field(default=None, repr=False)

    @property
    def tree(self) -> dict:
        """relative path -> (bytes, mode): the whole tree in memory (for comparing trees)."""
        if self._tree is None:
            self._tree = dict(self.render())
        return self._tree


@contextmanager
def _no_cyclic_gc():
    """A build allocates millions of long-lived objects and no garbage cycles worth collecting:
    the cyclic collector would only rescan them again and again (measured: a third of build time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _raise_if(problems: list[Diagnostic]) -> None:
    if problems:
        raise DiagnosticsError(problems)


def validate_site(site_dir) -> Validated:
    """Every schema and semantic check, all problems at once (raises DiagnosticsError)."""
    with _no_cyclic_gc():
        return _validate_site(site_dir)


def _validate_site(site_dir) -> Validated:
    files, problems = load_site(site_dir)
    for doc in files.documents() + ([files.lock] if files.lock else []):
        problems += validate_document(doc)
    _raise_if(problems + verify.check_files(files))
    site = build_intent(files)
    _raise_if(verify.check_intent(site))
    alloc = allocate(site, files.lock.data if files.lock else None)
    _raise_if(alloc.diagnostics)
    _raise_if(verify.check_placement(site, alloc.tier_cidrs))
    return Validated(files, site, alloc)


def build_site(site_dir, options: BuildOptions) -> BuildResult:
    with _no_cyclic_gc():
        return _build_site(site_dir, options)


def _build_site(site_dir, options: BuildOptions) -> BuildResult:
    v = _validate_site(site_dir)
    site, alloc = v.site, v.alloc
    secrets, missing = resolve(site, v.files.root, options.environ, options.placeholder_secrets)
    _raise_if(missing)
    for doc in v.files.documents():
        doc.node = None  # every located check has passed: positions are no longer needed
    lock_text = dump_lock(alloc.lock_data(site))
    old_lock = (v.files.root / LOCK_FILE).read_text(encoding="utf-8") if v.files.lock else None
    lock_changed = lock_text != old_lock
    if options.locked and lock_changed:
        where = v.files.lock.file if v.files.lock else os.path.join(str(site_dir), LOCK_FILE)
        raise DiagnosticsError([Diagnostic(None, f"{where} would change (--locked): run `vpcgen build` "
                                           "without --locked and commit the lock file", "lock-changed")])
    views = router_views(site, alloc)
    site_bytes = dump_json(site_json(site, alloc, views))
    digest = hashlib.sha256(site_bytes).hexdigest()
    env = render.environment()
    head: list[tuple[str, tuple[bytes, int]]] = [("site.json", (site_bytes, render.TEXT_MODE))]
    if v.files.known_hosts is not None:  # deploy checks host keys against it: the tree carries it along
        head.append((KNOWN_HOSTS, (v.files.known_hosts.encode("utf-8"), render.TEXT_MODE)))
    deployable = not options.placeholder_secrets

    def tree():
        yield from head
        for view in views:
            for path, entry in render.render_router(env, view, secrets, deployable, digest).items():
                yield f"{view.name}/{path}", entry

    redacted: dict[str, bytes] = {}
    if options.redacted_view and secrets:
        markers = {name: REDACTED for name in secrets}
        for view in views:
            for path, (data, mode) in render.render_router(env, view, markers, False, digest).items():
                if mode == render.SECRET_MODE and path != SECRET_SUMS:
                    redacted[f"{view.name}/{path}"] = data
    result = BuildResult(site.name, tree, lock_text, lock_changed, [view.name for view in views], intent=site,
                         redacted=redacted)
    if options.redacted_view:  # a diff compares whole trees: render now, as before
        result.tree
    return result


def write_build(site_dir, result: BuildResult, options: BuildOptions) -> BuildResult:
    """Promote the tree into OUTPUT/<site>/ and record the lock; the old tree stays until then."""
    target = Path(options.output) / result.site
    check_output_target(target, Path(site_dir))
    # the lock is written (and flushed) first, beside its place: a site folder that cannot take it
    # fails the build before the output changes; it is renamed into place right after the promote
    lock = StagedFile(Path(site_dir) / LOCK_FILE, result.lock_text.encode("utf-8"), 0o644) \
        if result.lock_changed else None
    try:
        with _no_cyclic_gc():  # rendering happens here, router by router, as the files are written
            promote_tree(result._tree.items() if result._tree is not None else result.render(), target)
    except BaseException:
        if lock is not None:
            lock.discard()
        raise
    if lock is not None:
        lock.commit()
    result.output_dir = target
    return result
