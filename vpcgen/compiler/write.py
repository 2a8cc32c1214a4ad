"""Writing a built tree: everything goes to a staging folder beside the target, is flushed to disk,
then swapped into place in one atomic exchange, so a failed, interrupted or killed build never
leaves a half-written output, nor a moment without one.

The tree a build replaces is kept beside the target (``.<name>.spare``) and becomes the next build's
staging folder: its folders are kept, its files rewritten in place (or left alone when their bytes
and mode are already right) and whatever the new tree lacks is removed (a folder is listed for
that only if its mark shows it may hold something else: see ``_MARKS_BELOW``). On a filesystem without a
journal (the benchmark machine's), ext4 makes every new inode skip the inodes deleted in the last
minutes, one buffer lookup each: creating a tree right after deleting one took 20 s of kernel time
for 38,000 files, rewriting them in place takes a fraction of a second."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import functools
import hashlib
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import VpcgenError
from ..forked import run_split

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


# Removing a tree: several calls in flight overlap their waits on the filesystem (8 threads removed a
# 1,000-VPC tree 5x faster than one). Only leftovers of a killed or failed build are removed so.
_WORKERS = 8


# The sweep that keeps a tree for the next build marks each folder it swept: its modification time
# becomes the number of entries it kept, in nanoseconds (a time no clock gives: the first second
# of 1970). Any entry added to or removed from a folder since sets that time to the present, so a
# folder still marked holds exactly that many entries, all kept ones.
_MARKS_BELOW = 10**9
_UNMARKED = -1


def _mkdir(root_fd: int, name: str, reuse: bool, folder_mode: int) -> int | None:
    """None for a folder made now; for a folder of the recycled tree, the number of entries its
    mark says it holds (``_UNMARKED`` if it has none)."""
    try:
        os.mkdir(name, 0o755, dir_fd=root_fd)
        return None
    except FileExistsError:
        if not reuse:
            raise
    # a folder of the recycled tree: used only if it is a real folder (never through a symlink);
    # its parents were checked the same way before it. It gets the mode a fresh one would get.
    info = os.lstat(name, dir_fd=root_fd)
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=root_fd)
        os.mkdir(name, 0o755, dir_fd=root_fd)
        return None
    if stat.S_IMODE(info.st_mode) != folder_mode:
        os.chmod(name, folder_mode, dir_fd=root_fd, follow_symlinks=False)  # its times stay
    return info.st_mtime_ns if info.st_mtime_ns < _MARKS_BELOW else _UNMARKED


def _rewrite(root_fd: int, rel: str, data: bytes, mode: int) -> bool:
    """A file of the recycled tree made to hold ``data`` with ``mode`` in place: nothing is written
    when it already does. False when there is no plain file of ours to reuse there."""
    try:
        fd = os.open(rel, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=root_fd)
    except OSError:  # missing, a folder, a symlink, not ours to write
        return False
    try:
        info = os.fstat(fd)
        # a hard link would change another file; a mode that changes (a file that becomes a secret)
        # takes a new inode: whoever opened the old one must not read the new bytes through it
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or stat.S_IMODE(info.st_mode) != mode:
            return False
        if info.st_size != len(data) or not _holds(fd, data):
            os.ftruncate(fd, 0)
            view, offset = memoryview(data), 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
        return True
    finally:
        os.close(fd)


_COMPARED = 1 << 20


def _holds(fd: int, data: bytes) -> bool:
    """Whether the open file holds ``data``, read a MiB at a time: reading site.json back whole
    would hold it twice at the build's peak (370 MB more at 10,000 VPCs)."""
    view = memoryview(data)
    for offset in range(0, len(view), _COMPARED):
        part = view[offset:offset + _COMPARED]
        if os.pread(fd, len(part), offset) != part:
            return False
    return True


def _write(root_fd: int, rel: str, data: bytes, mode: int, reuse: bool) -> bool:
    """One file of the staging folder, opened relative to it (its folder exists). True when it was
    created (rather than rewritten in place)."""
    if reuse:
        if _rewrite(root_fd, rel, data, mode):
            return False
        _remove_entry(root_fd, rel)
    fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=root_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what the manifest says
    finally:
        os.close(fd)
    return True


