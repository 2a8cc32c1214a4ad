"""What the site says should happen to a flow: the one model of forwarding and filtering.

Pure (no root, no I/O): built from a site.json document. A flow starts at a source (a tier host,
the internet, a VPN peer's network, a remote-access client, a private gateway's network) and
takes one *route*, chosen by its destination as the sender wrote it (and, for a VPN, its
source: the tunnel's selectors). A route is the list of *stages* (ACL lists) the flow crosses
and the NAT that applies; the flow is delivered when every stage allows it. The semantics are
CloudStack's, as the generated rules implement them:

- ACL lists are first match by rule number; what no rule matches is denied. An ingress rule's
  CIDRs are sources, an egress rule's destinations. Inside a tier nothing is filtered.
- Leaving a tier, the tier's egress list decides first, before any NAT and before the
  destination's lists; then the destination: another tier's ingress list, a private gateway's
  egress list, a VPN tunnel (its local networks), a remote-access client, a tier of a routed VPC
  of the same zone (its ingress list), or the internet (source NAT: the static NAT address of a
  host that has one, else the VPC's source NAT address). The site's other networks and its
  public addresses (hairpin) are not the internet: a tier reaches them no other way.
- From the internet, destination NAT is applied first (static NAT, port forwarding with its port
  mapping, a load balancer's listener, judged like a port forward to its members); the target
  tier's ingress list then decides on the translated port. A routed VPC's tiers, and a NAT VPC's
  public tiers, are reached directly, through their ingress list (a public tier's hosts also leave
  with their own addresses: no source NAT).
- From a VPN peer's network (inside the tunnel's selectors) or a remote-access client, the tier's
  ingress list decides; from a private gateway, the gateway's ingress list and then the tier's.

Routes and stages work on sets of flows (``boxes``): deciding one flow evaluates them on a set of
one, and the symbolic comparison of two revisions evaluates the very same code on whole sets.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import lru_cache

from . import boxes as bx
from .boxes import DST, PORTS, SRC, Box

NUMBERS = bx.NUMBERS
ECHO_REQUEST = 8
PROBE_TCP_PORT = 7777  # named by no ACL rule of the lab's sites: what a default deny decides
PROBE_UDP_PORT = 7777


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


@dataclass(frozen=True)
class Stage:
    """An ACL list a flow crosses. ``offset``: the port it is asked about is the written port plus
    this (port forwarding to a shifted range, a load balancer's member port)."""
    acl: str
    traffic: str  # ingress: the list's CIDRs are sources; egress: destinations (as written)
    offset: int = 0
    source: int | None = None  # the source address the list sees, when NAT rewrote it (an integer)


@dataclass(frozen=True)
class Route:
    """The flows (from one source) that take one path, where they end and what they cross."""
    region: tuple[Box, ...]
    to: Endpoint | None  # None: not delivered anywhere
    label: str = ""  # the endpoint as reachability entries name it: internet, VPC/TIER, VPC/vpn:NAME, ...
    stages: tuple[Stage, ...] = ()
    nat: str = ""  # the destination NAT that applies
    private: str = ""  # the address after destination NAT ("" when none)
    offset: int = 0  # port after destination NAT = written port + offset
    snat: bool = False  # leaves a NAT VPC through its uplink: source NAT
    public: str = ""  # the public IP's name, with destination NAT
    why: str = ""  # not delivered: why
    in_scope: bool = True  # False: outside what the site forwards (inside a tier, hairpin)
    # (dimension, intervals): the region also needs that dimension inside these intervals (the
    # internet's addresses: thousands of holes on a large site, so kept apart from the boxes)
    within: tuple | None = None

    def holds(self, flow: Box) -> bool:
        if not bx.contains(list(self.region), flow):
            return False
        return self.within is None or bx.inside(flow[self.within[0]][0], self.within[1])


# --- one ACL list over a set of flows -------------------------------------------------------

def rule_region(rule: dict, traffic: str, offset: int = 0) -> list[Box]:
    """The flows one rule matches (as written: ports shifted back by ``offset``)."""
    p = rule["protocol"]
    dims: dict = {}
    if p != "all":
        number = NUMBERS.get(p, p)
        dims["proto"] = (number, number)
        if rule.get("ports") and number in (bx.TCP, bx.UDP):
            lo, hi = max(PORTS[0], rule["ports"][0] - offset), min(PORTS[1], rule["ports"][1] - offset)
            if lo > hi:
                return []
            dims["port"] = (lo, hi)
        if number == bx.ICMP_PROTO and p == "icmp":
            if rule.get("icmp_type") is not None:
                dims["itype"] = (rule["icmp_type"],) * 2
            if rule.get("icmp_code") is not None:
                dims["icode"] = (rule["icmp_code"],) * 2
    where = "src" if traffic == "ingress" else "dst"
    return [bx.box(**dims, **{where: bx.cidr(c)}) for c in rule.get("cidrs") or ["0.0.0.0/0"]]


@lru_cache(maxsize=4096)
def _compiled(rules_key: tuple, traffic: str, offset: int) -> tuple:
    rules = [dict(r) for r in rules_key]
    out = []
    for rule in sorted(rules, key=lambda r: r["number"]):
        if rule["traffic"] == traffic:
            out.append((rule["number"], rule["action"] == "allow", tuple(rule_region(rule, traffic, offset))))
    return tuple(out)


def _key(rules: list[dict]) -> tuple:
    return tuple(tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in r.items())) for r in rules)


