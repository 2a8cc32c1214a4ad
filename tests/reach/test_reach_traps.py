"""The changes that look harmless and are not (and the ones that look dangerous and are not), each
with the entries it must give."""

from __future__ import annotations

import copy

import pytest

from reach_checker import check, corners, sample
from vpcgen.reach import boxes as bx
from vpcgen.reach.model import Endpoint, Flow, Model
from vpcgen.reach.symbolic import changes


def rule(number, action, traffic, protocol, ports=None, cidrs=("0.0.0.0/0",), icmp_type=None, icmp_code=None):
    return {"number": number, "action": action, "traffic": traffic, "protocol": protocol,
            "ports": list(ports) if ports else None, "icmp_type": icmp_type, "icmp_code": icmp_code,
            "cidrs": list(cidrs)}


def site(web=(), db=()) -> dict:
    """One NAT VPC: web 10.0.1.0/24 and db 10.0.2.0/24, a source NAT and a spare public address."""
    return {"zones": {"z": {}}, "acls": {"web": list(web), "db": list(db)}, "vpcs": {"shop": {
        "zone": "z", "kind": "nat", "cidr": "10.0.0.0/16",
        "tiers": {"web": {"cidr": "10.0.1.0/24", "acl": "web"}, "db": {"cidr": "10.0.2.0/24", "acl": "db"}},
        "public_ips": {"source-nat": "203.0.113.10", "www": "203.0.113.11", "bastion": "203.0.113.12"},
        "static_nat": {}, "port_forwarding": [], "load_balancers": {}, "vpn_peers": {}, "remote_access": None,
        "private_gateways": {}}}}


def exact(base: dict, head: dict) -> list[dict]:
    """The entries, after checking them against concrete flows."""
    entries = changes(base, head)
    public = tuple(bx.normalize(Model(copy.deepcopy(base)).public_addresses()
                                + Model(copy.deepcopy(head)).public_addresses()))
    check(Model(copy.deepcopy(base), hairpin=public), Model(copy.deepcopy(head), hairpin=public), entries,
          sample([base, head], 3000) + corners(entries))
    return entries


EGRESS_ALL = rule(100, "allow", "egress", "all")


def test_a_rule_behind_a_matching_deny_changes_nothing():
    base = site(web=[rule(10, "deny", "egress", "all")])
    head = site(web=[rule(10, "deny", "egress", "all"), rule(20, "allow", "egress", "tcp", (443, 443))])
    assert exact(base, head) == []


def test_renumbering_that_keeps_the_order_changes_nothing():
    base = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "tcp", (5432, 5432), ["10.0.1.0/24"]),
                                      rule(20, "deny", "ingress", "all", cidrs=["10.0.1.128/25"]),
                                      rule(30, "allow", "ingress", "icmp", icmp_type=8)])
    head = copy.deepcopy(base)
    for r, n in zip(head["acls"]["db"], (100, 200, 300)):
        r["number"] = n
    assert exact(base, head) == []


def test_renumbering_that_swaps_a_deny_in_front():
    base = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "tcp", (5432, 5432), ["10.0.1.0/24"]),
                                      rule(20, "deny", "ingress", "tcp", cidrs=["10.0.1.128/25"])])
    head = copy.deepcopy(base)
    head["acls"]["db"][0]["number"] = 30
    assert exact(base, head) == [
        {"change": "denied", "from": "shop/web", "to": "shop/db", "sources": ["10.0.1.128/25"],
         "destinations": ["10.0.2.0/24"], "protocol": "tcp", "ports": "5432"}]


def test_tcp_widened_to_all_is_two_protocol_ranges():
    base = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "tcp", cidrs=["10.0.1.0/24"])])
    head = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "all", cidrs=["10.0.1.0/24"])])
    common = {"change": "allowed", "from": "shop/web", "to": "shop/db", "sources": ["10.0.1.0/24"],
              "destinations": ["10.0.2.0/24"]}
    assert exact(base, head) == [{**common, "protocol": "0-5"}, {**common, "protocol": "7-255"}]


