"""Small, cached IPv4 helpers over netaddr (ACL lists repeat the same CIDRs many times)."""

from __future__ import annotations

from functools import lru_cache

from netaddr import IPAddress, IPNetwork


@lru_cache(maxsize=65536)
def net(cidr: str) -> IPNetwork:
    return IPNetwork(cidr)


@lru_cache(maxsize=65536)
def ip(address: str) -> IPAddress:
    return IPAddress(address)


@lru_cache(maxsize=65536)
def span(cidr: str) -> tuple[int, int]:
    """First and last address (as ints): netaddr computes them, objects included, on every access."""
    n = net(cidr)
    return n.first, n.last


@lru_cache(maxsize=65536)
def is_canonical(cidr: str) -> bool:
    n = net(cidr)
    return n.network == n.ip


def overlaps(a: str, b: str) -> bool:
    (x_first, x_last), (y_first, y_last) = span(a), span(b)
    return x_first <= y_last and y_first <= x_last


def contains(outer: str, inner: str) -> bool:
    (o_first, o_last), (i_first, i_last) = span(outer), span(inner)
    return o_first <= i_first and i_last <= o_last


def in_net(address: str, cidr: str) -> bool:
    first, last = span(cidr)
    return first <= int(ip(address)) <= last


def usable(cidr: str) -> tuple[int, int]:
    """First and last usable host address (as ints) of a network of /30 or larger."""
    n = net(cidr)
    return n.first + 1, n.last - 1


def ip_range(text: str) -> tuple[int, int]:
    first, last = text.split("-")
    return int(ip(first)), int(ip(last))


def to_ip(value: int) -> str:
    return str(IPAddress(value))


def with_prefix(address: str, cidr: str) -> str:
    return f"{address}/{net(cidr).prefixlen}"


def router_address(cidr: str, index: int) -> str:
    """The own address of a pair's router ``index`` in a tier: last usable, then the one before."""
    return to_ip(usable(cidr)[1] - index)