def _remove_entry(dir_fd: int, rel: str) -> None:
    """Whatever is at ``rel`` (a file, a symlink, a folder and everything in it), never followed."""
    try:
        info = os.lstat(rel, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(rel, dir_fd=dir_fd)
    else:
        os.unlink(rel, dir_fd=dir_fd)


def _sweep(dir_fd: int, keep: set[str], secrets: dict[str, bytes] | None, prefix: str = "",
           descend: bool = True, known: dict[str, list[str] | None] | None = None) -> list:
    """Remove from a folder of a tree everything that is not in ``keep`` (paths of files and
    folders, ``prefix`` being this folder's); never through a symlink. Listing a folder gives each
    entry's type: one open and one listing per folder, no call per file. With ``secrets`` (path ->
    sha256 of the new tree's files only their owner may read), every file only its owner may read
    is emptied unless it holds those very bytes, and the folder is marked for the next build (see
    ``_MARKS_BELOW``). Without ``descend``, the kept subfolders are returned instead of swept.
    ``known`` (folder -> its entries in ``keep``, or None) names the folders the writers found holding
    exactly the entries written into them: one of those still marked with as many entries holds
    exactly these (see ``_known_entries``) and is not listed."""
    names = known.get(prefix[:-1]) if known is not None and prefix else None
    mark = os.fstat(dir_fd).st_mtime_ns if secrets is not None and prefix else None
    if names is not None and mark == len(names):
        entries = sorted((name, prefix + name in known) for name in names)
    else:
        names = None
        with os.scandir(dir_fd) as listing:
            entries = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing)
    folders = []
    kept = 0
    for name, is_dir in entries:
        rel = prefix + name
        if rel not in keep:
            _remove_entry(dir_fd, name)
            continue
        kept += 1
        if is_dir:
            folders.append(name)
        elif secrets is not None:
            emptied = _empty_secret(dir_fd, name, secrets.get(rel))
            if emptied is None and names is not None:  # its mark vouched for other entries than these
                raise NotADirectoryError(f"{rel}: a folder where the new tree has a file")
            kept -= emptied is True  # unlinked
    # the tree's own folder is always listed: never marked. A folder already marked right is left
    # as it is (setting its times again would give the next flush its inode to write)
    if mark is not None and mark != kept:
        os.utime(dir_fd, ns=(kept, kept))
    if not descend:
        return folders
    _sweep_folders(dir_fd, folders, keep, secrets, prefix, known=known)
    return []


def _sweep_folders(dir_fd: int, names: list[str], keep: set[str], secrets: dict[str, bytes] | None,
                   prefix: str = "", descend: bool = True, known: dict[str, list[str] | None] | None = None) -> None:
    """``_sweep`` of each of the folders ``names`` (paths below ``dir_fd``'s folder ``prefix``)."""
    for name in names:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            _sweep(fd, keep, secrets, prefix + name + "/", descend, known)
        finally:
            os.close(fd)


def _empty_secret(dir_fd: int, name: str, digest: bytes | None) -> bool | None:
    """A file only its owner may read is emptied unless its sha256 is ``digest``; one with another
    link is unlinked, never written through (True then). Files others may read, and anything that
    is not a plain file, are left alone (None for a folder)."""
    info = os.lstat(name, dir_fd=dir_fd)
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return False
    if info.st_mode & 0o077:
        return False
    if info.st_nlink != 1:
        os.unlink(name, dir_fd=dir_fd)
        return True
    fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        size = os.fstat(fd).st_size
        if digest is None or size > _MAX_COMPARED or hashlib.sha256(os.read(fd, size + 1)).digest() != digest:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return False


_MAX_COMPARED = 16 * 1024 * 1024  # a bigger secret is never one of ours: emptied unread


def _sweep_split(root_fd: int, keep: set[str], secrets: dict[str, bytes], clean: set[str], processes: int) -> None:
    """``_sweep`` of a whole tree, its top-level folders (routers) shared out among processes."""
    folders = _sweep(root_fd, keep, secrets, descend=False)

    def share(mine: list[str]) -> None:
        _sweep_folders(root_fd, mine, keep, secrets, known=_known_entries(keep, clean, mine))

    run_split([functools.partial(share, folders[k::processes]) for k in range(processes)])


def _known_entries(keep: set[str], clean: set[str], tops: list[str]) -> dict[str, list[str] | None]:
    """The entries in ``keep`` of each folder under ``tops`` that the writers found clean (for the
    others, only that they are folders: a folder of ``keep`` has entries).

    Why such a folder of the replaced tree, still marked with as many entries as the new tree has
    there, holds exactly those: its mark was set before the previous build wrote into it, and that
    build found it clean (else the entries it removed or created would have cleared the mark), so
    it holds what that build wrote there (nothing has changed it since: that would have cleared
    the mark too). The writers of this build found the other tree's folder clean: it held only
    what they wrote, and had been swept to what the previous build wrote. So what this build
    wrote there is part of what the previous one did, as many entries: the same ones."""
    wanted = set(tops)
    known: dict[str, list[str]] = {}
    for rel in keep:
        parent, _, name = rel.rpartition("/")
        if parent and rel.partition("/")[0] in wanted:
            known.setdefault(parent, []).append(name)
    return {folder: names if folder in clean else None for folder, names in known.items()}


