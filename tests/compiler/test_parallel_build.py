"""A large site is read and its tree rendered and written by several forked processes: the result
is the same, byte for byte and diagnostic for diagnostic, as one process's, and a process that
fails or dies fails the build with the previous tree left as it was."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import process_exists
from vpcgen import api, forked
from vpcgen.api import BuildOptions
from vpcgen.compiler.write import promote_tree
from vpcgen.errors import DiagnosticsError
from vpcgen.site import loader
from vpcgen.site.schema import validate_document

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from generate import generate  # noqa: E402


@pytest.fixture(autouse=True)
def _always_fork(monkeypatch):
    """Fork even when other threads run: a test before this one may leave a daemon thread ending
    (paramiko's transport joins its thread only briefly), and a build would then run its children's
    work in this process, proving nothing about them (and a child's SIGKILL would kill the tests)."""
    monkeypatch.setattr(forked, "start", forked.Forked)


def _tree_of(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else (p.read_bytes(), p.stat().st_mode & 0o7777)
            for p in sorted(root.rglob("*"))}


def _processes(monkeypatch, readers: bool, writers: int) -> None:
    monkeypatch.setattr(loader, "_PARALLEL_FILES", 1 if readers else 10**9)
    monkeypatch.setattr(loader, "processes", lambda work, per: 3 if readers else 1)  # whatever the machine has
    monkeypatch.setattr(api, "_writers", lambda routers: writers)
    monkeypatch.setattr(api, "_FORK_VPCS", 1 if readers else 10**9)  # the lock's text written by a child


def _build(site: Path, out: Path) -> None:
    options = BuildOptions(output=str(out), placeholder_secrets=True)
    api.write_build(site, api.build_site(site, options), options)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("gen"), 24, 3, 8, True)


def test_several_processes_build_exactly_the_tree_of_one(site, tmp_path, monkeypatch):
    _processes(monkeypatch, readers=False, writers=1)
    _build(site, tmp_path / "one")
    lock = (site / "allocations.lock.yaml").read_bytes()
    (site / "allocations.lock.yaml").unlink()  # written again, its text from a child this time
    _processes(monkeypatch, readers=True, writers=3)
    _build(site, tmp_path / "three")
    assert (site / "allocations.lock.yaml").read_bytes() == lock
    expected = _tree_of(tmp_path / "one" / site.name)
    assert len(expected) > 500
    assert _tree_of(tmp_path / "three" / site.name) == expected
    _build(site, tmp_path / "three")  # again, into the recycled tree, swept by three processes
    assert _tree_of(tmp_path / "three" / site.name) == expected
    assert (tmp_path / "three" / f".{site.name}.spare").is_dir()


def test_several_readers_report_exactly_the_diagnostics_of_one(site, tmp_path, monkeypatch):
    """Problems found in files parsed by a child (syntax, schema, semantics located in a file the
    child read with yaml-rs, or with the positioned reader because of an anchor) come out the same,
    lines and columns included."""
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    acls = sorted((broken / "acls").iterdir())
    vpcs = sorted((broken / "vpcs").iterdir())
    acls[-1].write_text(acls[-1].read_text().replace("rules:", "rules: [", 1))  # syntax
    acls[-2].write_text(acls[-2].read_text().replace("action: allow", "action: maybe", 1))  # schema
    acls[-3].write_text(acls[-3].read_text().replace("rules:", "x-note: &a 1\nrules:", 1))  # positioned reader
    acls[-3].write_text(acls[-3].read_text().replace("action: allow", "action: *a", 1))
    vpcs[-1].write_text(vpcs[-1].read_text().replace("acl: ", "acl: missing-", 1))  # semantics

    def diagnostics():
        with pytest.raises(DiagnosticsError) as caught:
            api.validate_site(broken)
        return [str(d) for d in caught.value.diagnostics], [str(w) for w in caught.value.warnings]

    _processes(monkeypatch, readers=False, writers=1)
    one = diagnostics()
    _processes(monkeypatch, readers=True, writers=1)
    assert diagnostics() == one
    text = "\n".join(one[0])
    assert all(f"{path.name}:" in text for path in (acls[-1], acls[-2], acls[-3], vpcs[-1])), text


def _files(tag: bytes, count: int, folder: str):
    for i in range(count):
        yield f"{folder}/f{i}", (tag, 0o644)


def test_a_writer_process_that_fails_or_dies_fails_the_promote_and_keeps_the_tree(tmp_path):
    target = tmp_path / "site"
    promote_tree(_files(b"old", 3, "a"), target, [lambda: _files(b"old", 3, "b")])
    before = _tree_of(target)

    def failing():
        yield from _files(b"new", 2, "b")
        raise ValueError("render failed in a child")

    def dying():
        yield from _files(b"new", 2, "b")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ValueError, match="render failed in a child"):
        promote_tree(_files(b"new", 3, "a"), target, [failing])
    assert _tree_of(target) == before
    with pytest.raises(OSError, match="signal 9"):
        promote_tree(_files(b"new", 3, "a"), target, [dying])
    assert _tree_of(target) == before
    with pytest.raises((ValueError, FileExistsError)):  # two writers may not share a folder or a file
        promote_tree(_files(b"new", 3, "a"), target, [lambda: _files(b"new", 3, "a")])
    assert _tree_of(target) == before
    promote_tree(_files(b"new", 3, "a"), target, [lambda: _files(b"new", 3, "b")])
    assert {data for data, _ in (v for v in _tree_of(target).values() if v != "dir")} == {b"new"}


