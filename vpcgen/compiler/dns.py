"""Guest services of the tiers: dnsmasq (DNS on every tier gateway, DHCP where a tier has dhcp) and
chrony's time sources.

On a pair both routers run dnsmasq, listening on the tiers' gateway addresses only (``bind-dynamic``
follows VRRP: a socket opens when keepalived adds a gateway and closes when it is removed). DHCP is
answered only on an interface holding a listened address, and dnsmasq then takes that address as
the server identifier: the backup, which holds no gateway, stays silent, and clients renew with
the gateway, never with a router's own address (apache/cloudstack#3409). ``dhcp-authoritative``
lets the new master acknowledge a renewal of a lease it never gave (without it dnsmasq answers
NAK "lease not found", and every client of the tier drops its address after a failover); the
lease file stays in /var/lib/misc, outside the deployed releases, so a deploy loses no lease.
Dynamic addresses are chosen from a hash of the client's MAC and pinged before they are offered,
so a new master hands out the addresses the old one gave to the same clients and skips those in use.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..site import addr
from ..tree import DNSMASQ_LEASES
from .topology import RouterView

CACHE_SIZE = 4096
MIN_LEASES = 1000  # dnsmasq's default dhcp-lease-max


@dataclass(frozen=True)
class Reservation:
    mac: str
    address: str
    name: str


@dataclass(frozen=True)
class DhcpTier:
    name: str
    tag: str  # dnsmasq tag (prefixed: a tier may be called "known", one of dnsmasq's own tags)
    iface: str
    gateway: str
    network: str
    netmask: str
    range: tuple[str, str] | None
    lease_s: int
    mtu: int
    reservations: tuple[Reservation, ...]


@dataclass(frozen=True)
class Dnsmasq:
    domain: str
    listen: tuple[tuple[str, str], ...]  # (gateway, tier name)
    servers: tuple[str, ...]
    records: tuple[tuple[str, str], ...]  # (fqdn, address), sorted by name
    dhcp: tuple[DhcpTier, ...]
    lease_max: int
    lease_file: str
    cache_size: int


def needs_dnsmasq(view: RouterView) -> bool:
    return view.serves_dns


def dnsmasq(view: RouterView) -> Dnsmasq:
    zone = view.site.zones[view.vpc.zone]
    domain = view.vpc.domain
    records = sorted((f"{h.name}.{domain}", h.address) for t in view.tiers for h in t.hosts)
    dhcp = []
    leases = 0
    for t in view.tiers:
        if t.dhcp is None:
            continue
        n = addr.net(t.cidr)
        reservations = tuple(Reservation(h.mac, h.address, h.name)
                             for h in sorted(t.hosts, key=lambda h: int(addr.ip(h.address))) if h.mac)
        size = 0
        if t.dhcp.range:
            first, last = addr.ip_range("-".join(t.dhcp.range))
            size = last - first + 1
        leases += size + len(reservations)
        dhcp.append(DhcpTier(name=t.name, tag=f"tier-{t.name}", iface=t.iface, gateway=t.gateway,
                             network=str(n.network), netmask=str(n.netmask), range=t.dhcp.range,
                             lease_s=t.dhcp.lease_s, mtu=t.mtu, reservations=reservations))
    return Dnsmasq(domain=domain, listen=tuple((t.gateway, t.name) for t in view.tiers),
                   servers=zone.dns_servers, records=tuple(records), dhcp=tuple(dhcp),
                   lease_max=max(MIN_LEASES, leases), lease_file=DNSMASQ_LEASES, cache_size=CACHE_SIZE)


def dns_address(view: RouterView) -> str | None:
    """The address the VPC's remote-access clients ask for names: the first tier's gateway."""
    return view.tiers[0].gateway if view.serves_dns and view.tiers else None


def needs_chrony(view: RouterView) -> bool:
    return bool(view.site.zones[view.vpc.zone].ntp_servers)


def chrony_context(view: RouterView) -> dict:
    return {"servers": view.site.zones[view.vpc.zone].ntp_servers}
