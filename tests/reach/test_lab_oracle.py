"""The oracle decides flows from site.json alone: first match, default deny, egress then ingress,
NAT then ingress (no root)."""

from __future__ import annotations

import json

from conftest import EXAMPLE, copy_site, run_cli
from vpcgen.reach.model import Endpoint, Flow, Model, decide


def rule(number, action, traffic, protocol="all", ports=None, cidrs=("0.0.0.0/0",), icmp_type=None):
    return {"number": number, "action": action, "traffic": traffic, "protocol": protocol,
            "ports": list(ports) if ports else None, "cidrs": list(cidrs), "icmp_type": icmp_type, "icmp_code": None}


def site(acls: dict) -> dict:
    tiers = {"web": {"acl": "web", "cidr": "10.0.1.0/24", "gateway": "10.0.1.1", "vlan": 1001},
             "db": {"acl": "db", "cidr": "10.0.2.0/24", "gateway": "10.0.2.1", "vlan": 1002}}
    vpc = {"kind": "nat", "zone": "z", "cidr": "10.0.0.0/16", "tiers": tiers,
           "public_ips": {"source-nat": "203.0.113.2", "www": "203.0.113.3", "bastion": "203.0.113.4"},
           "static_nat": {"bastion": "10.0.1.10"},
           "port_forwarding": [{"public_ip": "www", "public_port": [2222, 2222], "private_ip": "10.0.2.20",
                                "private_port": [22, 22], "protocol": "tcp"}],
           "load_balancers": {"lb": {"public_ip": "www", "public_port": 80, "private_port": 8080, "protocol": "tcp",
                                     "members": ["10.0.1.11"]}},
           "private_gateways": {"corp": {"acl": "gw", "routes": ["192.168.0.0/16"]}},
           "vpn_peers": {"hq": {"peer": "192.0.2.9", "peer_cidrs": ["172.16.0.0/16"], "local_cidrs": ["10.0.1.0/24"]}}}
    return {"vpcs": {"v": vpc}, "acls": {"gw": [rule(1, "allow", "egress")], **acls}}


def tier(name, address):
    return Endpoint("tier", "v", name, address)


INET = Endpoint("internet", address="198.51.100.7")


def test_first_match_by_number_wins_not_file_order():
    rules = [rule(20, "allow", "ingress", "tcp", (22, 22)), rule(10, "deny", "ingress", "tcp", (20, 30))]
    assert decide(rules, "ingress", "tcp", 22, "1.2.3.4") == (False, 10)
    assert decide(rules, "ingress", "tcp", 31, "1.2.3.4") == (False, None)
    rules.append(rule(5, "allow", "ingress", "tcp", (22, 22), cidrs=("1.2.3.0/24",)))
    assert decide(rules, "ingress", "tcp", 22, "1.2.3.4") == (True, 5)
    assert decide(rules, "ingress", "tcp", 22, "1.2.4.4") == (False, 10)  # rule 5's CIDR is a source


def test_default_deny_and_protocols():
    model = Model(site({"web": [], "db": [rule(10, "allow", "ingress", "icmp", icmp_type=8)]}))
    verdict = model.decide(Flow(tier("web", "10.0.1.5"), "10.0.2.5", "tcp", 80))
    assert not verdict.delivered and verdict.matches[0].rule is None and "default deny" in verdict.why
    assert not decide([rule(1, "allow", "ingress", "tcp")], "ingress", "udp", 53, "1.1.1.1")[0]
    assert decide([rule(1, "allow", "ingress", 6)], "ingress", "tcp", 53, "1.1.1.1") == (True, 1)
    assert decide([rule(1, "allow", "ingress", 50)], "ingress", 50, None, "1.1.1.1") == (True, 1)
    icmp = [rule(1, "allow", "ingress", "icmp", icmp_type=0)]
    assert not decide(icmp, "ingress", "icmp", None, "1.1.1.1")[0]  # an echo request is type 8
    same = model.decide(Flow(tier("web", "10.0.1.5"), "10.0.1.6", "tcp", 80))
    assert same.delivered and same.matches == ()  # inside a tier nothing is filtered


def test_egress_is_checked_before_the_destinations_ingress():
    allow_in = [rule(10, "allow", "ingress")]
    model = Model(site({"web": [rule(10, "deny", "egress", "tcp", (5432, 5432)), rule(20, "allow", "egress")],
                        "db": allow_in}))
    denied = model.decide(Flow(tier("web", "10.0.1.5"), "10.0.2.5", "tcp", 5432))
    assert not denied.delivered and denied.rules == (("web", "egress", 10),)  # ingress never consulted
    ok = model.decide(Flow(tier("web", "10.0.1.5"), "10.0.2.5", "tcp", 5433))
    assert ok.delivered and ok.rules == (("web", "egress", 20), ("db", "ingress", 10))
    assert ok.to == Endpoint("tier", "v", "db", "10.0.2.5") and ok.seen_as == "10.0.1.5"
    # then the destination's ingress list
    model = Model(site({"web": [rule(1, "allow", "egress")], "db": [rule(5, "deny", "ingress", cidrs=("10.0.1.0/24",))]}))
    assert model.decide(Flow(tier("web", "10.0.1.5"), "10.0.2.5", "tcp", 1)).rules == (
        ("web", "egress", 1), ("db", "ingress", 5))


