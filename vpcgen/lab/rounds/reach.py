"""Round reach: the model's allowed sets probed at their edges.

For every class of flows the model delivers from a lab VPC's tiers and from the internet into it
(vpcgen.reach.symbolic.delivered: per (from, to), boxes over source, destination, protocol, port,
ICMP type), real lab nodes send one flow inside each box and the flows just outside it: the next
port on either side, another protocol, the nearest lab address across the source or destination
edge. Each answer is compared with the model's verdict on that very flow (an inside flow must be
delivered by the model too: the symbolic sets and the one-flow decision are the same code).
Bounded (BOXES per class, PROBES per round): a denied probe waits for its timeout. The internet is
the zone's public side for a NAT VPC and the network behind the OSPF core for a routed one (what
the VPC's tiers route to); an HTTP load balancer is sent a request, as a client would.
"""

from __future__ import annotations

from ...reach import boxes as bx
from ...reach.boxes import DST, ICODE, ITYPE, PORT, PROTO, SRC
from ...reach.model import ECHO_REQUEST, PROBE_TCP_PORT, Endpoint, Flow
from ...reach.symbolic import delivered
from ..plan import internet_sources
from .context import HTTP_GET

BOXES = 3  # per (from, to) class
PROBES = 120  # per round, shared out class by class
PROTOCOLS = (("tcp", bx.TCP), ("udp", bx.UDP), ("icmp", bx.ICMP_PROTO))
REFUSED = "FAILED ConnectionRefusedError"  # a host's RST: routers only ever drop


def run(t) -> None:
    classes = []  # (vpc, label, probes)
    for vpc in sorted(t.vpcs):
        if t.vpcs[vpc]["kind"] == "routed":
            t.core_routes(vpc)  # the internet reaches a routed VPC once the core has learned it
        for (frm, to), flows in sorted(delivered(t.model, vpc).items()):
            senders = _senders(t, vpc, frm)
            if senders:
                boxes = sorted(flows.boxes, key=lambda b: (b[PROTO], b[PORT], b[DST], b[SRC]))
                classes.append((vpc, f"{frm} -> {to}", _probes(t, vpc, senders, boxes)))
    chosen: list[list[tuple]] = [[] for _ in classes]
    seen, left = set(), PROBES
    for depth in range(max((len(c[2]) for c in classes), default=0)):  # round-robin: every class gets some
        for i, (_, _, probes) in enumerate(classes):
            if left and depth < len(probes) and probes[depth][:5] not in seen:
                seen.add(probes[depth][:5])
                chosen[i].append(probes[depth])
                left -= 1
    flat = [p for c in chosen for p in c]
    answers = dict(zip((p[:5] for p in flat), t.parallel([p[:5] + (p[8],) for p in flat])))
    for (vpc, name, _), probes in zip(classes, chosen):
        if probes:
            t.check(f"reach {vpc}", name, lambda ps=probes: _judge(ps, answers))


def _judge(probes: list[tuple], answers: dict) -> tuple[bool, str]:
    bad = []
    for probe in probes:
        (node, dest, port, proto, source), where, verdict, want = probe[:5], probe[5], probe[6], probe[7]
        got = answers[probe[:5]]
        reached = not got.startswith("FAILED") or (proto == "tcp" and got == REFUSED)
        ok = (reached and (got in want or got in ("ICMP-OK", REFUSED))) if verdict.delivered else not reached
        if where == "inside" and not verdict.delivered:
            ok = False  # the symbolic set holds a flow the one-flow decision denies
        if not ok:
            model = f"delivered to {'/'.join(sorted(want))}" if verdict.delivered else f"denied ({verdict.why})"
            bad.append(f"{where}: {node}{' as ' + source if source else ''} -> {dest} {proto}/{port}: model "
                       f"{model}, got {got}")
    inside = sum(p[5] == "inside" for p in probes)
    return not bad, "; ".join(bad) or f"{inside} inside and {len(probes) - inside} just outside, as the model decides"


def _senders(t, vpc: str, frm: str) -> list[tuple[str, str, str]]:
    """(node, address, source to bind) the class's flows can start from: tier hosts, the internet."""
    v = t.vpcs[vpc]
    if frm == "internet":
        node, address = t.internet(vpc)
        addresses = [address]
        if v["kind"] != "routed":  # the public side holds an address in each source network an ACL names
            addresses += [a.split("/")[0] for a in internet_sources(t.site, v["zone"])]
        return [(node, a, a) for a in sorted(set(addresses), key=bx.ip)]
    where, _, tier = frm.partition("/")
    if where != vpc or tier not in v["tiers"]:
        return []  # VPN peers, clients and gateways: other rounds' business
    return [(node, address, "") for node, address in t.hosts(vpc, tier)]