def _write_all(root_fd: int, files: Iterable[tuple[str, tuple[bytes, int]]], reuse: bool) -> tuple[set, dict, list, set]:
    """Every file into the staging folder, in this thread; each folder is made once, before anything
    inside it. Returns the paths written (folders included), the sha256 of each file only its
    owner may read, the folders of a recycled tree that may still hold entries the new tree lacks,
    and the others (clean: their mark shows they held exactly the entries written into them). (A
    pool of writer threads is slower here: every call would wait for the GIL, up to the 5 ms switch
    interval, while rendering holds it; processes share the work instead.)"""
    made: set[str] = {""}
    written: set[str] = set()
    secrets: dict[str, bytes] = {}
    marks: dict[str, int] = {}  # a recycled folder -> the entries its mark says it holds
    entries: dict[str, int] = {}  # a folder -> the entries written into it
    created: set[str] = set()  # the folders where an entry was created, not found
    umask = os.umask(0o022)
    os.umask(umask)
    folder_mode = 0o755 & ~umask  # what os.mkdir gives a fresh folder

    def entry(rel: str, new: bool) -> None:
        parent = os.path.dirname(rel)
        entries[parent] = entries.get(parent, 0) + 1
        if new:
            created.add(parent)

    def folder(name: str) -> None:
        if name not in made:
            if name in written:
                raise ValueError(f"{name}: both a file and a folder of the tree")
            folder(os.path.dirname(name))
            mark = _mkdir(root_fd, name, reuse, folder_mode)
            if mark is not None:
                marks[name] = mark
            entry(name, mark is None)
            made.add(name)

    for rel, (data, mode) in files:
        if rel.startswith("/") or ".." in rel.split("/") or rel in written or rel in made:
            raise ValueError(f"{rel}: not a path inside the tree, or written twice")
        written.add(rel)
        if not mode & 0o077:
            secrets[rel] = hashlib.sha256(data).digest()
        folder(os.path.dirname(rel))
        entry(rel, _write(root_fd, rel, data, mode, reuse))
    # a folder marked with n entries, into which n entries were written, every one found there
    # (none created): those n are all it holds
    unswept = sorted(name for name, mark in marks.items()
                     if mark != entries.get(name, 0) or name in created or mark == _UNMARKED)
    return written | made, secrets, unswept, set(marks).difference(unswept)


def _remove_tree(path: Path) -> None:
    """Remove a tree (a previous build, a killed build's staging folder), its top-level entries
    (one per router) in parallel; whatever cannot be removed stays for the next build's lock."""
    try:
        entries = [path / name for name in os.listdir(path)]
    except OSError:
        entries = []
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="vpcgen-remove") as pool:
        for entry in entries:
            pool.submit(lambda p: shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(), entry)
    shutil.rmtree(path, ignore_errors=True)


