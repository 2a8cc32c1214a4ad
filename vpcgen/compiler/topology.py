"""The per-router view of a VPC: roles, interfaces and addresses, from the intent and the allocation.

Everything a template or another feature needs about where things are is computed here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..site import addr
from .allocate import Allocation
from ..site.intent import SOURCE_NAT_IP, VXLAN_TTL, Dhcp, Host, Site, Vpc, Vxlan, vxlan_group
from ..tree import dump_json_sections

SYNC_ADDRESSES = ("169.254.255.1", "169.254.255.2")
SYNC_PREFIX = 30
# a router holds its beacon on the sync link while it can forward (upstream and daemons healthy);
# its peer asks for it by ARP before handing mastership over
BEACONS = ("169.254.254.1", "169.254.254.2")
CONNTRACKD_PORT = 3780
PRIORITIES = (200, 100)  # far apart, so elections never hinge on timer skew


@dataclass(frozen=True)
class Iface:
    name: str  # eth1, eth2.1200, ...
    vlan: int | None
    raw_device: str | None
    addresses: tuple[str, ...]  # this router's own addresses, with prefix length
    role: str  # public | transit | tier | sync | private-gateway | vtep
    label: str  # what it carries, for comments
    routes: tuple[str, ...] = ()  # static routes through this interface ("CIDR via GATEWAY")
    mtu: int | None = None  # set on tier interfaces and the VTEP interface
    vxlan: "VxlanDevice | None" = None  # a VXLAN tier's device, created by the interfaces file


@dataclass(frozen=True)
class VxlanDevice:
    """A tier's vxlan<vni> device over the VTEP interface, as CloudStack's KVM hosts build theirs
    (multicast group derived from the VNI, the kernel's default port, TTL 10), or unicast head-end
    replication to the zone's remotes."""

    vni: int
    vtep_iface: str
    local: str  # this router's VTEP address
    port: int
    ttl: int
    group: str | None  # multicast scheme
    remotes: tuple[str, ...]  # unicast scheme: flood entries (bridge fdb append)


@dataclass(frozen=True)
class VtepView:
    iface: str  # eth2 or eth2.<underlay vlan>
    vlan: int | None
    cidr: str  # the underlay
    own: str  # this router's VTEP address
    port: int
    multicast: bool


@dataclass(frozen=True)
class TierView:
    name: str
    iface: str
    vlan: int | None  # None on a VXLAN tier
    cidr: str
    gateway: str  # the gateway (VIP on a redundant VPC)
    own: str  # this router's own address in the tier (the gateway on a single router)
    acl: str
    mtu: int = 1500
    dhcp: Dhcp | None = None
    hosts: tuple[Host, ...] = ()
    vni: int | None = None  # a VXLAN tier's
    group: str | None = None  # its multicast group (multicast scheme)
    public: bool = False  # routed from the zone's public network, never NATed

    @property
    def isolation(self) -> str:
        return "vlan" if self.vni is None else "vxlan"

    def proxied(self, own_addresses: int) -> list[str]:
        """A public tier's host addresses: every usable address but the gateway and the last
        ``own_addresses`` (a pair's routers' own). The router answers ARP for them on the uplink
        (proxy ARP), and for nothing else."""
        first, last = addr.usable(self.cidr)
        reserved = {int(addr.ip(self.gateway))} | {last - i for i in range(own_addresses)}
        return [addr.to_ip(a) for a in range(first, last + 1) if a not in reserved]


@dataclass(frozen=True)
class PublicView:
    iface: str
    vlan: int | None
    cidr: str
    gateway: str
    addresses: tuple[tuple[str, str], ...]  # (name, address), sorted by name


@dataclass(frozen=True)
class PrivateGatewayView:
    name: str
    iface: str
    vlan: int
    address: str  # with prefix length; a VRRP address on a redundant pair
    network: str
    gateway: str
    routes: tuple[str, ...]
    acl: str


@dataclass(frozen=True)
class TransitView:
    """A routed VPC's link to the zone's OSPF core (backbone area)."""

    iface: str
    vlan: int | None
    cidr: str
    own: str  # this router's transit address: also its OSPF router-id
    area: int  # the VPC's own OSPF area
    peer_own: str | None  # the other router's transit address on a pair


@dataclass(frozen=True)
class RouterView:
    site: Site
    vpc: Vpc
    name: str
    index: int  # 0: first router, 1: second
    mgmt: str
    redundant: bool
    priority: int
    vpc_cidr: str
    tiers: tuple[TierView, ...]
    public: PublicView | None
    sync_iface: str | None
    sync_vlan: int | None
    sync_own: str | None
    sync_peer: str | None
    vrid: int | None
    interfaces: tuple[Iface, ...]
    public_ips: dict  # name -> address
    private_gateways: tuple[PrivateGatewayView, ...] = ()
    transit: TransitView | None = None
    vtep: VtepView | None = None

    @property
    def public_tiers(self) -> tuple[TierView, ...]:
        return tuple(t for t in self.tiers if t.public)

    def proxy_arp(self) -> list[str]:
        """Addresses this router answers ARP for on its uplink (public tiers' hosts), in order."""
        own = len(self.vpc.routers) if self.redundant else 0  # a single router's own address is the gateway
        return [a for t in self.public_tiers for a in t.proxied(own)]

    @property
    def routed(self) -> bool:
        return self.vpc.routed

    @property
    def serves_dns(self) -> bool:
        return serves_dns(self.vpc, self.site.zones[self.vpc.zone])

    @property
    def vpn_address(self) -> str | None:
        """The VPC's VPN endpoint: its source NAT address (as in CloudStack)."""
        return self.public_ips.get(SOURCE_NAT_IP)


def serves_dns(vpc: Vpc, zone) -> bool:
    """The VPC's routers run dnsmasq: a tier has dhcp or hosts, or the zone has DNS servers."""
    return bool(zone.dns_servers) or any(t.dhcp is not None or t.hosts for t in vpc.tiers)


def uplink_name(vlan: int | None) -> str:
    """eth1 carries the public network (NAT VPCs) or the OSPF transit link (routed VPCs)."""
    return f"eth1.{vlan}" if vlan else "eth1"


def router_views(site: Site, alloc: Allocation) -> list[RouterView]:
    views = []
    for vpc in site.vpcs.values():
        for index in range(len(vpc.routers)):
            views.append(_view(site, alloc, vpc, index))
    return views


def _view(site: Site, alloc: Allocation, vpc: Vpc, index: int) -> RouterView:
    router = vpc.routers[index]
    zone = site.zones[vpc.zone]
    tiers = []
    interfaces = []
    vtep = _vtep(zone.vxlan, alloc.vteps.get((vpc.name, router.name)))
    if vtep is not None:
        interfaces.append(Iface(vtep.iface, vtep.vlan, "eth2" if vtep.vlan else None,
                                (addr.with_prefix(vtep.own, vtep.cidr),), "vtep", "VXLAN underlay (VTEP)",
                                mtu=zone.vxlan.mtu))
    # VLAN tiers by VLAN id, then VXLAN tiers by VNI
    for t in sorted(vpc.tiers, key=lambda t: (t.vxlan, alloc.tier_vnis.get((vpc.name, t.name), 0),
                                              alloc.tier_vlans.get((vpc.name, t.name), 0))):
        cidr = alloc.tier_cidrs[(vpc.name, t.name)]
        gateway = t.gateway or addr.to_ip(addr.usable(cidr)[0])
        own = addr.router_address(cidr, index) if vpc.redundant else gateway
        device = None
        if t.vxlan:
            vni, vlan = alloc.tier_vnis[(vpc.name, t.name)], None
            iface = f"vxlan{vni}"
            x = zone.vxlan
            device = VxlanDevice(vni, vtep.iface, vtep.own, x.port, VXLAN_TTL,
                                 vxlan_group(vni) if x.multicast else None, x.remotes)
        else:
            vni, vlan = None, alloc.tier_vlans[(vpc.name, t.name)]
            iface = f"eth2.{vlan}"
        tiers.append(TierView(t.name, iface, vlan, cidr, gateway, own, t.acl, t.mtu, t.dhcp, t.hosts, vni,
                              device.group if device else None, t.public))
        interfaces.append(Iface(iface, vlan, "eth2" if vlan else None, (addr.with_prefix(own, cidr),), "tier",
                                f"tier {t.name}" + (f" (VXLAN {vni})" if vni else ""), mtu=t.mtu, vxlan=device))
    public = None
    public_ips = {}
    if not vpc.routed and zone.public is not None:
        public_ips = {p.name: alloc.public_ips[(vpc.name, p.name)] for p in sorted(vpc.public_ips, key=lambda p: p.name)}
        name = uplink_name(zone.public.vlan)
        public = PublicView(name, zone.public.vlan, zone.public.cidr, zone.public.gateway, tuple(public_ips.items()))
        # a single router holds the public addresses itself (the source NAT address first, so adding a
        # public IP never changes the interface's primary address); a pair carries them as VRRP addresses
        ordered = sorted(public.addresses, key=lambda p: p[0] != SOURCE_NAT_IP)
        own = () if vpc.redundant else tuple(addr.with_prefix(a, zone.public.cidr) for _, a in ordered)
        interfaces.insert(0, Iface(name, zone.public.vlan, "eth1" if zone.public.vlan else None, own, "public",
                                   "public uplink"))
    gateways = []
    for g in sorted(vpc.private_gateways, key=lambda g: g.vlan):
        iface = f"eth2.{g.vlan}"
        network = str(addr.net(g.address).cidr)
        gateways.append(PrivateGatewayView(g.name, iface, g.vlan, g.address, network, g.gateway, g.routes, g.acl))
        # on a pair the master holds address and routes (keepalived); a single router holds them here
        interfaces.append(Iface(iface, g.vlan, "eth2", () if vpc.redundant else (g.address,), "private-gateway",
                                f"private gateway {g.name}",
                                () if vpc.redundant else tuple(f"{r} via {g.gateway}" for r in g.routes)))
    transit = None
    if vpc.routed:
        ospf = zone.ospf
        own = alloc.transit[(vpc.name, router.name)]
        peer = alloc.transit.get((vpc.name, vpc.routers[1 - index].name)) if vpc.redundant else None
        name = uplink_name(ospf.transit_vlan)
        transit = TransitView(name, ospf.transit_vlan, ospf.transit_cidr, own, alloc.areas[vpc.name], peer)
        interfaces.insert(0, Iface(name, ospf.transit_vlan, "eth1" if ospf.transit_vlan else None,
                                   (addr.with_prefix(own, ospf.transit_cidr),), "transit", "OSPF transit link"))
    sync_iface = sync_vlan = sync_own = sync_peer = None
    if vpc.redundant:
        sync_vlan = alloc.sync_vlans[vpc.name]
        sync_iface = f"eth2.{sync_vlan}"
        sync_own, sync_peer = SYNC_ADDRESSES[index], SYNC_ADDRESSES[1 - index]
        interfaces.append(Iface(sync_iface, sync_vlan, "eth2", (f"{sync_own}/{SYNC_PREFIX}",), "sync",
                                "sync link (VRRP, conntrackd)"))
    return RouterView(
        site=site, vpc=vpc, name=router.name, index=index, mgmt=router.mgmt, redundant=vpc.redundant,
        priority=PRIORITIES[index], vpc_cidr=alloc.vpc_cidrs[vpc.name], tiers=tuple(tiers), public=public,
        sync_iface=sync_iface, sync_vlan=sync_vlan, sync_own=sync_own, sync_peer=sync_peer,
        vrid=alloc.vrids.get(vpc.name), interfaces=tuple(interfaces), public_ips=public_ips,
        private_gateways=tuple(gateways), transit=transit, vtep=vtep)


def _vtep(vxlan: Vxlan | None, own: str | None) -> VtepView | None:
    if vxlan is None or own is None:
        return None
    iface = f"eth2.{vxlan.underlay_vlan}" if vxlan.underlay_vlan else "eth2"
    return VtepView(iface, vxlan.underlay_vlan, vxlan.underlay_cidr, own, vxlan.port, vxlan.multicast)


def _vxlan_json(site: Site, zone, alloc: Allocation) -> dict:
    """The zone's VXLAN: what a hypervisor needs to build its devices for the routers' tiers."""
    x = zone.vxlan
    return {"underlay": {"cidr": x.underlay_cidr, "vlan": x.underlay_vlan}, "vnis": f"{x.vnis[0]}-{x.vnis[1]}",
            "mtu": x.mtu, "scheme": "multicast" if x.multicast else "unicast", "port": x.port, "ttl": VXLAN_TTL,
            "remotes": list(x.remotes),
            # router -> its VTEP address (with remotes, the hypervisors replicate to each of them)
            "vteps": {r: a for (v, r), a in sorted(alloc.vteps.items(), key=lambda e: e[0][1])
                      if site.vpcs[v].zone == zone.name}}


def site_json(site: Site, alloc: Allocation, views: list[RouterView]) -> dict:
    """The resolved site (site.json of the built tree): no secret values, only names and addresses."""
    top, sections = _site_parts(site, alloc, views)
    return {**top, **{key: {name: value(name) for name in names} for key, (names, value) in sections.items()}}


def site_json_bytes(site: Site, alloc: Allocation, views: list[RouterView]) -> bytearray:
    """``dump_json(site_json(...))``, without ever holding the whole document: its VPCs and ACLs
    (most of a large site: 1.2 million rules at 10,000 VPCs) are dumped one at a time."""
    top, sections = _site_parts(site, alloc, views)
    return dump_json_sections(top, sections)


def _site_parts(site: Site, alloc: Allocation, views: list[RouterView]) -> tuple[dict, dict]:
    """site.json's small top-level entries, and its large ones as (names, the value of a name)."""
    by_vpc: dict[str, list[RouterView]] = {}
    for v in views:
        by_vpc.setdefault(v.vpc.name, []).append(v)
    top = {"_generated": "by vpcgen; do not edit", "site": site.name,
           "zones": {zone.name: _zone_json(site, alloc, zone) for zone in site.zones.values()},
           "ssh": {"port": site.ssh.port,
                   "allowed_from": list(site.ssh.allowed_from) if site.ssh.allowed_from is not None else None}}
    sections = {"vpcs": (list(site.vpcs), lambda name: _vpc_json(site, alloc, site.vpcs[name], by_vpc.get(name, []))),
                "acls": (list(site.acls), lambda name: _acl_json(site.acls[name]))}
    return top, sections


def _vpc_json(site: Site, alloc: Allocation, vpc: Vpc, rv: list[RouterView]) -> dict:
    return {
        "zone": vpc.zone,
        "kind": "routed" if vpc.routed else "nat",
        "cidr": alloc.vpc_cidrs.get(vpc.name),
        "redundant": vpc.redundant,
        "vrrp": {"vrid": alloc.vrids.get(vpc.name), "sync_vlan": alloc.sync_vlans.get(vpc.name),
                 "advert_interval_ms": vpc.vrrp.advert_interval_ms, "preempt": vpc.vrrp.preempt}
        if vpc.redundant else None,
        "domain": vpc.domain,
        "dns": serves_dns(vpc, site.zones[vpc.zone]),  # the routers answer DNS on every tier gateway
        "tiers": {t.name: {"cidr": t.cidr, "gateway": t.gateway, "isolation": t.isolation, "vlan": t.vlan,
                           "vni": t.vni, "group": t.group, "public": t.public, "acl": t.acl, "mtu": t.mtu,
                           "dhcp": {"range": "-".join(t.dhcp.range) if t.dhcp.range else None,
                                    "lease_s": t.dhcp.lease_s} if t.dhcp else None,
                           "hosts": {h.name: {"address": h.address, "mac": h.mac}
                                     for h in sorted(t.hosts, key=lambda h: h.name)}}
                  for t in sorted(rv[0].tiers, key=lambda t: t.name)} if rv else {},
        "public_ips": dict(sorted(rv[0].public_ips.items())) if rv else {},
        "ospf_area": alloc.areas.get(vpc.name),
        "private_gateways": {g.name: {"vlan": g.vlan, "address": g.address, "gateway": g.gateway,
                                      "routes": list(g.routes), "acl": g.acl}
                             for g in sorted(vpc.private_gateways, key=lambda g: g.name)},
        "load_balancers": {lb.name: {"public_ip": lb.public_ip, "public_port": lb.public_port,
                                     "private_port": lb.private_port, "protocol": lb.protocol,
                                     "algorithm": lb.algorithm, "stickiness": lb.stickiness,
                                     "health_check": {"interval_ms": lb.health_check.interval_ms,
                                                      "rise": lb.health_check.rise, "fall": lb.health_check.fall,
                                                      "http_path": lb.health_check.http_path},
                                     "members": list(lb.members)}
                           for lb in sorted(vpc.load_balancers, key=lambda lb: lb.name)},
        "vpn_peers": {v.name: {"peer": v.peer, "peer_cidrs": list(v.peer_cidrs),
                               "local_cidrs": list(v.local_cidrs) if v.local_cidrs else
                               sorted(t.cidr for t in rv[0].tiers) if rv else [],
                               "ike_version": v.ike_version, "ike_proposals": list(v.ike_proposals),
                               "esp_proposals": list(v.esp_proposals), "ike_lifetime_s": v.ike_lifetime_s,
                               "esp_lifetime_s": v.esp_lifetime_s, "dpd_delay_s": v.dpd_delay_s}
                      for v in sorted(vpc.site_to_site, key=lambda v: v.name)},
        "remote_access": {"pool": vpc.remote_access.pool, "users": sorted(u.name for u in vpc.remote_access.users)}
        if vpc.remote_access else None,
        "static_nat": {s.public_ip: s.private_ip for s in sorted(vpc.static_nat, key=lambda s: s.public_ip)},
        "port_forwarding": [{"public_ip": p.public_ip, "protocol": p.protocol, "public_port": list(p.public_port),
                             "private_ip": p.private_ip, "private_port": list(p.private_port)}
                            for p in sorted(vpc.port_forwarding,
                                            key=lambda p: (p.public_ip, p.protocol, p.public_port))],
        "routers": {
            v.name: {"mgmt": v.mgmt, "role": ("first" if v.index == 0 else "second") if v.redundant else "single",
                     "priority": v.priority if v.redundant else None,
                     "interfaces": {i.name: list(i.addresses) for i in v.interfaces}}
            for v in rv},
    }


def _zone_json(site: Site, alloc: Allocation, zone) -> dict:
    out = {
        "guest_vlans": f"{zone.guest_vlans[0]}-{zone.guest_vlans[1]}",
        "public": {"cidr": zone.public.cidr, "gateway": zone.public.gateway, "vlan": zone.public.vlan}
        if zone.public else None,
        "super_cidr": zone.super_cidr,
        "ospf_transit": zone.ospf.transit_cidr if zone.ospf else None,
        "ospf": {"transit": zone.ospf.transit_cidr, "transit_vlan": zone.ospf.transit_vlan,
                 "hello_interval_s": zone.ospf.hello_interval_s, "dead_interval_s": zone.ospf.dead_interval_s,
                 "authentication": zone.ospf.auth_key is not None} if zone.ospf else None,
        "dns_servers": list(zone.dns_servers),
        "ntp_servers": list(zone.ntp_servers),
        "vxlan": _vxlan_json(site, zone, alloc) if zone.vxlan else None,
    }
    if zone.public:
        out["public"]["routed"] = list(zone.public.routed)
    return out


def _acl_json(acl) -> list:
    return [{"number": r.number, "action": r.action, "traffic": r.traffic, "protocol": r.protocol,
             "ports": list(r.ports) if r.ports else None, "icmp_type": r.icmp_type, "icmp_code": r.icmp_code,
             "cidrs": list(r.cidrs)} for r in acl.rules]
