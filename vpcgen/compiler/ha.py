"""High availability of a redundant pair: keepalived (VRRPv3) and conntrackd (FTFW) models.

Both routers are rendered from the same address lists so their VRRP adverts always agree
(different virtual address sets make each peer discard the other's adverts: dual master).

Two keepalived scripts (subcommands of notify.sh) keep a pair from serving badly:
- health, on both routers: a router that cannot forward (upstream gone: the public gateway stops
  answering ARP, or no full OSPF adjacency; a needed daemon dead and not restartable) enters FAULT,
  but only while its peer can forward. Each router shows that it can by holding a beacon address on
  the sync link; with neither healthy nobody moves (no ping-pong). FAULT sends a priority-0 advert,
  so the peer takes over within the advert skew, not the 3-advert down timer that a lowered
  priority would cost (measured: 1.6 s against 4 s at 1 s adverts).
- sync: when the sync link is down but the first router still answers on a tier, the second router
  enters FAULT (a deterministic tie-break: the first keeps the addresses), through a track file that
  keepalived watches, written by the periodic check and, at once, by a takeover that finds itself
  split off. While the sync link is down the first router re-announces its addresses, in case the
  second was master for a moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..site import addr
from . import vpn
from .firewall import HA_GUARD_CHAIN, HA_GUARD_TAG, guard_rules, uplink
from ..tree import SPLIT_FILE
from .topology import BEACONS, CONNTRACKD_PORT, RouterView

SCRIPT_INTERVAL_S = 1  # keepalived's resolution for scripts


@dataclass(frozen=True)
class Script:
    name: str
    command: str  # notify.sh subcommand
    fall: int
    rise: int


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
    scripts: tuple[Script, ...]
    interval: int
    split_file: str | None  # the second router's track file


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
    if view.routed:  # the master's route that ospfd redistributes: only the master announces the VPC
        routes.append(f"blackhole {view.vpc_cidr} no_track")  # no interface to follow
    # one failed check is enough: each check already retries its probes
    scripts = (Script("vpcgen_health", "check-health", 1, 2), Script("vpcgen_sync", "check-sync", 1, 1))
    up = uplink(view)
    track = ([up] if up else []) + [t.iface for t in view.tiers] + [g.iface for g in view.private_gateways]
    return Keepalived(
        instance=f"vpc_{view.vpc.name.replace('-', '_')}", interface=view.sync_iface, vrid=view.vrid,
        priority=view.priority, advert_int=advert_seconds(view.vpc.vrrp.advert_interval_ms),
        preempt=view.vpc.vrrp.preempt, src_ip=view.sync_own, peer_ip=view.sync_peer, track=tuple(track),
        primary_vip=vips[0], other_vips=tuple(vips[1:]), routes=tuple(routes), scripts=tuple(scripts),
        interval=SCRIPT_INTERVAL_S, split_file=SPLIT_FILE if view.index == 1 else None)


def notify_context(view: RouterView) -> dict:
    first = view.tiers[0]
    peer_index = 1 - view.index
    # public tiers: only the master answers ARP for their hosts on the uplink (proxy ARP), and tells
    # the provider's gateway at once when it takes over (gratuitous ARP), so its cache follows
    proxy = {"iface": view.public.iface, "addresses": view.proxy_arp()} if view.public and view.proxy_arp() else None
    return {"guard_chain": HA_GUARD_CHAIN, "guard_tag": HA_GUARD_TAG, "guard_rules": guard_rules(view), "proxy": proxy,
            "tunnels": [c.name for c in vpn.site_to_site(view)] if view.public else [],
            "health": {
                "sync_iface": view.sync_iface, "sync_peer": view.sync_peer,
                "beacon": BEACONS[view.index], "peer_beacon": BEACONS[peer_index],
                # NAT VPC: the zone's gateway answers ARP on the uplink (asked with no source
                # address: a backup holds none there); routed VPC: a full adjacency to the core
                "gateway": (view.public.iface, view.public.gateway) if view.public else None,
                "transit": view.transit.iface if view.transit else None,
                "haproxy": bool(view.vpc.load_balancers), "charon": vpn.has_vpn(view),
                "first": view.index == 0,
                "peer_tier": (first.iface, addr.router_address(first.cidr, peer_index)),
                "vips": [(v.split(" dev ")[1], v.split(" dev ")[0]) for v in virtual_addresses(view)],
                "interval": SCRIPT_INTERVAL_S, "split_file": SPLIT_FILE,
            }}


def conntrackd_context(view: RouterView) -> dict:
    return {"interface": view.sync_iface, "own": view.sync_own, "peer": view.sync_peer, "port": CONNTRACKD_PORT}