def _sync_filesystem(path: Path) -> None:
    """Everything written under ``path`` reaches the disk before it is renamed into place (one
    syncfs for thousands of files instead of an fsync each)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not hasattr(_libc, "syncfs") or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically (renameat2 RENAME_EXCHANGE): readers see one or the other."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(b))


@contextmanager
def _promote_lock(parent: Path, name: str):
    """One promote of a target at a time; leftovers of a killed build are removed under the lock."""
    fd = os.open(parent / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in [*parent.glob(f".{name}.new-*"), *parent.glob(f".{name}.old-*")]:
            _remove_tree(stale)
        yield
    finally:
        os.close(fd)


def _take_spare(spare: Path, staging: Path) -> bool:
    """The kept tree of an earlier build becomes the staging folder, closed to everyone else while
    it is rewritten (as mkdtemp's own folder is). Anything else there, or a folder that is not this
    user's or that others may write into, is removed instead (or left, if that fails)."""
    try:
        info = os.lstat(spare)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        spare.unlink()
        return False
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        _remove_tree(spare)
        return False
    os.rename(spare, staging)  # onto the empty folder mkdtemp made
    os.chmod(staging, 0o700)
    return True


def _keep_spare(tree: Path, spare: Path, keep: set[str], secrets: dict[str, bytes], clean: set[str],
                processes: int) -> None:
    """Keep a replaced tree for the next build to recycle: only the paths the new tree has, its files
    that only their owner may read emptied unless the new tree holds the same bytes (a rotated
    secret must not outlive the tree that carried it). ``clean``: the folders of the other tree
    the writers found holding exactly what they wrote there."""
    try:
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _sweep_split(fd, keep, secrets, clean, processes)
        finally:
            os.close(fd)
        os.rename(tree, spare)
    except Exception:  # noqa: BLE001 - the new tree is in place: a spare is only worth keeping whole
        _remove_tree(tree)


def _write_parts(root_fd: int, files: Iterable, elsewhere: Sequence[Callable[[], Iterable]],
                 reuse: bool, first: list) -> tuple[set, dict, set]:
    """``first`` written here, emptied as it goes (what it held is let go before any fork), then
    ``files`` written here while each of ``elsewhere`` is produced and written by a forked process."""
    def drained():
        while first:
            yield first.pop(0)

    def writer(produce: Callable[[], Iterable]) -> Callable[[], tuple[set, dict]]:
        def write() -> tuple[set, dict, set]:
            written, secrets, unswept, clean = _write_all(root_fd, produce(), reuse)
            # a recycled tree: what the new tree lacks goes (the top level: below)
            _sweep_folders(root_fd, unswept, written, None, descend=False)
            return written, secrets, clean
        return write

    results = [writer(drained)()] if first else []
    results += run_split([writer(lambda: files), *map(writer, elsewhere)])
    written, secrets, clean = results[0]
    for more_written, more_secrets, more_clean in results[1:]:
        twice = written & more_written - {""}
        if twice:
            raise ValueError(f"{min(twice)}: written twice")
        written |= more_written
        secrets |= more_secrets
        clean |= more_clean
    return written, secrets, clean


def promote_tree(files: Iterable[tuple[str, tuple[bytes, int]]], target: Path,
                 elsewhere: Sequence[Callable[[], Iterable[tuple[str, tuple[bytes, int]]]]] = (),
                 first: list | None = None) -> None:
    """Write ``files`` (relative path, (bytes, mode)), consumed one at a time, into a staging folder,
    then swap it into place: an exception while they are produced or written leaves ``target`` as
    it was. Each of ``elsewhere`` produces more files of the tree (disjoint folders) and is consumed
    by a forked process at the same time: rendering is CPU work, and a process has a core of its own."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    spare = target.parent / f".{target.name}.spare"
    with _promote_lock(target.parent, target.name):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
        try:
            reuse = _take_spare(spare, staging)
            root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                written, secrets, clean = _write_parts(root_fd, files, elsewhere, reuse, first or [])
                if reuse:  # the top level: each writer swept the folders it wrote
                    _sweep(root_fd, written, None, descend=False)
            finally:
                os.close(root_fd)
            os.chmod(staging, 0o755)
            _sync_filesystem(staging)
            if target.is_dir() and not target.is_symlink():
                _exchange(staging, target)  # staging now holds the previous build
            else:
                os.rename(staging, target)
                staging = None
            _fsync_dir(target.parent)
        except BaseException:
            if staging is not None:
                _remove_tree(staging)  # a partial tree: not worth keeping
            raise
        if staging is not None:
            _keep_spare(staging, spare, written, secrets, clean, 1 + len(elsewhere))


def check_output_target(target: Path, site_root: Path) -> None:
    """Refuse an output folder that would replace or hold the site itself, or anything that is not
    an earlier build (a promote replaces the whole folder)."""
    target_abs = Path(os.path.abspath(target))
    site_abs = Path(site_root).resolve()
    resolved = target_abs.resolve()
    for t in {target_abs, resolved}:
        if t == site_abs or site_abs.is_relative_to(t) or t.is_relative_to(site_abs):
            raise VpcgenError(f"{target}: the output folder would replace or lie inside the site {site_root}: "
                              "choose another --output")
    if target_abs.is_symlink():
        raise VpcgenError(f"{target}: the output folder is a symlink: refusing to replace it")
    if target_abs.exists():
        if not target_abs.is_dir():
            raise VpcgenError(f"{target}: exists and is not a folder: refusing to replace it")
        entries = {p.name for p in target_abs.iterdir()}
        looks_like_site = entries & {"site.yaml", "zones", "vpcs", "acls", "secrets", "allocations.lock.yaml", ".git"}
        if looks_like_site or (entries and "site.json" not in entries):
            raise VpcgenError(f"{target}: exists and is not an earlier vpcgen build output: refusing to replace "
                              "it (choose another --output, or remove it yourself)")


class StagedFile:
    """A file written beside its destination and flushed, renamed into place only by ``commit``:
    writing it can fail before anything else changes."""

    def __init__(self, path: Path, data: bytes, mode: int):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self.tmp = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(self.tmp, mode)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def commit(self) -> None:
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    StagedFile(path, data, mode).commit()