def first_match(rules: list[dict], traffic: str, flows: list[Box], offset: int = 0
                ) -> list[tuple[int | None, bool, list[Box]]]:
    """Split ``flows`` by the rule that decides them: (rule number or None for the default deny,
    allowed, flows). First match by number among the list's ``traffic`` rules."""
    out = []
    rest = flows
    for number, allow, region in _compiled(_key(rules), traffic, offset):
        if not rest:
            break
        hit = bx.meet(rest, list(region))
        if hit:
            out.append((number, allow, hit))
            rest = bx.minus(rest, list(region))
    if rest:
        out.append((None, False, rest))
    return out


def _point(protocol: str | int, port: int | None, address: str, traffic: str, icmp_type, icmp_code) -> Box:
    number = NUMBERS.get(protocol, protocol) if isinstance(protocol, str) else protocol
    a = bx.ip(address)
    return bx.point(a if traffic == "ingress" else 0, a if traffic == "egress" else 0, number,
                    port, icmp_type, icmp_code)


def rule_matches(rule: dict, protocol: str | int, port: int | None, address: str,
                 icmp_type: int | None = ECHO_REQUEST, icmp_code: int | None = 0) -> bool:
    """Whether one ACL rule matches (``address``: the source for ingress, destination for egress)."""
    p = _point(protocol, port, address, rule["traffic"], icmp_type, icmp_code)
    return bx.contains(rule_region(rule, rule["traffic"]), p)


def decide(rules: list[dict], traffic: str, protocol: str | int, port: int | None, address: str,
           icmp_type: int | None = ECHO_REQUEST, icmp_code: int | None = 0) -> tuple[bool, int | None]:
    """First match by rule number among the list's ``traffic`` rules; unmatched is denied."""
    number, allowed, _ = first_match(rules, traffic, [_point(protocol, port, address, traffic, icmp_type,
                                                              icmp_code)])[0]
    return allowed, number


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


# --- the site ---------------------------------------------------------------------------------

def _cidrs(texts) -> list[tuple[int, int]]:
    return [bx.cidr(c) for c in texts]


def _dst(intervals) -> list[Box]:
    return [bx.box(dst=i) for i in intervals]


def label(e: Endpoint, site: dict | None = None) -> str:
    """An endpoint as reachability entries name it."""
    if e.kind == "internet":
        return "internet"
    if e.kind == "tier":
        return f"{e.vpc}/{e.name}"
    if e.kind == "peer":
        return f"{e.vpc}/vpn:{e.name}"
    if e.kind == "client":
        return f"{e.vpc}/remote-access"
    if e.kind == "gateway":
        return f"{e.vpc}/pg:{e.name}"
    raise ValueError(e.kind)


