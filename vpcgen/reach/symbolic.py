"""What a change does to reachability: the exact sets of flows two revisions deliver, compared.

Each revision's model runs every route of every source on whole sets of flows (unions of boxes
over source, destination as written, protocol, port, ICMP type and code): the stages are the
ones that decide single flows. Per (from, to) endpoint pair, the flows delivered now and not
before are *allowed*, the others *denied*; they are merged into few entries (adjacent and equal
boxes joined dimension by dimension) and written with the fewest CIDRs, using the freedom the
entry's meaning gives: an entry only covers flows from its ``from`` endpoint, so an internet
entry's sources may include addresses that are the internet in neither revision (0.0.0.0/0
rather than its many holes), and a tier's destinations the site's public addresses (hairpin,
outside what the entries speak about).

Only VPCs whose part of the site changed are recomputed: a VPC's own document and lists, and
the site-wide facts every VPC depends on (which addresses are the internet, the routed VPCs'
tiers and lists; when only those changed, only flows to the changed routed VPCs are).
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import json
from dataclasses import dataclass, field

from . import boxes as bx
from .boxes import DST, ICODE, ITYPE, PORT, PROTO, SRC, Box
from .model import Endpoint, Model, label

PROTOCOL_NAMES = {bx.TCP: "tcp", bx.UDP: "udp", bx.ICMP_PROTO: "icmp"}
EMPTY_SITE = {"vpcs": {}, "acls": {}, "zones": {}}


@dataclass
class FlowSet:
    boxes: list[Box] = field(default_factory=list)
    within: tuple | None = None  # (dimension, intervals): the boxes hold only inside these
    vias: list[tuple[str, list[Box]]] = field(default_factory=list)


# --- one revision -------------------------------------------------------------------------

def _sources(model: Model, vpc: str) -> list[Endpoint]:
    return [s for s in model.sources() if s.vpc == vpc] + [Endpoint("internet")]


def delivered(model: Model, vpc: str, only: set[str] | None = None) -> dict[tuple[str, str], FlowSet]:
    """Per (from, to): the flows from the VPC's endpoints, and from the internet into the VPC, that
    the site delivers. ``only``: just the flows to tiers of these VPCs."""
    out: dict[tuple[str, str], FlowSet] = {}
    internet = tuple(model.internet())
    for source in _sources(model, vpc):
        if source.kind == "internet":
            if only is not None and vpc not in only:
                continue
            universe, within = [bx.FULL], (SRC, internet)  # the internet's addresses kept apart
        else:
            universe, within = [bx.box(src=i) for i in model.source_addresses(source)], None
        first: dict = {}  # the first stage's decision, shared by the routes that start with it
        for route in model.routes(source, vpc if source.kind == "internet" else None):
            if route.to is None or not route.in_scope:
                continue
            if only is not None and (route.to.kind != "tier" or route.to.vpc not in only):
                continue
            flows = bx.meet(universe, list(route.region))
            stages = route.stages
            if stages and stages[0].source is None:
                if stages[0] not in first:
                    first[stages[0]] = [b for _, part, ok in model.cross(stages[:1], universe) if ok for b in part]
                flows, stages = bx.meet(flows, first[stages[0]]), stages[1:]
            got = [b for _, part, ok in model.cross(stages, flows) if ok for b in part] if flows else []
            if not got:
                continue
            fs = out.setdefault((label(source), route.label), FlowSet(within=within or route.within))
            fs.boxes += got
            via = route.nat or ("source NAT" if route.snat else "")
            if via:
                fs.vias.append((via, got))
    return out


# --- two revisions ------------------------------------------------------------------------

EBox = tuple  # six tuples of intervals: a product of interval sets


def _restrict(flows: list[Box], within: tuple | None) -> list[EBox]:
    out = []
    for b in flows:
        e = [(iv,) for iv in b]
        if within is not None:
            d, allowed = within
            part = bx.clip(b[d], allowed)
            if not part:
                continue
            e[d] = tuple(part)
        out.append(tuple(e))
    return out


def _difference(a: FlowSet | None, b: FlowSet | None) -> list[EBox]:
    """Flows in ``a`` and not in ``b`` (restricted by their ``within``, which may differ)."""
    if a is None or not a.boxes:
        return []
    if b is None or not b.boxes:
        return _restrict(a.boxes, a.within)
    if a.within is None:
        return _restrict(bx.minus(a.boxes, b.boxes), None)
    d, mine = a.within
    theirs = b.within[1] if b.within else [bx.ADDRESSES]
    common, only = bx.intersection(mine, theirs), bx.difference(mine, theirs)
    diff = bx.minus(a.boxes, b.boxes) if a.boxes != b.boxes else []
    return _restrict(diff, (d, common)) + (_restrict(a.boxes, (d, only)) if only else [])


def merge(eboxes: list[EBox]) -> list[EBox]:
    """Join products that agree on all dimensions but one, until none do."""
    items = set(eboxes)
    while True:
        before = len(items)
        for d in (ICODE, ITYPE, PORT, PROTO, DST, SRC):
            groups: dict = {}
            for e in items:
                groups.setdefault(e[:d] + e[d + 1:], []).append(e[d])
            if len(groups) == len(items):
                continue
            items = {k[:d] + (tuple(bx.normalize(iv for s in sets for iv in s)),) + k[d:]
                     for k, sets in groups.items()}
        if len(items) == before:
            return sorted(items)


def _cover(intervals, free) -> list[str]:
    """The fewest CIDRs (of those that ``intervals`` ∪ ``free`` splits into) that cover ``intervals``."""
    mine = bx.normalize(intervals)
    out = []
    for lo, hi in bx.normalize(list(mine) + list(free)):
        if not bx.clip((lo, hi), mine):
            continue
        for net in ipaddress.summarize_address_range(ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi)):
            if bx.clip((int(net.network_address), int(net.broadcast_address)), mine):
                out.append(str(net))
    return out


def _number(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _protocol(lo: int, hi: int) -> str | int:
    if (lo, hi) == bx.PROTOCOLS:
        return "all"
    return PROTOCOL_NAMES.get(lo, lo) if lo == hi else f"{lo}-{hi}"


def _icmp(lo: int, hi: int) -> str | int:
    return lo if lo == hi else f"{lo}-{hi}"


def _entries(change: str, frm: str, to: str, eboxes: list[EBox], free_src, free_dst,
             vias: list[tuple[str, list[Box]]]) -> list[tuple]:
    """(a sort key..., the entry) per entry."""
    out = []
    for e in merge(eboxes):
        sources, destinations = _cover(e[SRC], free_src), _cover(e[DST], free_dst)
        via = sorted({text for text, flows in vias if any(_meets(b, e) for b in flows)})
        for proto in e[PROTO]:
            for ports in e[PORT]:
                for itype in e[ITYPE]:
                    for icode in e[ICODE]:
                        entry = {"change": change, "from": frm, "to": to, "sources": sources,
                                 "destinations": destinations, "protocol": _protocol(*proto)}
                        if ports != bx.PORTS:
                            entry["ports"] = _number(*ports)
                        if itype != bx.ICMP:
                            entry["icmp_type"] = _icmp(*itype)
                        if icode != bx.ICMP:
                            entry["icmp_code"] = _icmp(*icode)
                        if via:
                            entry["via"] = "; ".join(via)
                        out.append((proto, ports, itype, icode, e[SRC][0], e[DST][0], entry))
    return out


def _meets(b: Box, e: EBox) -> bool:
    return all(bx.clip(b[d], e[d]) for d in range(6))


def _addresses(model: Model, endpoint: str) -> list[tuple[int, int]]:
    """The source addresses of the endpoint named ``endpoint`` in ``model`` ([] when it has none)."""
    if endpoint == "internet":
        return model.internet()
    vpc, _, name = endpoint.partition("/")
    v = model.site["vpcs"].get(vpc)
    if v is None:
        return []
    if name == "remote-access":
        e = Endpoint("client", vpc)
        return model.source_addresses(e) if v.get("remote_access") else []
    kind, _, rest = name.partition(":")
    if kind == "vpn" and rest in v["vpn_peers"]:
        return model.source_addresses(Endpoint("peer", vpc, rest))
    if kind == "pg" and rest in v["private_gateways"]:
        return model.source_addresses(Endpoint("gateway", vpc, rest))
    if name in v["tiers"]:
        return model.source_addresses(Endpoint("tier", vpc, name))
    return []


def _fingerprint(site: dict, name: str) -> tuple | None:
    """What a VPC's own reachability depends on, besides the site-wide facts (compared with ==)."""
    v = site["vpcs"].get(name)
    if v is None:
        return None
    acls = {t["acl"] for t in v["tiers"].values()} | {g["acl"] for g in v["private_gateways"].values()}
    mine = {k: x for k, x in v.items() if k not in ("routers", "vrrp")}
    return mine, {a: site["acls"].get(a) for a in acls}


