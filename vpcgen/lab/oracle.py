"""What the site says should happen to a flow: the one model of forwarding and filtering.

Pure (no root, no I/O): built from a site.json document, it decides a flow (where it starts, the
destination address as the sender wrote it, the protocol, the port or ICMP type) → delivered or
not, to which endpoint, seen from which source address, and why. The semantics are CloudStack's,
as the generated rules implement them:

- ACL lists are first match by rule number; what no rule matches is denied. An ingress rule's
  CIDRs are sources, an egress rule's destinations. Inside a tier nothing is filtered.
- Leaving a tier, the tier's egress list decides first, before any NAT and before the
  destination's lists; then the destination: another tier's ingress list, a private gateway's
  egress list, a VPN tunnel (its local networks), or the internet (source NAT: the static NAT
  address of a host that has one, else the VPC's source NAT address).
- From the internet, destination NAT is applied first (static NAT, port forwarding with its port
  mapping, a load balancer's listener); the target tier's ingress list then decides on the
  translated address and port (a load balancer: on the members' port).
- From a VPN peer's network or a remote-access client, the tier's ingress list decides; from a
  private gateway, the gateway's ingress list and then the tier's ingress list.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .plan import PROBE_TCP_PORT, PROBE_UDP_PORT

NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
ECHO_REQUEST = 8


@dataclass(frozen=True)
class Endpoint:
    kind: str  # tier | internet | peer | client | gateway | lb
    vpc: str = ""
    name: str = ""  # tier, peer, gateway or load balancer name
    address: str = ""


@dataclass(frozen=True)
class Flow:
    source: Endpoint  # with the sender's own address
    destination: str  # as the sender writes it (a public address before NAT)
    protocol: str | int  # tcp, udp, icmp or an IP protocol number
    port: int | None = None  # tcp/udp destination port
    icmp_type: int | None = ECHO_REQUEST
    icmp_code: int | None = 0


@dataclass(frozen=True)
class Match:
    """One list's decision: the rule number that matched, or None for the default deny."""
    list: str  # the ACL's name
    traffic: str  # ingress | egress
    rule: int | None
    allowed: bool


@dataclass(frozen=True)
class Verdict:
    delivered: bool
    to: Endpoint | None  # where the flow ends up (after NAT)
    address: str = ""  # destination address after NAT
    port: int | None = None  # destination port after NAT
    seen_as: str = ""  # the source address the destination sees (after source NAT)
    matches: tuple[Match, ...] = ()
    nat: tuple[str, ...] = ()  # the NAT that applied, e.g. "port forwarding www tcp/2222 -> 10.10.0.20:22"
    why: str = ""

    @property
    def rules(self) -> tuple[tuple[str, str, int | None], ...]:
        return tuple((m.list, m.traffic, m.rule) for m in self.matches)


def _ip(a: str):
    return ipaddress.ip_address(a.split("/")[0])


def _in(address: str, cidrs) -> bool:
    return any(_ip(address) in ipaddress.ip_network(c) for c in cidrs)


def rule_matches(rule: dict, protocol: str | int, port: int | None, address: str,
                 icmp_type: int | None = ECHO_REQUEST, icmp_code: int | None = 0) -> bool:
    """Whether one ACL rule matches (``address``: the source for ingress, destination for egress)."""
    p = rule["protocol"]
    number = NUMBERS.get(protocol, protocol) if isinstance(protocol, str) else protocol
    if p != "all" and NUMBERS.get(p, p) != number:
        return False
    if rule["ports"] and protocol in ("tcp", "udp", 6, 17):
        if port is None or not rule["ports"][0] <= port <= rule["ports"][1]:
            return False
    if number == 1 and p != "all":
        if rule["icmp_type"] is not None and rule["icmp_type"] != icmp_type:
            return False
        if rule["icmp_code"] is not None and rule["icmp_code"] != icmp_code:
            return False
    return _in(address, rule["cidrs"])


def decide(rules: list[dict], traffic: str, protocol: str | int, port: int | None, address: str,
           icmp_type: int | None = ECHO_REQUEST, icmp_code: int | None = 0) -> tuple[bool, int | None]:
    """First match by rule number among the list's ``traffic`` rules; unmatched is denied."""
    for rule in sorted(rules, key=lambda r: r["number"]):
        if rule["traffic"] == traffic and rule_matches(rule, protocol, port, address, icmp_type, icmp_code):
            return rule["action"] == "allow", rule["number"]
    return False, None