def test_a_port_forward_to_a_port_the_ingress_list_denies_changes_nothing_until_the_list_opens():
    base = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "tcp", (5432, 5432), ["10.0.1.0/24"])])
    head = copy.deepcopy(base)
    head["vpcs"]["shop"]["port_forwarding"] = [{"public_ip": "www", "protocol": "tcp", "public_port": [2222, 2222],
                                                "private_ip": "10.0.2.20", "private_port": [22, 22]}]
    assert exact(base, head) == []
    opened = copy.deepcopy(head)  # another change, to the list only, silently opens the forward
    opened["acls"]["db"].append(rule(20, "allow", "ingress", "tcp", (22, 22)))
    assert exact(head, opened) == [
        {"change": "allowed", "from": "internet", "to": "shop/db", "sources": ["0.0.0.0/0"],
         "destinations": ["203.0.113.11/32"], "protocol": "tcp", "ports": "2222",
         "via": "port forwarding www tcp/2222 -> 10.0.2.20:22"},
        {"change": "allowed", "from": "shop/web", "to": "shop/db", "sources": ["10.0.1.0/24"],
         "destinations": ["10.0.2.0/24"], "protocol": "tcp", "ports": "22"}]


def test_a_widened_vpn_peer_network_moves_flows_from_the_internet_to_the_peer():
    base = site(web=[EGRESS_ALL, rule(10, "allow", "ingress", "tcp", (80, 80))])
    base["vpcs"]["shop"]["vpn_peers"] = {"hq": {"peer_cidrs": ["172.16.0.0/16"], "local_cidrs": ["10.0.1.0/24"]}}
    head = copy.deepcopy(base)
    head["vpcs"]["shop"]["vpn_peers"]["hq"]["peer_cidrs"] = ["172.16.0.0/12"]
    moved = ["172.17.0.0/16", "172.18.0.0/15", "172.20.0.0/14", "172.24.0.0/13"]
    out = {"from": "shop/web", "sources": ["10.0.1.0/24"], "destinations": moved, "protocol": "all"}
    assert exact(base, head) == [
        {"change": "allowed", "from": "shop/vpn:hq", "to": "shop/web", "sources": moved,
         "destinations": ["10.0.1.0/24"], "protocol": "tcp", "ports": "80"},
        {"change": "allowed", **out, "to": "shop/vpn:hq"},
        {"change": "denied", **out, "to": "internet", "via": "source NAT"}]


def test_a_removed_static_nat():
    base = site(web=[EGRESS_ALL, rule(10, "allow", "ingress", "tcp", (80, 80))])
    base["vpcs"]["shop"]["static_nat"] = {"bastion": "10.0.1.5"}
    head = copy.deepcopy(base)
    head["vpcs"]["shop"]["static_nat"] = {}
    assert exact(base, head) == [
        {"change": "denied", "from": "internet", "to": "shop/web", "sources": ["0.0.0.0/0"],
         "destinations": ["203.0.113.12/32"], "protocol": "tcp", "ports": "80",
         "via": "static NAT bastion -> 10.0.1.5"}]


def test_a_description_only_change_gives_no_entry():
    base = site(web=[EGRESS_ALL, rule(10, "allow", "ingress", "tcp", (80, 80))])
    base["vpcs"]["shop"]["static_nat"] = {"bastion": "10.0.1.5"}
    head = copy.deepcopy(base)
    head["acls"]["web"][1]["description"] = "the public web tier"
    assert head != base and exact(base, head) == []


def test_a_load_balancer_is_judged_like_a_port_forward_to_its_members():
    base = site(web=[rule(10, "allow", "ingress", "tcp", (8080, 8080), ["198.51.100.0/24"])])
    head = copy.deepcopy(base)
    head["vpcs"]["shop"]["load_balancers"] = {"site": {"public_ip": "www", "public_port": 80, "private_port": 8080,
                                                       "protocol": "http", "members": ["10.0.1.11", "10.0.1.12"]}}
    assert exact(base, head) == [
        {"change": "allowed", "from": "internet", "to": "shop/web", "sources": ["198.51.100.0/24"],
         "destinations": ["203.0.113.11/32"], "protocol": "tcp", "ports": "80",
         "via": "load balancer site tcp/80 -> 10.0.1.11, 10.0.1.12:8080"}]