def _routed(site: dict) -> dict[str, tuple]:
    return {name: _fingerprint(site, name) for name, v in site["vpcs"].items() if v["kind"] == "routed"}


ORDER = {"allowed": 0, "denied": 1}


def _flows(eboxes: list[EBox]) -> list[Box]:
    return [b for e in eboxes for b in itertools.product(*e)]


def _same_delivery(diffs: dict) -> None:
    """A flow whose source changed endpoints (a network moved from the internet to a VPN, say) but
    which is delivered to the same endpoint in both revisions did not change: out of both lists."""
    for (change, frm, to), allowed in list(diffs.items()):
        if change != "allowed" or not allowed:
            continue
        for (other, was, where), denied in list(diffs.items()):
            if other != "denied" or where != to or was == frm or not denied:
                continue
            same = bx.meet(_flows(allowed), _flows(denied))
            if same:
                diffs[(change, frm, to)] = allowed = _restrict(bx.minus(_flows(allowed), same), None)
                diffs[(other, was, where)] = _restrict(bx.minus(_flows(denied), same), None)


def changes(base: dict | None, head: dict) -> list[dict]:
    """The reachability entries from ``base`` to ``head`` (site.json documents; None: no site)."""
    base = base or copy.deepcopy(EMPTY_SITE)
    public = bx.normalize(Model(base).public_addresses() + Model(head).public_addresses())
    mb, mh = Model(base, hairpin=tuple(public)), Model(head, hairpin=tuple(public))
    same_networks = mb.site_networks() == mh.site_networks()
    rb, rh = _routed(base), _routed(head)
    routed_changed = {n for n in set(rb) | set(rh) if rb.get(n) != rh.get(n)}
    db: dict = {}
    dh: dict = {}
    for name in sorted(set(base["vpcs"]) | set(head["vpcs"])):
        only = None
        if same_networks and _fingerprint(base, name) == _fingerprint(head, name):
            if not routed_changed:
                continue
            only = routed_changed
        if name in base["vpcs"]:
            db.update(delivered(mb, name, only))
        if name in head["vpcs"]:
            dh.update(delivered(mh, name, only))
    diffs: dict[tuple[str, str, str], list[EBox]] = {}  # (change, from, to) -> flows
    for key in sorted(set(db) | set(dh)):
        b, h = db.get(key), dh.get(key)
        if b is not None and h is not None and b.boxes == h.boxes and b.within == h.within:
            continue
        for change, now, before in (("allowed", h, b), ("denied", b, h)):
            diff = _difference(now, before)
            if diff:
                diffs[(change, *key)] = diff
    _same_delivery(diffs)
    entries = []
    for (change, frm, to), diff in diffs.items():
        if not diff:
            continue
        # the internet's sources are everything but the site's networks: 0.0.0.0/0 says it best
        free_src = bx.complement(bx.normalize(_addresses(mb, frm) + _addresses(mh, frm))) \
            if frm == "internet" else []
        # from a tier, the site's public addresses (hairpin) are outside the contract
        free_dst = public if frm != "internet" and ":" not in frm and not frm.endswith("/remote-access") else []
        vias = (dh if change == "allowed" else db)[(frm, to)].vias
        entries += _entries(change, frm, to, diff, free_src, free_dst, vias)
    entries.sort(key=lambda k: (ORDER[k[-1]["change"]], k[-1]["from"] != "internet", k[-1]["from"], k[-1]["to"])
                 + k[:-1])
    return [k[-1] for k in entries]
