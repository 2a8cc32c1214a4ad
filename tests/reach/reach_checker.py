"""Brute force: decide concrete flows one by one with the model and hold reachability entries to
their contract (every changed flow in an entry of its direction, no unchanged flow in any)."""

from __future__ import annotations

import ipaddress
import random

from vpcgen.reach import boxes as bx
from vpcgen.reach.model import Endpoint, Flow, Model, label

NAMES = {"tcp": 6, "udp": 17, "icmp": 1}


def classify(model: Model, address: int) -> Endpoint | None:
    """The endpoint a source address belongs to (the internet when none of the site's)."""
    for source in model.sources()[1:]:
        if bx.inside(address, model.source_addresses(source)):
            return source
    return Endpoint("internet")


def outcome(model: Model, flow: tuple) -> tuple[str, str | None] | None:
    """(from, delivered to or None) of a concrete flow; None when it is outside the contract."""
    src, dst, proto, port, itype, icode = flow
    source = classify(model, src)
    if source.kind == "tier" and (bx.inside(dst, model.public_addresses()) or bx.inside(dst, list(model.hairpin))):
        return None  # hairpin: outside the contract (inside a tier: delivered, unfiltered, in both)
    if source.kind == "tier" and bx.inside(dst, model.source_addresses(source)):
        return label(source), "inside " + label(source)  # not forwarded: unchanged only if so in both
    s = Endpoint(source.kind, source.vpc, source.name, str(ipaddress.IPv4Address(src)))
    v = model.decide(Flow(s, str(ipaddress.IPv4Address(dst)), proto, port, itype, icode))
    if not v.delivered:
        return label(source), None
    to = v.to
    if to.kind == "lb":  # judged like a port forward to its members
        tier = model.tier_of(model.site["vpcs"][to.vpc]["load_balancers"][to.name]["members"][0], to.vpc)
        return label(source), f"{tier[0]}/{tier[1]}"
    return label(source), label(to)


def _in_cidrs(address: int, cidrs: list[str]) -> bool:
    return any(address in _net(c) for c in cidrs)


_NETS: dict = {}


def _net(c: str) -> range:
    if c not in _NETS:
        lo, hi = bx.cidr(c)
        _NETS[c] = range(lo, hi + 1)
    return _NETS[c]


def _in_value(value: int | None, spec) -> bool:
    if isinstance(spec, int):
        return value == spec
    bounds = str(spec).split("-")
    return value is not None and int(bounds[0]) <= value <= int(bounds[-1])


def holds(entry: dict, flow: tuple) -> bool:
    src, dst, proto, port, itype, icode = flow
    if not (_in_cidrs(src, entry["sources"]) and _in_cidrs(dst, entry["destinations"])):
        return False
    p = entry["protocol"]
    if p != "all":
        if isinstance(p, str) and p in NAMES:
            p = NAMES[p]
        if not _in_value(proto, p):
            return False
    if "ports" in entry and not _in_value(port, entry["ports"]):
        return False
    if "icmp_type" in entry and not _in_value(itype, entry["icmp_type"]):
        return False
    if "icmp_code" in entry and not _in_value(icode, entry["icmp_code"]):
        return False
    return True


def check(base: Model, head: Model, entries: list[dict], flows) -> int:
    """Assert the contract on every flow; returns how many flows changed."""
    changed = 0
    for flow in flows:
        before, after = outcome(base, flow), outcome(head, flow)
        if before is None or after is None:
            continue
        (fb, tb), (fh, th) = before, after
        mine = [e for e in entries if holds(e, flow)]
        if tb != th and "inside " in f"{tb}{th}":
            continue  # inside a tier in one revision only: outside the contract there
        if tb == th:
            bad = [e for e in mine if e["from"] in (fb, fh)]
            assert not bad, f"unchanged flow {show(flow)} ({fb} -> {tb}) lies in {bad}"
            continue
        changed += 1
        if th is not None:
            assert any(e["change"] == "allowed" and e["from"] == fh and e["to"] == th for e in mine), \
                f"flow {show(flow)} newly delivered {fh} -> {th} (before: {tb}) is in no allowed entry: {mine}"
        if tb is not None:
            assert any(e["change"] == "denied" and e["from"] == fb and e["to"] == tb for e in mine), \
                f"flow {show(flow)} no longer delivered {fb} -> {tb} (now: {th}) is in no denied entry: {mine}"
        for e in mine:
            if e["change"] == "allowed" and e["from"] == fh:
                assert e["to"] == th, f"flow {show(flow)} in {e} is delivered to {th}"
            if e["change"] == "denied" and e["from"] == fb:
                assert e["to"] == tb, f"flow {show(flow)} in {e} was delivered to {tb}"
    return changed


