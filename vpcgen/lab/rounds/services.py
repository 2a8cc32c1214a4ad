"""Round services: NAT both ways, port-forwarded ranges, load balancing and health checks, private
gateways, VPNs and the OSPF core, each expectation from the oracle."""

from __future__ import annotations

import ipaddress
import time

from .. import run as lab
from ...ops import netns
from ...reach.model import Endpoint, probes
from ..plan import PROBE_TCP_PORT, WHOAMI_PORT, Client, Gateway, Peer
from .acl import compare


def run(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        r = f"services {vpc}"
        if v["kind"] == "nat":
            for public, private in sorted(v["static_nat"].items()):
                t.check(r, f"static NAT {public} outbound: the internet sees {v['public_ips'][public]}",
                           lambda q=private: _whoami(t, vpc, t.host_at(vpc, q)))
            if "source-nat" in v["public_ips"]:
                t.check(r, f"source NAT: the internet sees {v['public_ips']['source-nat']}",
                           lambda: _source_nat(t, vpc))
            for pf in v["port_forwarding"]:
                low, high = pf["public_port"]
                if high != low:
                    t.check(r, f"port forwarding range {pf['protocol']}/{low}-{high}",
                               lambda pf=pf: _range(t, vpc, pf))
            for name, lb in sorted(v["load_balancers"].items()):
                t.check(r, f"load balancer {name}: requests spread over members",
                           lambda lb=lb: _spread(t, vpc, lb))
                if lb["stickiness"] != "none":
                    t.check(r, f"load balancer {name}: {lb['stickiness']} stickiness holds",
                               lambda lb=lb: _sticky(t, vpc, lb))
                t.check(r, f"load balancer {name}: a stopped member is taken out",
                           lambda lb=lb: _health(t, vpc, lb))
        for gw_name, gw in sorted(v["private_gateways"].items()):
            t.check(r, f"private gateway {gw_name}: static routes, no source NAT",
                       lambda gw=gw, g=gw_name: _gateway(t, vpc, g, gw))
        for peer_name, peer in sorted(v["vpn_peers"].items()):
            t.check(r, f"site-to-site VPN {peer_name}: tier host <-> peer network, no source NAT",
                       lambda n=peer_name, pe=peer: site_to_site(t, vpc, n, pe))
        if v.get("remote_access"):
            t.check(r, "remote-access VPN: the client gets a pool address and reaches a tier as its list allows",
                       lambda: _remote_access(t, vpc))
        if v["kind"] == "routed":
            t.check(r, "the OSPF core learns the VPC's prefix from the master",
                       lambda: _ospf_learned(t, vpc))
            others = [o for o, ov in t.vpcs.items() if ov["kind"] == "routed" and o != vpc]
            for other in others:
                t.check(r, f"hosts reach routed VPC {other} without NAT",
                           lambda o=other: _routed_reach(t, vpc, o))


def _source_nat(t, vpc: str) -> tuple[bool, str]:
    host, allowed = t.source_host(vpc, t.inet_address(vpc), [("tcp", WHOAMI_PORT)])
    if host is None:
        return False, "no host behind source NAT"
    ok, detail = _whoami(t, vpc, host[0])
    return ok, detail if allowed else f"every tier's egress list denies it; from {host[0]}: {detail}"


def _whoami(t, vpc: str, host: str) -> tuple[bool, str]:
    """What the internet sees of a host's connection, against the oracle (its source NAT, or a denial)."""
    verdict = t.expect(t.endpoint(vpc, host), t.inet_address(vpc), "tcp", WHOAMI_PORT)
    got = t.probe(host, t.inet_address(vpc), WHOAMI_PORT)
    if not verdict.delivered:
        return got.startswith("FAILED"), f"denied ({verdict.why}): {got}"
    return got == verdict.seen_as, f"seen as {got} (expected {verdict.seen_as})"


def _range(t, vpc: str, pf: dict) -> tuple[bool, str]:
    address = t.vpcs[vpc]["public_ips"][pf["public_ip"]]
    want = t.host_at(vpc, pf["private_ip"])
    got = [t.probe(t.inet(vpc), address, p, pf["protocol"]) for p in pf["public_port"]]
    return all(g == want for g in got), ", ".join(got)


def _lb_get(t, vpc: str, lb: dict, headers: str = "") -> str:
    address = t.vpcs[vpc]["public_ips"][lb["public_ip"]]
    payload = f"GET / HTTP/1.0\\n{headers}\\n" if lb["protocol"] == "http" else "hello"
    return t.probe(t.inet(vpc), address, lb["public_port"], "tcp", payload)


def _spread(t, vpc: str, lb: dict) -> tuple[bool, str]:
    if lb["stickiness"] == "source":  # one client always lands on one member: spread needs clients
        return True, "source stickiness: spread is per client (see the stickiness check)"
    seen = [_lb_get(t, vpc, lb) for _ in range(6)]
    return len(set(seen)) >= min(2, len(lb["members"])), ", ".join(seen)


def _sticky(t, vpc: str, lb: dict) -> tuple[bool, str]:
    if lb["stickiness"] == "cookie":
        first = _lb_get(t, vpc, lb)
        cookie = f"Cookie: VPCGEN_SERVER={_server_name(t, vpc, lb, first)}\\n"
        seen = [_lb_get(t, vpc, lb, cookie) for _ in range(4)]
    else:
        seen = [_lb_get(t, vpc, lb) for _ in range(4)]
    return len(set(seen)) == 1 and not seen[0].startswith("FAILED"), ", ".join(seen)


def _server_name(t, vpc: str, lb: dict, host: str) -> str:
    name = next(n for n, x in t.vpcs[vpc]["load_balancers"].items() if x is lb)
    address = t.plan.node(host).address
    return f"{name}-{lb['members'].index(address) + 1}"


def _health(t, vpc: str, lb: dict) -> tuple[bool, str]:
    victim = t.host_at(vpc, lb["members"][0])
    lab.stop_host(t.data, victim)
    try:
        deadline, seen = time.monotonic() + t.health_s(lb, "fall"), []
        while time.monotonic() < deadline:  # fall x inter of the health check, then no more
            seen = [_lb_get(t, vpc, lb) for _ in range(4)]
            if victim not in seen and not any(s.startswith("FAILED") for s in seen):
                break
            time.sleep(0.5)
    finally:
        lab.start_host(t.tree_dir, victim)
        t.reload_data()
        _back_in_rotation(t, vpc, lb, victim)
    ok = victim not in seen and not any(s.startswith("FAILED") for s in seen)
    return ok, f"{victim} stopped; then answers: {', '.join(seen)}"


def _back_in_rotation(t, vpc: str, lb: dict, member: str) -> None:
    """Wait until haproxy's checks have risen for a restarted member (for every LB using it)."""
    for other in t.vpcs[vpc]["load_balancers"].values():
        if t.plan.node(member).address not in other["members"]:
            continue
        deadline = time.monotonic() + t.health_s(other, "rise")
        if other["stickiness"] == "source":  # one client sees one member: wait out the rise
            time.sleep(max(0.0, deadline - time.monotonic()))
            continue
        while time.monotonic() < deadline and member not in {_lb_get(t, vpc, other) for _ in range(4)}:
            time.sleep(0.3)


def _gateway(t, vpc: str, gw_name: str, gw: dict) -> tuple[bool, str]:
    """From a tier host the oracle lets out (tier egress, then the gateway's egress list): each
    probe as the lists decide, and the far side sees the host's own address (no source NAT)."""
    node: Gateway = t.plan.node(f"{vpc}-pg-{gw_name}")
    target = node.targets[0]
    host, allowed = t.source_host(vpc, target, [("tcp", WHOAMI_PORT)], kind="gateway")
    if host is None:
        return False, "no test host in the VPC"
    source = t.endpoint(vpc, host[0])
    cases = [(host[0], target, port, proto, "", t.expect(source, target, proto, port),
              node.name if proto != "icmp" else None)
             for proto, port in probes(t.site["acls"][gw["acl"]]) if proto == "tcp"]
    ok, detail = compare(t, cases)
    verdict = t.expect(source, target, "tcp", WHOAMI_PORT)
    seen = t.probe(host[0], target, WHOAMI_PORT)
    if verdict.delivered and seen != verdict.seen_as:
        ok, detail = False, f"{detail}; the gateway's side sees {seen}, not {verdict.seen_as}"
    elif not verdict.delivered and not seen.startswith("FAILED"):
        ok, detail = False, f"{detail}; whoami expected denied ({verdict.why}), got {seen}"
    return ok, f"from {host[0]}: {detail}" + ("" if allowed else " (every tier's egress denies it)")


def site_to_site(t, vpc: str, name: str, peer: dict) -> tuple[bool, str]:
    """A tier host inside the tunnel's local networks that the oracle lets through reaches the
    peer's network unNATed; back from the peer's network, the tier's ingress list decides."""
    node: Peer = t.plan.node(f"{vpc}-peer-{name}")
    target = node.loopback[0].split("/")[0]
    host, allowed = t.source_host(vpc, target, [("tcp", PROBE_TCP_PORT), ("tcp", WHOAMI_PORT)],
                                  list(node.tunnel.local_cidrs), kind="peer")
    if host is None:
        return False, "no test host inside the VPN's local networks"
    source = Endpoint("peer", vpc, name, target)
    rules = t.site["acls"][t.tier_of(vpc, host[1])["acl"]]
    cases = [(node.name, host[1], port, proto, target, t.expect(source, host[1], proto, port), host[0])
             for proto, port in probes(rules) if proto == "tcp"]
    up = _bring_up(t, vpc, node)
    # a pair's master initiated on takeover (notify.sh): the tunnel may still be negotiating
    deadline = time.monotonic() + 20
    if not allowed:  # the tiers' own egress lists deny it: the tunnel must not carry it either
        while not (back := compare(t, cases))[0] and time.monotonic() < deadline:
            time.sleep(1)
        got = t.probe(host[0], target, PROBE_TCP_PORT)
        return got.startswith("FAILED") and back[0], (f"every local tier's egress list denies it; {up}{host[0]} -> "
                                                      f"{target}: {got}; back from {target}: {back[1]}")
    while (got := t.probe(host[0], target, PROBE_TCP_PORT)) != node.name and time.monotonic() < deadline:
        time.sleep(1)
    seen = t.probe(host[0], target, WHOAMI_PORT)
    expected = t.expect(t.endpoint(vpc, host[0]), target, "tcp", WHOAMI_PORT).seen_as
    ok, back = compare(t, cases)
    return got == node.name and seen == expected and ok, \
        f"{up}{host[0]} -> {target}: {got}, seen as {seen} (expected {expected}); back from {target}: {back}"


def _bring_up(t, vpc: str, node: Peer) -> str:
    """What a kernel's first packet would do. The tunnels are trap policies: a kernel's IPsec asks
    IKE to initiate on the first packet (an acquire); the lab's kernel-libipsec has none (it drops
    the packet: "could not find an outbound IPsec SA"). A pair's master initiates on takeover
    (notify.sh, which the redundancy round proves); a single router has no such step, so the peer
    initiates, as its own kernel would on its first packet. Says so in the detail when it did."""
    if t.vpcs[vpc]["redundant"]:
        return ""
    if "INSTALLED" in lab.exec_in(t.data, node.name, "swanctl --list-sas --ike lab").stdout:
        return ""
    r = lab.exec_in(t.data, node.name, "swanctl --initiate --child lab --timeout 10 2>&1")
    return "the peer initiated (libipsec has no acquire); " if r.returncode == 0 else \
        f"the peer could not initiate: {(r.stdout.strip().splitlines() or ['no output'])[-1]}; "


def _remote_access(t, vpc: str) -> tuple[bool, str]:
    client: Client = t.plan.node(f"{vpc}-ra-client")
    pool = ipaddress.ip_network(client.pool)
    # a fresh connection to whichever router is master now (a client reconnects after a failover)
    lab.exec_in(t.data, client.name, "swanctl --terminate --ike ra --timeout 5 >/dev/null 2>&1")
    deadline, vip = time.monotonic() + 20, None
    while vip is None and time.monotonic() < deadline:
        lab.exec_in(t.data, client.name, "swanctl --initiate --child ra --timeout 5 >/dev/null 2>&1")
        out = netns.run(["ip", "-n", t.data["nodes"][client.name]["ns"], "-o", "-4", "addr"]).stdout
        vip = next((a.split("/")[0] for a in out.split() if "/" in a
                    and ipaddress.ip_address(a.split("/")[0]) in pool), None)
        if vip is None:
            time.sleep(1)
    if vip is None:
        return False, f"no address from {pool} on the client"
    source = Endpoint("client", vpc, client.name, vip)
    cases = []
    for tier_name, tier in sorted(t.vpcs[vpc]["tiers"].items()):
        node, address = t.hosts(vpc, tier_name)[0]
        cases += [(client.name, address, port, proto, vip, t.expect(source, address, proto, port), node)
                  for proto, port in probes(t.site["acls"][tier["acl"]]) if proto == "tcp"]
    ok, detail = compare(t, cases)
    return ok and any(c[5].delivered for c in cases), f"client holds {vip}; {detail}"


def _ospf_learned(t, vpc: str) -> tuple[bool, str]:
    routes = t.core_routes(vpc)
    masters = t.masters(vpc) if t.vpcs[vpc]["redundant"] else t.vpcs[vpc]["routers"]
    via = [t.transit_address(m) for m in masters]
    ok = bool(routes) and any(f"via {a} " in routes + " " for a in via)
    if ok:
        return ok, routes
    # what the routers' FRR says, for whoever reads the failure
    seen = "; ".join(f"{m}: " + " | ".join(lab.exec_in(
        t.data, m, "cat /run/vtysh.log; vtysh -c 'show ip ospf neighbor'").stdout.split("\n")[-12:]) for m in masters)
    return ok, f"{routes or 'no route'} ({seen})"


def _routed_reach(t, vpc: str, other: str) -> tuple[bool, str]:
    """A host the oracle lets through reaches a host of the other routed VPC, unNATed."""
    dst_node, dst_addr = t.hosts(other, sorted(t.vpcs[other]["tiers"])[0])[0]
    src, allowed = t.source_host(vpc, dst_addr, [("tcp", PROBE_TCP_PORT), ("tcp", WHOAMI_PORT)], kind="tier")
    if not allowed:
        got = t.probe(src[0], dst_addr, PROBE_TCP_PORT)
        return got.startswith("FAILED"), f"the lists deny it from every host; {src[0]}: {got}"
    deadline = time.monotonic() + 60  # both VPCs' adjacencies with the core must be up
    while (got := t.probe(src[0], dst_addr, PROBE_TCP_PORT)) != dst_node and time.monotonic() < deadline:
        time.sleep(1)
    seen = t.probe(src[0], dst_addr, WHOAMI_PORT)  # the far host sees the near host's own address
    return got == dst_node and seen == src[1], f"{src[0]} -> {got}, seen as {seen}"
