"""`vpcgen check` runs the real daemons' checkers; broken files must fail it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURE_SITES, copy_site, run_cli


def netns_list() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def built(site: Path, tmp_path: Path) -> Path:
    code, out, err = run_cli("build", copy_site(site, tmp_path / site.name), "--output", tmp_path / "out")
    assert code == 0, out + err
    return next(p for p in (tmp_path / "out").iterdir() if p.is_dir())


@pytest.mark.parametrize("site", [EXAMPLE, FIXTURE_SITES / "edge"], ids=["example", "edge"])
def test_check_passes_on_built_sites(site, tmp_path):
    before = netns_list()
    tree = built(site, tmp_path)
    code, stdout, stderr = run_cli("check", tree)
    assert code == 0, stdout + stderr
    checked = {tuple(line.split()[:2]) for line in stdout.splitlines() if " ok " in line}
    for router in (p.name for p in tree.iterdir() if p.is_dir()):
        assert (router, "iptables") in checked
        if (tree / router / "etc/keepalived").exists():
            assert {(router, "keepalived"), (router, "conntrackd"), (router, "notify")} <= checked
    assert netns_list() == before, "check must remove the namespaces it creates"


BREAKAGES = [
    ("iptables", "etc/iptables/rules.v4", "-A INPUT -i lo -j ACCEPT", "-A INPUT -i lo -j NO_SUCH_CHAIN"),
    ("iptables", "etc/iptables/rules.v4", "--dport 3922", "--dport 99999"),
    ("keepalived", "etc/keepalived/keepalived.conf", "    track_interface {\n", "    track_interface {\n        eth7\n"),
    ("conntrackd", "etc/conntrackd/conntrackd.conf", "HashSize 32768", "HashSize"),
    ("conntrackd", "etc/conntrackd/conntrackd.conf", "IPv4_address 169.254.255.1\n        IPv4_Dest",
     "IPv4_address 192.0.2.99\n        IPv4_Dest"),
    ("notify", "etc/keepalived/notify.sh", "to_fault() {", "to_fault() {{"),
]


@pytest.mark.parametrize("checker,rel,old,new", BREAKAGES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BREAKAGES)])
def test_check_fails_on_broken_files(checker, rel, old, new, tmp_path):
    tree = built(EXAMPLE, tmp_path)
    path = tree / "shop-r1" / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    before = netns_list()
    code, stdout, stderr = run_cli("check", tree, "--router", "shop-r1")
    assert code == 1
    assert any(line.split()[:3] == ["shop-r1", checker, "FAILED"] for line in stdout.splitlines()), stdout
    assert f"{path}: error: {checker}:" in stderr
    assert netns_list() == before


def test_check_unknown_router(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    code, _, stderr = run_cli("check", tree, "--router", "nope")
    assert code == 1 and "no router nope" in stderr
