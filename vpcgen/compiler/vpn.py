"""Site-to-site and remote-access VPNs: the strongSwan (swanctl) model of a router.

The VPN endpoint is the VPC's source NAT address, a VRRP address on a pair: charon runs on both
routers, its policies are trap policies, and only the master holds the address, so only the
master negotiates; notify.sh initiates the tunnels when a router becomes master.
Every secret value is written base64-encoded (``0s...``): no character of it can end a string
or open a section of swanctl.conf.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from ..site.secrets import REDACTED
from .dns import dns_address
from .topology import RouterView

SECRETS_FILE = "vpcgen-secrets.conf"  # next to swanctl.conf, mode 0600
RA_CERT = "vpcgen-ra.pem"  # in x509/ and private/
RA_POOL = "ra-pool"
RA_CONN = "ra"


@dataclass(frozen=True)
class SiteToSiteConn:
    name: str  # connection and child name: s2s-<name>
    version: int
    local: str
    peer: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    # lifetimes are hard limits: rekeying starts 10% before them, to the second
    ike_rekey_s: int
    ike_over_s: int
    esp_rekey_s: int
    esp_life_s: int
    dpd_delay_s: int
    psk: str  # secret name


@dataclass(frozen=True)
class RemoteAccessConn:
    local: str
    pool: str
    local_ts: tuple[str, ...]
    users: tuple[tuple[str, str], ...]  # (user, secret name)
    dns: str | None = None  # handed to the clients: the router's DNS (a tier gateway), when it runs one


def encode(value: str) -> str:
    if value == REDACTED:  # the diff's view of a secret file: the marker itself, readable
        return value
    return "0s" + base64.b64encode(value.encode("utf-8")).decode("ascii")


def _rekey(lifetime: int) -> tuple[int, int]:
    margin = max(1, lifetime // 10)
    return lifetime - margin, margin


def site_to_site(view: RouterView) -> list[SiteToSiteConn]:
    out = []
    tier_cidrs = tuple(sorted(t.cidr for t in view.tiers))
    for v in sorted(view.vpc.site_to_site, key=lambda v: v.name):
        ike_rekey, ike_over = _rekey(v.ike_lifetime_s)
        esp_rekey, _ = _rekey(v.esp_lifetime_s)
        out.append(SiteToSiteConn(
            name=f"s2s-{v.name}", version=v.ike_version, local=view.vpn_address, peer=v.peer,
            local_ts=v.local_cidrs or tier_cidrs, remote_ts=v.peer_cidrs, ike_proposals=v.ike_proposals,
            esp_proposals=v.esp_proposals, ike_rekey_s=ike_rekey, ike_over_s=ike_over, esp_rekey_s=esp_rekey,
            esp_life_s=v.esp_lifetime_s, dpd_delay_s=v.dpd_delay_s, psk=v.psk))
    return out


def remote_access(view: RouterView) -> RemoteAccessConn | None:
    ra = view.vpc.remote_access
    if ra is None:
        return None
    return RemoteAccessConn(local=view.vpn_address, pool=ra.pool,
                            local_ts=tuple(sorted(t.cidr for t in view.tiers)),
                            users=tuple(sorted((u.name, u.password) for u in ra.users)), dns=dns_address(view))


def has_vpn(view: RouterView) -> bool:
    return bool(view.vpc.site_to_site) or view.vpc.remote_access is not None


def context(view: RouterView, secrets: dict[str, str]) -> dict:
    return {"s2s": site_to_site(view), "ra": remote_access(view), "secrets_file": SECRETS_FILE,
            "ra_cert": RA_CERT, "ra_pool": RA_POOL, "ra_conn": RA_CONN,
            "secret": lambda name: encode(secrets[name])}


def exempt_from_nat(view: RouterView) -> list[tuple[str | None, str, str]]:
    """(source, destination, why) pairs that leave through the uplink without source NAT."""
    out = [(cidr, peer, f"vpn {c.name}") for c in site_to_site(view) for cidr in c.local_ts for peer in c.remote_ts]
    ra = remote_access(view)
    if ra is not None:
        out.append((None, ra.pool, "remote-access vpn clients"))
    return out
