"""`vpcgen check` runs the real daemons' checkers; broken files must fail it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURE_SITES, copy_site, run_cli
from vpcgen.check import CHECK_FILES


def netns_list() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


DAEMONS = ("charon", "conntrackd", "keepalived", "haproxy", "zebra", "ospfd")


def daemon_pids() -> set[str]:
    """PIDs of the daemons checks start (read only: the machine's own instances stay untouched)."""
    return {line for name in DAEMONS
            for line in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()}


def built(site: Path, tmp_path: Path, *extra: str) -> Path:
    code, out, err = run_cli("build", copy_site(site, tmp_path / site.name), "--output", tmp_path / "out", *extra)
    assert code == 0, out + err
    return next(p for p in (tmp_path / "out").iterdir() if p.is_dir())


# each daemon file -> the checkers that must have run on it
CHECKED_BY = {"etc/keepalived": {"keepalived", "conntrackd", "notify"}, "etc/haproxy": {"haproxy"},
              "etc/swanctl": {"strongswan"}, "etc/frr": {"frr"}}


@pytest.mark.parametrize("site,extra", [(EXAMPLE, ()), (FIXTURE_SITES / "edge", ()),
                                        (FIXTURE_SITES / "services", ("--placeholder-secrets",))],
                         ids=["example", "edge", "services-placeholders"])
def test_check_passes_on_built_sites(site, extra, tmp_path):
    before, pids = netns_list(), daemon_pids()
    tree = built(site, tmp_path, *extra)
    code, stdout, stderr = run_cli("check", tree)
    assert code == 0, stdout + stderr
    checked = {tuple(line.split()[:2]) for line in stdout.splitlines() if " ok " in line}
    kinds = set()
    for router in (p.name for p in tree.iterdir() if p.is_dir()):
        assert (router, "iptables") in checked
        for folder, checkers in CHECKED_BY.items():
            if (tree / router / folder).exists():
                assert {(router, c) for c in checkers} <= checked
                kinds |= checkers
    assert netns_list() == before, "check must remove the namespaces it creates"
    assert daemon_pids() <= pids, "check must stop every daemon it starts"
    if site == EXAMPLE:  # the example exercises every checker
        assert kinds == {"keepalived", "conntrackd", "notify", "haproxy", "strongswan", "frr"}


BREAKAGES = [
    ("iptables", "etc/iptables/rules.v4", "-A INPUT -i lo -j ACCEPT", "-A INPUT -i lo -j NO_SUCH_CHAIN"),
    ("iptables", "etc/iptables/rules.v4", "--dport 3922", "--dport 99999"),
    ("keepalived", "etc/keepalived/keepalived.conf", "    track_interface {\n", "    track_interface {\n        eth7\n"),
    ("conntrackd", "etc/conntrackd/conntrackd.conf", "HashSize 32768", "HashSize"),
    ("conntrackd", "etc/conntrackd/conntrackd.conf", "IPv4_address 169.254.255.1\n        IPv4_Dest",
     "IPv4_address 192.0.2.99\n        IPv4_Dest"),
    ("notify", "etc/keepalived/notify.sh", "to_fault() {", "to_fault() {{"),
    ("haproxy", "etc/haproxy/haproxy.cfg", "balance leastconn", "balance leastconnections"),
    ("haproxy", "etc/haproxy/haproxy.cfg", "10.10.1.11:443 check", "10.10.1.11:99999 check"),
    ("strongswan", "etc/swanctl/swanctl.conf", "esp_proposals = aes256gcm16-modp2048",
     "esp_proposals = aes999-modp2048"),
    ("strongswan", "etc/swanctl/swanctl.conf", "        mobike = no\n", "        mobike = no\n        mobile = no\n"),
    ("strongswan", "etc/swanctl/swanctl.conf", "include vpcgen-secrets.conf", "include vpcgen-secret.conf"),
    ("strongswan", "etc/swanctl/vpcgen-secrets.conf", "    eap-alice {", "    eap-alice {{"),
    ("strongswan", "etc/swanctl/private/vpcgen-ra.pem", "-----BEGIN PRIVATE KEY-----\nM",
     "-----BEGIN PRIVATE KEY-----\nX"),
]
FRR_BREAKAGES = [
    ("frr", "etc/frr/frr.conf", " ip ospf passive", " ip ospf pasive"),
    ("frr", "etc/frr/frr.conf", "area 1 range 10.128.0.0/22", "area 1 range 10.128.0.0/33"),
]


ALL_BREAKAGES = [("shop-r1", *b) for b in BREAKAGES] + [("left-r1", *b) for b in FRR_BREAKAGES]


@pytest.mark.parametrize("router,checker,rel,old,new", ALL_BREAKAGES,
                         ids=[f"{b[1]}-{i}" for i, b in enumerate(ALL_BREAKAGES)])
def test_check_fails_on_broken_files(router, checker, rel, old, new, tmp_path):
    tree = built(EXAMPLE, tmp_path)
    path = tree / router / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    before = netns_list()
    code, stdout, stderr = run_cli("check", tree, "--router", router)
    assert code == 1
    assert any(line.split()[:3] == [router, checker, "FAILED"] for line in stdout.splitlines()), stdout
    assert f"{tree / router / CHECK_FILES[checker]}: error: {checker}:" in stderr
    assert netns_list() == before


def test_check_unknown_router(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    code, _, stderr = run_cli("check", tree, "--router", "nope")
    assert code == 1 and "no router nope" in stderr
