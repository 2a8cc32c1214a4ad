"""Deterministic, stable allocation (a change never moves another object's value) and its lock file.

Order of precedence inside every pool: values the operator pinned, then values recorded in
``allocations.lock.yaml`` (kept as long as their object still exists and still fits), then new
requests in name order, each taking the lowest free value or block. A pin that collides with a
locked value is an error rather than a silent move, so no object's allocation ever changes
because another object changed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import yaml

from ..site import addr
from ..site.loader import _Loader
from ..errors import Diagnostic
from ..site.intent import Site, Src, Vpc

LOCK_HEADER = (
    "# allocations.lock.yaml: written by vpcgen build, committed by the operator.\n"
    "# Records every address, VLAN and id vpcgen chose, so that later changes never move them.\n"
    "# Do not edit by hand; `vpcgen build --locked` fails if this file would change.\n"
)
VRID_POOL = (1, 255)
AREA_POOL = (1, 65535)


@dataclass
class Allocation:
    vpc_cidrs: dict = field(default_factory=dict)  # vpc -> cidr (routed: allocated; NAT: as given)
    tier_cidrs: dict = field(default_factory=dict)  # (vpc, tier) -> cidr
    tier_vlans: dict = field(default_factory=dict)  # (vpc, tier) -> vlan
    sync_vlans: dict = field(default_factory=dict)  # vpc -> vlan (redundant VPCs)
    public_ips: dict = field(default_factory=dict)  # (vpc, public ip name) -> address
    vrids: dict = field(default_factory=dict)  # vpc -> VRRP router id (redundant VPCs)
    areas: dict = field(default_factory=dict)  # vpc -> OSPF area id (routed VPCs)
    transit: dict = field(default_factory=dict)  # (vpc, router) -> transit address (routed VPCs)
    tier_vnis: dict = field(default_factory=dict)  # (vpc, tier) -> VNI (VXLAN tiers)
    vteps: dict = field(default_factory=dict)  # (vpc, router) -> VTEP address (VPCs with a VXLAN tier)
    diagnostics: list = field(default_factory=list)

    def lock_data(self, site: Site) -> dict:
        """Only what vpcgen chose (not what the operator pinned), per VPC."""
        out: dict = {}
        for vpc in site.vpcs.values():
            entry: dict = {"zone": vpc.zone}
            if vpc.routed and vpc.name in self.vpc_cidrs:
                entry["cidr"] = self.vpc_cidrs[vpc.name]
                entry["ospf_area"] = self.areas[vpc.name]
                entry["transit"] = {r.name: self.transit[(vpc.name, r.name)] for r in vpc.routers
                                    if (vpc.name, r.name) in self.transit}
            if vpc.name in self.vrids:
                entry["vrid"] = self.vrids[vpc.name]
            vteps = {r.name: self.vteps[(vpc.name, r.name)] for r in vpc.routers if (vpc.name, r.name) in self.vteps}
            if vteps:
                entry["vteps"] = vteps
            if vpc.name in self.sync_vlans:
                entry["sync_vlan"] = self.sync_vlans[vpc.name]
            ips = {p.name: self.public_ips[(vpc.name, p.name)] for p in vpc.public_ips
                   if p.address is None and (vpc.name, p.name) in self.public_ips}
            if ips:
                entry["public_ips"] = dict(sorted(ips.items()))
            tiers = {}
            for t in sorted(vpc.tiers, key=lambda t: t.name):
                te = {}
                if t.cidr is None and (vpc.name, t.name) in self.tier_cidrs:
                    te["cidr"] = self.tier_cidrs[(vpc.name, t.name)]
                if t.vlan is None and (vpc.name, t.name) in self.tier_vlans:
                    te["vlan"] = self.tier_vlans[(vpc.name, t.name)]
                if t.vni is None and (vpc.name, t.name) in self.tier_vnis:
                    te["vni"] = self.tier_vnis[(vpc.name, t.name)]
                if te:
                    tiers[t.name] = te
            if tiers:
                entry["tiers"] = tiers
            out[vpc.name] = entry
        return {"vpcs": out}


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter: same text, ~10x faster


def dump_lock(data: dict) -> str:
    return LOCK_HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=1000)


class _Pool:
    """Integers in [low, high] handed out lowest-first; ``used`` holds what is taken."""

    def __init__(self, low: int, high: int, used: set[int]):
        self.low, self.high, self.used, self._next = low, high, used, low

    def take(self) -> int | None:
        while self._next <= self.high and self._next in self.used:
            self._next += 1
        if self._next > self.high:
            return None
        value = self._next
        self.used.add(value)
        return value


class _RangesPool:
    """Addresses from several ranges (ints), lowest first."""

    def __init__(self, ranges: list[tuple[int, int]], used: set[int]):
        self.pools = [_Pool(a, b, used) for a, b in sorted(ranges)]

    def take(self) -> int | None:
        for pool in self.pools:
            value = pool.take()
            if value is not None:
                return value
        return None


def lowest_free_block(space: str, prefixlen: int, used: list[str]) -> str | None:
    """The lowest aligned /prefixlen inside ``space`` that overlaps nothing in ``used``."""
    outer = addr.net(space)
    size = 1 << (32 - prefixlen)
    taken = sorted((addr.net(u).first, addr.net(u).last) for u in used)
    candidate = outer.first
    i = 0
    while candidate + size - 1 <= outer.last:
        end = candidate + size - 1
        while i < len(taken) and taken[i][1] < candidate:
            i += 1
        clash = next(((a, b) for a, b in taken[i:] if a <= end and b >= candidate), None)
        if clash is None:
            return f"{addr.to_ip(candidate)}/{prefixlen}"
        candidate = ((clash[1] + 1 + size - 1) // size) * size
    return None


def _lock_entries(lock_data) -> dict:
    if not isinstance(lock_data, dict) or not isinstance(lock_data.get("vpcs"), dict):
        return {}
    return {k: v for k, v in lock_data["vpcs"].items() if isinstance(v, dict)}


def _get(mapping, *keys):
    for k in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(k)
    return mapping


def allocate(site: Site, lock_data) -> Allocation:
    alloc = Allocation()
    locked = _lock_entries(lock_data)
    # zone-scoped values are only reused while the VPC stays in the zone it was allocated in
    locked = {name: entry for name, entry in locked.items()
              if name in site.vpcs and entry.get("zone") == site.vpcs[name].zone}
    by_zone: dict[str, list[Vpc]] = defaultdict(list)
    for vpc in site.vpcs.values():
        if vpc.zone in site.zones:
            by_zone[vpc.zone].append(vpc)
    for zone_name in sorted(by_zone):
        vpcs = sorted(by_zone[zone_name], key=lambda v: v.name)
        _routed_cidrs(site, zone_name, vpcs, locked, alloc)
        for vpc in vpcs:
            if vpc.cidr is not None:
                alloc.vpc_cidrs[vpc.name] = vpc.cidr
            if vpc.name in alloc.vpc_cidrs:
                _tier_cidrs(vpc, alloc.vpc_cidrs[vpc.name], locked.get(vpc.name, {}), alloc)
        _vlans(site, zone_name, vpcs, locked, alloc)
        _public_ips(site, zone_name, vpcs, locked, alloc)
        # VRRP adverts travel only on each VPC's own sync link: a VRID is unique per link, not per zone
        for vpc in vpcs:
            _small_ids([vpc], locked, alloc, "vrid", VRID_POOL, alloc.vrids, lambda v: v.redundant,
                       f"VRRP router ids of the sync link of VPC '{vpc.name}' ({VRID_POOL[0]}-{VRID_POOL[1]})")
        _small_ids(vpcs, locked, alloc, "ospf_area", AREA_POOL, alloc.areas, lambda v: v.routed,
                   f"OSPF area ids of zone '{zone_name}' ({AREA_POOL[0]}-{AREA_POOL[1]})")
        _transit(site, zone_name, vpcs, locked, alloc)
        _vnis(site, zone_name, vpcs, locked, alloc)
        _vteps(site, zone_name, vpcs, locked, alloc)
    return alloc


def _err(alloc: Allocation, src: Src, sub: tuple, message: str, code: str) -> None:
    alloc.diagnostics.append(Diagnostic(src.loc(*sub), message, code))


def _routed_cidrs(site: Site, zone_name: str, vpcs: list[Vpc], locked: dict, alloc: Allocation) -> None:
    zone = site.zones[zone_name]
    routed = [v for v in vpcs if v.routed]
    if not routed or zone.super_cidr is None or not addr.is_canonical(zone.super_cidr):
        return
    used = [v.cidr for v in vpcs if v.cidr is not None and addr.is_canonical(v.cidr)]
    fresh = []
    for vpc in routed:
        cidr = _get(locked, vpc.name, "cidr")
        if isinstance(cidr, str) and _valid_block(cidr, zone.super_cidr, vpc.netmask, used):
            alloc.vpc_cidrs[vpc.name] = cidr
            used.append(cidr)
        else:
            fresh.append(vpc)
    for vpc in fresh:
        if vpc.netmask < addr.net(zone.super_cidr).prefixlen:
            _err(alloc, vpc.src, ("netmask",), f"a /{vpc.netmask} VPC can never fit in zone '{zone_name}' "
                 f"super_cidr {zone.super_cidr}", "netmask-too-large")
            continue
        cidr = lowest_free_block(zone.super_cidr, vpc.netmask, used)
        if cidr is None:
            _err(alloc, vpc.src, ("netmask",), f"zone '{zone_name}' super_cidr {zone.super_cidr} is exhausted: "
                 f"no free /{vpc.netmask} left for VPC '{vpc.name}' ({len(used)} VPC CIDRs already take "
                 f"{_share(zone.super_cidr, used)} of it)", "pool-exhausted")
            continue
        alloc.vpc_cidrs[vpc.name] = cidr
        used.append(cidr)


def _share(space: str, used: list[str]) -> str:
    total = addr.net(space).size
    taken = sum(addr.net(u).size for u in used if addr.contains(space, u))
    return f"{100 * taken // total}%"


def _valid_block(cidr: str, space: str, prefixlen: int, used: list[str]) -> bool:
    try:
        n = addr.net(cidr)
    except Exception:
        return False
    return (n.prefixlen == prefixlen and addr.is_canonical(cidr) and addr.contains(space, cidr)
            and not any(addr.overlaps(cidr, u) for u in used))


def _tier_cidrs(vpc: Vpc, vpc_cidr: str, locked: dict, alloc: Allocation) -> None:
    used = [t.cidr for t in vpc.tiers if t.cidr is not None and addr.is_canonical(t.cidr)]
    for t in vpc.tiers:
        if t.cidr is not None:
            alloc.tier_cidrs[(vpc.name, t.name)] = t.cidr
    if vpc.remote_access is not None and addr.is_canonical(vpc.remote_access.pool):
        used.append(vpc.remote_access.pool)
    used += [str(addr.net(g.address).cidr) for g in vpc.private_gateways]
    fresh = []
    for t in sorted(vpc.tiers, key=lambda t: t.name):
        if t.cidr is not None or t.netmask is None:
            continue
        cidr = _get(locked, "tiers", t.name, "cidr")
        if isinstance(cidr, str) and _valid_block(cidr, vpc_cidr, t.netmask, used):
            alloc.tier_cidrs[(vpc.name, t.name)] = cidr
            used.append(cidr)
        else:
            if isinstance(cidr, str) and _valid_block(cidr, vpc_cidr, t.netmask, []):
                clash = next(u for u in used if addr.overlaps(cidr, u))
                _err(alloc, t.src, ("netmask",), f"tier '{t.name}' holds {cidr} in allocations.lock.yaml, "
                     f"which now overlaps {clash}: give the other object another range", "lock-conflict")
                continue
            fresh.append(t)
    for t in fresh:
        cidr = lowest_free_block(vpc_cidr, t.netmask, used)
        if cidr is None:
            _err(alloc, t.src, ("netmask",), f"VPC '{vpc.name}' cidr {vpc_cidr} is exhausted: no free "
                 f"/{t.netmask} left for tier '{t.name}'", "pool-exhausted")
            continue
        alloc.tier_cidrs[(vpc.name, t.name)] = cidr
        used.append(cidr)


def _vlans(site: Site, zone_name: str, vpcs: list[Vpc], locked: dict, alloc: Allocation) -> None:
    zone = site.zones[zone_name]
    low, high = zone.guest_vlans
    pinned: dict[int, str] = {}
    if zone.public and zone.public.vlan:
        pinned[zone.public.vlan] = "the public network"
    if zone.ospf and zone.ospf.transit_vlan:
        pinned[zone.ospf.transit_vlan] = "the OSPF transit link"
    if zone.vxlan and zone.vxlan.underlay_vlan:
        pinned.setdefault(zone.vxlan.underlay_vlan, "the VXLAN underlay")
    for vpc in vpcs:
        for t in vpc.tiers:
            if t.vlan is not None:
                pinned.setdefault(t.vlan, f"tier '{vpc.name}/{t.name}'")
                alloc.tier_vlans[(vpc.name, t.name)] = t.vlan
        for g in vpc.private_gateways:
            pinned.setdefault(g.vlan, f"private gateway '{vpc.name}/{g.name}'")
    used = set(pinned)
    # requests in name order: each VPC's tiers (by name), then its sync link
    requests = []
    for vpc in vpcs:
        for t in sorted(vpc.tiers, key=lambda t: t.name):
            if t.vlan is None and not t.vxlan:
                requests.append((vpc, t, _get(locked, vpc.name, "tiers", t.name, "vlan")))
        if vpc.redundant:
            requests.append((vpc, None, _get(locked, vpc.name, "sync_vlan")))
    fresh = []
    for vpc, tier, value in requests:
        what = f"tier '{vpc.name}/{tier.name}'" if tier else f"the sync link of VPC '{vpc.name}'"
        if isinstance(value, int) and low <= value <= high and value not in used:
            used.add(value)
            _store_vlan(alloc, vpc, tier, value)
        elif isinstance(value, int) and value in pinned:
            src = tier.src if tier else vpc.src
            _err(alloc, src, ("name",) if tier else (), f"{what} holds VLAN {value} in allocations.lock.yaml, "
                 f"but {pinned[value]} now pins it: pin another VLAN there", "lock-conflict")
        else:
            fresh.append((vpc, tier, what))
    pool = _Pool(low, high, used)
    for vpc, tier, what in fresh:
        value = pool.take()
        if value is None:
            _err(alloc, tier.src if tier else vpc.src, ("name",) if tier else ("routers",),
                 f"zone '{zone_name}' guest_vlans {low}-{high} is exhausted: no VLAN left for {what}",
                 "pool-exhausted")
            continue
        _store_vlan(alloc, vpc, tier, value)


def _store_vlan(alloc: Allocation, vpc: Vpc, tier, value: int) -> None:
    if tier is None:
        alloc.sync_vlans[vpc.name] = value
    else:
        alloc.tier_vlans[(vpc.name, tier.name)] = value


def _public_ips(site: Site, zone_name: str, vpcs: list[Vpc], locked: dict, alloc: Allocation) -> None:
    zone = site.zones[zone_name]
    if zone.public is None or not addr.is_canonical(zone.public.cidr):
        return
    try:
        ranges = [addr.ip_range(r) for r in zone.public.ranges]
    except Exception:
        return
    pinned: dict[int, str] = {int(addr.ip(zone.public.gateway)): "the zone gateway"}
    for vpc in vpcs:
        for p in vpc.public_ips:
            if p.address is not None:
                pinned.setdefault(int(addr.ip(p.address)), f"public IP '{vpc.name}/{p.name}'")
                alloc.public_ips[(vpc.name, p.name)] = p.address
    used = set(pinned)
    fresh = []
    for vpc in vpcs:
        for p in sorted(vpc.public_ips, key=lambda p: p.name):
            if p.address is not None:
                continue
            value = _get(locked, vpc.name, "public_ips", p.name)
            number = int(addr.ip(value)) if isinstance(value, str) and _is_ip(value) else None
            if number is not None and number not in used and any(a <= number <= b for a, b in ranges):
                used.add(number)
                alloc.public_ips[(vpc.name, p.name)] = value
            elif number is not None and number in pinned:
                _err(alloc, p.src, (), f"public IP '{p.name}' holds {value} in allocations.lock.yaml, but "
                     f"{pinned[number]} now pins it: pin another address there", "lock-conflict")
            else:
                fresh.append((vpc, p))
    pool = _RangesPool(ranges, used)
    for vpc, p in fresh:
        value = pool.take()
        if value is None:
            _err(alloc, p.src, (), f"zone '{zone_name}' public address pool "
                 f"({', '.join(zone.public.ranges)}) is exhausted: no address left for public IP "
                 f"'{p.name}' of VPC '{vpc.name}'", "pool-exhausted")
            continue
        alloc.public_ips[(vpc.name, p.name)] = addr.to_ip(value)


def _is_ip(text: str) -> bool:
    try:
        addr.ip(text)
        return text.count(".") == 3
    except Exception:
        return False


def _small_ids(vpcs, locked, alloc, key, bounds, target: dict, wanted, pool_name: str) -> None:
    used: set[int] = set()
    fresh = []
    for vpc in vpcs:
        if not wanted(vpc):
            continue
        value = _get(locked, vpc.name, key)
        if isinstance(value, int) and bounds[0] <= value <= bounds[1] and value not in used:
            used.add(value)
            target[vpc.name] = value
        else:
            fresh.append(vpc)
    pool = _Pool(bounds[0], bounds[1], used)
    for vpc in fresh:
        value = pool.take()
        if value is None:
            _err(alloc, vpc.src, ("name",), f"{pool_name} are exhausted: none left for VPC '{vpc.name}'",
                 "pool-exhausted")
            continue
        target[vpc.name] = value


def _transit(site: Site, zone_name: str, vpcs: list[Vpc], locked: dict, alloc: Allocation) -> None:
    zone = site.zones[zone_name]
    if zone.ospf is None or not addr.is_canonical(zone.ospf.transit_cidr):
        return
    first, last = addr.usable(zone.ospf.transit_cidr)
    # the first usable address is left to the core router
    _router_addresses(alloc, vpcs, lambda v: v.routed, locked, "transit", (first, last), {first}, alloc.transit,
                      f"zone '{zone_name}' OSPF transit {zone.ospf.transit_cidr} is exhausted")


def _router_addresses(alloc: Allocation, vpcs: list[Vpc], wanted, locked: dict, key: str, bounds: tuple[int, int],
                      used: set[int], target: dict, exhausted: str) -> None:
    """An address in ``bounds`` for each router of the wanted VPCs: its locked one while it is still
    free, else the lowest free one."""
    first, last = bounds
    fresh = []
    for vpc in vpcs:
        if not wanted(vpc):
            continue
        for r in vpc.routers:
            value = _get(locked, vpc.name, key, r.name)
            number = int(addr.ip(value)) if isinstance(value, str) and _is_ip(value) else None
            if number is not None and first <= number <= last and number not in used:
                used.add(number)
                target[(vpc.name, r.name)] = value
            else:
                fresh.append((vpc, r))
    pool = _Pool(first, last, used)
    for vpc, r in fresh:
        value = pool.take()
        if value is None:
            _err(alloc, r.src, (), f"{exhausted}: no address left for router '{r.name}'", "pool-exhausted")
            continue
        target[(vpc.name, r.name)] = addr.to_ip(value)


def _vnis(site: Site, zone_name: str, vpcs: list[Vpc], locked: dict, alloc: Allocation) -> None:
    """VXLAN tiers' VNIs, unique in the zone: pinned, then locked, then the lowest free of the pool."""
    zone = site.zones[zone_name]
    if zone.vxlan is None:
        return
    low, high = zone.vxlan.vnis
    pinned: dict[int, str] = {}
    for vpc in vpcs:
        for t in vpc.tiers:
            if t.vxlan and t.vni is not None:
                pinned.setdefault(t.vni, f"tier '{vpc.name}/{t.name}'")
                alloc.tier_vnis[(vpc.name, t.name)] = t.vni
    used = set(pinned)
    fresh = []
    for vpc in vpcs:
        for t in sorted(vpc.tiers, key=lambda t: t.name):
            if not t.vxlan or t.vni is not None:
                continue
            value = _get(locked, vpc.name, "tiers", t.name, "vni")
            if isinstance(value, int) and low <= value <= high and value not in used:
                used.add(value)
                alloc.tier_vnis[(vpc.name, t.name)] = value
            elif isinstance(value, int) and value in pinned:
                _err(alloc, t.src, ("name",), f"tier '{vpc.name}/{t.name}' holds VNI {value} in allocations.lock.yaml, "
                     f"but {pinned[value]} now pins it: pin another VNI there", "lock-conflict")
            else:
                fresh.append((vpc, t))
    pool = _Pool(low, high, used)
    for vpc, t in fresh:
        value = pool.take()
        if value is None:
            _err(alloc, t.src, ("name",), f"zone '{zone_name}' vxlan vnis {low}-{high} is exhausted: no VNI left for "
                 f"tier '{vpc.name}/{t.name}'", "pool-exhausted")
            continue
        alloc.tier_vnis[(vpc.name, t.name)] = value


