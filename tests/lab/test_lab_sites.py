"""`vpcgen lab` on a small fixture site: its first tier may open nothing (internet, VPN, private
gateway), its last is default_deny and on DHCP (a reservation, a range, a host without MAC, an MTU
of its own), and its load balancer checks every 10 s. No false failure: the probes start from a
host the oracle lets out, and the waits follow the site's own health-check timers."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from conftest import ROOT, copy_site, run_cli
from vpcgen.lab import run as lab
from vpcgen.lab.rounds.daytwo import lab_run, vpcgen
from vpcgen.tree import DNSMASQ_LEASES

EGRESS = ROOT / "tests/fixtures/lab/egress"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lab-egress")
    site = copy_site(EGRESS, tmp / "egress")
    (site / "secrets").mkdir()  # secret values are never in git: the test makes its own
    (site / "secrets/solo-psk").write_text(secrets.token_urlsafe(24) + "\n")
    code, out, err = run_cli("build", site, "--output", tmp / "out")
    assert code == 0, out + err
    return tmp / "out/egress"


def test_lab_test_on_a_site_whose_first_tier_denies_egress(tree, tmp_path, monkeypatch):
    site = json.loads((tree / "site.json").read_text())
    assert site["vpcs"]["solo"]["load_balancers"]["slow"]["health_check"]["interval_ms"] == 10000
    code, out, err = run_cli("lab", "up", tree)
    try:
        assert code == 0, out + err
        assert "waiting for load balancer slow's members" in err  # progress while it waits (stderr)
        vault = site["vpcs"]["solo"]["tiers"]["vault"]
        assert vault["acl"] == "default_deny" and vault["mtu"] == 1420
        data = lab.status(tree)
        # the router's interface takes the tier's MTU from its file; the reserved host its lease
        assert "mtu 1420" in lab.exec_in(data, "solo-r1", "ip -o link show dev eth2.1102").stdout
        host = lab.exec_in(data, "solo-vault-1", "ip -o addr show dev eth0; ip -o link show dev eth0").stdout
        assert "inet 10.30.2.11/24" in host and "mtu 1420" in host and "02:00:0a:1e:02:0b" in host
        monkeypatch.chdir(tmp_path)  # the results never land in the current folder
        code, out, err = run_cli("lab", "test", tree)
        assert code == 0, out + err
        results = lab.results_path(tree)
        assert results == tree.parent / "egress.lab-results.json" and f"results in {results}" in out
        assert not (tmp_path / "lab-results.json").exists()
        report = json.loads(results.read_text())
        checks = {f"{c['round']}: {c['name']}": c for c in report["checks"]}
        assert report["failed"] == 0
        # the private gateway and source NAT are probed from the tier that may go out
        assert checks["services solo: private gateway corp: static routes, no source NAT"]["detail"].startswith(
            "from solo-web-")
        assert "seen as 203.0.113." in checks["services solo: source NAT: the internet sees 203.0.113.10"]["detail"]
        # the tunnel's only local network may not go out: denied outbound, the peer still reaches ssh
        vpn = checks["services solo: site-to-site VPN hq: tier host <-> peer network, no source NAT"]["detail"]
        assert vpn.startswith("every local tier's egress list denies it"), vpn
        # the 10 s health check takes a stopped member out within its own fall time
        assert checks["services solo: load balancer slow: a stopped member is taken out"]["ok"]
        # DNS and DHCP on the default_deny tier: its gateway leases and answers, the zone's server
        # directly does not (the oracle denies it)
        guest = {k.removeprefix("guest solo: "): c for k, c in checks.items() if k.startswith("guest solo: ")}
        assert guest["tier vault: solo-vault-1 leases its reservation 10.30.2.11 (list default_deny)"]["ok"]
        assert guest["tier vault: a guest without reservation leases an address of 10.30.2.100-10.30.2.120 "
                     "(list default_deny)"]["detail"].startswith("10.30.2.1")
        assert "6 queries answered" in guest["tier vault: the gateway answers the VPC's names and forwards "
                                             "others (list default_deny)"]["detail"]
        assert guest["tier vault: direct queries to the zone's DNS servers as the oracle decides"][
            "detail"].startswith("no answer from 192.0.2.53")
        assert guest["tier web: direct queries to the zone's DNS servers as the oracle decides"][
            "detail"].startswith("answered from 192.0.2.53")
        figures = report["failover"]["solo"]["guest"]
        assert figures["seconds_to_lease"] < 10 and figures["lookups_per_second"] > 0
        # the lab's restart of dnsmasq (what a deploy's reload runs in the lab): a new process, the
        # leases kept in the router's own lease folder, never the machine's
        data = lab.status(tree)
        before = lab.exec_in(data, "solo-r1", f"cat {lab.DNSMASQ_PID}").stdout.strip()
        assert lab.exec_in(data, "solo-r1", lab.DNSMASQ_RESTART).returncode == 0
        assert lab.exec_in(data, "solo-r1", lab.DNSMASQ_HEALTH).returncode == 0
        assert lab.exec_in(data, "solo-r1", f"cat {lab.DNSMASQ_PID}").stdout.strip() not in ("", before)
        leases = lab.exec_in(data, "solo-r1", f"cat {DNSMASQ_LEASES}").stdout
        assert "02:00:0a:1e:02:0b 10.30.2.11 vault1" in leases
        assert (lab.RUN_ROOT / data["name"] / "leases/solo-r1/dnsmasq.leases").read_text() == leases
        assert lab.exec_in(data, "solo-vault-1", "dig +short +time=1 +tries=3 @10.30.2.1 vault2.solo.test"
                           ).stdout.strip() == "10.30.2.12"
        # day two as an operator does it, on this site too: one ACL changed and deployed through the
        # management network, status green; a rule deleted by hand over ssh, status names the router
        site = tree.parent.parent / "egress"
        acl = site / "acls/open.yaml"
        acl.write_text(acl.read_text().replace("protocol: tcp, ports: 80}", "protocol: tcp, ports: \"80-81\"}"))
        assert run_cli("build", site, "--output", tree.parent)[0] == 0
        r = lab_run(tree, *vpcgen(), "deploy", str(tree))
        assert r.returncode == 0 and "1 changed" in r.stdout, r.stdout + r.stderr
        r = lab_run(tree, *vpcgen(), "status", str(tree))
        assert r.returncode == 0 and "all routers as built" in r.stdout, r.stdout + r.stderr
        rules = (tree / "solo-r1/etc/iptables/rules.v4").read_text()
        rule = next(line for line in rules.splitlines() if "--dport 80:81" in line)
        assert lab_run(tree, "ssh", "198.51.100.41", "iptables " + rule.replace("-A ", "-D ", 1)).returncode == 0
        r = lab_run(tree, *vpcgen(), "status", str(tree), "--format", "json")
        findings = json.loads(r.stdout)["findings"]
        assert r.returncode == 1 and [(f["router"], f["check"]) for f in findings] == [("solo-r1", "firewall")], \
            r.stdout
        assert "--dport 80:81" in findings[0]["message"]
    finally:
        code, out, err = run_cli("lab", "down", tree)
        assert code == 0, out + err
