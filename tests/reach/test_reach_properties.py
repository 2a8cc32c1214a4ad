"""Random ACL lists, NAT rules, VPN and gateway networks, pairs of revisions: the reported entries
agree with the model deciding concrete flows one by one, in both directions of the contract."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reach_checker import check, corners, sample
from vpcgen.reach.model import Model
from vpcgen.reach.symbolic import changes

CIDRS = ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/24", "10.0.1.0/24", "10.0.1.128/25", "10.0.2.0/24",
         "172.16.0.0/16", "172.16.0.0/12", "172.17.4.0/24", "192.168.0.0/16", "192.168.10.0/24",
         "198.51.100.0/24", "203.0.113.0/24", "10.128.0.0/24", "10.0.250.0/24"]
PORTS = [(22, 22), (80, 80), (1, 1024), (443, 443), (8000, 8080), (5000, 5009), (2222, 2222), (65535, 65535)]

rules = st.lists(st.fixed_dictionaries({
    "number": st.sampled_from([5, 10, 15, 20, 30, 40]),
    "action": st.sampled_from(["allow", "deny"]),
    "traffic": st.sampled_from(["ingress", "egress"]),
    "protocol": st.sampled_from(["tcp", "udp", "icmp", "all", 50, 6, 1]),
    "ports": st.none() | st.sampled_from(PORTS),
    "icmp_type": st.none() | st.sampled_from([0, 8]),
    "icmp_code": st.none() | st.sampled_from([0]),
    "cidrs": st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2, unique=True),
}), max_size=5, unique_by=lambda r: r["number"]).map(lambda rs: [_tidy(r) for r in rs])


def _tidy(rule: dict) -> dict:
    """What validation lets through: ports only with tcp/udp, ICMP fields only with icmp."""
    rule = dict(rule)
    if rule["protocol"] not in ("tcp", "udp"):
        rule["ports"] = None
    if rule["protocol"] != "icmp":
        rule["icmp_type"] = rule["icmp_code"] = None
    if rule["icmp_type"] is None:
        rule["icmp_code"] = None
    rule["ports"] = list(rule["ports"]) if rule["ports"] else None
    return rule


forwards = st.lists(st.fixed_dictionaries({
    "protocol": st.sampled_from(["tcp", "udp"]),
    "public_port": st.sampled_from([(22, 22), (80, 80), (5000, 5009), (2222, 2222)]),
    "private_ip": st.sampled_from(["10.0.0.20", "10.0.1.20", "10.0.2.20"]),
    "shift": st.sampled_from([0, 0, 100]),
}), max_size=3, unique_by=lambda p: (p["protocol"], p["public_port"]))


@st.composite
def revisions(draw) -> dict:
    acls = {name: draw(rules) for name in ("a", "b", "c", "gw", "r")}
    pf = []
    for p in draw(forwards):
        lo, hi = p["public_port"]
        pf.append({"public_ip": "www", "protocol": p["protocol"], "public_port": [lo, hi],
                   "private_ip": p["private_ip"], "private_port": [lo + p["shift"], hi + p["shift"]]})
    static = {"bastion": draw(st.sampled_from(["10.0.0.5", "10.0.1.5"]))} if draw(st.booleans()) else {}
    lbs = {}
    if draw(st.booleans()):
        lbs["site"] = {"public_ip": "lb", "public_port": 80, "private_port": draw(st.sampled_from([80, 8080])),
                       "protocol": "tcp", "members": ["10.0.1.11", "10.0.1.12"]}
    peers = {}
    if draw(st.booleans()):
        peers["hq"] = {"peer_cidrs": [draw(st.sampled_from(["172.16.0.0/16", "172.16.0.0/12", "172.17.4.0/24"]))],
                       "local_cidrs": draw(st.sampled_from([["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"],
                                                            ["10.0.1.0/24"]]))}
    gateways = {}
    if draw(st.booleans()):
        gateways["corp"] = {"routes": [draw(st.sampled_from(["192.168.0.0/16", "192.168.10.0/24"]))], "acl": "gw"}
    tiers = {"a": {"cidr": "10.0.0.0/24", "acl": "a"}, "b": {"cidr": "10.0.1.0/24", "acl": "b"}}
    if draw(st.booleans()):
        tiers["c"] = {"cidr": "10.0.2.0/24", "acl": "c"}
    shop = {"zone": "z", "kind": "nat", "cidr": "10.0.0.0/16", "tiers": tiers,
            "public_ips": {"source-nat": "203.0.113.10", "www": "203.0.113.11", "bastion": "203.0.113.12",
                           "lb": "203.0.113.13"},
            "static_nat": static, "port_forwarding": pf, "load_balancers": lbs, "vpn_peers": peers,
            "remote_access": {"pool": "10.0.250.0/24"} if draw(st.booleans()) else None,
            "private_gateways": gateways}
    routed = {"zone": "z", "kind": "routed", "cidr": "10.128.0.0/22",
              "tiers": {"r": {"cidr": "10.128.0.0/24", "acl": "r"}}, "public_ips": {}, "static_nat": {},
              "port_forwarding": [], "load_balancers": {}, "vpn_peers": {}, "remote_access": None,
              "private_gateways": {}}
    return {"vpcs": {"shop": shop, "core": routed}, "acls": acls, "zones": {"z": {}}}


@st.composite
def pairs(draw):
    base = draw(revisions())
    if draw(st.booleans()):
        return base, draw(revisions())
    head = copy.deepcopy(base)  # a small change: one list redrawn, or one NAT rule
    what = draw(st.sampled_from(["acl", "pf", "static", "peer"]))
    if what == "acl":
        head["acls"][draw(st.sampled_from(sorted(head["acls"])))] = draw(rules)
    elif what == "pf":
        head["vpcs"]["shop"]["port_forwarding"] = draw(revisions())["vpcs"]["shop"]["port_forwarding"]
    elif what == "static":
        head["vpcs"]["shop"]["static_nat"] = {}
    else:
        head["vpcs"]["shop"]["vpn_peers"] = draw(revisions())["vpcs"]["shop"]["vpn_peers"]
    return base, head


def _models(base: dict, head: dict) -> tuple[Model, Model]:
    from vpcgen.reach import boxes as bx
    public = tuple(bx.normalize(Model(copy.deepcopy(base)).public_addresses() +
                                Model(copy.deepcopy(head)).public_addresses()))
    return Model(copy.deepcopy(base), hairpin=public), Model(copy.deepcopy(head), hairpin=public)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs())
def test_entries_are_exact_against_concrete_flows(pair):
    base, head = pair
    entries = changes(base, head)
    mb, mh = _models(base, head)
    check(mb, mh, entries, sample([base, head], 1500) + corners(entries))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(revisions())
def test_a_revision_against_itself_changes_nothing(site):
    assert changes(site, copy.deepcopy(site)) == []
