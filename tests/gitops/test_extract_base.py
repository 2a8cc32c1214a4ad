"""diff reads the base revision's site folder from git: straight from the objects when it holds
only regular files, through the archive (tarfile's data filter) when it holds links."""

from __future__ import annotations

import os
import subprocess

from vpcgen.gitops.diff import extract_base


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args],
                   check=True, capture_output=True)


def committed(tmp_path, link: bool):
    repo = tmp_path / "repo"
    site = repo / "sites" / "s"
    (site / "vpcs").mkdir(parents=True)
    (site / "site.yaml").write_text("name: s\n")
    (site / "vpcs" / "a b.yaml").write_bytes(b"x: \xc3\xa9\n" * 1000)
    (site / "hook").write_text("#!/bin/sh\n")
    (site / "hook").chmod(0o755)
    if link:
        (site / "known_hosts").symlink_to("site.yaml")
    (repo / "elsewhere.txt").write_text("not the site\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    (site / "site.yaml").write_text("name: changed\n")  # the working tree is not what is read
    return site


def files(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), os.access(p, os.X_OK), p.is_symlink())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_regular_files_come_straight_from_git(tmp_path):
    site = committed(tmp_path, link=False)
    base = extract_base(site, "main", tmp_path / "out")
    assert base == tmp_path / "out" / "sites" / "s"
    assert files(base) == {"hook": (b"#!/bin/sh\n", True, False), "site.yaml": (b"name: s\n", False, False),
                           "vpcs/a b.yaml": (b"x: \xc3\xa9\n" * 1000, False, False)}
    assert not (tmp_path / "out" / "elsewhere.txt").exists()


def test_a_link_takes_the_archive(tmp_path):
    site = committed(tmp_path, link=True)
    base = extract_base(site, "main", tmp_path / "out")
    assert files(base)["known_hosts"] == (b"name: s\n", False, True)
    assert files(base)["hook"] == (b"#!/bin/sh\n", True, False)


def test_a_site_that_did_not_exist(tmp_path):
    site = committed(tmp_path, link=False)
    (site.parent / "t").mkdir()
    assert extract_base(site.parent / "t", "main", tmp_path / "out") is None
