"""The JSON files of a built tree (site.json, manifests, secret sums) are written by orjson: byte for
byte what the standard library's indenting encoder writes, for every value a tree holds (no floats:
the site refuses fractions and nothing computes one; orjson would write 1e-7 where json writes 1e-07)."""

import json
import os

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from vpcgen.compiler.allocate import LOCK_HEADER, dump_lock
from vpcgen.compiler.write import promote_tree
from vpcgen.tree import dump_json, dump_json_sections


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


_sections = st.dictionaries(_text, st.lists(_text, unique=True, max_size=4), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_text, _values, max_size=4), _sections, _values)
def test_sections_dumped_one_at_a_time_give_the_whole_documents_bytes(top, sections, value):
    """site.json of a large site is dumped a VPC and an ACL at a time: the same bytes as at once."""
    sections = {k: (names, lambda name, k=k: [k, name, value]) for k, names in sections.items() if k not in top}
    whole = {**top, **{k: {name: make(name) for name in names} for k, (names, make) in sections.items()}}
    assert dump_json_sections(top, sections) == _reference(whole)


@pytest.mark.parametrize("site", ["example", "edge", "guest", "services"])  # (deploy's needs its own tests)
def test_site_json_of_every_fixture_site_is_the_same_dumped_whole_or_in_sections(site):
    from conftest import EXAMPLE, FIXTURE_SITES
    from vpcgen.api import _validate_site
    from vpcgen.compiler.topology import router_views, site_json, site_json_bytes
    folder = EXAMPLE if site == "example" else FIXTURE_SITES / site
    v = _validate_site(folder)
    views = router_views(v.site, v.alloc)
    assert site_json_bytes(v.site, v.alloc, views) == dump_json(site_json(v.site, v.alloc, views))


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


