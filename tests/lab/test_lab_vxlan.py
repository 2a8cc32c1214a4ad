"""`vpcgen lab` on a redundant pair that joins the hosts' own networks (a fixture no other test
uses): two VXLAN tiers (a fixed VNI outside the pool, an allocated one with an MTU of its own) on
CloudStack's multicast scheme, a VLAN tier, a routed public tier. The hypervisors build their
devices with CloudStack's command line, never from the routers' files; the provider treats the
whole public network as on-link."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, copy_site, run_cli
from vpcgen.lab import run as lab

VXLAN = ROOT / "tests/fixtures/lab/vxlan"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lab-vxlan")
    code, out, err = run_cli("build", copy_site(VXLAN, tmp / "vxlan"), "--output", tmp / "out")
    assert code == 0, out + err
    return tmp / "out/vxlan"


def test_lab_vxlan_round_on_a_pair_with_vxlan_and_public_tiers(tree):
    site = json.loads((tree / "site.json").read_text())
    tiers = site["vpcs"]["edge"]["tiers"]
    assert (tiers["app"]["vni"], tiers["data"]["isolation"], tiers["dmz"]["public"]) == (70001, "vxlan", True)
    code, out, err = run_cli("lab", "up", tree)
    try:
        assert code == 0, out + err
        data = lab.status(tree)
        # each hypervisor built the device as modifyvxlan.sh does: CloudStack's group, TTL 10, port 8472
        for hv in ("hv-zone1-1", "hv-zone1-2"):
            dev = lab.exec_in(data, hv, "ip -d -o link show vxlan70001").stdout
            assert "id 70001 group 239.1.17.113" in dev and "ttl 10" in dev and "dstport 8472" in dev, dev
            assert "master brvx-70001" in dev
        # the routers' devices come from their own files (the allocated VNI on its own MTU)
        vni = tiers["data"]["vni"]
        assert "mtu 1400" in lab.exec_in(data, "edge-r1", f"ip -o link show vxlan{vni}").stdout
        results = tree.parent / "vxlan-results.json"
        code, out, err = run_cli("lab", "test", tree, "--round", "redundancy", "--round", "vxlan",
                                 "--results", results)
        report = json.loads(results.read_text())
        failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
        assert code == 0 and not failed, failed
        names = {c["name"] for c in report["checks"] if c["round"] == "vxlan edge"}
        assert "tier app (VNI 70001): a 1500-byte frame with DF set passes to the gateway and across " \
               "hypervisors" in names
        assert "public tier dmz: exactly one MAC answers ARP for a host, none for an address nobody holds" in names
        figures = report["failover"]["edge"]["vxlan"]
        assert figures["public_takeover_s"] <= 3
        assert figures["vxlan"]["bulk_mbit_s"] > 0 and figures["vlan"]["rtt_ms"] > 0
    finally:
        code, out, err = run_cli("lab", "down", tree)
        assert code == 0, out + err
