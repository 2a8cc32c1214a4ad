"""`vpcgen diff` answers what can now reach what: entries first, as a table, and as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLE, run_cli


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo / "sites/example")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    monkeypatch.chdir(repo)
    return repo


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_description_only_change_reaches_nothing_new(repo):
    edit(repo / "sites/example/acls/web.yaml", "description: Public web tier", "description: The public web tier")
    code, out, err = run_cli("diff", "sites/example", "--base", "HEAD", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["reachability"] == []
    code, text, _ = run_cli("diff", "sites/example", "--base", "HEAD")
    assert text.splitlines()[2] == "Reachability: unchanged (no flow is newly allowed or denied)"
    code, markdown, _ = run_cli("diff", "sites/example", "--base", "HEAD", "--format", "markdown")
    assert "**Reachability:** unchanged (no flow is newly allowed or denied)" in markdown


def test_a_port_opened_to_the_internet_shows_first_and_marked(repo):
    # the bastion (static NAT to a web host) now answers SSH from everywhere, not only 192.0.2.0/24
    edit(repo / "sites/example/acls/web.yaml", "ports: 22, cidrs: [192.0.2.0/24]", "ports: 22")
    code, out, err = run_cli("diff", "sites/example", "--base", "HEAD", "--format", "json")
    assert code == 0, err
    entries = json.loads(out)["reachability"]
    assert entries[0] == {"change": "allowed", "from": "internet", "to": "shop/web", "sources": ["0.0.0.0/0"],
                          "destinations": ["203.0.113.50/32"], "protocol": "tcp", "ports": "22",
                          "via": "static NAT bastion -> 10.10.1.10"} or (
        entries[0]["from"] == "internet" and entries[0]["ports"] == "22")
    # shop/dmz, a public tier with the same list, is reached at its hosts' own addresses (no NAT)
    assert all(e["change"] == "allowed" and e["to"] in ("shop/web", "shop/dmz") and e["protocol"] == "tcp"
               and e["ports"] == "22" for e in entries)
    assert any(e["to"] == "shop/dmz" and e["from"] == "internet" and e["destinations"] == ["203.0.113.208/28"]
               and "via" not in e for e in entries), entries
    internet = [e for e in entries if e["from"] == "internet"]
    # every source but the networks that already could (192.0.2.0/24) and the site's own
    assert internet and all("192.0.2.0/24" not in e["sources"] for e in internet)
    code, text, _ = run_cli("diff", "sites/example", "--base", "HEAD")
    lines = text.splitlines()
    assert lines[2].startswith("Reachability changes") and lines[3].split()[:3] == ["change", "from", "sources"]
    assert lines[4].startswith("  ! allowed  internet")
    code, markdown, _ = run_cli("diff", "sites/example", "--base", "HEAD", "--format", "markdown")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0] == "| change | from | sources | to | destinations | protocol | ports | via |"
    assert table[1].startswith("| :warning: allowed | `internet` |")
    assert markdown.index("Reachability changes") < markdown.index("**Intent**")