def _tree_of(root) -> dict:
    """path -> (bytes, mode) of every file, and path -> 'dir' of every folder, under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else (path.read_bytes(), path.stat().st_mode & 0o7777)
    return out


def test_a_recycled_spare_gives_exactly_the_files_of_a_fresh_build(tmp_path):
    """The replaced tree is kept as `.site.spare` and rewritten by the next build: whatever it holds
    (stale files and folders, a symlink out of the tree, a hard link, a folder turned into a file,
    loosened modes), the promoted tree holds exactly the files given, and nothing outside changes."""
    target, spare = tmp_path / "out" / "site", tmp_path / "out" / ".site.spare"
    first = [("site.json", (b"{}\n", 0o644)), ("r1/etc/a.conf", (b"a1\n", 0o644)),
             ("r1/etc/gone/x", (b"x\n", 0o644)), ("r2/etc/b.conf", (b"b1\n", 0o600))]
    promote_tree(iter(first), target)
    promote_tree(iter(first), target)  # the first tree is now the spare
    assert spare.is_dir() and (spare / "r1/etc/a.conf").read_bytes() == b"a1\n"
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me\n")
    (spare / "r1/etc/a.conf").chmod(0o666)
    (spare / "r1/etc/stale").write_bytes(b"stale\n")
    (spare / "r1/etc/gone/x").unlink()
    (spare / "r2/etc/b.conf").unlink()
    (spare / "r2/etc/b.conf").symlink_to(outside)  # a write through it would land outside
    (spare / "r3").mkdir()
    os.link(outside, spare / "r3/linked")  # rewriting it in place would change `outside`
    (spare / "r4").write_bytes(b"a file where the new tree has a folder\n")
    (spare / "r5").symlink_to(tmp_path, target_is_directory=True)
    second = [("site.json", (b'{"v": 2}\n', 0o644)), ("r1/etc/a.conf", (b"a2\n", 0o644)),
              ("r2/etc/b.conf", (b"b2\n", 0o600)), ("r3/linked", (b"new\n", 0o640)),
              ("r4/etc/c.conf", (b"c\n", 0o644)), ("r5/d", (b"d\n", 0o644))]
    promote_tree(iter(second), target)
    fresh = tmp_path / "fresh" / "site"
    promote_tree(iter(second), fresh)
    assert _tree_of(target) == _tree_of(fresh)
    assert outside.read_bytes() == b"keep me\n" and not (tmp_path / "d").exists()


def test_a_folder_of_the_spare_still_marked_is_not_listed_again_and_any_change_is_found(tmp_path, monkeypatch):
    """The sweep that keeps a tree marks each folder with the entries it kept; a build writing
    exactly those entries again lists none of them, and one that drops or swaps entries (as many
    as before) or finds a folder changed lists the folders concerned, and ends with exactly its files."""
    from vpcgen.compiler import write
    target, spare = tmp_path / "out" / "site", tmp_path / "out" / ".site.spare"
    tree = [("site.json", (b"{}\n", 0o644)), ("r1/etc/a", (b"a\n", 0o644)), ("r1/etc/b", (b"b\n", 0o600)),
            ("r1/etc/sub/c", (b"c\n", 0o644)), ("r2/etc/d", (b"d\n", 0o644))]
    promote_tree(iter(tree), target)
    promote_tree(iter(tree), target)  # the first tree, swept and marked, is now the spare
    assert [os.stat(spare / p).st_mtime_ns for p in ("r1", "r1/etc", "r1/etc/sub", "r2/etc")] == [1, 3, 1, 1]
    assert os.stat(spare).st_mtime_ns > 10**9  # the tree's own folder is always listed: never marked
    assert _writer_prefixes(write, monkeypatch, target, tree) == []
    assert _writer_prefixes(write, monkeypatch, target, tree) == []  # the other tree, marked in turn
    swapped = [t for t in tree if t[0] != "r1/etc/a"] + [("r1/etc/e", (b"e\n", 0o644))]
    assert _writer_prefixes(write, monkeypatch, target, swapped) == ["r1/etc/"]
    assert sorted(p.name for p in (target / "r1/etc").iterdir()) == ["b", "e", "sub"]
    dropped = [t for t in swapped if t[0] != "r1/etc/sub/c"]
    assert _writer_prefixes(write, monkeypatch, target, dropped) == ["r1/etc/"]
    assert _writer_prefixes(write, monkeypatch, target, dropped) == []  # the other tree was swept when kept
    (spare / "r2/etc/planted").write_bytes(b"x\n")  # the folder's mark is gone with it
    assert _writer_prefixes(write, monkeypatch, target, dropped) == ["r2/etc/"]
    assert not (target / "r2/etc/planted").exists()


def test_the_replaced_tree_is_kept_without_listing_the_folders_both_trees_hold_alike(tmp_path, monkeypatch):
    """A folder of the replaced tree still marked, whose twin in the new tree the writers found
    holding exactly what they wrote, holds exactly those entries: it is not listed, and its
    secrets are still emptied when the new tree changes them. A folder changed in the output since
    (its mark gone) is listed; one whose mark was forged back over a changed entry drops the spare."""
    from vpcgen.compiler import write
    target, spare = tmp_path / "out" / "site", tmp_path / "out" / ".site.spare"
    tree = [("site.json", (b"{}\n", 0o644)), ("r1/etc/a", (b"a\n", 0o644)), ("r1/etc/psk", (b"old\n", 0o600)),
            ("r1/etc/sub/c", (b"c\n", 0o644)), ("r2/etc/d", (b"d\n", 0o644))]
    for _ in range(3):  # both trees swept and marked once, and found clean once
        promote_tree(iter(tree), target)
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (isinstance(path, int) and listed.append(path)) or scandir(path))
    rotated = [t if t[0] != "r1/etc/psk" else ("r1/etc/psk", (b"new\n", 0o600)) for t in tree]
    promote_tree(iter(rotated), target)
    assert len(listed) == 2  # the top level of each tree, nothing else
    assert (spare / "r1/etc/psk").read_bytes() == b"" and (target / "r1/etc/psk").read_bytes() == b"new\n"
    (target / "r1/etc/planted").write_bytes(b"x\n")  # the folder's mark is gone with it
    listed.clear()
    promote_tree(iter(rotated), target)
    assert len(listed) == 3 and not (spare / "r1/etc/planted").exists()
    promote_tree(iter(rotated), target)
    monkeypatch.setattr(os, "scandir", scandir)
    mark = os.stat(target / "r2/etc").st_mtime_ns
    (target / "r2/etc/d").unlink()
    (target / "r2/etc/d").mkdir()
    (target / "r2/etc/d/old").write_bytes(b"a folder where the new tree has a file\n")
    os.utime(target / "r2/etc", ns=(mark, mark))  # as if nothing had changed there
    promote_tree(iter(rotated), target)
    assert not spare.exists()  # nothing kept that its mark does not vouch for
    promote_tree(iter(rotated), target)
    fresh = tmp_path / "fresh" / "site"
    promote_tree(iter(rotated), fresh)
    assert _tree_of(target) == _tree_of(fresh)


def _writer_prefixes(write, monkeypatch, target, files) -> list:
    """The folders the writers listed while ``files`` were promoted into ``target`` (not those of
    the kept tree's sweep, which lists the replaced tree after the exchange)."""
    listed = []
    sweep, keep = write._sweep, write._keep_spare
    monkeypatch.setattr(write, "_sweep", lambda fd, k, secrets, prefix="", *rest, **more:
                        listed.append(prefix) or sweep(fd, k, secrets, prefix, *rest, **more))
    monkeypatch.setattr(write, "_keep_spare", lambda *args: (monkeypatch.setattr(write, "_sweep", sweep), keep(*args)))
    promote_tree(iter(files), target)
    fresh = target.parent.parent / "fresh" / target.name
    promote_tree(iter(files), fresh)
    assert _tree_of(target) == _tree_of(fresh)
    return [prefix for prefix in listed if prefix]


def test_the_spare_keeps_no_secret_the_new_tree_does_not_hold(tmp_path):
    """Files only their owner may read (secrets) are emptied in the kept tree unless the new tree
    holds the same bytes; the next build still writes them right."""
    target, spare = tmp_path / "site", tmp_path / ".site.spare"
    promote_tree(iter([("r/psk", (b"old secret\n", 0o600)), ("r/same", (b"same\n", 0o600))]), target)
    promote_tree(iter([("r/psk", (b"new secret\n", 0o600)), ("r/same", (b"same\n", 0o600))]), target)
    assert (spare / "r/psk").read_bytes() == b"" and (spare / "r/same").read_bytes() == b"same\n"
    assert b"old secret" not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    promote_tree(iter([("r/psk", (b"new secret\n", 0o600)), ("r/same", (b"same\n", 0o600))]), target)
    assert (target / "r/psk").read_bytes() == b"new secret\n"
    assert oct((target / "r/psk").stat().st_mode & 0o7777) == "0o600"


def test_the_kept_tree_is_never_a_way_to_reach_or_leak_another_file(tmp_path):
    """Found in review: a hard link planted at a secret's path in the output must not be emptied
    through; a file that stops being a secret keeps no secret in the spare; a file that becomes a
    secret gets a new inode (whoever opened the old one cannot read the secret through it); a huge
    sparse file at a secret's path is emptied unread."""
    target, spare = tmp_path / "out" / "site", tmp_path / "out" / ".site.spare"
    victim = tmp_path / "victim"
    victim.write_bytes(b"not vpcgen's\n")
    promote_tree(iter([("r/psk", (b"old\n", 0o600)), ("r/frr.conf", (b"key OLD\n", 0o600))]), target)
    (target / "r/psk").unlink()
    os.link(victim, target / "r/psk")
    promote_tree(iter([("r/psk", (b"new\n", 0o600)), ("r/frr.conf", (b"no key\n", 0o644))]), target)
    assert victim.read_bytes() == b"not vpcgen's\n"
    kept = b"".join(p.read_bytes() for p in spare.rglob("*") if p.is_file() and not p.samefile(victim))
    assert b"OLD" not in kept, "a secret stayed in the spare after its file became public"
    # the spare's frr.conf is public (no key): a reader holds it open across the next build
    promote_tree(iter([("r/psk", (b"new\n", 0o600)), ("r/frr.conf", (b"no key\n", 0o644))]), target)
    with open(spare / "r/frr.conf", "rb") as reader:
        promote_tree(iter([("r/psk", (b"new\n", 0o600)), ("r/frr.conf", (b"key SECRET\n", 0o600))]), target)
        assert b"SECRET" not in reader.read()
    with open(target / "r/psk", "r+b") as huge:
        huge.truncate(1 << 40)
    promote_tree(iter([("r/psk", (b"new\n", 0o600)), ("r/frr.conf", (b"key SECRET\n", 0o600))]), target)
    assert (spare / "r/psk").stat().st_size == 0


def test_a_spare_others_may_write_is_not_recycled_and_modes_follow_the_umask(tmp_path):
    target, spare = tmp_path / "site", tmp_path / ".site.spare"
    files = [("r/etc/a", (b"a\n", 0o644))]
    promote_tree(iter(files), target)
    promote_tree(iter(files), target)
    spare.chmod(0o777)  # anyone could have planted anything in it
    (spare / "r" / "planted").write_bytes(b"x\n")
    with open(spare / "r" / "etc" / "a", "rb") as held:  # held open: its inode number is not reused
        marker = os.fstat(held.fileno()).st_ino
        promote_tree(iter(files), target)
        assert not any(p.stat().st_ino == marker for p in target.rglob("*") if p.is_file())
    old = os.umask(0o077)
    try:
        promote_tree(iter(files), target)  # recycled
        promote_tree(iter(files), tmp_path / "fresh")
    finally:
        os.umask(old)
    assert _tree_of(target) == _tree_of(tmp_path / "fresh")
    assert oct((target / "r").stat().st_mode & 0o777) == oct((tmp_path / "fresh" / "r").stat().st_mode & 0o777)


def test_compiled_templates_are_kept_and_a_broken_or_unwritable_cache_only_means_compiling(tmp_path):
    """The rendering environment keeps compiled templates beside vpcgen's bytecode: the next process
    loads them instead of compiling; a cache cut short, foreign or impossible to write is no error."""
    import jinja2
    from vpcgen.compiler.render import _CompiledTemplates

    compiled = []

    class Counting(jinja2.Environment):
        def compile(self, *args, **kwargs):
            compiled.append(args[1] if len(args) > 1 else kwargs.get("name"))
            return super().compile(*args, **kwargs)

    def rendered(folder):
        env = Counting(loader=jinja2.DictLoader({"t": "{{ x }}-{% for i in y %}{{ i }}{% endfor %}"}),
                       bytecode_cache=_CompiledTemplates(folder))
        return env.get_template("t").render(x=1, y=[2, 3])

    folder = tmp_path / "cache"
    assert rendered(folder) == "1-23" and len(compiled) == 1
    kept = list(folder.iterdir())
    assert len(kept) == 1 and kept[0].stat().st_size > 0
    assert rendered(folder) == "1-23" and len(compiled) == 1  # loaded, not compiled
    kept[0].write_bytes(kept[0].read_bytes()[:30])  # cut short
    assert rendered(folder) == "1-23" and len(compiled) == 2
    kept[0].write_bytes(b"not a cache at all")
    assert rendered(folder) == "1-23" and len(compiled) == 3
    (tmp_path / "file").write_bytes(b"")
    assert rendered(tmp_path / "file" / "cache") == "1-23" and len(compiled) == 4  # cannot be written
    assert rendered(tmp_path / "file" / "cache") == "1-23" and len(compiled) == 5
