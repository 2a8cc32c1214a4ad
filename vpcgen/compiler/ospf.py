"""Routed VPCs: the FRR (zebra + ospfd) model of a router.

Each routed VPC is one OSPF area: its tiers are passive interfaces of that area, the transit
link to the zone's core routers is in the backbone, and the router, an area border router,
summarises the VPC's CIDR into the backbone with ``area N range``.

On a redundant pair both routers keep their backbone adjacencies (fast failover), their range is
``not-advertise`` (no per-tier summaries either), and the VPC is announced as an external route:
keepalived installs a blackhole route for the VPC's CIDR on the master only (its tiers' connected
routes are more specific) and ospfd redistributes exactly that route. Mastership and announcement
thus move together in the kernel, with no command to replay: flipping the range by vtysh instead
waited for ospfd's ABR task (about 4 s) and, now and then, was never re-originated at all.
BFD on the transit link lets the core drop a dead master's adjacency within a few hundred ms.
"""

from __future__ import annotations

from dataclasses import dataclass

from .topology import RouterView

# etc/frr/daemons: zebra and staticd always run; of the optional daemons ospfd and bfdd
ENABLED = ("ospfd", "bfdd")
BFD = {"transmit_ms": 100, "receive_ms": 100, "multiplier": 3}  # the core's adjacency drops in 300 ms
ANNOUNCE_MAP = "VPCGEN-ANNOUNCE"
ALL_DAEMONS = ("bgpd", "ospfd", "ospf6d", "ripd", "ripngd", "isisd", "pimd", "pim6d", "ldpd", "nhrpd", "eigrpd",
               "babeld", "sharpd", "pbrd", "bfdd", "fabricd", "vrrpd", "pathd")


@dataclass(frozen=True)
class Ospf:
    router_id: str
    area: int
    vpc_cidr: str
    transit_iface: str
    transit_cidr: str
    hello_s: int
    dead_s: int
    auth_key: str | None  # secret name
    tiers: tuple[tuple[str, str], ...]  # (interface, cidr), passive
    announce_by_default: bool  # single router: the range; a pair: the master's redistributed route


def model(view: RouterView) -> Ospf:
    zone = view.site.zones[view.vpc.zone]
    t = view.transit
    return Ospf(router_id=t.own, area=t.area, vpc_cidr=view.vpc_cidr, transit_iface=t.iface,
                transit_cidr=t.cidr, hello_s=zone.ospf.hello_interval_s, dead_s=zone.ospf.dead_interval_s,
                auth_key=zone.ospf.auth_key, tiers=tuple((tv.iface, tv.cidr) for tv in view.tiers),
                announce_by_default=not view.redundant)


def range_command(o: Ospf, announce: bool) -> str:
    return f"area {o.area} range {o.vpc_cidr}" + ("" if announce else " not-advertise")


def context(view: RouterView, secrets: dict[str, str]) -> dict:
    o = model(view)
    return {"ospf": o, "auth_key": secrets[o.auth_key] if o.auth_key else None,
            "range": range_command(o, o.announce_by_default), "bfd": BFD, "announce_map": ANNOUNCE_MAP}


def daemons_context(view: RouterView) -> dict:
    return {"daemons": [(d, "yes" if d in ENABLED else "no") for d in ALL_DAEMONS]}


def uses_secret(view: RouterView) -> bool:
    return view.routed and view.site.zones[view.vpc.zone].ospf.auth_key is not None