def _targets(t, vpc: str, internet: bool) -> list[str]:
    """Addresses flows of the VPC's classes can be sent to, in address order."""
    v = t.vpcs[vpc]
    if internet and v["kind"] == "nat":
        found = set(v["public_ips"].values())
    else:
        found = {h.address for h in t.plan.hosts(vpc)}
        if not internet:
            found.add(t.internet(vpc)[1])
    return sorted(found, key=bx.ip)


def _probes(t, vpc: str, senders: list, boxes: list) -> list[tuple]:
    """Per box, the flow inside it and those just outside: (node, destination, port, proto, source,
    inside|outside, the model's verdict, nodes that may answer, payload)."""
    internet = senders[0][0] == t.internet(vpc)[0]
    targets = _targets(t, vpc, internet)
    out = []
    for b in boxes:
        if len(out) >= BOXES * 6:
            break
        inside = _inside(t, b, senders, targets)
        if inside is None:
            continue
        sender, dest, proto, port = inside
        flows = [("inside", sender, dest, proto, port)]
        if proto != "icmp":
            lo, hi = b[PORT]
            flows += [("outside", sender, dest, proto, p) for p in (lo - 1, hi + 1) if bx.PORTS[0] <= p <= bx.PORTS[1]]
        flows += [("outside", sender, dest, other, None if other == "icmp" else port or PROBE_TCP_PORT)
                  for other, number in PROTOCOLS if not b[PROTO][0] <= number <= b[PROTO][1]]
        across = _nearest([s[1] for s in senders], b[SRC])
        if across:
            flows.append(("outside", next(s for s in senders if s[1] == across), dest, proto, port))
        across = _nearest(targets, b[DST])
        if across:
            flows.append(("outside", sender, across, proto, port))
        for where, (node, address, source), dest, proto, port in flows:
            kept = _observable(t, vpc, internet, node, address, dest, proto, port)
            if kept:
                out.append((node, dest, port, proto, source, where, *kept))
    return out


def _inside(t, b, senders, targets):
    sender = next((s for s in senders if b[SRC][0] <= bx.ip(s[1]) <= b[SRC][1]), None)
    dest = next((d for d in targets if b[DST][0] <= bx.ip(d) <= b[DST][1]), None)
    proto = next((name for name, number in PROTOCOLS if b[PROTO][0] <= number <= b[PROTO][1]), None)
    if sender is None or dest is None or proto is None:
        return None
    if proto == "icmp":
        if not (b[ITYPE][0] <= ECHO_REQUEST <= b[ITYPE][1] and b[ICODE][0] == 0):
            return None  # a lab node only sends echo requests
        return sender, dest, proto, None
    # an edge of the box, else a port inside it the destination host answers on (when it is one)
    host = next((h for h in t.plan.hosts(None) if h.address == dest), None)
    listening = (host.tcp if proto == "tcp" else host.udp) if host else ()
    lo, hi = b[PORT]
    port = next((p for p in (lo, hi, *listening) if lo <= p <= hi and p in listening), lo)
    return sender, dest, proto, port


def _nearest(addresses: list[str], edge: tuple[int, int]) -> str | None:
    """The lab address closest to the interval from outside it."""
    outside = [a for a in addresses if not edge[0] <= bx.ip(a) <= edge[1]]
    return min(outside, key=lambda a: min(abs(bx.ip(a) - edge[0]), abs(bx.ip(a) - edge[1])), default=None)


def _observable(t, vpc: str, internet: bool, node: str, address: str, dest: str, proto: str, port):
    """(verdict, nodes that may answer, payload) when the lab can tell this flow's fate, else None."""
    source = Endpoint("internet", address=address) if internet else t.endpoint(vpc, node)
    verdict = t.model.decide(Flow(source, dest, proto, port))
    if proto == "icmp" and dest in t.vpcs[vpc]["public_ips"].values() and verdict.address == dest:
        return None  # a public address without NAT: the router itself may answer a ping
    to = verdict.to
    want: set[str] = set()
    payload = "hello"
    if to is None:
        pass
    elif to.kind == "internet":
        want = {t.internet(vpc)[0]}
    elif to.kind == "tier":
        want = {t.host_at(to.vpc, verdict.address)} - {None}
    elif to.kind == "lb":
        lb = t.site["vpcs"][to.vpc]["load_balancers"][to.name]
        want = {t.host_at(to.vpc, m) for m in lb["members"]} - {None}
        if lb["protocol"] == "http":
            payload = HTTP_GET  # haproxy in HTTP mode waits for a request and answers a bare payload with 400
    if verdict.delivered and not want:
        return None  # delivered where no lab node answers
    if proto == "udp":  # a closed UDP port and a dropped datagram look alike: only where someone listens
        host = next((h for h in t.plan.hosts(None) if h.address == verdict.address), None)
        if host is None or (verdict.port or 0) not in host.udp:
            return None
    return verdict, want, payload
