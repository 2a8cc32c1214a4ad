"""The lab's plan is built from site.json alone (no root, no running lab)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURE_SITES, copy_site, run_cli
from vpcgen.lab import plan as lab_plan
from vpcgen.lab import run as lab_run
from vpcgen.ops import netns
from vpcgen.tree import GENERATED
from vpcgen.lab.plan import Client, Core, DhcpClient, Gateway, Host, Hypervisor, Inet, Peer, Router


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plan")
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp / "example"), "--output", tmp / "out")
    assert code == 0, out + err
    return tmp / "out/example"


@pytest.fixture(scope="module")
def site(built) -> dict:
    return json.loads((built / "site.json").read_text())


def build(site: dict, only: str | None = None) -> lab_plan.Plan:
    return lab_plan.build(site, "vltest", Path("/nonexistent/tree"), Path("/nonexistent/staged"), only)


def test_every_router_with_the_links_site_json_gives_it(site):
    p = build(site)
    routers = {r.name: r for r in p.of(Router)}
    assert sorted(routers) == sorted(r for v in site["vpcs"].values() for r in v["routers"])
    shop = routers["shop-r1"]
    assert {link.ifname for link in shop.links} == set(site["vpcs"]["shop"]["routers"]["shop-r1"]["interfaces"])
    assert shop.tree == Path("/nonexistent/staged/shop-r1") and shop.zone == "zone1" and shop.role == "first"
    assert next(link for link in shop.links if link.ifname == "eth2.1200").addresses == ("10.10.1.254/24",)


def test_hosts_cover_every_address_nat_and_load_balancers_use(site):
    p = build(site)
    shop = site["vpcs"]["shop"]
    used = set(shop["static_nat"].values()) | {f["private_ip"] for f in shop["port_forwarding"]}
    used |= {m for lb in shop["load_balancers"].values() for m in lb["members"]}
    assert used <= {h.address for h in p.hosts("shop")}
    for tier, info in shop["tiers"].items():
        hosts = p.hosts("shop", tier)
        assert len(hosts) >= 2 and all(isinstance(h, Host) and h.routes == [f"default via {info['gateway']}"]
                                       for h in hosts)
        # a VXLAN tier's hosts are spread over the hypervisors' bridges brvx-<vni>
        segments = [f"zone1/eth2.{info['vlan']}"] * 2 if info["vlan"] else \
            [f"hv-zone1-1/brvx-{info['vni']}", f"hv-zone1-2/brvx-{info['vni']}"]
        assert [h.links[0].segment for h in hosts[:2]] == segments
    web1 = p.host_at("shop", "10.10.1.11")
    assert {80, 443, 8080, lab_plan.PROBE_TCP_PORT} <= set(web1.tcp)  # LB port, an ACL rule's ports, the probe
    assert set(range(5000, 5010)) <= set(p.host_at("shop", "10.10.0.21").udp)  # the forwarded UDP range


def test_vpn_peers_and_the_client_come_from_site_json(site):
    p = build(site)
    peers = {n.name: n for n in p.of(Peer)}
    hq = site["vpcs"]["shop"]["vpn_peers"]["hq"]
    tunnel = peers["shop-peer-hq"].tunnel
    assert (tunnel.version, tunnel.peer_address, tunnel.router_address) == (2, hq["peer"], "203.0.113.12")
    assert tunnel.local_cidrs == tuple(hq["local_cidrs"]) and tunnel.peer_cidrs == tuple(hq["peer_cidrs"])
    assert tunnel.ike_proposals == tuple(hq["ike_proposals"]) and tunnel.esp_lifetime_s == hq["esp_lifetime_s"]
    assert peers["shop-peer-branch"].tunnel.version == 1
    assert peers["shop-peer-hq"].loopback == ["172.16.0.1/32"]
    client = p.node("shop-ra-client")
    assert isinstance(client, Client) and client.user == "alice" and client.server == "203.0.113.12"
    # every tier, by tier name (app, db, dmz, media, web)
    assert client.local_cidrs == ("10.10.0.0/24", "10.10.2.0/24", "203.0.113.208/28", "10.10.3.0/24", "10.10.1.0/24")
    inet = p.node("inet-zone1")
    assert isinstance(inet, Inet) and inet.address == "203.0.113.1"
    assert f"{hq['peer']}/32 via {peers['shop-peer-hq'].address}" in inet.routes


def test_the_core_takes_the_zones_ospf_timers(site):
    changed = copy.deepcopy(site)
    changed["zones"]["zone1"]["ospf"].update(hello_interval_s=3, dead_interval_s=12)
    core = build(changed).node("core-zone1")
    assert isinstance(core, Core)
    assert (core.ospf.hello_s, core.ospf.dead_s, core.ospf.authentication) == (3, 12, True)
    assert core.links[0].segment == "zone1/eth1.99" and core.address == "100.64.0.1"
    gw = build(site).node("shop-pg-corp")
    assert isinstance(gw, Gateway) and gw.targets == ("192.168.0.5",) and gw.address == "172.31.0.1"


def test_one_vpc_only(site):
    p = build(site, "blog")
    assert {n.name for n in p.of(Router)} == {"blog-r1"}
    assert not p.of(Core) and not p.of(Peer) and p.vpcs().keys() == {"blog"}


def test_management_station_lies_inside_ssh_allowed_from():
    from vpcgen.lab.mgmt import STATION, station
    assert station({"ssh": {"allowed_from": None}}, set()) == STATION
    assert station({"ssh": {"allowed_from": ["198.51.100.0/24"]}}, set()) == "198.51.100.254"
    assert station({"ssh": {"allowed_from": ["198.51.100.0/24"]}}, {"198.51.100.254"}) == "198.51.100.253"
    assert station({"ssh": {"allowed_from": ["192.0.2.7/32", "10.0.0.0/8"]}}, {"192.0.2.7"}) == "10.255.255.254"


def test_guests_from_site_json_reservations_mtu_and_the_zones_resolvers(site):
    p = build(site)
    web = site["vpcs"]["shop"]["tiers"]["web"]
    reserved = {h["address"]: h["mac"] for h in web["hosts"].values() if h["mac"]}
    hosts = p.hosts("shop", "web")
    # a host at every named address; the reserved ones take it by DHCP with the reservation's MAC
    assert {h["address"] for h in web["hosts"].values()} <= {h.address for h in hosts}
    assert {h.address: h.mac for h in hosts if h.dhcp} == reserved and len(reserved) == 2
    assert all(h.mtu == web["mtu"] == 1450 for h in hosts)
    assert not any(h.dhcp for h in p.hosts("shop", "app"))  # no dhcp on that tier
    # one range client per tier with a range: no address, a MAC no reservation uses, not a test host
    clients = p.of(DhcpClient)
    assert [(c.name, c.tier) for c in clients] == [("shop-web-dhcp", "web")]
    assert clients[0].links[0].addresses == () and clients[0].mac not in reserved.values()
    assert clients[0].links[0].segment == f"zone1/eth2.{web['vlan']}"
    # the zone's DNS servers answer on the internet side (NAT VPCs) and on the core (routed VPCs)
    servers = tuple(site["zones"]["zone1"]["dns_servers"])
    for node in (p.node("inet-zone1"), p.node("core-zone1")):
        assert node.resolver == servers and {f"{a}/32" for a in servers} <= set(node.loopback)
    # a tier with a reservation but without dhcp keeps a static host
    changed = copy.deepcopy(site)
    changed["vpcs"]["shop"]["tiers"]["web"]["dhcp"] = None
    assert not any(h.dhcp for h in build(changed).hosts("shop", "web")) and not build(changed).of(DhcpClient)


def test_guest_mac_never_takes_a_reservation():
    taken = {lab_plan._guest_mac(1200, set())}
    assert lab_plan._guest_mac(1200, taken) != lab_plan._guest_mac(1200, set())
    assert lab_plan._guest_mac(1200, set()) != lab_plan._guest_mac(1201, set())


def test_a_router_gets_the_mtus_of_its_interfaces_file_on_its_own_links(built, site):
    p = lab_plan.build(site, "vltest", built, built)
    shop = p.node("shop-r1")
    tiers = site["vpcs"]["shop"]["tiers"]
    vtep = site["zones"]["zone1"]["vxlan"]
    assert lab_run.router_mtus(shop) == {f"eth2.{t['vlan']}" if t["vlan"] else f"vxlan{t['vni']}": t["mtu"]
                                         for t in tiers.values()} | {f"eth2.{vtep['underlay']['vlan']}": vtep["mtu"]}
    assert lab_run.router_mtus(shop)["eth2.1200"] == 1450
    text = (built / "shop-r1" / GENERATED["interfaces"]).read_text()
    jumbo = text.replace("auto eth2\niface eth2 inet manual\n",
                         "auto eth2\niface eth2 inet manual\n    up ip link set dev eth2 mtu 9000\n")
    (built / "shop-r1" / GENERATED["interfaces"]).write_text(jumbo)
    try:
        assert netns.interface_mtus(built / "shop-r1")["eth2"] == 9000  # a parent's MTU is read ...
        assert "eth2" not in lab_run.router_mtus(shop)  # ... but eth2 is no device of the lab
    finally:
        (built / "shop-r1" / GENERATED["interfaces"]).write_text(text)


def test_hypervisors_build_their_devices_as_cloudstack_does(site):
    """Multicast (the example): two hypervisors on the routers' VTEP segment, at the underlay's
    highest free addresses, each with modifyvxlan.sh's command line, the group derived by the lab."""
    p = build(site)
    vni = site["vpcs"]["shop"]["tiers"]["media"]["vni"]
    hvs = p.of(Hypervisor)
    assert [h.name for h in hvs] == ["hv-zone1-1", "hv-zone1-2"]
    assert [h.address for h in hvs] == ["10.0.0.254", "10.0.0.253"]
    assert all(h.links[0].segment == "zone1/eth2.90" and h.mtu == 1500 and not h.flood for h in hvs)
    commands = [" ".join(c) for c in hvs[0].commands()]
    assert f"ip link add vxlan{vni} type vxlan id {vni} group {lab_plan.cloudstack_group(vni)} ttl 10 dev eth0" \
        in commands and f"ip link set vxlan{vni} master brvx-{vni}" in commands
    assert lab_plan.cloudstack_group(70001) == "239.1.17.113" and lab_plan.cloudstack_group(16777215) == "239.255.255.255"
    # the routers' own device is no switch port: their interfaces file builds it on the VTEP interface
    link = next(link for link in p.node("shop-r1").links if link.ifname == f"vxlan{vni}")
    assert (link.over, link.segment, link.addresses) == ("eth2.90", "", tuple(
        site["vpcs"]["shop"]["routers"]["shop-r1"]["interfaces"][f"vxlan{vni}"]))
    assert p.hosted[f"hv-zone1-2/brvx-{vni}"] == ("hv-zone1-2", f"brvx-{vni}")
    assert p.nodes[:2] == hvs  # built before the hosts plugged into them
    assert build(site, "blog").of(Hypervisor) == []  # a lab without VXLAN tiers has none


