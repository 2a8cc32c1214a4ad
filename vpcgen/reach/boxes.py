"""Sets of flows as unions of disjoint boxes: (source, destination, protocol, port, ICMP type, ICMP code).

Every dimension is a closed integer interval. A flow that has no port (not tcp/udp) or no ICMP
type (not icmp) spans that dimension's whole domain, so a box never constrains the port of a
protocol without ports: boxes are split by protocol before port and ICMP type (the dimension
order below), which keeps that true through every intersection and difference.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import socket

SRC, DST, PROTO, PORT, ITYPE, ICODE = range(6)
ADDRESSES = (0, 2**32 - 1)
PROTOCOLS = (0, 255)
PORTS = (1, 65535)
ICMP = (0, 255)
FULL = (ADDRESSES, ADDRESSES, PROTOCOLS, PORTS, ICMP, ICMP)
TCP, UDP, ICMP_PROTO = 6, 17, 1
NUMBERS = {"tcp": TCP, "udp": UDP, "icmp": ICMP_PROTO}

Interval = tuple[int, int]
Box = tuple[Interval, Interval, Interval, Interval, Interval, Interval]


@functools.lru_cache(maxsize=65536)
def cidr(text: str) -> Interval:
    address, _, length = text.partition("/")
    bits = 32 - int(length or 32)
    lo = ip(address) >> bits << bits
    return lo, lo | ((1 << bits) - 1)


def ip(text: str) -> int:
    """An IPv4 address (a prefix length after it is ignored) as an integer."""
    return int.from_bytes(socket.inet_aton(text.split("/")[0]), "big")


def box(**dims: Interval) -> Box:
    out = list(FULL)
    for name, value in dims.items():
        out[("src", "dst", "proto", "port", "itype", "icode").index(name)] = value
    return tuple(out)


def point(src: int, dst: int, proto: int, port: int | None = None, itype: int | None = None,
          icode: int | None = None) -> Box:
    """One flow; a port only for tcp/udp and a type and code only for icmp (else the whole domain)."""
    p = (port, port) if proto in (TCP, UDP) and port is not None else PORTS
    t = (itype, itype) if proto == ICMP_PROTO and itype is not None else ICMP
    c = (icode, icode) if proto == ICMP_PROTO and icode is not None else ICMP
    return ((src, src), (dst, dst), (proto, proto), p, t, c)


def intersect(a: Box, b: Box) -> Box | None:
    out = []
    for (alo, ahi), (blo, bhi) in zip(a, b):
        lo, hi = max(alo, blo), min(ahi, bhi)
        if lo > hi:
            return None
        out.append((lo, hi))
    return tuple(out)


def subtract(a: Box, b: Box) -> list[Box]:
    """a - b as disjoint boxes (a itself when they do not meet)."""
    if intersect(a, b) is None:
        return [a]
    out = []
    rest = list(a)
    for d in range(6):
        (alo, ahi), (blo, bhi) = rest[d], b[d]
        if alo < blo:
            out.append(tuple(rest[:d] + [(alo, blo - 1)] + rest[d + 1:]))
        if ahi > bhi:
            out.append(tuple(rest[:d] + [(bhi + 1, ahi)] + rest[d + 1:]))
        rest[d] = (max(alo, blo), min(ahi, bhi))
    return out


def meet(a: list[Box], b: list[Box]) -> list[Box]:
    out = []
    for x in a:
        for y in b:
            z = intersect(x, y)
            if z is not None:
                out.append(z)
    return out


def minus(a: list[Box], b: list[Box]) -> list[Box]:
    for y in b:
        if not a:
            break
        nxt = []
        for x in a:
            nxt.extend(subtract(x, y))
        a = nxt
    return a


def contains(boxes: list[Box], p: Box) -> bool:
    return any(intersect(b, p) is not None for b in boxes)


def size(b: Box) -> int:
    n = 1
    for lo, hi in b:
        n *= hi - lo + 1
    return n


# --- one-dimensional sets (addresses) --------------------------------------------------------

def normalize(intervals) -> list[Interval]:
    """Sorted, disjoint, adjacent ones merged."""
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def complement(intervals, domain: Interval = ADDRESSES) -> list[Interval]:
    out, at = [], domain[0]
    for lo, hi in normalize(intervals):
        if lo > at:
            out.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= domain[1]:
        out.append((at, domain[1]))
    return out


def cidrs(intervals) -> list[str]:
    """The fewest CIDRs that cover the intervals exactly."""
    out = []
    for lo, hi in normalize(intervals):
        out += [str(n) for n in ipaddress.summarize_address_range(ipaddress.IPv4Address(lo),
                                                                   ipaddress.IPv4Address(hi))]
    return out


def inside(value: int, intervals) -> bool:
    """Whether ``value`` lies in sorted, disjoint ``intervals``."""
    i = bisect.bisect_right(intervals, (value, 2**33)) - 1
    return i >= 0 and intervals[i][0] <= value <= intervals[i][1]


def intersection(a, b) -> list[Interval]:
    a, b = normalize(a), normalize(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(interval: Interval, intervals) -> list[Interval]:
    """``interval`` ∩ sorted, disjoint ``intervals``."""
    lo, hi = interval
    i = max(0, bisect.bisect_right(intervals, (lo, 2**33)) - 1)
    out = []
    while i < len(intervals) and intervals[i][0] <= hi:
        a, b = max(lo, intervals[i][0]), min(hi, intervals[i][1])
        if a <= b:
            out.append((a, b))
        i += 1
    return out


def difference(a, b) -> list[Interval]:
    return intersection(a, complement(b))
