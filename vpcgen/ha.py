"""High availability of a redundant pair: keepalived (VRRPv3) and conntrackd (FTFW) models.

Both routers are rendered from the same address lists so their VRRP adverts always agree
(different virtual address sets make each peer discard the other's adverts: dual master).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import addr
from . import ospf, vpn
from .firewall import HA_GUARD_CHAIN, HA_GUARD_TAG, guard_rules, uplink
from .topology import CONNTRACKD_PORT, RouterView


@dataclass(frozen=True)
class Keepalived:
    instance: str
    interface: str
    vrid: int
    priority: int
    advert_int: str  # seconds, VRRPv3 centisecond resolution
    preempt: bool
    src_ip: str
    peer_ip: str
    track: tuple[str, ...]
    primary_vip: str  # carried in adverts
    other_vips: tuple[str, ...]  # moved with the master, not carried in adverts
    routes: tuple[str, ...]


def advert_seconds(ms: int) -> str:
    whole, rest = divmod(ms, 1000)
    return str(whole) if not rest else f"{whole}.{rest:03d}".rstrip("0")


def virtual_addresses(view: RouterView) -> list[str]:
    out = [f"{t.gateway}/{addr.net(t.cidr).prefixlen} dev {t.iface}" for t in view.tiers]
    if view.public:
        prefix = addr.net(view.public.cidr).prefixlen
        out += [f"{a}/{prefix} dev {view.public.iface}" for _, a in view.public.addresses]
    out += [f"{g.address} dev {g.iface}" for g in view.private_gateways]
    return out


def keepalived(view: RouterView) -> Keepalived:
    vips = virtual_addresses(view)
    routes = []
    if view.public:
        routes.append(f"0.0.0.0/0 via {view.public.gateway} dev {view.public.iface}")
    # static routes of private gateways live on the master only, with the gateway's address
    routes += [f"{r} via {g.gateway} dev {g.iface}" for g in view.private_gateways for r in g.routes]
    up = uplink(view)
    track = ([up] if up else []) + [t.iface for t in view.tiers] + [g.iface for g in view.private_gateways]
    return Keepalived(
        instance=f"vpc_{view.vpc.name.replace('-', '_')}", interface=view.sync_iface, vrid=view.vrid,
        priority=view.priority, advert_int=advert_seconds(view.vpc.vrrp.advert_interval_ms),
        preempt=view.vpc.vrrp.preempt, src_ip=view.sync_own, peer_ip=view.sync_peer, track=tuple(track),
        primary_vip=vips[0], other_vips=tuple(vips[1:]), routes=tuple(routes))


def notify_context(view: RouterView) -> dict:
    o = ospf.model(view) if view.routed else None
    return {"guard_chain": HA_GUARD_CHAIN, "guard_tag": HA_GUARD_TAG, "guard_rules": guard_rules(view),
            "tunnels": [c.name for c in vpn.site_to_site(view)] if view.public else [],
            "ospf_announce": ospf.switch_commands(o, True) if o else None,
            "ospf_withdraw": ospf.switch_commands(o, False) if o else None}


def conntrackd_context(view: RouterView) -> dict:
    return {"interface": view.sync_iface, "own": view.sync_own, "peer": view.sync_peer, "port": CONNTRACKD_PORT}