def test_egress_before_source_nat_vpn_and_private_gateway():
    model = Model(site({"web": [rule(10, "allow", "egress", "tcp", (80, 80))], "db": [rule(1, "allow", "egress")]}))
    out = model.decide(Flow(tier("db", "10.0.2.5"), "198.51.100.7", "tcp", 7))
    assert out.delivered and out.to.kind == "internet" and out.seen_as == "203.0.113.2"  # source NAT
    static = model.decide(Flow(tier("web", "10.0.1.10"), "198.51.100.7", "tcp", 80))
    assert static.seen_as == "203.0.113.4" and static.nat == ("static NAT bastion -> 203.0.113.4",)
    denied = model.decide(Flow(tier("web", "10.0.1.11"), "198.51.100.7", "tcp", 7))
    assert not denied.delivered and denied.nat == () and denied.rules == (("web", "egress", None),)
    vpn = model.decide(Flow(tier("web", "10.0.1.11"), "172.16.0.1", "tcp", 80))
    assert vpn.delivered and vpn.to == Endpoint("peer", "v", "hq", "172.16.0.1") and vpn.seen_as == "10.0.1.11"
    assert not model.decide(Flow(tier("web", "10.0.1.11"), "172.16.0.1", "tcp", 7)).delivered  # egress first
    # db is not in the tunnel: the peer's network is not the internet either, so nothing delivers it
    outside = model.decide(Flow(tier("db", "10.0.2.5"), "172.16.0.1", "tcp", 80))
    assert not outside.delivered and outside.to is None
    gw = model.decide(Flow(tier("db", "10.0.2.5"), "192.168.1.1", "tcp", 25))
    assert gw.delivered and gw.to.kind == "gateway" and gw.rules == (("db", "egress", 1), ("gw", "egress", 1))
    # the lab's choice of a prober: the first candidate the oracle lets through
    chosen, ok = model.pick_source([tier("web", "10.0.1.11"), tier("db", "10.0.2.5")], "198.51.100.7",
                                   [("tcp", 7)])
    assert ok and chosen.name == "db"
    chosen, ok = model.pick_source([tier("web", "10.0.1.11"), tier("db", "10.0.2.5")], "172.16.0.1",
                                   [("tcp", 7)], kind="peer")
    assert not ok and chosen.name == "web"  # nobody may: the denial is what to expect


def test_destination_nat_then_the_tiers_ingress_list():
    model = Model(site({"web": [rule(10, "allow", "ingress", "tcp", (8080, 8080)), rule(20, "allow", "ingress",
                                                                                      "tcp", (22, 22))],
                        "db": [rule(10, "allow", "ingress", "tcp", (22, 22), cidrs=("198.51.100.0/24",))]}))
    pf = model.decide(Flow(INET, "203.0.113.3", "tcp", 2222))
    assert pf.delivered and (pf.to.name, pf.address, pf.port) == ("db", "10.0.2.20", 22)  # ingress on port 22
    assert pf.rules == (("db", "ingress", 10),) and pf.seen_as == INET.address
    far = model.decide(Flow(Endpoint("internet", address="203.0.113.99"), "203.0.113.3", "tcp", 2222))
    assert not far.delivered and far.rules == (("db", "ingress", None),)
    assert not model.decide(Flow(INET, "203.0.113.3", "tcp", 22)).delivered  # no rule forwards 22
    lb = model.decide(Flow(INET, "203.0.113.3", "tcp", 80))
    assert lb.delivered and lb.to == Endpoint("lb", "v", "lb", "203.0.113.3") and lb.port == 8080
    static = model.decide(Flow(INET, "203.0.113.4", "tcp", 22))
    assert static.delivered and static.address == "10.0.1.10" and static.rules == (("web", "ingress", 20),)
    assert not model.decide(Flow(INET, "203.0.113.4", "tcp", 23)).delivered
    assert not model.decide(Flow(INET, "203.0.113.2", "tcp", 22)).delivered  # source NAT forwards nothing
    back = model.decide(Flow(Endpoint("peer", "v", "hq", "172.16.0.1"), "10.0.1.5", "tcp", 22))
    assert back.delivered and back.rules == (("web", "ingress", 20),)
    assert not model.decide(Flow(Endpoint("peer", "v", "hq", "172.16.0.1"), "10.0.2.5", "tcp", 22)).delivered


def test_the_examples_flows(tmp_path):
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp_path / "example"), "--output", tmp_path / "out")
    assert code == 0, out + err
    model = Model(json.loads((tmp_path / "out/example/site.json").read_text()))
    inet = Endpoint("internet", address="203.0.113.1")
    assert model.decide(Flow(inet, "203.0.113.50", "tcp", 22)).why == "ingress list web default deny"
    db = model.decide(Flow(Endpoint("tier", "shop", "db", "10.10.2.10"), "203.0.113.1", "tcp", 7))
    assert not db.delivered and db.rules == (("db", "egress", 30),)
    corp = model.decide(Flow(Endpoint("tier", "shop", "web", "10.10.1.11"), "192.168.0.5", "tcp", 25))
    assert not corp.delivered and corp.rules == (("web", "egress", 50), ("corp-gw", "egress", 30))