def _vteps(site: Site, zone_name: str, vpcs: list[Vpc], locked: dict, alloc: Allocation) -> None:
    """Each router of a VPC with a VXLAN tier gets a VTEP address on the underlay: locked, else the
    lowest free usable address that is no remote's."""
    zone = site.zones[zone_name]
    if zone.vxlan is None or not addr.is_canonical(zone.vxlan.underlay_cidr) \
            or addr.net(zone.vxlan.underlay_cidr).prefixlen > 30:
        return
    _router_addresses(alloc, vpcs, lambda v: any(t.vxlan for t in v.tiers), locked, "vteps",
                      addr.usable(zone.vxlan.underlay_cidr), {int(addr.ip(r)) for r in zone.vxlan.remotes},
                      alloc.vteps, f"zone '{zone_name}' VXLAN underlay {zone.vxlan.underlay_cidr} is exhausted")


def _flatten(data, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def lock_changes(base_text: str, head_text: str) -> list[str]:
    """What changes between two lock files, one line per value: `vpcs.shop.vrid`: 1 → 2."""
    if base_text == head_text:
        return []  # the usual case, and parsing two locks of a large site takes seconds

    def load(text: str) -> dict:
        try:
            data = yaml.load(text, Loader=_Loader) if text else {}
        except yaml.YAMLError:
            data = None
        return _flatten(data) if isinstance(data, dict) else {}

    a, b = load(base_text), load(head_text)
    out = []
    for key in sorted(set(a) | set(b)):
        if key.endswith(".zone"):
            continue
        if key not in a:
            out.append(f"`{key}`: {b[key]} (new)")
        elif key not in b:
            out.append(f"`{key}`: {a[key]} released")
        elif a[key] != b[key]:
            out.append(f"`{key}`: {a[key]} → {b[key]}")
    return out