def test_new_internet_exposure_comes_first():
    base = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "all")])
    base["vpcs"]["shop"]["static_nat"] = {"bastion": "10.0.1.5"}
    head = copy.deepcopy(base)
    head["acls"]["web"].append(rule(10, "allow", "ingress", "tcp", (22, 22)))
    head["acls"]["db"][0]["action"] = "deny"
    entries = exact(base, head)
    assert [(e["change"], e["from"], e["to"]) for e in entries] == [
        ("allowed", "internet", "shop/web"), ("denied", "shop/web", "shop/db")]


@pytest.mark.parametrize("protocol,port,allowed", [("tcp", 5432, True), ("tcp", 5431, False), ("udp", 5432, False),
                                                    ("icmp", None, False)])
def test_one_flow_is_decided_by_the_same_stages(protocol, port, allowed):
    s = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "tcp", (5432, 5432), ["10.0.1.0/24"])])
    v = Model(s).decide(Flow(Endpoint("tier", "shop", "web", "10.0.1.7"), "10.0.2.9", protocol, port))
    assert v.delivered is allowed
    assert v.rules == (("web", "egress", 100), ("db", "ingress", 10 if allowed else None))


def test_only_the_vpcs_whose_part_changed_are_recomputed(monkeypatch):
    from vpcgen.reach import symbolic
    base = site(web=[EGRESS_ALL], db=[rule(10, "allow", "ingress", "tcp", (5432, 5432), ["10.0.1.0/24"])])
    other = copy.deepcopy(base["vpcs"]["shop"])
    other["cidr"] = "10.1.0.0/16"
    other["tiers"] = {"web": {"cidr": "10.1.1.0/24", "acl": "other"}}
    other["public_ips"] = {"source-nat": "203.0.113.20"}
    base["vpcs"]["blog"] = other
    base["acls"]["other"] = [EGRESS_ALL]
    head = copy.deepcopy(base)
    head["acls"]["db"][0]["ports"] = [5433, 5433]
    seen = []
    real = symbolic.delivered
    monkeypatch.setattr(symbolic, "delivered", lambda model, vpc, only=None: seen.append(vpc) or real(model, vpc, only))
    assert [e["change"] for e in symbolic.changes(base, head)] == ["allowed", "denied"]
    assert seen == ["shop", "shop"]


def test_a_network_that_moves_from_the_internet_to_a_gateway_but_reaches_the_same_tier_is_no_change():
    base = site(web=[EGRESS_ALL])
    base["vpcs"]["core"] = {
        "zone": "z", "kind": "routed", "cidr": "10.128.0.0/22", "tiers": {"r": {"cidr": "10.128.0.0/24", "acl": "r"}},
        "public_ips": {}, "static_nat": {}, "port_forwarding": [], "load_balancers": {}, "vpn_peers": {},
        "remote_access": None, "private_gateways": {"corp": {"routes": ["192.168.0.0/24"], "acl": "gw"}}}
    base["acls"]["r"] = [rule(10, "allow", "ingress", "tcp", (22, 22))]
    base["acls"]["gw"] = [rule(10, "allow", "ingress", "all")]
    head = copy.deepcopy(base)
    head["vpcs"]["core"]["private_gateways"]["corp"]["routes"] = ["192.168.0.0/16"]
    # 192.168.1.0-192.168.255.255 reached core/r on tcp/22 from the internet and now through the
    # gateway: the same delivery; only the web tier loses them as internet destinations
    assert [(e["change"], e["from"], e["to"]) for e in exact(base, head)] == [("denied", "shop/web", "internet")]