def test_shared_chunks_are_each_done_once_in_order_and_the_children_work_while_this_process_does_not():
    shared = forked.Shared(300, 2, lambda k, here: (k, here, os.getpid()), received=lambda done: (*done, "received"))
    time.sleep(1.5)  # this process busy elsewhere (importing the build): the children take every chunk meanwhile
    results = shared.finish()
    assert [k for k, *_ in results] == list(range(300))
    assert all(not here and last == "received" for _, here, _, last in results)
    workers = {pid for _, _, pid, _ in results}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2
    assert not any(process_exists(pid) for pid in workers)  # reaped


def test_shared_without_children_or_with_a_failing_one():
    assert forked.Shared(5, 0, lambda k, here: (k, here)).finish() == [(k, True) for k in range(5)]

    def fails_elsewhere(k, here):
        if not here:
            raise ValueError(f"chunk {k} failed in a child")
        time.sleep(0.01)
        return k

    with pytest.raises(ValueError, match="failed in a child"):
        forked.Shared(50, 1, fails_elsewhere).finish()
    with pytest.raises(ValueError, match="at most"):
        forked.Shared(forked.MAX_CHUNKS + 1, 1, lambda k, here: k)


def test_a_cancelled_share_stops_its_children():
    shared = forked.Shared(20, 2, lambda k, here: time.sleep(5))
    pids = [child.pid for child in shared._children]
    assert len(pids) == 2 and all(process_exists(pid) for pid in pids)
    shared.cancel()
    assert not any(process_exists(pid) for pid in pids)
    shared.cancel()  # twice: nothing more


def test_a_site_read_ahead_is_the_site_read_at_once(site, monkeypatch):
    """The build command starts reading the site before importing the rest of the build: what it
    gets is what load_site gives, whichever process read which file."""
    _processes(monkeypatch, readers=True, writers=1)
    with loader.start_load(site, check=validate_document) as loading:
        time.sleep(0.5)
        ahead = loading.finish()
    _processes(monkeypatch, readers=False, writers=1)
    at_once = loader.load_site(site, check=validate_document)
    assert ahead[1] == at_once[1] == []
    assert [(d.file, d.data, d.checked) for d in ahead[0].documents()] == \
        [(d.file, d.data, d.checked) for d in at_once[0].documents()]
