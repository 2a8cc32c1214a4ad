"""The pipeline: load -> schema -> intent -> verify -> allocate -> per-router model -> render.

Pure apart from reading the site (load) and, in ``write_build``, writing the results. The CLI
passes small option objects in and prints what comes back; nothing here prints or exits.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Callable, Iterator

from . import forked
from .compiler import render
from .site import verify
from .compiler.allocate import Allocation, allocate, dump_lock, lock_changes
from .errors import Diagnostic, DiagnosticsError
from .site.intent import Site, build_intent
from .site.entries import unknown_entries
from .site.loader import KIND_DIRS, LOCK_FILE, Loading, SiteFiles
from .site.schema import start_reading
from .site.secrets import REDACTED, resolve
from .tree import KNOWN_HOSTS, SECRET_SUMS, dump_json
from .compiler.topology import router_views, site_json, site_json_bytes
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
    warnings: list = field(default_factory=list)  # Diagnostics of severity "warning"
    # the intent's own checks, still running in a child process (a large site's build goes on
    # meanwhile): ``confirm`` waits for them before anything is written
    checks: forked.Forked | None = field(default=None, repr=False)
    site_dir: object = field(default=None, repr=False)

    def confirm(self) -> None:
        """Raises DiagnosticsError if the checks still running found a problem; their warnings join."""
        if self.checks is not None:
            checks, self.checks = self.checks, None
            self.warnings = _sorted_warnings(self.warnings + _joined(checks, self.site_dir))

    @contextmanager
    def trusting(self):
        """Work that takes the pending checks to find nothing: if it fails, what they found (if
        anything) is the error to report, as if they had run first."""
        try:
            yield
        except Exception:
            self.confirm()
            raise
        except BaseException:
            if self.checks is not None:
                checks, self.checks = self.checks, None
                checks.kill()
            raise


@dataclass
class BuildResult:
    site: str
    # (relative path, (bytes, mode)) of the whole tree, router by router: rendered as it is consumed,
    # so writing it holds one router's files at a time, never the whole output; render(k, n) is the
    # k-th of n slices of it (site.json in the first), for writers in processes of their own
    render: Callable[..., Iterator[tuple[str, tuple[bytes, int]]]] = field(repr=False)
    lock_text: str
    lock_changed: bool
    routers: list[str]
    output_dir: Path | None = None
    intent: Site | None = field(default=None, repr=False)
    # secret-bearing files rendered with every secret value as <redacted> (redacted_view): what a
    # person may see of them; never written
    redacted: dict = field(default_factory=dict, repr=False)
    warnings: list = field(default_factory=list)
    # the site.json document itself (redacted_view: a diff reads it and should not parse 36 MB again)
    document: dict | None = field(default=None, repr=False)
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
            # every object allocated meanwhile counts as young: the first allocation after enable
            # would scan them all (0.2 s per million). Frozen, they skip that scan; unfrozen, they
            # join the oldest generation, which only a full collection scans.
            gc.freeze()
            gc.enable()
            gc.unfreeze()


def _raise_if(problems: list[Diagnostic]) -> None:
    if problems:
        raise DiagnosticsError(problems)


def validate_site(site_dir) -> Validated:
    """Every schema and semantic check, all problems at once (raises DiagnosticsError)."""
    with _no_cyclic_gc():
        v = _validate_site(site_dir)
        v.confirm()
        return v


def _validate_site(site_dir, speculate: bool = True, loading: Loading | None = None) -> Validated:
    """The checks, with those of the intent perhaps still running (``Validated.confirm``); the site
    read by ``loading`` if it was begun (``start_reading``)."""
    files, problems = (loading or start_reading(site_dir)).finish()
    problems += unknown_entries(site_dir)
    # every document that passes its schema goes on to the semantic checks, whatever the others do
    for doc in files.documents() + ([files.lock] if files.lock else []):
        problems += doc.checked
    problems += verify.check_files(files)
    checked = _passed(files, problems)
    site = build_intent(checked, _unchecked(problems))
    lock = checked.lock.data if checked.lock else None
    if problems or not speculate or len(site.vpcs) < _FORK_VPCS:
        found, warnings = _intent_checks(site)
        return _placed(files, site, lock, problems + found, warnings)
    # a large site free of problems so far: the intent's checks run in a child while this process
    # allocates and lays out as if they found nothing. If they do find something, the checks are
    # done again the plain way (the documents may be gone by then), so the diagnostics are the same.
    child = forked.start(functools.partial(_intent_checks, site))
    try:
        v = _placed(files, site, lock, [], [])
    except DiagnosticsError:  # allocation or placement problems: reported with the intent's, in order
        found, warnings = child.result()
        return _placed(files, site, lock, found, warnings)
    except Exception:  # what the intent's problems led to, if they found any
        _joined(child, site_dir)
        raise
    except BaseException:
        child.kill()
        raise
    v.checks, v.site_dir = child, site_dir
    return v


def _joined(child, site_dir) -> list[Diagnostic]:
    """The warnings of the intent's checks run in ``child``. Problems they found are reported as a
    plain run reports them: the site is checked again that way (its documents may be gone by now)."""
    found, warnings = child.result()
    if found:
        _validate_site(site_dir, speculate=False)  # raises, unless the site changed meanwhile
        raise DiagnosticsError(found, warnings)
    return warnings


def _intent_checks(site: Site) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """The problems and warnings the intent alone shows."""
    return verify.check_intent(site), verify.check_warnings(site)


def _placed(files: SiteFiles, site: Site, lock, problems: list[Diagnostic], warnings: list[Diagnostic]) -> Validated:
    """Allocation and placement for the VPCs whose own file and zone file are free of errors
    (anything else would report consequences of those errors, not new ones); raises
    DiagnosticsError with every problem."""
    part = _sound(site, problems)
    alloc = allocate(part, lock)
    problems = problems + alloc.diagnostics
    part = _sound(part, alloc.diagnostics)
    problems += verify.check_placement(part, alloc.tier_cidrs)
    warnings = warnings + verify.check_placement_warnings(part, alloc.tier_cidrs)
    if problems:
        raise DiagnosticsError(problems, warnings)
    return Validated(files, site, alloc, _sorted_warnings(warnings))


def _sorted_warnings(warnings: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(set(warnings), key=lambda d: (d.location, d.code, d.message))


def _passed(files: SiteFiles, problems: list[Diagnostic]) -> SiteFiles:
    """The documents without a problem so far."""
    bad = {d.location.file for d in problems if d.location}

    def ok(docs):
        return [d for d in docs if d.file not in bad]

    return SiteFiles(root=files.root, site=files.site if files.site and files.site.file not in bad else None,
                     zones=ok(files.zones), vpcs=ok(files.vpcs), acls=ok(files.acls),
                     lock=files.lock if files.lock and files.lock.file not in bad else None,
                     known_hosts=files.known_hosts)


def _unchecked(problems: list[Diagnostic]) -> frozenset:
    """(kind, name) of the documents that were left out: referring to them is no error of its own."""
    out = set()
    for d in problems:
        path = PurePath(d.location.file) if d.location else None
        if path is not None and path.parent.name in KIND_DIRS and path.suffix in (".yaml", ".yml"):
            out.add((KIND_DIRS[path.parent.name], path.stem))
        elif path is not None and path.name in KIND_DIRS and d.code == "bad-file-name":  # the folder itself
            out.add((KIND_DIRS[path.name], "*"))
    return frozenset(out)


# errors that leave a VPC's addressing intact: its allocation and placement checks still mean something
_LOCAL_ERRORS = frozenset({
    "unknown-acl", "unknown-public-ip", "public-ip-in-use", "port-collision", "port-range-size", "bad-port-range",
    "unknown-proposal", "ikev1-one-network", "cookie-needs-http", "http-path-needs-http", "vpn-needs-source-nat",
    "duplicate-vpn", "duplicate-vpn-peer", "duplicate-vpn-user", "duplicate-load-balancer", "duplicate-router",
    "duplicate-mgmt", "route-conflict"})


def _sound(site: Site, problems: list[Diagnostic]) -> Site:
    """The site without the VPCs whose file (or zone's file) has an error that may affect addressing."""
    bad = {d.location.file for d in problems if d.location and d.code not in _LOCAL_ERRORS}
    return replace(site, vpcs={n: v for n, v in site.vpcs.items() if v.src.file not in bad and v.zone in site.zones
                               and site.zones[v.zone].src.file not in bad})


def build_site(site_dir, options: BuildOptions, loading: Loading | None = None) -> BuildResult:
    with _no_cyclic_gc():
        return _build_site(site_dir, options, loading)


def _build_site(site_dir, options: BuildOptions, loading: Loading | None) -> BuildResult:
    v = _validate_site(site_dir, loading=loading)
    site, alloc = v.site, v.alloc
    lock_dump = None
    try:
        with v.trusting():
            secrets, missing = resolve(site, v.files.root, options.environ, options.placeholder_secrets)
            if missing:
                v.confirm()  # the intent's problems come first, as when they are checked before
                raise DiagnosticsError(missing, v.warnings)
            # every located check has passed or is still running (and would read the site again if it
            # failed): positions, texts and raw values are no longer needed (the intent holds what the
            # build uses), and a large site's documents weigh as much as its intent
            for doc in v.files.documents() + ([v.files.lock] if v.files.lock else []):
                doc.node = doc.text = doc.data = None
            # the lock's text is written by another process while this one lays out the routers and site.json
            lock_data = alloc.lock_data(site)
            lock_dump = forked.start(lambda: dump_lock(lock_data)) if len(site.vpcs) >= _FORK_VPCS else None
            views = router_views(site, alloc)
            # a diff compares the documents; a build needs only the bytes, dumped a VPC or ACL at a
            # time (the whole document weighs more than its 370 MB of JSON at 10,000 VPCs)
            document = site_json(site, alloc, views) if options.redacted_view else None
            site_bytes = dump_json(document) if document is not None else site_json_bytes(site, alloc, views)
        v.confirm()
    except BaseException:
        if lock_dump:
            lock_dump.kill()
        raise
    lock_text = lock_dump.result() if lock_dump else dump_lock(lock_data)
    old_lock = (v.files.root / LOCK_FILE).read_text(encoding="utf-8") if v.files.lock else None
    lock_changed = lock_text != old_lock
    if options.locked and lock_changed:
        where = v.files.lock.file if v.files.lock else os.path.join(str(site_dir), LOCK_FILE)
        changes = lock_changes(old_lock or "", lock_text)
        shown = "; ".join(changes[:20]) + (f"; and {len(changes) - 20} more" if len(changes) > 20 else "")
        raise DiagnosticsError([Diagnostic(None, f"{where} would change (--locked): {shown or 'rewritten'}; run "
                                           "`vpcgen build` without --locked and commit the lock file",
                                           "lock-changed")], v.warnings)
    digest = hashlib.sha256(site_bytes).hexdigest()
    env = render.environment()
    head: list[tuple[str, tuple[bytes, int]]] = [("site.json", (site_bytes, render.TEXT_MODE))]
    if v.files.known_hosts is not None:  # deploy checks host keys against it: the tree carries it along
        head.append((KNOWN_HOSTS, (v.files.known_hosts.encode("utf-8"), render.TEXT_MODE)))
    deployable = not options.placeholder_secrets

    def tree(part: int = 0, parts: int = 1):
        """The whole tree, or the ``part``-th of ``parts`` slices of it (routers in order). The files
        before the routers are handed out once: site.json (370 MB at 10,000 VPCs) is let go as soon
        as it is written, before the writer processes are forked (their memory counts it otherwise)."""
        if part == 0:
            while head:
                yield head.pop(0)
        for view in forked.slices(views, parts)[part]:
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
                         redacted=redacted, warnings=v.warnings,
                         document=document if options.redacted_view else None)
    if options.redacted_view:  # a diff compares whole trees: render now, as before
        result.tree
    return result


# VPCs a site needs before handing work to another process pays: a fork of a large process
# costs tens of milliseconds
_FORK_VPCS = 32


def _writers(routers: int) -> int:
    """Processes that render and write a tree."""
    return forked.processes(routers, 2 * _FORK_VPCS)


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
            if result._tree is not None:
                promote_tree(result._tree.items(), target)
            else:
                parts = _writers(len(result.routers))
                files = result.render(0, parts)
                first = [next(files)]  # site.json: written before the other writers are forked
                promote_tree(files, target, [functools.partial(result.render, k, parts) for k in range(1, parts)],
                             first=first)
    except BaseException:
        if lock is not None:
            lock.discard()
        raise
    if lock is not None:
        lock.commit()
    result.output_dir = target
    return result