def test_hypervisors_replicate_to_every_vtep_with_remotes(tmp_path):
    """Unicast (the services fixture): the hypervisors are the zone's remotes and flood to the
    routers' VTEPs and to each other, on UDP 4789."""
    code, out, err = run_cli("build", copy_site(FIXTURE_SITES / "services", tmp_path / "services"), "--output",
                             tmp_path / "out", "--placeholder-secrets")
    assert code == 0, out + err
    site = json.loads((tmp_path / "out/services/site.json").read_text())
    zone = next(z for z in site["zones"].values() if z.get("vxlan"))
    remotes, vteps = zone["vxlan"]["remotes"], zone["vxlan"]["vteps"]
    hvs = build(site).of(Hypervisor)
    assert [h.address for h in hvs] == remotes[:2]
    for hv in hvs:
        assert set(hv.flood) == (set(vteps.values()) | set(remotes)) - {hv.address}
        commands = [" ".join(c) for c in hv.commands()]
        for vni in hv.vnis:
            assert f"ip link add vxlan{vni} type vxlan id {vni} dstport 4789 local {hv.address} ttl 10 dev eth0" \
                in commands
            assert all(f"bridge fdb append 00:00:00:00:00:00 dev vxlan{vni} dst {d}" in commands for d in hv.flood)
