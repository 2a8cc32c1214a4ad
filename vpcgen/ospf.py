"""Routed VPCs: the FRR (zebra + ospfd) model of a router.

Each routed VPC is one OSPF area: its tiers are passive interfaces of that area, the transit
link to the zone's core routers is in the backbone, and the router, an area border router,
summarises the VPC's CIDR into the backbone with ``area N range``. On a redundant pair both
routers keep their backbone adjacencies (fast failover) but the range is loaded as
``not-advertise``; notify.sh switches it to advertise on the master only, so only the VRRP
master announces the VPC.
"""

from __future__ import annotations

from dataclasses import dataclass

from .topology import RouterView

# etc/frr/daemons: zebra and staticd always run; of the optional daemons only ospfd
ENABLED = ("ospfd",)
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
    announce_by_default: bool  # single router: yes; a pair: only the master, switched by notify.sh


def model(view: RouterView) -> Ospf:
    zone = view.site.zones[view.vpc.zone]
    t = view.transit
    return Ospf(router_id=t.own, area=t.area, vpc_cidr=view.vpc_cidr, transit_iface=t.iface,
                transit_cidr=t.cidr, hello_s=zone.ospf.hello_interval_s, dead_s=zone.ospf.dead_interval_s,
                auth_key=zone.ospf.auth_key, tiers=tuple((tv.iface, tv.cidr) for tv in view.tiers),
                announce_by_default=not view.redundant)


def range_command(o: Ospf, announce: bool) -> str:
    return f"area {o.area} range {o.vpc_cidr}" + ("" if announce else " not-advertise")


def switch_commands(o: Ospf, announce: bool) -> list[str]:
    """vtysh commands (under `router ospf`) that make a running ospfd announce the VPC or stop.

    FRR 8.4 does not re-originate the summary when a range only changes from not-advertise to
    advertise (measured); removing and re-adding the range in one session does, and the summary
    appears on the core about 4 s later (ospfd's ABR task delay)."""
    if announce:
        return [f"no {range_command(o, False)}", range_command(o, True)]
    return [range_command(o, False)]


def context(view: RouterView, secrets: dict[str, str]) -> dict:
    o = model(view)
    return {"ospf": o, "auth_key": secrets[o.auth_key] if o.auth_key else None,
            "range": range_command(o, o.announce_by_default)}


def daemons_context(view: RouterView) -> dict:
    return {"daemons": [(d, "yes" if d in ENABLED else "no") for d in ALL_DAEMONS]}


def uses_secret(view: RouterView) -> bool:
    return view.routed and view.site.zones[view.vpc.zone].ospf.auth_key is not None
