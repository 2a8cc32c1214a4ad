"""Load balancers: the haproxy listeners of a router and the ACL that guards each of them.

haproxy terminates the client's connection on the router and opens its own to a member, so the
balanced traffic never crosses FORWARD. To keep CloudStack's rule that NATed traffic still passes
the destination tier's ingress list, each listener gets an INPUT chain that asks the members'
tier list the question the member would ask: may this client reach me on tcp/private_port?
"""

from __future__ import annotations

from dataclasses import dataclass

from ..site import addr
from ..site.intent import Acl, Rule
from .topology import RouterView, TierView

COOKIE = "VPCGEN_SERVER"


@dataclass(frozen=True)
class Member:
    name: str  # haproxy server name, also the cookie value
    address: str
    port: int


@dataclass(frozen=True)
class Listener:
    name: str
    address: str
    port: int
    mode: str  # tcp | http
    algorithm: str
    stickiness: str
    interval_ms: int
    rise: int
    fall: int
    http_path: str | None
    members: tuple[Member, ...]
    tier: TierView  # the tier all members live in
    chain: str  # INPUT chain applying the tier's ingress list


def tier_of(view: RouterView, address: str) -> TierView:
    return next(t for t in view.tiers if addr.in_net(address, t.cidr))


def listeners(view: RouterView) -> list[Listener]:
    out = []
    for lb in sorted(view.vpc.load_balancers, key=lambda lb: lb.name):
        address = view.public_ips[lb.public_ip]
        members = tuple(Member(f"{lb.name}-{i + 1}", m, lb.private_port) for i, m in enumerate(lb.members))
        hc = lb.health_check
        out.append(Listener(
            name=lb.name, address=address, port=lb.public_port, mode=lb.protocol, algorithm=lb.algorithm,
            stickiness=lb.stickiness, interval_ms=hc.interval_ms, rise=hc.rise, fall=hc.fall,
            http_path=hc.http_path, members=members, tier=tier_of(view, lb.members[0]),
            chain=f"LB_{address}_{lb.public_port}"))
    return out


def admits(rule: Rule, port: int) -> bool:
    """Whether an ingress rule is about tcp connections to ``port``."""
    proto_ok = rule.protocol in ("tcp", "all", 0, 6)
    return rule.traffic == "ingress" and proto_ok and (rule.ports is None or rule.ports[0] <= port <= rule.ports[1])


def ingress_rules(acl: Acl, port: int) -> list[Rule]:
    return [r for r in acl.rules if admits(r, port)]
