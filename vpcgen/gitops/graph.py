"""`vpcgen graph`: the site's topology as Mermaid (renders in pull requests) or Graphviz dot.

One model (clusters, nodes, edges) is built from the validated site and its allocation, then
laid out by either writer; everything is emitted in sorted order, so the text is stable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..compiler.allocate import Allocation
from ..compiler.topology import serves_dns
from ..site import addr
from ..site.intent import SOURCE_NAT_IP, Site


@dataclass
class Node:
    id: str
    lines: list[str]
    kind: str  # router | tier | public-ip | peer | gateway | pool | internet | core | lb | member


@dataclass
class Cluster:
    id: str
    label: str
    nodes: list[Node] = field(default_factory=list)
    clusters: list["Cluster"] = field(default_factory=list)


@dataclass
class Edge:
    a: str
    b: str
    label: str = ""
    dashed: bool = False


@dataclass
class Graph:
    clusters: list[Cluster]
    edges: list[Edge]


def _id(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]", "_", p) for p in parts)


def model(site: Site, alloc: Allocation) -> Graph:
    clusters, edges = [], []
    for zone in site.zones.values():
        zc = Cluster(_id("zone", zone.name), f"zone {zone.name}")
        vpcs = [v for v in site.vpcs.values() if v.zone == zone.name]
        if zone.public and any(not v.routed for v in vpcs):
            routed = [f"routed {', '.join(zone.public.routed)}"] if zone.public.routed else []
            zc.nodes.append(Node(_id("inet", zone.name), ["internet", f"public {zone.public.cidr}"] + routed,
                                 "internet"))
        if zone.ospf and any(v.routed for v in vpcs):
            zc.nodes.append(Node(_id("core", zone.name), ["OSPF core (area 0)",
                                                          f"transit {zone.ospf.transit_cidr}"], "core"))
        for vpc in vpcs:
            cidr = alloc.vpc_cidrs.get(vpc.name, vpc.cidr or "?")
            kind = f"routed, OSPF area {alloc.areas.get(vpc.name)}" if vpc.routed else "NAT"
            vc = Cluster(_id("vpc", vpc.name), f"VPC {vpc.name} · {cidr} · {kind}")
            rid = _id("routers", vpc.name)
            names = " / ".join(r.name for r in vpc.routers)
            dns = [f"DNS {vpc.domain}" + (" · DHCP" if any(t.dhcp for t in vpc.tiers) else "")] \
                if serves_dns(vpc, zone) else []
            vc.nodes.append(Node(rid, [names, "VRRP pair" if vpc.redundant else "single router"] + dns, "router"))
            for t in sorted(vpc.tiers, key=lambda t: t.name):
                tid = _id("tier", vpc.name, t.name)
                services = ([f"MTU {t.mtu}"] if t.mtu != 1500 else []) + (["DHCP"] if t.dhcp else []) + \
                    ([f"{len(t.hosts)} host{'s' if len(t.hosts) != 1 else ''}"] if t.hosts else [])
                if t.vxlan:
                    segment = f"VXLAN {alloc.tier_vnis.get((vpc.name, t.name), '?')}"
                else:
                    segment = f"VLAN {alloc.tier_vlans.get((vpc.name, t.name), '?')}"
                vc.nodes.append(Node(tid, [f"tier {t.name}" + (" (public, routed)" if t.public else ""),
                                           alloc.tier_cidrs.get((vpc.name, t.name), "?"), f"{segment} · ACL {t.acl}"]
                                     + ([" · ".join(services)] if services else []), "tier"))
                edges.append(Edge(rid, tid))
                if t.public:  # reached from the internet at its own addresses (proxy ARP), no NAT
                    edges.append(Edge(_id("inet", zone.name), tid, dashed=True))  # no label: it leaves the cluster
            for g in sorted(vpc.private_gateways, key=lambda g: g.name):
                gid = _id("pg", vpc.name, g.name)
                vc.nodes.append(Node(gid, [f"private gateway {g.name}", f"{g.address} VLAN {g.vlan}",
                                           "routes " + ", ".join(g.routes) if g.routes else "no routes"], "gateway"))
                edges.append(Edge(rid, gid, f"ACL {g.acl}"))
            if vpc.remote_access:
                pid = _id("pool", vpc.name)
                vc.nodes.append(Node(pid, ["remote-access VPN (IKEv2 EAP)", f"pool {vpc.remote_access.pool}",
                                           f"{len(vpc.remote_access.users)} users"], "pool"))
                edges.append(Edge(rid, pid, dashed=True))
            tiers = [(t.name, alloc.tier_cidrs.get((vpc.name, t.name))) for t in vpc.tiers]
            for lb in sorted(vpc.load_balancers, key=lambda x: x.name):
                lid = _id("lb", vpc.name, lb.name)
                vc.nodes.append(Node(lid, [f"load balancer {lb.name}", f"{lb.protocol} :{lb.public_port} → "
                                           f":{lb.private_port}", f"{lb.algorithm}, {lb.stickiness} stickiness"],
                                     "lb"))
                edges.append(Edge(_id("pip", vpc.name, lb.public_ip), lid))
                for m in lb.members:
                    mid = _id("member", vpc.name, lb.name, m)
                    vc.nodes.append(Node(mid, [m], "member"))
                    edges.append(Edge(lid, mid))
                    home = next((name for name, cidr in tiers if cidr and addr.in_net(m, cidr)), None)
                    if home is not None:
                        edges.append(Edge(mid, _id("tier", vpc.name, home), dashed=True))
            zc.clusters.append(vc)
            if vpc.routed:  # the area is in the VPC's title: an edge label here would sit on it
                edges.append(Edge(_id("core", zone.name), rid))
            for p in sorted(vpc.public_ips, key=lambda p: p.name):
                pid = _id("pip", vpc.name, p.name)
                zc.nodes.append(Node(pid, [f"{vpc.name}/{p.name}", alloc.public_ips.get((vpc.name, p.name), "?")]
                                     + _uses(vpc, p.name), "public-ip"))
                edges.append(Edge(_id("inet", zone.name), pid))
                edges.append(Edge(pid, rid))
            for v in sorted(vpc.site_to_site, key=lambda v: v.name):
                peer = _id("peer", vpc.name, v.name)
                # the IKE version goes into the node: a label on this edge, which leaves the VPC's
                # cluster, is placed by dot on top of the cluster's title
                zc.nodes.append(Node(peer, [f"VPN peer {v.name} (IKEv{v.ike_version})", v.peer,
                                            ", ".join(v.peer_cidrs)], "peer"))
                edges.append(Edge(rid, peer, dashed=True))
        clusters.append(zc)
    return Graph(clusters, edges)


def _uses(vpc, name: str) -> list[str]:
    if name == SOURCE_NAT_IP:
        return ["source NAT" + (" + VPN endpoint" if vpc.site_to_site or vpc.remote_access else "")]
    out = [f"static NAT → {s.private_ip}" for s in vpc.static_nat if s.public_ip == name]
    for pf in vpc.port_forwarding:
        if pf.public_ip == name:
            low, high = pf.public_port
            out.append(f"PF {pf.protocol}/{low}{'' if low == high else f'-{high}'} → {pf.private_ip}")
    out += [f"LB {lb.name} :{lb.public_port}" for lb in vpc.load_balancers if lb.public_ip == name]
    return out


# --- Mermaid ---------------------------------------------------------------------------------

_MERMAID_SHAPES = {"router": ('["', '"]'), "tier": ('("', '")'), "public-ip": ('{{"', '"}}'), "peer": ('>"', '"]'),
                   "gateway": ('[/"', '"/]'), "pool": ('[("', '")]'), "internet": ('(("', '"))'),
                   "core": ('(("', '"))'), "lb": ('[["', '"]]'), "member": ('(["', '"])')}


def _mq(text: str) -> str:
    return text.replace('"', "#quot;")


def mermaid(graph: Graph) -> str:
    out = ["flowchart LR"]

    def cluster(c: Cluster, depth: int) -> None:
        pad = "  " * depth
        out.append(f'{pad}subgraph {c.id}["{_mq(c.label)}"]')
        for n in c.nodes:
            left, right = _MERMAID_SHAPES[n.kind]
            out.append(f"{pad}  {n.id}{left}{'<br/>'.join(_mq(x) for x in n.lines)}{right}")
        for sub in c.clusters:
            cluster(sub, depth + 1)
        out.append(f"{pad}end")

    for c in graph.clusters:
        cluster(c, 1)
    for e in graph.edges:
        arrow = "-.-" if e.dashed else "---"
        label = f'|"{_mq(e.label)}"|' if e.label else ""
        out.append(f"  {e.a} {arrow}{label} {e.b}")
    return "\n".join(out) + "\n"


# --- Graphviz dot ----------------------------------------------------------------------------

_DOT_SHAPES = {"router": "box3d", "tier": "box", "public-ip": "hexagon", "peer": "cds", "gateway": "parallelogram",
               "pool": "cylinder", "internet": "ellipse", "core": "octagon", "lb": "component", "member": "oval"}


NEWLINE = "\\n"  # dot's line break inside a label


def _dq(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dot(graph: Graph) -> str:
    out = ["graph vpcgen {", '  rankdir=LR;', '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']

    def cluster(c: Cluster, depth: int) -> None:
        pad = "  " * depth
        out.append(f"{pad}subgraph cluster_{c.id} {{")
        out.append(f'{pad}  label="{_dq(c.label)}";')
        out.append(f'{pad}  labeljust=l;')  # titles on the left: edges leave clusters rightwards (rankdir LR)
        for n in c.nodes:
            style = ', style="rounded"' if n.kind == "tier" else ""
            label = NEWLINE.join(_dq(x) for x in n.lines)
            out.append(f'{pad}  {n.id} [shape={_DOT_SHAPES[n.kind]}{style}, label="{label}"];')
        for sub in c.clusters:
            cluster(sub, depth + 1)
        out.append(f"{pad}}}")

    for c in graph.clusters:
        cluster(c, 1)
    for e in graph.edges:
        attrs = []
        if e.label:
            attrs.append(f'label="{_dq(e.label)}"')
        if e.dashed:
            attrs.append("style=dashed")
        out.append(f"  {e.a} -- {e.b}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"


def render(site: Site, alloc: Allocation, fmt: str) -> str:
    g = model(site, alloc)
    return dot(g) if fmt == "dot" else mermaid(g)

