"""Semantic checks of the intent: references, ranges, overlaps, collisions, refused field combinations.

``check_intent`` needs only the intent; ``check_placement`` runs after allocation, when every
tier has its CIDR. Both return every problem found.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from . import addr
from ..errors import Diagnostic
from .intent import BUILTIN_ACLS, SOURCE_NAT_IP, VXLAN_OVERHEAD, Site, Src, Vpc
from .loader import SiteFiles

MAX_VNI = 16777215  # 24 bits
NAT_ONLY_FIELDS = ("public_ips", "source_nat", "static_nat", "port_forwarding", "load_balancers", "vpn")

# strongSwan proposal keywords accepted in ike_proposals / esp_proposals (swanctl proposal syntax).
ENCRYPTION = {"aes128", "aes192", "aes256", "aes128gcm16", "aes192gcm16", "aes256gcm16", "aes128gcm12",
              "aes256gcm12", "aes128ccm16", "aes256ccm16", "chacha20poly1305", "3des", "aes128ctr", "aes256ctr",
              "camellia128", "camellia256"}
INTEGRITY = {"sha1", "sha256", "sha384", "sha512", "md5", "aesxcbc", "sha256_96"}
PRF = {"prfsha1", "prfsha256", "prfsha384", "prfsha512", "prfmd5", "prfaesxcbc"}
DH_GROUPS = {"modp1024", "modp1536", "modp2048", "modp3072", "modp4096", "modp6144", "modp8192", "ecp256",
             "ecp384", "ecp521", "curve25519", "curve448", "noesn", "esn"}


class Checker:
    def __init__(self):
        self.diagnostics: list[Diagnostic] = []

    def err(self, src: Src, sub: tuple, message: str, code: str, key: bool = False) -> None:
        self.diagnostics.append(Diagnostic(src.loc(*sub, key=key), message, code))


def check_files(files: SiteFiles) -> list[Diagnostic]:
    """Rules about the files themselves: names equal stems, built-ins are not redefined."""
    c = Checker()
    for doc in files.zones + files.vpcs + files.acls:
        name = doc.data.get("name") if isinstance(doc.data, dict) else None
        if name is not None and name != doc.stem:
            c.err(Src(doc), ("name",), f"{doc.kind} name '{name}' must equal the file's name '{doc.stem}'",
                  "name-mismatch")
        if doc.kind == "acl" and doc.stem in BUILTIN_ACLS:
            c.err(Src(doc), (), f"'{doc.stem}' is a built-in ACL list and cannot be redefined", "builtin-acl")
    return c.diagnostics


def check_intent(site: Site) -> list[Diagnostic]:
    c = Checker()
    for zone in site.zones.values():
        _check_zone(c, zone)
    for acl in site.acls.values():
        _check_acl(c, acl)
    routers: dict[str, Src] = {}
    mgmts: dict[str, Src] = {}
    for vpc in site.vpcs.values():
        for r in vpc.routers:
            if r.name in routers:
                c.err(r.src, ("name",), f"router name '{r.name}' is already used in {routers[r.name].file}",
                      "duplicate-router")
            routers.setdefault(r.name, r.src)
            if r.mgmt in mgmts:
                c.err(r.src, ("mgmt",), f"management address {r.mgmt} is already used in {mgmts[r.mgmt].file}",
                      "duplicate-mgmt")
            mgmts.setdefault(r.mgmt, r.src)
        _check_vpc(c, site, vpc)
    _check_zone_wide(c, site)
    _check_ssh(c, site)
    return c.diagnostics


def _check_ssh(c: Checker, site: Site) -> None:
    for i, cidr in enumerate(site.ssh.allowed_from or ()):
        _canonical(c, site.src, ("defaults", "ssh", "allowed_from", i), cidr, "allowed_from")


def _canonical(c: Checker, src: Src, sub: tuple, cidr: str, what: str) -> bool:
    if not addr.is_canonical(cidr):
        c.err(src, sub, f"{what} {cidr} is not in canonical form (did you mean {addr.net(cidr).cidr}?)",
              "cidr-not-canonical")
        return False
    return True


def _ports_ok(c: Checker, src: Src, sub: tuple, ports) -> bool:
    if ports and ports[0] > ports[1]:
        c.err(src, sub, f"port range {ports[0]}-{ports[1]} is reversed", "bad-port-range")
        return False
    if ports and ports[1] > 65535:
        c.err(src, sub, f"port {ports[1]} is out of range 1-65535", "bad-port-range")
        return False
    return True


def _check_zone(c: Checker, zone) -> None:
    low, high = zone.guest_vlans
    if not (1 <= low <= high <= 4094):
        c.err(zone.src, ("guest_vlans",), f"guest_vlans {low}-{high} must be a range within 1-4094",
              "bad-vlan-range")
    p = zone.public
    if p is not None and _canonical(c, zone.src, ("public", "cidr"), p.cidr, "public cidr"):
        first, last = addr.usable(p.cidr)
        gw = int(addr.ip(p.gateway))
        if not first <= gw <= last:
            c.err(zone.src, ("public", "gateway"), f"public gateway {p.gateway} is not a usable address of {p.cidr}",
                  "gateway-outside")
        seen: list[tuple[int, int, int]] = []
        for i, text in enumerate(p.ranges):
            try:
                a, b = addr.ip_range(text)
            except Exception:
                c.err(zone.src, ("public", "ranges", i), f"'{text}' is not a range FIRST-LAST of IPv4 addresses",
                      "bad-ip-range")
                continue
            if a > b or a < first or b > last:
                c.err(zone.src, ("public", "ranges", i),
                      f"public range {text} must be ascending and within the usable addresses of {p.cidr}",
                      "bad-ip-range")
            elif a <= gw <= b:
                c.err(zone.src, ("public", "ranges", i), f"public range {text} includes the gateway {p.gateway}",
                      "bad-ip-range")
            for j, x, y in seen:
                if a <= y and x <= b:
                    c.err(zone.src, ("public", "ranges", i), f"public range {text} overlaps {p.ranges[j]}",
                          "bad-ip-range")
            seen.append((i, a, b))
    if p is not None and addr.is_canonical(p.cidr):
        _check_routed_blocks(c, zone)
    if zone.vxlan is not None:
        _check_vxlan(c, zone)
    if zone.super_cidr is not None:
        _canonical(c, zone.src, ("super_cidr",), zone.super_cidr, "super_cidr")
    if zone.ospf is not None:
        _canonical(c, zone.src, ("ospf", "transit", "cidr"), zone.ospf.transit_cidr, "transit cidr")
        if zone.ospf.dead_interval_s <= zone.ospf.hello_interval_s:
            c.err(zone.src, ("ospf", "dead_interval_s"), "dead_interval_s must be larger than hello_interval_s",
                  "bad-ospf-timers")


def _check_routed_blocks(c: Checker, zone) -> None:
    """public.routed: inside the public network, clear of the acquirable ranges, the gateway and
    each other (a block is handed to public tiers whole)."""
    p = zone.public
    seen: list[tuple[int, str]] = []
    for i, block in enumerate(p.routed):
        at = ("public", "routed", i)
        if not _canonical(c, zone.src, at, block, "routed block"):
            continue
        if not addr.contains(p.cidr, block):
            c.err(zone.src, at, f"routed block {block} lies outside the public network {p.cidr}",
                  "routed-block-outside")
            continue
        if addr.in_net(p.gateway, block):
            c.err(zone.src, at, f"routed block {block} covers the public gateway {p.gateway}", "routed-block-gateway")
        n = addr.net(block)
        for text in p.ranges:
            try:
                a, b = addr.ip_range(text)
            except Exception:
                continue  # reported with the ranges
            if a <= n.last and n.first <= b:
                c.err(zone.src, at, f"routed block {block} overlaps the public range {text}: routed addresses "
                      "are never acquired as public IPs", "routed-block-overlaps-range")
        for j, other in seen:
            if addr.overlaps(block, other):
                c.err(zone.src, at, f"routed block {block} overlaps routed block {other}", "routed-block-overlap")
        seen.append((i, block))


def _check_vxlan(c: Checker, zone) -> None:
    x = zone.vxlan
    low, high = x.vnis
    if not (1 <= low <= high <= MAX_VNI):
        c.err(zone.src, ("vxlan", "vnis"), f"vnis {low}-{high} must be a range within 1-{MAX_VNI}", "bad-vni-range")
    if not _canonical(c, zone.src, ("vxlan", "underlay", "cidr"), x.underlay_cidr, "underlay cidr"):
        return
    if addr.net(x.underlay_cidr).prefixlen > 30:
        c.err(zone.src, ("vxlan", "underlay", "cidr"), f"underlay {x.underlay_cidr} has no room for VTEP addresses: "
              "give a /30 or larger", "underlay-too-small")
        return
    first, last = addr.usable(x.underlay_cidr)
    for i, remote in enumerate(x.remotes):
        if not first <= int(addr.ip(remote)) <= last:
            c.err(zone.src, ("vxlan", "remotes", i), f"remote VTEP {remote} is not a usable address of the underlay "
                  f"{x.underlay_cidr}", "remote-outside-underlay")


def _check_acl(c: Checker, acl) -> None:
    numbers: dict[int, int] = {}
    for rule in acl.rules:
        if rule.number in numbers:
            c.err(rule.src, ("number",), f"rule number {rule.number} is used twice in ACL '{acl.name}'",
                  "duplicate-rule-number")
        numbers[rule.number] = 1
        if rule.ports is not None:
            if rule.protocol not in ("tcp", "udp"):
                c.err(rule.src, ("ports",), f"ports apply only to tcp or udp rules (protocol is {rule.protocol})",
                      "ports-without-tcp-udp")
            _ports_ok(c, rule.src, ("ports",), rule.ports)
        for field in ("icmp_type", "icmp_code"):
            if getattr(rule, field) is not None and rule.protocol != "icmp":
                c.err(rule.src, (field,), f"{field} applies only to icmp rules (protocol is {rule.protocol})",
                      "icmp-without-icmp")
        if rule.icmp_code is not None and rule.icmp_type is None:
            c.err(rule.src, ("icmp_code",), "icmp_code needs icmp_type", "icmp-code-without-type")
        for i, cidr in enumerate(rule.cidrs):
            _canonical(c, rule.src, ("cidrs", i), cidr, "cidr")


def _check_vpc(c: Checker, site: Site, vpc: Vpc) -> None:
    s = vpc.src
    zone = site.zones.get(vpc.zone)
    if zone is None and not site.exists("zone", vpc.zone):
        c.err(s, ("zone",), f"zone '{vpc.zone}' does not exist (zones: {', '.join(site.zones) or 'none'})",
              "unknown-zone")
    raw = s.doc.data
    if ("cidr" in raw) == ("netmask" in raw):
        c.err(s, (), "a VPC takes either cidr (NAT VPC) or netmask (routed VPC), not both or neither",
              "vpc-cidr-or-netmask")
        return
    if vpc.routed:
        for f in NAT_ONLY_FIELDS:
            if f in raw:
                c.err(s, (f,), f"{f} is only available in NAT VPCs (this VPC is routed: it has netmask)",
                      "nat-field-in-routed-vpc", key=True)
        if zone is not None and (zone.super_cidr is None or zone.ospf is None):
            c.err(s, ("netmask",), f"routed VPCs need super_cidr and ospf in zone '{zone.name}'",
                  "zone-not-routed")
        elif zone is not None and addr.is_canonical(zone.super_cidr) \
                and vpc.netmask < addr.net(zone.super_cidr).prefixlen:
            space = addr.net(zone.super_cidr).prefixlen
            c.err(s, ("netmask",), f"a /{vpc.netmask} VPC can never fit in zone '{zone.name}' super_cidr "
                  f"{zone.super_cidr} (a /{space}): give netmask {space} or more, or a larger super_cidr",
                  "netmask-too-large")
        for t in vpc.tiers:
            if t.cidr is not None:
                c.err(t.src, ("cidr",), "tiers of a routed VPC take netmask: the VPC's CIDR is allocated",
                      "routed-tier-cidr")
    else:
        _canonical(c, s, ("cidr",), vpc.cidr, "VPC cidr")
        if zone is not None and zone.public is None:
            c.err(s, ("cidr",), f"NAT VPCs need a public network in zone '{zone.name}'", "zone-without-public")
    want = 2 if vpc.redundant else 1
    if len(vpc.routers) != want:
        kind = "a redundant VPC has exactly 2 routers" if vpc.redundant else "a non-redundant VPC has exactly 1 router"
        c.err(s, ("routers",), f"{kind} (found {len(vpc.routers)})", "router-count")
    _check_tiers(c, site, vpc)
    _check_public(c, site, vpc)
    _check_vpn(c, vpc)
    _check_private_gateways(c, site, vpc)


def _tier_prefix_limit(vpc: Vpc) -> int:
    # a redundant tier needs the gateway plus one address per router: /29 at the smallest
    return 29 if vpc.redundant else 30


def _check_tiers(c: Checker, site: Site, vpc: Vpc) -> None:
    names: set[str] = set()
    fixed = []
    vpc_prefix = addr.net(vpc.cidr).prefixlen if vpc.cidr and addr.is_canonical(vpc.cidr) else vpc.netmask
    for t in vpc.tiers:
        if t.name in names:
            c.err(t.src, ("name",), f"tier '{t.name}' is defined twice", "duplicate-tier")
        names.add(t.name)
        if not site.exists("acl", t.acl):
            c.err(t.src, ("acl",), f"ACL list '{t.acl}' does not exist", "unknown-acl")
        if (t.cidr is None) == (t.netmask is None):
            c.err(t.src, (), "a tier takes either cidr or netmask, not both or neither", "tier-cidr-or-netmask")
            continue
        _check_isolation(c, site, vpc, t)
        if t.public and not _check_public_tier(c, site, vpc, t):
            continue
        prefix = t.netmask if t.cidr is None else addr.net(t.cidr).prefixlen
        if prefix > _tier_prefix_limit(vpc):
            c.err(t.src, ("netmask" if t.cidr is None else "cidr",),
                  f"tier '{t.name}' is too small: a {'redundant' if vpc.redundant else 'single-router'} VPC needs "
                  f"/{_tier_prefix_limit(vpc)} or larger", "tier-too-small")
        elif vpc_prefix is not None and prefix < vpc_prefix and not t.public:
            c.err(t.src, ("netmask" if t.cidr is None else "cidr",),
                  f"tier '{t.name}' (/{prefix}) is larger than its VPC (/{vpc_prefix})", "tier-outside-vpc")
        if t.cidr is not None and _canonical(c, t.src, ("cidr",), t.cidr, "tier cidr"):
            if vpc.cidr and addr.is_canonical(vpc.cidr) and not addr.contains(vpc.cidr, t.cidr) and not t.public:
                c.err(t.src, ("cidr",), f"tier '{t.name}' {t.cidr} lies outside the VPC cidr {vpc.cidr}",
                      "tier-outside-vpc")
            fixed.append(t)
        if t.gateway is not None and t.netmask is not None and t.cidr is None:
            c.err(t.src, ("gateway",), "gateway needs a fixed tier cidr (the tier's CIDR is allocated)",
                  "gateway-without-cidr")
    for i, a in enumerate(fixed):
        for b in fixed[:i]:
            if addr.overlaps(a.cidr, b.cidr):
                c.err(a.src, ("cidr",), f"tier '{a.name}' {a.cidr} overlaps tier '{b.name}' {b.cidr}",
                      "cidr-overlap")


def _check_isolation(c: Checker, site: Site, vpc: Vpc, t) -> None:
    """vlan or vxlan, and the fields that go with each."""
    zone = site.zones.get(vpc.zone)
    if not t.vxlan:
        if t.vni is not None:
            c.err(t.src, ("vni",), f"vni applies only to VXLAN tiers: give tier '{t.name}' isolation: vxlan",
                  "vni-on-vlan-tier")
        return
    if t.vlan is not None:
        c.err(t.src, ("vlan",), f"tier '{t.name}' is a VXLAN tier: it takes vni, not vlan", "vlan-on-vxlan-tier")
    if zone is None:
        return
    if zone.vxlan is None:
        c.err(t.src, ("isolation",), f"VXLAN tiers need vxlan in zone '{zone.name}' (underlay and vnis)",
              "zone-without-vxlan")
    elif t.mtu > zone.vxlan.mtu - VXLAN_OVERHEAD:
        c.err(t.src, ("mtu",) if "mtu" in t.src.doc.data["tiers"][t.src.path[-1]] else ("isolation",),
              f"tier '{t.name}' MTU {t.mtu} leaves no room for the {VXLAN_OVERHEAD} bytes of VXLAN encapsulation on "
              f"zone '{zone.name}' underlay MTU {zone.vxlan.mtu}: at most {zone.vxlan.mtu - VXLAN_OVERHEAD}",
              "vxlan-mtu-too-large")


def _check_public_tier(c: Checker, site: Site, vpc: Vpc, t) -> bool:
    """A public tier: NAT VPC, fixed cidr inside one routed block of the zone. False: stop checking
    its size and place against the VPC (it lies outside the VPC's cidr by design)."""
    zone = site.zones.get(vpc.zone)
    if vpc.routed:
        c.err(t.src, ("public",), f"public tiers exist only in NAT VPCs: a routed VPC's tiers are routed already",
              "public-tier-in-routed-vpc")
        return False
    if t.cidr is None:
        c.err(t.src, ("netmask",), f"public tier '{t.name}' takes a fixed cidr inside a routed block of zone "
              f"'{vpc.zone}' (public.routed), not netmask", "public-tier-netmask")
        return False
    if zone is None or zone.public is None or not addr.is_canonical(t.cidr):
        return True
    blocks = [b for b in zone.public.routed if addr.is_canonical(b)]
    if not any(addr.contains(b, t.cidr) for b in blocks):
        where = f"the routed blocks of zone '{zone.name}' ({', '.join(blocks)})" if blocks else \
            f"a routed block of zone '{zone.name}', which has none (public.routed)"
        c.err(t.src, ("cidr",), f"public tier '{t.name}' {t.cidr} lies inside none of {where}"
              if blocks else f"public tier '{t.name}' {t.cidr} must lie inside {where}", "public-tier-outside-block")
    return True


def _check_public(c: Checker, site: Site, vpc: Vpc) -> None:
    zone = site.zones.get(vpc.zone)
    ips = {}
    for p in vpc.public_ips:
        if p.name == SOURCE_NAT_IP and p.src.path[-1:] != ("source_nat",):
            c.err(p.src, ("name",), f"'{SOURCE_NAT_IP}' is reserved for the VPC's source NAT address",
                  "reserved-name")
            continue
        if p.name in ips:
            c.err(p.src, ("name",), f"public IP '{p.name}' is defined twice", "duplicate-public-ip")
        ips[p.name] = p
        if p.address is not None and zone is not None and zone.public is not None \
                and addr.is_canonical(zone.public.cidr):
            first, last = addr.usable(zone.public.cidr)
            a = int(addr.ip(p.address))
            if not first <= a <= last or p.address == zone.public.gateway:
                c.err(p.src, ("address",), f"public IP {p.address} is not a usable address of zone "
                      f"'{zone.name}' public network {zone.public.cidr}", "public-ip-outside")
            else:
                block = next((b for b in zone.public.routed if addr.is_canonical(b) and addr.in_net(p.address, b)), None)
                if block:
                    c.err(p.src, ("address",), f"public IP {p.address} lies in routed block {block} of zone "
                          f"'{zone.name}': those addresses belong to public tiers", "public-ip-in-routed-block")
    # what each public IP is used for: one static NAT, or port forwarding / LB rules
    use: dict[str, str] = {}

    def claim(name: str, kind: str, src: Src) -> bool:
        if name not in ips:
            c.err(src, ("public_ip",), f"public IP '{name}' does not exist in VPC '{vpc.name}'",
                  "unknown-public-ip")
            return False
        if name == SOURCE_NAT_IP:
            c.err(src, ("public_ip",), f"the source NAT IP cannot also be used for {kind}", "public-ip-in-use")
            return False
        prior = use.get(name)
        if prior is not None and (prior == "static NAT" or kind == "static NAT"):
            c.err(src, ("public_ip",), f"public IP '{name}' is already used for {prior}", "public-ip-in-use")
            return False
        use.setdefault(name, kind)
        return True

    for s in vpc.static_nat:
        claim(s.public_ip, "static NAT", s.src)
    listeners: dict[tuple[str, str], list[tuple[int, int, str]]] = defaultdict(list)

    def listen(name: str, proto: str, ports: tuple[int, int], what: str, src: Src, sub: tuple) -> None:
        for low, high, other in listeners[(name, proto)]:
            if ports[0] <= high and low <= ports[1]:
                c.err(src, sub, f"{proto} port {_ports(ports)} on public IP '{name}' collides with {other}",
                      "port-collision")
                return
        listeners[(name, proto)].append((ports[0], ports[1], what))

    for pf in vpc.port_forwarding:
        ok = _ports_ok(c, pf.src, ("public_port",), pf.public_port) and \
            _ports_ok(c, pf.src, ("private_port",), pf.private_port)
        if ok and pf.public_port[1] - pf.public_port[0] != pf.private_port[1] - pf.private_port[0]:
            c.err(pf.src, ("private_port",), f"port ranges differ in size: public {_ports(pf.public_port)}, "
                  f"private {_ports(pf.private_port)}", "port-range-size")
        if claim(pf.public_ip, "port forwarding", pf.src) and ok:
            listen(pf.public_ip, pf.protocol, pf.public_port,
                   f"port forwarding {pf.protocol}/{_ports(pf.public_port)}", pf.src, ("public_port",))
    lb_names: set[str] = set()
    for lb in vpc.load_balancers:
        if lb.name in lb_names:
            c.err(lb.src, ("name",), f"load balancer '{lb.name}' is defined twice", "duplicate-load-balancer")
        lb_names.add(lb.name)
        if lb.stickiness == "cookie" and lb.protocol != "http":
            c.err(lb.src, ("stickiness",), "cookie stickiness needs protocol http", "cookie-needs-http")
        if lb.health_check.http_path is not None and lb.protocol != "http":
            c.err(lb.src, ("health_check", "http_path"), "http_path needs protocol http", "http-path-needs-http")
        if claim(lb.public_ip, "load balancing", lb.src):
            listen(lb.public_ip, "tcp", (lb.public_port, lb.public_port), f"load balancer '{lb.name}'",
                   lb.src, ("public_port",))


def _ports(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}-{p[1]}"


def _check_proposals(c: Checker, src: Src, field: str, proposals, esp: bool) -> None:
    for i, proposal in enumerate(proposals):
        parts = proposal.split("-")
        enc = [p for p in parts if p in ENCRYPTION]
        unknown = [p for p in parts if p not in ENCRYPTION | INTEGRITY | PRF | DH_GROUPS]
        aead = any("gcm" in p or "ccm" in p or "poly1305" in p for p in enc)
        if unknown:
            c.err(src, (field, i), f"unknown algorithm '{unknown[0]}' in proposal '{proposal}'", "unknown-proposal")
        elif not enc:
            c.err(src, (field, i), f"proposal '{proposal}' names no encryption algorithm", "unknown-proposal")
        elif not aead and not any(p in INTEGRITY for p in parts):
            c.err(src, (field, i), f"proposal '{proposal}' needs an integrity algorithm", "unknown-proposal")
        elif not esp and not any(p in DH_GROUPS - {"esn", "noesn"} for p in parts):
            c.err(src, (field, i), f"IKE proposal '{proposal}' needs a DH group", "unknown-proposal")


def _check_vpn(c: Checker, vpc: Vpc) -> None:
    names: set[str] = set()
    peers: dict[str, str] = {}
    vpc_ok = vpc.cidr is not None and addr.is_canonical(vpc.cidr)
    if (vpc.site_to_site or vpc.remote_access) and not vpc.routed and not vpc.source_nat:
        c.err(vpc.src, ("vpn",), "VPNs end on the VPC's source NAT address: set source_nat: true",
              "vpn-needs-source-nat", key=True)
    for v in vpc.site_to_site:
        if v.name in names:
            c.err(v.src, ("name",), f"site-to-site VPN '{v.name}' is defined twice", "duplicate-vpn")
        names.add(v.name)
        if v.peer in peers:
            c.err(v.src, ("peer",), f"peer {v.peer} is already the peer of site-to-site VPN '{peers[v.peer]}'",
                  "duplicate-vpn-peer")
        peers.setdefault(v.peer, v.name)
        for i, cidr in enumerate(v.peer_cidrs):
            if _canonical(c, v.src, ("peer_cidrs", i), cidr, "peer cidr") and vpc_ok and addr.overlaps(cidr, vpc.cidr):
                c.err(v.src, ("peer_cidrs", i), f"peer cidr {cidr} overlaps the VPC cidr {vpc.cidr}", "cidr-overlap")
        for i, cidr in enumerate(v.local_cidrs or ()):
            if _canonical(c, v.src, ("local_cidrs", i), cidr, "local cidr") and vpc_ok \
                    and not addr.contains(vpc.cidr, cidr):
                c.err(v.src, ("local_cidrs", i), f"local cidr {cidr} lies outside the VPC cidr {vpc.cidr}",
                      "cidr-outside-vpc")
        _check_proposals(c, v.src, "ike_proposals", v.ike_proposals, esp=False)
        _check_proposals(c, v.src, "esp_proposals", v.esp_proposals, esp=True)
        if v.ike_version == 1 and any("gcm" in p or "ccm" in p for p in v.ike_proposals):
            c.err(v.src, ("ike_proposals",), "IKEv1 does not support AEAD (gcm/ccm) IKE proposals",
                  "unknown-proposal")
        # IKEv1 negotiates one traffic selector pair per CHILD_SA: charon would cover only the first
        # local and the first peer network, and every other pair would silently get no tunnel
        local = v.local_cidrs if v.local_cidrs else tuple(t.name for t in vpc.tiers)
        if v.ike_version == 1 and (len(v.peer_cidrs) > 1 or len(local) > 1):
            where = ("peer_cidrs",) if len(v.peer_cidrs) > 1 else ("local_cidrs",) if v.local_cidrs else ("ike_version",)
            c.err(v.src, where, "IKEv1 carries one local and one peer network per tunnel (charon would use only the "
                  "first pair): give exactly one of each in local_cidrs and peer_cidrs, or use ike_version 2",
                  "ikev1-one-network")
    ra = vpc.remote_access
    if ra is not None and _canonical(c, ra.src, ("pool",), ra.pool, "VPN pool"):  # tiers: check_placement
        for v in vpc.site_to_site:
            for cidr in v.peer_cidrs:
                if addr.is_canonical(cidr) and addr.overlaps(cidr, ra.pool):
                    c.err(ra.src, ("pool",), f"VPN pool {ra.pool} overlaps peer cidr {cidr} of site-to-site "
                          f"VPN '{v.name}'", "cidr-overlap")
    if ra is not None:
        users: set[str] = set()
        for i, u in enumerate(ra.users):
            if u.name in users:
                c.err(ra.src, ("users", i, "name"), f"VPN user '{u.name}' is defined twice", "duplicate-vpn-user")
            users.add(u.name)


def _check_private_gateways(c: Checker, site: Site, vpc: Vpc) -> None:
    names: set[str] = set()
    routes: list[tuple[str, str]] = []
    for g in vpc.private_gateways:
        if g.name in names:
            c.err(g.src, ("name",), f"private gateway '{g.name}' is defined twice", "duplicate-private-gateway")
        names.add(g.name)
        if not site.exists("acl", g.acl):
            c.err(g.src, ("acl",), f"ACL list '{g.acl}' does not exist", "unknown-acl")
        network = str(addr.net(g.address).cidr)
        # a /31 (RFC 3021) has no network or broadcast address
        low, high = addr.usable(network) if addr.net(network).prefixlen <= 30 else (addr.net(network).first,
                                                                                   addr.net(network).last)
        own = g.address.split("/")[0]
        if not low <= int(addr.ip(own)) <= high:
            c.err(g.src, ("address",), f"{own} is not a usable host address of {network} (network or broadcast "
                  "address)", "address-not-usable")
        if not addr.in_net(g.gateway, network) or g.gateway == own:
            c.err(g.src, ("gateway",), f"gateway {g.gateway} must be another address in {network}",
                  "gateway-outside")
        elif not low <= int(addr.ip(g.gateway)) <= high:
            c.err(g.src, ("gateway",), f"gateway {g.gateway} is not a usable host address of {network} (network "
                  "or broadcast address)", "address-not-usable")
        if vpc.cidr and addr.is_canonical(vpc.cidr) and addr.overlaps(network, vpc.cidr):
            c.err(g.src, ("address",), f"private gateway network {network} overlaps the VPC cidr {vpc.cidr}",
                  "cidr-overlap")
        for i, route in enumerate(g.routes):
            if not _canonical(c, g.src, ("routes", i), route, "route"):
                continue
            clash = next(((o, owner) for o, owner in routes if addr.overlaps(route, o)), None)
            if route == "0.0.0.0/0" and not vpc.routed:
                c.err(g.src, ("routes", i), "the default route of a NAT VPC leaves through the public uplink; "
                      "route specific networks through a private gateway", "route-conflict")
            elif vpc.cidr and addr.is_canonical(vpc.cidr) and addr.overlaps(route, vpc.cidr):
                c.err(g.src, ("routes", i), f"route {route} overlaps the VPC cidr {vpc.cidr}", "route-conflict")
            elif clash:
                c.err(g.src, ("routes", i), f"route {route} overlaps route {clash[0]} of private gateway "
                      f"'{clash[1]}'", "route-conflict")
            else:
                routes.append((route, g.name))


def _check_zone_wide(c: Checker, site: Site) -> None:
    """VLAN pins unique per zone; NAT VPC CIDRs of one zone do not overlap; pinned public IPs unique."""
    by_zone = defaultdict(list)
    for vpc in site.vpcs.values():
        by_zone[vpc.zone].append(vpc)
    for zone_name, vpcs in sorted(by_zone.items()):
        zone = site.zones.get(zone_name)
        vlans: dict[int, str] = {}

        def pin(vlan, what: str, src: Src, sub: tuple) -> None:
            if vlan is None:
                return
            if vlan in vlans:
                c.err(src, sub, f"VLAN {vlan} of {what} is already used by {vlans[vlan]} in zone '{zone_name}'",
                      "duplicate-vlan")
            else:
                vlans[vlan] = what

        if zone is not None:
            pin(zone.public.vlan if zone.public else None, "the public network", zone.src, ("public", "vlan"))
            pin(zone.ospf.transit_vlan if zone.ospf else None, "the OSPF transit link", zone.src,
                ("ospf", "transit", "vlan"))
            pin(zone.vxlan.underlay_vlan if zone.vxlan else None, "the VXLAN underlay", zone.src,
                ("vxlan", "underlay", "vlan"))
        vnis: dict[int, str] = {}
        public_tiers = [(vpc, t) for vpc in vpcs for t in vpc.tiers
                        if t.public and t.cidr and addr.is_canonical(t.cidr)]
        addresses: dict[str, str] = {}
        cidrs: list[tuple[str, Vpc]] = []
        for vpc in vpcs:
            for t in vpc.tiers:
                pin(t.vlan, f"tier '{vpc.name}/{t.name}'", t.src, ("vlan",))
                if t.vni is not None and t.vxlan:
                    if t.vni in vnis:
                        c.err(t.src, ("vni",), f"VNI {t.vni} of tier '{vpc.name}/{t.name}' is already used by "
                              f"{vnis[t.vni]} in zone '{zone_name}'", "duplicate-vni")
                    vnis.setdefault(t.vni, f"tier '{vpc.name}/{t.name}'")
                # a public tier's addresses are the zone's: no other VPC's tier may use them
                if t.cidr and addr.is_canonical(t.cidr):
                    for owner, pt in public_tiers:
                        if owner is vpc or not addr.overlaps(pt.cidr, t.cidr):
                            continue
                        if t.public and owner.name > vpc.name:
                            continue  # two public tiers: reported once, at the later VPC
                        c.err(t.src, ("cidr",), f"tier '{vpc.name}/{t.name}' {t.cidr} overlaps public tier "
                                  f"'{owner.name}/{pt.name}' {pt.cidr} of zone '{zone_name}'", "public-tier-overlap")
            for g in vpc.private_gateways:
                pin(g.vlan, f"private gateway '{vpc.name}/{g.name}'", g.src, ("vlan",))
            for p in vpc.public_ips:
                if p.address is None:
                    continue
                if p.address in addresses:
                    c.err(p.src, ("address",), f"public IP {p.address} is already used by {addresses[p.address]}",
                          "duplicate-public-ip")
                addresses.setdefault(p.address, f"'{vpc.name}/{p.name}'")
            if vpc.cidr and addr.is_canonical(vpc.cidr):
                for other_cidr, other in cidrs:
                    if addr.overlaps(vpc.cidr, other_cidr):
                        c.err(vpc.src, ("cidr",), f"VPC cidr {vpc.cidr} overlaps VPC '{other.name}' "
                              f"{other_cidr} in zone '{zone_name}'", "cidr-overlap")
                cidrs.append((vpc.cidr, vpc))


def check_placement(site: Site, tier_cidrs: dict[tuple[str, str], str]) -> list[Diagnostic]:
    """Checks that need every tier's CIDR (after allocation): private addresses lie in tiers, and
    tiers do not overlap VPN pools or private gateway networks."""
    c = Checker()
    for vpc in site.vpcs.values():
        tiers = [(t, tier_cidrs[(vpc.name, t.name)]) for t in vpc.tiers if (vpc.name, t.name) in tier_cidrs]

        def inside(address: str, src: Src, sub: tuple, what: str) -> None:
            for t, cidr in tiers:
                if addr.in_net(address, cidr):
                    reserved = reserved_addresses(vpc, t, cidr)
                    if address in reserved:
                        c.err(src, sub, f"{what} {address} is the {reserved[address]} of tier '{t.name}'",
                              "private-ip-reserved")
                    return
            c.err(src, sub, f"{what} {address} lies in no tier of VPC '{vpc.name}'", "private-ip-outside")

        def not_public(address: str, src: Src, sub: tuple, what: str) -> None:
            t = next((t for t, cidr in tiers if t.public and addr.in_net(address, cidr)), None)
            if t is not None:
                c.err(src, sub, f"{what} {address} lies in public tier '{t.name}', whose hosts keep their own "
                      "public addresses: no NAT or load balancer may target them", "nat-targets-public-tier")

        for s in vpc.static_nat:
            inside(s.private_ip, s.src, ("private_ip",), "private IP")
            not_public(s.private_ip, s.src, ("private_ip",), "static NAT target")
        for pf in vpc.port_forwarding:
            inside(pf.private_ip, pf.src, ("private_ip",), "private IP")
            not_public(pf.private_ip, pf.src, ("private_ip",), "port forwarding target")
        for lb in vpc.load_balancers:
            for i, m in enumerate(lb.members):
                inside(m, lb.src, ("members", i), "load balancer member")
                not_public(m, lb.src, ("members", i), "load balancer member")
            # one tier per load balancer (as in CloudStack): its ingress list guards the listener
            homes = {t.name for t, cidr in tiers for m in lb.members if addr.in_net(m, cidr)}
            if len(homes) > 1:
                c.err(lb.src, ("members",), f"load balancer '{lb.name}' has members in several tiers "
                      f"({', '.join(sorted(homes))}): all members must lie in one tier", "lb-members-span-tiers")
            seen: set[str] = set()
            for i, m in enumerate(lb.members):
                if m in seen:
                    c.err(lb.src, ("members", i), f"member {m} is listed twice", "duplicate-lb-member")
                seen.add(m)
        others = []
        if vpc.remote_access is not None and addr.is_canonical(vpc.remote_access.pool):
            others.append((vpc.remote_access.pool, "the remote-access VPN pool"))
        for g in vpc.private_gateways:
            others.append((str(addr.net(g.address).cidr), f"private gateway '{g.name}'"))
        for t, cidr in tiers:
            if t.gateway is not None:
                first, last = addr.usable(cidr)
                routers = len(vpc.routers) if vpc.redundant else 0
                if not first <= int(addr.ip(t.gateway)) <= last - routers:
                    c.err(t.src, ("gateway",), f"gateway {t.gateway} must be a usable address of {cidr} "
                          "that no router takes", "gateway-outside")
            for other, what in others:
                if addr.overlaps(cidr, other):
                    c.err(t.src, ("cidr",) if t.cidr else ("netmask",),
                          f"tier '{t.name}' {cidr} overlaps {what} {other}", "cidr-overlap")
    _check_remotes(c, site, tier_cidrs)
    return c.diagnostics + check_guest_services(site, tier_cidrs)


def _check_remotes(c: Checker, site: Site, tier_cidrs: dict[tuple[str, str], str]) -> None:
    """A remote VTEP inside a tier would be routed into that tier, not reached on the underlay."""
    for zone in site.zones.values():
        if zone.vxlan is None:
            continue
        for i, remote in enumerate(zone.vxlan.remotes):
            for (vpc_name, tier_name), cidr in sorted(tier_cidrs.items()):
                if site.vpcs[vpc_name].zone == zone.name and addr.in_net(remote, cidr):
                    c.err(zone.src, ("vxlan", "remotes", i), f"remote VTEP {remote} lies inside tier "
                          f"'{vpc_name}/{tier_name}' {cidr}", "remote-in-tier")
                    break


def check_guest_services(site: Site, tier_cidrs: dict[tuple[str, str], str]) -> list[Diagnostic]:
    """Tier hosts and DHCP ranges (after allocation): inside their tier, clear of the gateway and the
    routers' addresses and of each other; host names, addresses and MACs unique in the VPC."""
    c = Checker()
    for vpc in site.vpcs.values():
        names: dict[str, str] = {}
        addresses: dict[str, str] = {}
        macs: dict[str, str] = {}
        for t in vpc.tiers:
            cidr = tier_cidrs.get((vpc.name, t.name))
            for h in t.hosts:
                if h.name in names:
                    c.err(h.src, ("name",), f"host name '{h.name}' is already used in tier '{names[h.name]}'",
                          "duplicate-host")
                names.setdefault(h.name, t.name)
                if h.address in addresses:
                    c.err(h.src, ("address",), f"host address {h.address} is already used by host "
                          f"'{addresses[h.address]}'", "duplicate-host-address")
                addresses.setdefault(h.address, h.name)
                if h.mac is not None:
                    first = int(h.mac[:2], 16)
                    if first & 1 or h.mac == "00:00:00:00:00:00":
                        c.err(h.src, ("mac",), f"MAC address {h.mac} is not a usable unicast address (all zeros, "
                              "or the first octet's lowest bit set: multicast)", "mac-not-unicast")
                    elif h.mac in macs:
                        c.err(h.src, ("mac",), f"MAC address {h.mac} is already used by host '{macs[h.mac]}'",
                              "duplicate-mac")
                    macs.setdefault(h.mac, h.name)
                if cidr is not None:
                    _check_host_place(c, vpc, t, cidr, h)
            if t.dhcp is not None and t.dhcp.range is not None and cidr is not None:
                _check_dhcp_range(c, vpc, t, cidr)
    return c.diagnostics


def _check_host_place(c: Checker, vpc: Vpc, t, cidr: str, h) -> None:
    first, last = addr.usable(cidr)
    if not first <= int(addr.ip(h.address)) <= last:
        c.err(h.src, ("address",), f"host '{h.name}' {h.address} is not a usable address of tier '{t.name}' {cidr}",
              "host-outside-tier")
        return
    reserved = reserved_addresses(vpc, t, cidr)
    if h.address in reserved:
        c.err(h.src, ("address",), f"host '{h.name}' {h.address} is the {reserved[h.address]} of tier '{t.name}'",
              "host-reserved")


def _check_dhcp_range(c: Checker, vpc: Vpc, t, cidr: str) -> None:
    src, text = t.dhcp.src, "-".join(t.dhcp.range)
    try:
        # strict dotted quads (netaddr alone would read "10.1.2" as 10.1.0.2, dnsmasq would not)
        a, b = (int(ipaddress.IPv4Address(x)) for x in t.dhcp.range)
    except ValueError:
        c.err(src, ("range",), f"'{text}' is not a range FIRST-LAST of IPv4 addresses", "bad-dhcp-range")
        return
    if a > b:
        c.err(src, ("range",), f"DHCP range {text} is reversed", "bad-dhcp-range")
        return
    first, last = addr.usable(cidr)
    if a < first or b > last:
        c.err(src, ("range",), f"DHCP range {text} lies outside the usable addresses of tier '{t.name}' {cidr}",
              "dhcp-range-outside")
        return
    for address, what in sorted(reserved_addresses(vpc, t, cidr).items(), key=lambda x: int(addr.ip(x[0]))):
        if a <= int(addr.ip(address)) <= b:
            c.err(src, ("range",), f"DHCP range {text} covers {address}, the {what} of tier '{t.name}'",
                  "dhcp-range-reserved")
    for h in t.hosts:
        if a <= int(addr.ip(h.address)) <= b:
            c.err(src, ("range",), f"DHCP range {text} covers the address {h.address} of host '{h.name}'",
                  "dhcp-range-overlaps-host")


def reserved_addresses(vpc: Vpc, tier, cidr: str) -> dict[str, str]:
    """The addresses of a tier that belong to the routers: gateway and each router's own."""
    out = {tier.gateway or addr.to_ip(addr.usable(cidr)[0]): "gateway"}
    if vpc.redundant:
        for i, r in enumerate(vpc.routers):
            out[addr.router_address(cidr, i)] = f"address of router '{r.name}'"
    return out


# --- warnings: configuration that builds but cannot do what it says, or surprises --------------

def _warn(c: Checker, src: Src, sub: tuple, message: str, code: str, key: bool = False) -> None:
    c.diagnostics.append(Diagnostic(src.loc(*sub, key=key), message, code, "warning"))


def check_warnings(site: Site) -> list[Diagnostic]:
    """Warnings that need only the intent: ACL lists nothing uses, NAT VPCs inside the space routed
    VPCs are carved from."""
    c = Checker()
    used = {t.acl for v in site.vpcs.values() for t in v.tiers} | \
        {g.acl for v in site.vpcs.values() for g in v.private_gateways}
    unknown_users = any(kind == "vpc" for kind, _ in site.unchecked)  # a VPC left out may use any list
    for acl in site.acls.values():
        if not acl.builtin and acl.name not in used and not unknown_users:
            _warn(c, acl.src, ("name",), f"ACL list '{acl.name}' is used by no tier or private gateway: its "
                  "rules have no effect", "unused-acl")
    for vpc in site.vpcs.values():
        zone = site.zones.get(vpc.zone)
        if vpc.routed or vpc.cidr is None or zone is None or zone.super_cidr is None \
                or not addr.is_canonical(vpc.cidr) or not addr.is_canonical(zone.super_cidr):
            continue
        if addr.overlaps(vpc.cidr, zone.super_cidr):
            _warn(c, vpc.src, ("cidr",), f"VPC '{vpc.name}' gives cidr {vpc.cidr}, so it is a NAT VPC (source NAT "
                  f"through a public IP), although {vpc.cidr} lies in zone '{zone.name}' super_cidr "
                  f"{zone.super_cidr}, the space routed VPCs are carved from; for a routed VPC (OSPF, no NAT) "
                  f"write `netmask: {addr.net(vpc.cidr).prefixlen}` instead of `cidr:`, or move the NAT VPC "
                  "outside the super_cidr", "nat-vpc-in-super-cidr")
    return c.diagnostics


def _acl_admits(acl, protocol: str, ports: tuple[int, int] | None) -> bool:
    """Whether any rule of ``acl`` allows some ingress of ``protocol`` on ``ports`` (None: any
    traffic). Deliberately generous: a warning is given only when nothing could ever pass."""
    numbers = {"tcp": 6, "udp": 17}
    for rule in acl.rules:
        if rule.action != "allow" or rule.traffic != "ingress":
            continue
        if ports is None or rule.protocol == "all":
            return True
        if rule.protocol != protocol and rule.protocol != numbers.get(protocol):
            continue
        if rule.ports is None or (rule.ports[0] <= ports[1] and ports[0] <= rule.ports[1]):
            return True
    return False


def check_placement_warnings(site: Site, tier_cidrs: dict[tuple[str, str], str]) -> list[Diagnostic]:
    """Static NAT, port forwards and load balancers into a tier whose ACL list lets none of their
    traffic in (a tier without `acl` gets default_deny): they can never carry a connection."""
    c = Checker()
    for vpc in site.vpcs.values():
        tiers = [(t, tier_cidrs[(vpc.name, t.name)]) for t in vpc.tiers if (vpc.name, t.name) in tier_cidrs]

        def dead(address: str, protocol: str, ports, what: str, src: Src, sub: tuple) -> None:
            tier = next((t for t, cidr in tiers if addr.in_net(address, cidr)), None)
            acl = site.acls.get(tier.acl) if tier is not None else None
            if acl is None or _acl_admits(acl, protocol, ports):
                return
            why = " (the default: the tier gives no acl)" if "acl" not in tier.src.doc.data["tiers"][
                tier.src.path[-1]] else ""
            traffic = "any traffic" if ports is None else f"{protocol}/{_ports(ports)}"
            _warn(c, src, sub, f"{what} can never connect: tier '{tier.name}' uses ACL list '{acl.name}'{why}, "
                  f"which allows no {traffic} ingress; give the tier an ACL list that allows it", "unreachable-nat")

        for s in vpc.static_nat:
            dead(s.private_ip, "all", None, f"static NAT {s.public_ip} -> {s.private_ip}", s.src, ("private_ip",))
        for pf in vpc.port_forwarding:
            dead(pf.private_ip, pf.protocol, pf.private_port, f"port forwarding {pf.protocol}/{_ports(pf.public_port)} "
                 f"-> {pf.private_ip}:{_ports(pf.private_port)}", pf.src, ("private_ip",))
        for lb in vpc.load_balancers:
            if lb.members:
                dead(lb.members[0], "tcp", (lb.private_port, lb.private_port), f"load balancer '{lb.name}'",
                     lb.src, ("members",))
    return c.diagnostics