@dataclass
class Model:
    site: dict
    hairpin: tuple = ()  # more addresses to treat as the site's own public ones (the other revision's)
    _tiers: list = field(init=False, repr=False)
    _routes: dict = field(init=False, repr=False, default_factory=dict)
    _memo: dict = field(init=False, repr=False, default_factory=dict)  # site-wide address sets

    def __post_init__(self):
        self.site.setdefault("vpcs", {})
        self.site.setdefault("acls", {})
        self._tiers = None

    # --- where an address is ---------------------------------------------------------------

    def tier_of(self, address: str, vpc: str | None = None) -> tuple[str, str] | None:
        if self._tiers is None:
            self._tiers = [(vpc_name, tier_name, bx.cidr(t["cidr"])) for vpc_name, v in sorted(self.site["vpcs"].items())
                           for tier_name, t in sorted(v["tiers"].items())]
        a = bx.ip(address)
        for vpc_name, tier_name, (lo, hi) in self._tiers:
            if vpc in (None, vpc_name) and lo <= a <= hi:
                return vpc_name, tier_name
        return None

    def endpoint(self, address: str, vpc: str | None = None) -> Endpoint:
        """The endpoint a sender at ``address`` is: a tier host, or the internet."""
        found = self.tier_of(address, vpc)
        return Endpoint("tier", found[0], found[1], address) if found else Endpoint("internet", address=address)

    def acl(self, vpc: str, tier: str) -> tuple[str, list[dict]]:
        name = self.site["vpcs"][vpc]["tiers"][tier]["acl"]
        return name, self.site["acls"][name]

    def site_networks(self) -> list[tuple[int, int]]:
        """Every address that is not the internet: tiers, VPN peer networks, remote-access pools,
        private gateways' routes."""
        if "networks" not in self._memo:
            self._memo["networks"] = self._site_networks()
        return self._memo["networks"]

    def _site_networks(self) -> list[tuple[int, int]]:
        out = []
        for v in self.site["vpcs"].values():
            out += _cidrs(t["cidr"] for t in v["tiers"].values())
            out += _cidrs(c for p in v["vpn_peers"].values() for c in p["peer_cidrs"])
            out += _cidrs(r for g in v["private_gateways"].values() for r in g["routes"])
            if v.get("remote_access"):
                out.append(bx.cidr(v["remote_access"]["pool"]))
        return bx.normalize(out)

    def internet(self) -> list[tuple[int, int]]:
        if "internet" not in self._memo:
            self._memo["internet"] = bx.complement(self.site_networks())
        return self._memo["internet"]

    def public_addresses(self) -> list[tuple[int, int]]:
        if "public" not in self._memo:
            self._memo["public"] = bx.normalize((bx.ip(a), bx.ip(a)) for v in self.site["vpcs"].values()
                                                for a in v["public_ips"].values())
        return self._memo["public"]

    def sources(self) -> list[Endpoint]:
        """Every endpoint flows start at (the internet first)."""
        out = [Endpoint("internet")]
        for vpc_name, v in sorted(self.site["vpcs"].items()):
            out += [Endpoint("tier", vpc_name, t) for t in sorted(v["tiers"])]
            out += [Endpoint("peer", vpc_name, p) for p in sorted(v["vpn_peers"])]
            if v.get("remote_access"):
                out.append(Endpoint("client", vpc_name))
            out += [Endpoint("gateway", vpc_name, g) for g in sorted(v["private_gateways"])]
        return out

    def source_addresses(self, source: Endpoint) -> list[tuple[int, int]]:
        """The addresses flows from ``source`` start at."""
        if source.kind == "internet":
            return self.internet()
        v = self.site["vpcs"][source.vpc]
        if source.kind == "tier":
            return [bx.cidr(v["tiers"][source.name]["cidr"])]
        if source.kind == "peer":
            return bx.normalize(_cidrs(v["vpn_peers"][source.name]["peer_cidrs"]))
        if source.kind == "client":
            return [bx.cidr(v["remote_access"]["pool"])]
        if source.kind == "gateway":
            return bx.normalize(_cidrs(v["private_gateways"][source.name]["routes"]))
        raise ValueError(f"no flows start at a {source.kind}")

    # --- routes -------------------------------------------------------------------------------

    def routes(self, source: Endpoint, vpc: str | None = None) -> list[Route]:
        """The routes of flows from ``source`` (its kind, VPC and name; not its address), in order:
        a flow takes the first whose region holds it. From the internet: into ``vpc`` only, when given."""
        key = (source.kind, source.vpc, source.name, vpc)
        if key not in self._routes:
            if source.kind == "tier":
                routes = self._from_tier(source.vpc, source.name)
            elif source.kind == "internet":
                routes = [r for name in sorted(self.site["vpcs"]) if vpc in (None, name)
                          for r in self._from_internet(name)]
            elif source.kind in ("peer", "client", "gateway"):
                routes = self._into_vpc(source)
            else:
                raise ValueError(f"no flows start at a {source.kind}")
            self._routes[key] = routes
        return self._routes[key]

    def _tier_routes(self, vpc: str, tiers: list[str], stages_before: tuple[Stage, ...], region: list[Box],
                     offset: int = 0, extra: list[Box] | None = None) -> list[Route]:
        out = []
        v = self.site["vpcs"][vpc]
        for name in tiers:
            t = v["tiers"][name]
            r = bx.meet(region, _dst([bx.cidr(t["cidr"])]))
            if extra is not None:
                r = bx.meet(r, extra)
            if r:
                out.append(Route(tuple(r), Endpoint("tier", vpc, name), f"{vpc}/{name}",
                                 stages_before + (Stage(t["acl"], "ingress", offset),)))
        return out

    def _from_tier(self, vpc: str, tier: str) -> list[Route]:
        v = self.site["vpcs"][vpc]
        egress = Stage(v["tiers"][tier]["acl"], "egress")
        out: list[Route] = []
        taken: list[tuple[int, int]] = []  # destinations already routed (sorted, disjoint)
        selectors: list[Box] = []  # flows already routed by their source too (VPN tunnels)

        def carve(intervals) -> list[Box]:
            """Destinations not routed yet (a site has many tiers: bisect, not box arithmetic)."""
            pieces = []
            for lo, hi in intervals:
                i = max(0, bisect.bisect_right(taken, (lo, 2**33)) - 1)
                at = lo
                while i < len(taken) and taken[i][0] <= hi:
                    if taken[i][1] >= at:
                        if taken[i][0] > at:
                            pieces.append((at, taken[i][0] - 1))
                        at = taken[i][1] + 1
                    i += 1
                if at <= hi:
                    pieces.append((at, hi))
            return bx.minus(_dst(pieces), selectors)

        def add(intervals, sources=None, **kw) -> None:
            region = carve(intervals)
            if not region:
                return
            for src, stages, snat in sources or [(None, kw.pop("stages", ()), kw.pop("snat", False))]:
                part = region if src is None else bx.meet(region, src)
                if part:
                    out.append(Route(tuple(part), stages=stages, snat=snat, **kw))
            for b in region:
                if b[SRC] == bx.ADDRESSES:
                    bisect.insort(taken, b[DST])
                else:
                    selectors.append(b)

        add([bx.cidr(v["tiers"][tier]["cidr"])], to=Endpoint("tier", vpc, tier), label=f"{vpc}/{tier}",
            in_scope=False, why="inside a tier nothing is filtered")
        for name, t in sorted(v["tiers"].items()):
            if name != tier:
                add([bx.cidr(t["cidr"])], to=Endpoint("tier", vpc, name), label=f"{vpc}/{name}",
                    stages=(egress, Stage(t["acl"], "ingress")))
        for name, g in sorted(v["private_gateways"].items()):
            add(_cidrs(g["routes"]), to=Endpoint("gateway", vpc, name), label=f"{vpc}/pg:{name}",
                stages=(egress, Stage(g["acl"], "egress")))
        for name, p in sorted(v["vpn_peers"].items()):
            region = bx.minus([bx.box(src=s, dst=d) for s in _cidrs(p["local_cidrs"]) for d in _cidrs(p["peer_cidrs"])],
                              selectors)
            region = [piece for b in region for piece in
                      bx.meet([b], carve([b[DST]]))]  # not what a tier or private gateway took
            if region:
                out.append(Route(tuple(region), Endpoint("peer", vpc, name), f"{vpc}/vpn:{name}", (egress,)))
                selectors.extend(region)
        if v.get("remote_access"):
            add([bx.cidr(v["remote_access"]["pool"])], to=Endpoint("client", vpc), label=f"{vpc}/remote-access",
                stages=(egress,))
        # a routed VPC's tiers: from the routed VPCs of its zone through the core, from anywhere else
        # through the internet (a NAT VPC's hosts then seen as their source NAT address)
        seen: list[tuple[list[Box] | None, int | None]] = [(None, None)]
        public_tier = v["tiers"][tier].get("public", False)  # routed, never NATed: seen as itself
        if v["kind"] == "nat" and not public_tier:
            hosts = {private: public for public, private in v["static_nat"].items()}
            seen = [([bx.box(src=(bx.ip(h), bx.ip(h)))], bx.ip(v["public_ips"][p])) for h, p in sorted(hosts.items())]
            snat = v["public_ips"].get("source-nat")
            seen.append((bx.minus([bx.FULL], [b for r, _ in seen for b in r]), bx.ip(snat) if snat else None))
        for other, w in sorted(self.site["vpcs"].items()):
            if other != vpc and w["kind"] == "routed":
                for name, t in sorted(w["tiers"].items()):
                    add([bx.cidr(t["cidr"])], [(src, (egress, Stage(t["acl"], "ingress", 0, address)),
                                                address is not None) for src, address in seen],
                        to=Endpoint("tier", other, name), label=f"{other}/{name}")
        rest = carve([bx.ADDRESSES])
        public = bx.normalize(self.public_addresses() + list(self.hairpin))
        out.append(Route(tuple(rest), Endpoint("internet"), "internet", (egress,),
                         snat=v["kind"] == "nat" and not public_tier,
                         within=(DST, tuple(bx.difference(self.internet(), public)))))
        out.append(Route(tuple(rest), None, in_scope=False, within=(DST, tuple(public)),
                         why="the site's own public addresses from inside (hairpin) are not modelled"))
        out.append(Route(tuple(rest), None, why=f"another network of the site, not reachable from {vpc}"))
        return out

    def _from_internet(self, vpc: str) -> list[Route]:
        v = self.site["vpcs"][vpc]
        out: list[Route] = []
        if v["kind"] == "routed":
            return self._tier_routes(vpc, sorted(v["tiers"]), (), [bx.FULL])
        # public tiers are routed from the internet, through their ingress lists only
        out += self._tier_routes(vpc, sorted(n for n, t in v["tiers"].items() if t.get("public")), (), [bx.FULL])
        for public, address in sorted(v["public_ips"].items()):
            a = bx.ip(address)
            whole = bx.box(dst=(a, a))
            taken: list[Box] = []
            targets = []  # (region, private address, offset, nat text, endpoint)
            if public in v["static_nat"]:
                private = v["static_nat"][public]
                targets.append(([whole], private, 0, f"static NAT {public} -> {private}", None))
            for pf in v["port_forwarding"]:
                if pf["public_ip"] != public:
                    continue
                (low, high), (plow, _) = pf["public_port"], pf["private_port"]
                number = NUMBERS[pf["protocol"]]
                region = [bx.box(dst=(a, a), proto=(number, number), port=(low, high))]
                ports = f"{low}" if low == high else f"{low}-{high}"
                private = pf["private_ip"]
                to_ports = f"{plow}" if low == high else f"{plow}-{plow + high - low}"
                targets.append((region, private, plow - low,
                                f"port forwarding {public} {pf['protocol']}/{ports} -> {private}:{to_ports}", None))
            for name, lb in sorted(v["load_balancers"].items()):
                if lb["public_ip"] != public:
                    continue
                region = [bx.box(dst=(a, a), proto=(bx.TCP, bx.TCP), port=(lb["public_port"],) * 2)]
                targets.append((region, lb["members"][0], lb["private_port"] - lb["public_port"],
                                f"load balancer {name} tcp/{lb['public_port']} -> "
                                f"{', '.join(lb['members'])}:{lb['private_port']}", Endpoint("lb", vpc, name)))
            for region, private, offset, nat, lb in targets:
                region = bx.minus(region, taken)
                found = self.tier_of(private, vpc)
                if not region or found is None:
                    continue
                t = v["tiers"][found[1]]
                out.append(Route(tuple(region), lb or Endpoint("tier", vpc, found[1]), f"{vpc}/{found[1]}",
                                 (Stage(t["acl"], "ingress", offset),), nat, private, offset, public=public))
                taken.extend(region)
            rest = bx.minus([whole], taken)
            if rest:
                out.append(Route(tuple(rest), None, why=f"no NAT rule for {address}"))
        return out

    def _into_vpc(self, source: Endpoint) -> list[Route]:
        v = self.site["vpcs"][source.vpc]
        tiers = sorted(v["tiers"])
        if source.kind == "peer":
            peer = v["vpn_peers"][source.name]
            selectors = [bx.box(src=s, dst=d) for s in _cidrs(peer["peer_cidrs"]) for d in _cidrs(peer["local_cidrs"])]
            out = self._tier_routes(source.vpc, tiers, (), selectors)
            why = f"outside the tunnel {source.name}'s networks"
        elif source.kind == "gateway":
            out = self._tier_routes(source.vpc, tiers, (Stage(v["private_gateways"][source.name]["acl"], "ingress"),),
                                    [bx.FULL])
            why = f"not a tier of {source.vpc}"
        else:
            out = self._tier_routes(source.vpc, tiers, (), [bx.FULL])
            why = f"not a tier of {source.vpc}"
        rest = bx.minus([bx.FULL], [b for r in out for b in r.region])
        return out + ([Route(tuple(rest), None, why=why)] if rest else [])

    # --- crossing the stages --------------------------------------------------------------------

    def cross(self, stages: tuple[Stage, ...], flows: list[Box]) -> list[tuple[tuple[Match, ...], list[Box], bool]]:
        """Run ``flows`` through the stages: (the lists' decisions, the flows they decided, delivered)."""
        out = []
        pending: list[tuple[tuple[Match, ...], list[Box]]] = [((), flows)]
        for stage in stages:
            nxt = []
            for matches, part in pending:
                for number, allowed, hit in self._stage(stage, part):
                    m = matches + (Match(stage.acl, stage.traffic, number, allowed),)
                    (nxt.append((m, hit)) if allowed else out.append((m, hit, False)))
            pending = nxt
        return out + [(m, part, True) for m, part in pending]

    def _stage(self, stage: Stage, flows: list[Box]) -> list[tuple[int | None, bool, list[Box]]]:
        rules = self.site["acls"][stage.acl]
        if stage.source is None:
            return first_match(rules, stage.traffic, flows, stage.offset)
        out: dict = {}
        a = stage.source
        for b in flows:  # the list sees one source address: decide on it, keep the flows' own
            for number, allowed, hit in first_match(rules, stage.traffic, [((a, a),) + b[1:]], stage.offset):
                out.setdefault((number, allowed), []).extend((b[0],) + h[1:] for h in hit)
        return [(n, ok, part) for (n, ok), part in out.items()]

    def delivered(self, route: Route, flows: list[Box]) -> list[Box]:
        """The flows of ``flows`` (inside the route's region) the route delivers."""
        if route.to is None:
            return []
        return [b for _, part, ok in self.cross(route.stages, flows) if ok for b in part]

    # --- one flow ---------------------------------------------------------------------------------

    def decide(self, flow: Flow) -> Verdict:
        src = flow.source
        if src.kind not in ("tier", "internet", "peer", "client", "gateway"):
            raise ValueError(f"no flows start at a {src.kind}")
        number = NUMBERS.get(flow.protocol, flow.protocol) if isinstance(flow.protocol, str) else flow.protocol
        here = bx.point(bx.ip(src.address) if src.address else 0, bx.ip(flow.destination), number, flow.port,
                        flow.icmp_type, flow.icmp_code)
        dest = flow.destination
        route = next((r for r in self.routes(src) if r.holds(here)), None)
        if route is None:
            why = f"{dest} is not reachable from the internet" if src.kind == "internet" else f"no route to {dest}"
            return Verdict(False, None, dest, flow.port, src.address, (), (), why)
        address = route.private or dest
        port = flow.port + route.offset if flow.port is not None and route.offset else flow.port
        nat = (route.nat,) if route.nat else ()
        if route.to is not None and route.to.kind == "lb":
            address, nat = dest, (f"load balancer {route.to.name}",)
        elif route.nat.startswith("port forwarding"):
            nat = (f"port forwarding {route.public} {flow.protocol}/{flow.port} -> {route.private}:{port}",)
        if route.to is None:
            return Verdict(False, None, address, port, src.address, (), nat, route.why)
        if not route.in_scope:
            return Verdict(True, Endpoint(route.to.kind, route.to.vpc, route.to.name, address), address, port,
                           src.address, (), nat, route.why)
        (matches, _, ok), = self.cross(route.stages, [here])[:1]
        seen = src.address
        if route.snat:
            v = self.site["vpcs"][src.vpc]
            statics = {private: public for public, private in v["static_nat"].items()}
            public = statics.get(src.address, "source-nat")
            seen = v["public_ips"].get(public, "")
            nat = (f"{'static NAT ' + public if public != 'source-nat' else 'source NAT'} -> {seen}",)
        to = Endpoint(route.to.kind, route.to.vpc, route.to.name,
                      address if route.to.kind != "lb" else dest) if route.to.kind != "internet" \
            else Endpoint("internet", address=dest)
        if not ok:
            denied = matches[-1]
            why = f"{denied.traffic} list {denied.list} " + (f"rule {denied.rule}" if denied.rule is not None
                                                            else "default deny")
            if src.kind == "tier":
                nat = ()  # the egress list decides before source NAT: a denied flow is never translated
            return Verdict(False, None, address, port, seen, matches, nat, why)
        return Verdict(True, to, address, port, seen, matches, nat, "allowed")

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


__all__ = ["ECHO_REQUEST", "NUMBERS", "Endpoint", "Flow", "Match", "Model", "Route", "Stage", "Verdict",
           "decide", "first_match", "label", "probes", "rule_matches", "rule_region"]