def show(flow: tuple) -> str:
    src, dst, proto, port, itype, icode = flow
    what = f"/{port}" if port is not None else f" type {itype} code {icode}" if proto == 1 else ""
    return f"{ipaddress.IPv4Address(src)} -> {ipaddress.IPv4Address(dst)} proto {proto}{what}"


def _boundaries(cidrs) -> list[int]:
    out = set()
    for c in cidrs:
        lo, hi = bx.cidr(c)
        out |= {lo, hi, max(0, lo - 1), min(2**32 - 1, hi + 1), (lo + hi) // 2}
    return sorted(out)


def interesting(sites: list[dict]) -> tuple[list[int], list[int]]:
    """Addresses and ports at and around every boundary the sites mention."""
    cidrs, ports = {"0.0.0.0/0"}, {1, 65535, 7777}
    for site in sites:
        for rules in site["acls"].values():
            for r in rules:
                cidrs |= set(r["cidrs"])
                if r["ports"]:
                    ports |= {r["ports"][0] - 1, r["ports"][0], r["ports"][1], r["ports"][1] + 1}
        for v in site["vpcs"].values():
            cidrs |= {t["cidr"] for t in v["tiers"].values()}
            cidrs |= {f"{a}/32" for a in v["public_ips"].values()}
            cidrs |= {f"{a}/32" for a in v["static_nat"].values()}
            cidrs |= {c for p in v["vpn_peers"].values() for c in p["peer_cidrs"] + p["local_cidrs"]}
            cidrs |= {c for g in v["private_gateways"].values() for c in g["routes"]}
            if v.get("remote_access"):
                cidrs.add(v["remote_access"]["pool"])
            for pf in v["port_forwarding"]:
                cidrs.add(pf["private_ip"] + "/32")
                for lo, hi in (pf["public_port"], pf["private_port"]):
                    ports |= {lo - 1, lo, hi, hi + 1}
            for lb in v["load_balancers"].values():
                ports |= {lb["public_port"], lb["public_port"] + 1, lb["private_port"]}
    return _boundaries(cidrs), sorted(p for p in ports if 1 <= p <= 65535)


def sample(sites: list[dict], count: int, seed: int = 0) -> list[tuple]:
    """``count`` concrete flows built from the interesting values (and the corners of nothing else)."""
    rng = random.Random(seed)
    addresses, ports = interesting(sites)
    protos = [6, 17, 1, 50, 0, 5, 7, 255]
    out = []
    for _ in range(count):
        proto = rng.choice(protos)
        port = rng.choice(ports) if proto in (6, 17) else None
        itype = rng.choice([0, 3, 8, 9, 255]) if proto == 1 else None
        icode = rng.choice([0, 1, 255]) if proto == 1 else None
        out.append((rng.choice(addresses), rng.choice(addresses), proto, port, itype, icode))
    return out


def corners(entries: list[dict]) -> list[tuple]:
    """Flows at the corners of every entry: where a wrong boundary shows."""
    out = []
    for e in entries:
        srcs = [bx.cidr(c) for c in e["sources"]]
        dsts = [bx.cidr(c) for c in e["destinations"]]
        p = e["protocol"]
        if p == "all":
            protos = [0, 6, 255]
        elif isinstance(p, int):
            protos = [p]
        elif p in NAMES:
            protos = [NAMES[p]]
        else:
            lo, hi = (int(x) for x in p.split("-"))
            protos = sorted({lo, hi})
        for s in srcs:
            for d in dsts:
                for proto in protos:
                    if proto in (6, 17):
                        bounds = str(e.get("ports", "1-65535")).split("-")
                        values = [(int(bounds[0]), None, None), (int(bounds[-1]), None, None)]
                    elif proto == 1:
                        t = str(e.get("icmp_type", "0-255")).split("-")
                        c = str(e.get("icmp_code", "0-255")).split("-")
                        values = [(None, int(t[0]), int(c[0])), (None, int(t[-1]), int(c[-1]))]
                    else:
                        values = [(None, None, None)]
                    for port, itype, icode in values:
                        for a in (s[0], s[1]):
                            for b in (d[0], d[1]):
                                out.append((a, b, proto, port, itype, icode))
    return out