def probes(*lists: list[dict]) -> list[tuple[str, int | None]]:
    """(protocol, port) a test host can send that tell the lists' rules apart: each rule's protocol
    and first port, plus a port no rule names (what the default decides)."""
    out = {("tcp", PROBE_TCP_PORT), ("udp", PROBE_UDP_PORT)}
    for rules in lists:
        for rule in rules:
            proto = rule["protocol"]
            if proto in ("tcp", "udp"):
                out.add((proto, rule["ports"][0] if rule["ports"] else PROBE_TCP_PORT))
            elif proto == "icmp":
                out.add(("icmp", None))
            elif proto == "all":
                out |= {("tcp", PROBE_TCP_PORT), ("icmp", None)}
    return sorted(out, key=lambda x: (x[0], x[1] or 0))


@dataclass
class Model:
    site: dict
    _tiers: list = field(init=False)

    def __post_init__(self):
        self._tiers = [(vpc_name, tier_name, ipaddress.ip_network(t["cidr"]))
                       for vpc_name, v in sorted(self.site["vpcs"].items()) for tier_name, t in sorted(v["tiers"].items())]

    # --- where an address is ---------------------------------------------------------------

    def tier_of(self, address: str, vpc: str | None = None) -> tuple[str, str] | None:
        for vpc_name, tier_name, net in self._tiers:
            if vpc in (None, vpc_name) and _ip(address) in net:
                return vpc_name, tier_name
        return None

    def endpoint(self, address: str, vpc: str | None = None) -> Endpoint:
        """The endpoint a sender at ``address`` is: a tier host, or the internet."""
        found = self.tier_of(address, vpc)
        return Endpoint("tier", found[0], found[1], address) if found else Endpoint("internet", address=address)

    def acl(self, vpc: str, tier: str) -> tuple[str, list[dict]]:
        name = self.site["vpcs"][vpc]["tiers"][tier]["acl"]
        return name, self.site["acls"][name]

    def _check(self, acl: str, traffic: str, flow: Flow, port: int | None, address: str) -> Match:
        ok, number = decide(self.site["acls"][acl], traffic, flow.protocol, port, address, flow.icmp_type,
                            flow.icmp_code)
        return Match(acl, traffic, number, ok)

    # --- the decision -------------------------------------------------------------------------

    def decide(self, flow: Flow) -> Verdict:
        kind = flow.source.kind
        if kind == "tier":
            return self._from_tier(flow)
        if kind == "internet":
            return self._from_internet(flow)
        if kind in ("peer", "client", "gateway"):
            return self._into_vpc(flow)
        raise ValueError(f"no flows start at a {kind}")

    def _deliver(self, flow: Flow, matches: list[Match], to: Endpoint, seen_as: str, address: str = "",
                 port: int | None = None, nat: tuple[str, ...] = ()) -> Verdict:
        denied = next((m for m in matches if not m.allowed), None)
        port = flow.port if port is None else port
        address = address or flow.destination
        if denied:
            why = f"{denied.traffic} list {denied.list} " + (f"rule {denied.rule}" if denied.rule is not None
                                                            else "default deny")
            if flow.source.kind == "tier":
                nat = ()  # the egress list decides before source NAT: a denied flow is never translated
            return Verdict(False, None, address, port, seen_as, tuple(matches[:matches.index(denied) + 1]), nat,
                           why)
        return Verdict(True, to, address, port, seen_as, tuple(matches), nat, "allowed")

    def _from_tier(self, flow: Flow) -> Verdict:
        src = flow.source
        v = self.site["vpcs"][src.vpc]
        acl, _ = self.acl(src.vpc, src.name)
        dest = flow.destination
        same = self.tier_of(dest, src.vpc)
        if same and same[1] == src.name:
            return Verdict(True, Endpoint("tier", src.vpc, src.name, dest), dest, flow.port, src.address, (), (),
                           "inside a tier nothing is filtered")
        egress = self._check(acl, "egress", flow, flow.port, dest)  # before NAT, before the destination
        if same:
            dst_acl, _ = self.acl(src.vpc, same[1])
            return self._deliver(flow, [egress, self._check(dst_acl, "ingress", flow, flow.port, src.address)],
                                 Endpoint("tier", src.vpc, same[1], dest), src.address)
        for gw_name, gw in sorted(v["private_gateways"].items()):
            if _in(dest, gw["routes"]):
                return self._deliver(flow, [egress, self._check(gw["acl"], "egress", flow, flow.port, dest)],
                                     Endpoint("gateway", src.vpc, gw_name, dest), src.address)
        for peer_name, peer in sorted(v["vpn_peers"].items()):
            if _in(dest, peer["peer_cidrs"]) and _in(src.address, peer["local_cidrs"]):
                return self._deliver(flow, [egress], Endpoint("peer", src.vpc, peer_name, dest), src.address)
        other = self.tier_of(dest)
        if v["kind"] == "routed" and other and self.site["vpcs"][other[0]]["kind"] == "routed":
            dst_acl, _ = self.acl(*other)
            return self._deliver(flow, [egress, self._check(dst_acl, "ingress", flow, flow.port, src.address)],
                                 Endpoint("tier", other[0], other[1], dest), src.address)
        if dest in v["public_ips"].values():
            return Verdict(False, None, dest, flow.port, src.address, (egress,), (),
                           "the VPC's own public address from inside (hairpin) is not modelled")
        seen, nat = src.address, ()
        if v["kind"] == "nat":
            statics = {private: public for public, private in v["static_nat"].items()}
            public = statics.get(src.address, "source-nat")
            seen = v["public_ips"].get(public, "")
            nat = (f"{'static NAT ' + public if public != 'source-nat' else 'source NAT'} -> {seen}",)
        return self._deliver(flow, [egress], Endpoint("internet", address=dest), seen, nat=nat)

    def _from_internet(self, flow: Flow) -> Verdict:
        dest, src = flow.destination, flow.source
        for vpc_name, v in sorted(self.site["vpcs"].items()):
            names = {a: n for n, a in v["public_ips"].items()}
            if dest not in names:
                continue
            public = names[dest]
            if public in v["static_nat"]:
                private = v["static_nat"][public]
                return self._to_tier(flow, vpc_name, private, flow.port, (f"static NAT {public} -> {private}",))
            for pf in v["port_forwarding"]:
                low, high = pf["public_port"]
                if pf["public_ip"] == public and flow.protocol == pf["protocol"] and flow.port is not None \
                        and low <= flow.port <= high:
                    port = pf["private_port"][0] + (flow.port - low)
                    return self._to_tier(flow, vpc_name, pf["private_ip"], port,
                                         (f"port forwarding {public} {pf['protocol']}/{flow.port} -> "
                                          f"{pf['private_ip']}:{port}",))
            for lb_name, lb in sorted(v["load_balancers"].items()):
                if lb["public_ip"] == public and flow.protocol == "tcp" and flow.port == lb["public_port"]:
                    tier = self.tier_of(lb["members"][0], vpc_name)
                    acl, _ = self.acl(*tier)
                    match = self._check(acl, "ingress", flow, lb["private_port"], src.address)
                    return self._deliver(flow, [match], Endpoint("lb", vpc_name, lb_name, dest), src.address,
                                         port=lb["private_port"], nat=(f"load balancer {lb_name}",))
            return Verdict(False, None, dest, flow.port, src.address, (), (), f"no NAT rule for {dest}")
        other = self.tier_of(dest)
        if other and self.site["vpcs"][other[0]]["kind"] == "routed":
            return self._to_tier(flow, other[0], dest, flow.port, ())
        return Verdict(False, None, dest, flow.port, src.address, (), (), f"{dest} is not reachable from the internet")

    def _to_tier(self, flow: Flow, vpc: str, address: str, port: int | None, nat: tuple[str, ...]) -> Verdict:
        tier = self.tier_of(address, vpc)
        if tier is None:
            return Verdict(False, None, address, port, flow.source.address, (), nat, f"{address} is in no tier of {vpc}")
        acl, _ = self.acl(*tier)
        match = self._check(acl, "ingress", flow, port, flow.source.address)
        return self._deliver(flow, [match], Endpoint("tier", vpc, tier[1], address), flow.source.address,
                             address, port, nat)

    def _into_vpc(self, flow: Flow) -> Verdict:
        src, dest = flow.source, flow.destination
        v = self.site["vpcs"][src.vpc]
        tier = self.tier_of(dest, src.vpc)
        if tier is None:
            return Verdict(False, None, dest, flow.port, src.address, (), (), f"{dest} is in no tier of {src.vpc}")
        matches = []
        if src.kind == "peer":
            peer = v["vpn_peers"][src.name]
            if not (_in(src.address, peer["peer_cidrs"]) and _in(dest, peer["local_cidrs"])):
                return Verdict(False, None, dest, flow.port, src.address, (), (),
                               f"outside the tunnel {src.name}'s networks")
        elif src.kind == "gateway":
            matches.append(self._check(v["private_gateways"][src.name]["acl"], "ingress", flow, flow.port, src.address))
        acl, _ = self.acl(*tier)
        matches.append(self._check(acl, "ingress", flow, flow.port, src.address))
        return self._deliver(flow, matches, Endpoint("tier", src.vpc, tier[1], dest), src.address)

    # --- choosing who probes --------------------------------------------------------------------

    def pick_source(self, candidates: list[Endpoint], destination: str, services: list[tuple[str, int | None]],
                    kind: str | None = None) -> tuple[Endpoint | None, bool]:
        """A candidate from which every (protocol, port) to ``destination`` is delivered (to an endpoint
        of ``kind`` when given): (it, True). With none, the first candidate and False: the traffic is
        denied from everywhere, which is then what to expect."""
        for source in candidates:
            verdicts = [self.decide(Flow(source, destination, proto, port)) for proto, port in services]
            if all(x.delivered and (kind is None or x.to.kind == kind) for x in verdicts):
                return source, True
        return (candidates[0] if candidates else None), False
