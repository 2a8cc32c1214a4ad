"""`vpcgen lab`: the example site running for real in namespaces, and nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE, copy_site, process_exists, run_cli
from vpcgen.lab import run as lab


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lab")
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp / "example"), "--output", tmp / "out")
    assert code == 0, out + err
    return tmp / "out/example"


def test_lab_up_runs_the_example_and_down_leaves_nothing(tree):
    name = lab.lab_name(tree)
    code, out, err = run_cli("lab", "up", tree)
    try:
        assert code == 0, out + err
        data = lab.status(tree)
        # every router runs its daemons on its own files
        for router, daemons in {"shop-r1": {"keepalived", "conntrackd", "haproxy", "charon"},
                                "left-r1": {"keepalived", "conntrackd", "zebra", "ospfd"},
                                "blog-r1": set()}.items():
            pids = subprocess.run(["ip", "netns", "pids", data["nodes"][router]["ns"]], capture_output=True,
                                  text=True).stdout.split()
            running = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if Path(f"/proc/{p}").exists()}
            assert daemons <= running, (router, running)
        # exactly one master per pair, soon
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {r: lab.exec_in(data, r, "cat /run/vpcgen/vrrp.state 2>/dev/null").stdout.strip()
                      for r in ("shop-r1", "shop-r2")}
            if sorted(states.values()) == ["BACKUP", "MASTER"]:
                break
            time.sleep(0.2)
        assert sorted(states.values()) == ["BACKUP", "MASTER"], states
        # traffic through the real rules: port forwarding, load balancing, static NAT and its ACL
        assert lab.probe(data, "inet-zone1", "203.0.113.13", 2222) == "shop-app-1"
        assert lab.probe(data, "inet-zone1", "203.0.113.13", 5003, "udp") == "shop-app-2"
        spread = {lab.probe(data, "inet-zone1", "203.0.113.13", 80, payload="GET / HTTP/1.0\\n\\n")
                  for _ in range(4)}
        assert spread == {"shop-web-2", "shop-web-3"}
        assert lab.probe(data, "inet-zone1", "203.0.113.50", 80) == "shop-web-1"
        assert lab.probe(data, "inet-zone1", "203.0.113.50", 22).startswith("FAILED")  # web list: 22 from 192.0.2.0/24
        assert lab.probe(data, "shop-web-1", "192.168.0.5", 22) == "shop-pg-corp"  # private gateway route
        assert lab.probe(data, "shop-web-1", "192.168.0.5", 25).startswith("FAILED")  # corp-gw rule 30
        # every round of `lab test`, for real (the failover round kills and restarts the master)
        results = tree.parent / "lab-results.json"
        code, out, err = run_cli("lab", "test", tree, "--results", results, "--site", tree.parent.parent / "example")
        assert code == 0, out + err
        report = json.loads(results.read_text())
        assert report["failed"] == 0 and report["passed"] >= 40
        assert report["failover"]["shop"]["median_interruption_ms"] < 4000
        assert report["failover"]["shop"]["tcp_survives"] is True
        # the faults a pair must survive (the ha round), and BFD on the routed pair
        for pair in ("shop", "left"):
            sync = report["failover"][pair]["sync_lost"]
            assert (sync["double"], sync["none"], sync["changes"]) == (0, 0, 0), sync
            assert report["failover"][pair]["upstream_handover_s"] <= 3
        # within 1 s of the takeover: timed from the kill, plus the backup's master-down interval
        advert_s = json.loads((tree / "site.json").read_text())["vpcs"]["left"]["vrrp"]["advert_interval_ms"] / 1000
        assert sorted(report["failover"]["left"]["core_reroute_s"])[2] <= 1.0 + 4 * advert_s
        # DNS and DHCP: the reserved web hosts leased by DHCP, names answered, a lease renewed (ACK)
        # on the new master after a failover
        checks = {f"{c['round']}: {c['name']}": c for c in report["checks"]}
        # the model's allowed boxes probed at their edges, from the tiers and the internet side
        reached = [c for c in report["checks"] if c["round"].startswith("reach ")]
        assert len(reached) >= 15 and all(c["ok"] for c in reached), reached
        for name in ("shop: shop/app -> shop/db", "shop: internet -> shop/web", "left: left/web -> left/db"):
            detail = checks[f"reach {name}"]["detail"]
            inside, outside = (int(n) for n in re.match(r"(\d+) inside and (\d+) just outside", detail).groups())
            assert inside >= 1 and outside >= 1, detail  # the probe budget is shared out class by class
        for host, address in (("shop-web-2", "10.10.1.11"), ("shop-web-3", "10.10.1.12")):
            assert checks[f"guest shop: tier web: {host} leases its reservation {address}"]["ok"]
        renewal = checks["guest shop: failover: the new master renews a lease the old one gave (ACK, not NAK) "
                         "and answers names"]
        assert renewal["detail"].startswith("shop-web-2 renewed 10.10.1.11 on shop-r"), renewal
        guest = report["failover"]["shop"]["guest"]
        assert guest["seconds_to_renewal_after_failover"] < 5 and guest["seconds_to_lease"] < 10
        assert all(report["failover"][v]["guest"]["lookups_per_second"] > 0 for v in ("blog", "left", "right", "shop"))
        assert report["failover"]["left"]["announced_transitions"] == "50/50"
        # day two over the management network: every drift reported exactly (the round checks the
        # findings), changes deployed while probes run, a tree cutting SSH undone, a switchover
        drifts = [c for c in report["checks"] if c["round"] == "daytwo" and c["name"].startswith("status reports")]
        assert len(drifts) == 6 and all(c["ok"] for c in drifts), drifts
        deployed = report["failover"]["deploy"]
        assert deployed["one ACL rule"]["lost_probes"] == 0 and deployed["one ACL rule"]["probes"] > 100
        assert {"one load-balancer member", "one VPN peer network", "cuts_ssh"} <= deployed.keys()
        assert deployed["cuts_ssh"]["back_and_green_s"] < deployed["cuts_ssh"]["confirm_timeout_s"] + 30
        assert report["failover"]["shop"]["switchover"]["tcp_survives"] is True
        # the single-router VPC converted to a pair by a deploy (the convert round checks one master
        # and status green on the rebuilt site), its interruption measured
        assert report["failover"]["blog"]["conversion"]["probes"] > 10
        # the router joins the hosts' own networks: the VXLAN tier behind the CloudStack-built
        # hypervisors, the public tier's takeover as the provider sees it
        vxlan = {c["name"]: c for c in report["checks"] if c["round"] == "vxlan shop"}
        media = json.loads((tree / "site.json").read_text())["vpcs"]["shop"]["tiers"]["media"]
        assert vxlan[f"tier media (VNI {media['vni']}): a {media['mtu']}-byte frame with DF set passes to the "
                     "gateway and across hypervisors"]["ok"]
        assert vxlan["public tier dmz: exactly one MAC answers ARP for a host, none for an address nobody holds"]["ok"]
        figures = report["failover"]["shop"]["vxlan"]
        assert figures["public_takeover_s"] <= 3 and figures["vxlan"]["bulk_mbit_s"] > 0
        data = lab.status(tree)
        recorded = [p for n in data["nodes"].values() for p in (n.get("holder"), n.get("server")) if p]
    finally:
        code, out, err = run_cli("lab", "down", tree)
    assert code == 0, out + err
    assert namespaces(name) == []
    assert not any(process_exists(p) for p in recorded)
    assert not (lab.RUN_ROOT / name).exists()


def test_lab_down_after_lab_up_was_killed(tree):
    name = lab.lab_name(tree)
    proc = subprocess.Popen([sys.executable, "-m", "vpcgen.cli", "lab", "up", str(tree)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while len(namespaces(name)) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # lab up dies half-way
    proc.wait()
    assert namespaces(name), "lab up should have created namespaces before it was killed"
    code, out, err = run_cli("lab", "down", tree)
    assert code == 0, out + err
    assert namespaces(name) == [] and not (lab.RUN_ROOT / name).exists()
