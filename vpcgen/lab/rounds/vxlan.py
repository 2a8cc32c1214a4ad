"""Round vxlan: a router that joins the hosts' own networks.

VXLAN tiers: the tier's test hosts sit behind the lab's hypervisors, which build their devices with
CloudStack's own command line; a host reaches its gateway, the other tiers and the internet as the
oracle decides, and a frame of the tier's full MTU passes with DF set. Public tiers: the provider
(the internet side) treats the whole public network as on-link; a host is reached at its own
address on what its ingress list allows and not on the rest, goes out with its own address,
exactly one MAC answers ARP for it, and after the master dies the provider reaches it again within
3 s without its neighbour cache being touched. Figures: the takeover, and round trip and bulk
throughput on a VXLAN tier next to a VLAN tier of the same VPC.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time

from .. import run as lab
from ...reach.model import Endpoint, probes
from ..plan import WHOAMI_PORT, internet_sources
from .acl import _between, compare

TAKEOVER_LIMIT_S = 3.0
BULK_BYTES = 64 << 20
BULK_PORT = 45678  # a port no test host serves on: the receiver is the round's own
PINGS = 50


def run(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        vxlan = sorted(n for n, tier in v["tiers"].items() if tier.get("isolation") == "vxlan")
        public = sorted(n for n, tier in v["tiers"].items() if tier.get("public"))
        if not (vxlan or public):
            continue
        r = f"vxlan {vpc}"
        figures = t.figures.setdefault(vpc, {}).setdefault("vxlan", {})
        for tier in vxlan:
            info = v["tiers"][tier]
            label = f"tier {tier} (VNI {info['vni']})"
            t.check(r, f"{label}: every host reaches its gateway, one per hypervisor",
                    lambda n=tier: _gateway(t, vpc, n))
            t.check(r, f"{label}: a {info['mtu']}-byte frame with DF set passes to the gateway and across "
                       "hypervisors", lambda n=tier: _full_mtu(t, vpc, n))
            for other in sorted(set(v["tiers"]) - {tier}):
                t.check(r, f"{label} -> {other} as the oracle decides", lambda s=tier, d=other: _between(t, vpc, s, d))
            t.check(r, f"{label}: the internet as the oracle decides", lambda n=tier: _out(t, vpc, n))
        for tier in public:
            t.check(r, f"public tier {tier}: the internet reaches its hosts at their own addresses as its "
                       "ingress list says", lambda n=tier: _in_public(t, vpc, n))
            t.check(r, f"public tier {tier}: its hosts reach the internet with their own addresses",
                    lambda n=tier: _out(t, vpc, n))
            t.check(r, f"public tier {tier}: exactly one MAC answers ARP for a host, none for an address "
                       "nobody holds", lambda n=tier: _arp(t, vpc, n))
        vlan = sorted(n for n, tier in v["tiers"].items() if tier.get("isolation", "vlan") == "vlan"
                      and not tier.get("public"))
        if vxlan:
            t.check(r, "figures: round trip to the gateway and bulk throughput, VXLAN tier next to a VLAN tier",
                    lambda: _figures(t, vpc, vxlan[0], vlan[0] if vlan else None, figures))
        if public and v["redundant"]:  # last: the master dies (and is started again)
            t.check(r, f"public tier {public[0]}: the master stops, the provider reaches a host again within "
                       f"{TAKEOVER_LIMIT_S:.0f} s, its neighbour cache untouched",
                    lambda: _takeover(t, vpc, public[0], figures))


# --- VXLAN tiers -------------------------------------------------------------------------------

def _ping(t, node: str, address: str, *args: str) -> subprocess.CompletedProcess:
    return lab.exec_in(t.data, node, " ".join(["ping", "-n", "-q", *args, address]), timeout=60)


def _hypervisor_of(t, node: str) -> str:
    segment = t.plan.node(node).links[0].segment
    return t.plan.hosted.get(segment, ("?",))[0]


def _gateway(t, vpc: str, tier: str) -> tuple[bool, str]:
    gateway, bad, seen = t.vpcs[vpc]["tiers"][tier]["gateway"], [], []
    for node, _ in t.hosts(vpc, tier):
        for _ in range(3):  # the first packets learn the path (ARP over the overlay)
            r = _ping(t, node, gateway, "-c", "3", "-W", "1", "-i", "0.2")
            if r.returncode == 0:
                break
        seen.append(f"{node} on {_hypervisor_of(t, node)}")
        if r.returncode != 0:
            bad.append(f"{node}: {r.stdout.strip().splitlines()[-1:] or r.stderr.strip()}")
    return not bad, "; ".join(bad) or f"{gateway} answers {', '.join(seen)}"


def _full_mtu(t, vpc: str, tier: str) -> tuple[bool, str]:
    """ping -M do -s MTU-28 (IPv4 and ICMP headers): to the gateway (the router's VXLAN device) and
    to the tier's host on the other hypervisor (the underlay carries the encapsulated frame)."""
    info = t.vpcs[vpc]["tiers"][tier]
    size = info["mtu"] - 28
    (first, _), *rest = t.hosts(vpc, tier)
    targets = [info["gateway"]] + [address for node, address in rest
                                   if _hypervisor_of(t, node) != _hypervisor_of(t, first)][:1]
    bad = []
    for address in targets:
        r = _ping(t, first, address, "-M", "do", "-s", str(size), "-c", "3", "-W", "1", "-i", "0.2")
        if r.returncode != 0:
            bad.append(f"{address}: {(r.stdout + r.stderr).strip().splitlines()[-1:]}")
    # one byte more does not leave the host unfragmented: the tier's MTU is what was set
    over = _ping(t, first, info["gateway"], "-M", "do", "-s", str(size + 1), "-c", "1", "-W", "1")
    if over.returncode == 0:
        bad.append(f"{size + 1} bytes passed too: the host's MTU is not the tier's {info['mtu']}")
    return not bad, "; ".join(bad) or f"{size}-byte payloads with DF from {first} to {', '.join(targets)}"


def _out(t, vpc: str, tier: str) -> tuple[bool, str]:
    """A host asks the internet side who it is: the oracle says whether it gets out, site.json with
    which address (a public tier's own, else its static NAT or source NAT address)."""
    v = t.vpcs[vpc]
    node, address = t.hosts(vpc, tier)[0]
    inet = t.inet_address(vpc)
    verdict = t.expect(Endpoint("tier", vpc, tier, address), inet, "tcp", WHOAMI_PORT)
    if v["tiers"][tier].get("public"):
        want = address
    else:
        nat = {private: v["public_ips"][name] for name, private in v["static_nat"].items()}
        want = nat.get(address, v["public_ips"].get("source-nat", "?"))
    got = ""
    for _ in range(3):
        got = t.probe(node, inet, WHOAMI_PORT)
        if (got == want) == verdict.delivered:
            break
        time.sleep(0.5)
    if verdict.delivered:
        return got == want, f"{node} seen as {got} (expected {want})"
    return got.startswith("FAILED"), f"denied as the oracle decides ({verdict.why}): {got}"


def _figures(t, vpc: str, vxlan: str, vlan: str | None, figures: dict) -> tuple[bool, str]:
    out, bad = {}, []
    for kind, tier in (("vxlan", vxlan), ("vlan", vlan)):
        if tier is None:
            continue
        hosts = t.hosts(vpc, tier)
        r = _ping(t, hosts[0][0], t.vpcs[vpc]["tiers"][tier]["gateway"], "-c", str(PINGS), "-i", "0.01", "-W", "1")
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        rate = _bulk(t, hosts[0][0], hosts[1][0], hosts[1][1])
        if m is None or rate is None:
            bad.append(f"{kind} tier {tier}: no measurement ({r.stdout.strip()[-80:]})")
            continue
        out[kind] = {"tier": tier, "rtt_ms": float(m.group(1)), "bulk_mbit_s": rate}
    if "vxlan" in out and "vlan" in out:
        out["rtt_ratio_vxlan_vlan"] = round(out["vxlan"]["rtt_ms"] / out["vlan"]["rtt_ms"], 2)
        out["bulk_ratio_vxlan_vlan"] = round(out["vxlan"]["bulk_mbit_s"] / out["vlan"]["bulk_mbit_s"], 2)
    figures.update(out)
    return not bad, "; ".join(bad) or "; ".join(
        f"{k} {o['tier']}: rtt {o['rtt_ms']:.3f} ms, bulk {o['bulk_mbit_s']:.0f} Mbit/s" for k, o in out.items()
        if isinstance(o, dict))


BULK_RECEIVE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT)); s.listen(1); s.settimeout(20); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20); total, start = 0, None
while data := c.recv(1 << 16):
    start = start or time.monotonic(); total += len(data)
print(total, time.monotonic() - start)
"""
BULK_SEND = """
import socket
s = socket.create_connection(("ADDRESS", PORT), timeout=10); chunk = bytes(1 << 16)
for _ in range(COUNT): s.sendall(chunk)
s.close()
"""


def _bulk(t, sender: str, receiver: str, address: str) -> float | None:
    """Mbit/s of one TCP stream from ``sender`` to ``receiver`` (the same tier: never filtered), as
    the receiver times it."""
    proc = subprocess.Popen(["ip", "netns", "exec", t.data["nodes"][receiver]["ns"], sys.executable, "-c",
                             BULK_RECEIVE.replace("PORT", str(BULK_PORT))], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            return None
        script = BULK_SEND.replace("ADDRESS", address).replace("PORT", str(BULK_PORT)).replace(
            "COUNT", str(BULK_BYTES >> 16))
        subprocess.run(["ip", "netns", "exec", t.data["nodes"][sender]["ns"], sys.executable, "-c", script],
                       capture_output=True, timeout=60)
        out, _ = proc.communicate(timeout=30)
        total, seconds = out.split()
        return round(int(total) * 8 / float(seconds) / 1e6, 1) if int(total) == BULK_BYTES else None
    except (subprocess.TimeoutExpired, ValueError):
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- public tiers -------------------------------------------------------------------------------

def _in_public(t, vpc: str, tier: str) -> tuple[bool, str]:
    """Every probe port of the tier's lists, from every internet source an ACL names, to a host's
    own address: delivered to that very host, or not, as the oracle decides."""
    v = t.vpcs[vpc]
    node, address = t.hosts(vpc, tier)[0]
    sources = {t.inet_address(vpc)} | {a.split("/")[0] for a in internet_sources(t.site, v["zone"])}
    cases = [(t.inet(vpc), address, port, proto, source,
              t.expect(Endpoint("internet", address=source), address, proto, port), node)
             for proto, port in probes(t.site["acls"][v["tiers"][tier]["acl"]]) if proto != "icmp"
             for source in sorted(sources)]
    if not any(c[5].delivered for c in cases) or all(c[5].delivered for c in cases):
        return False, "the tier's list gives no port that is reached and one that is not: nothing proved"
    return compare(t, cases)


def _arping(t, vpc: str, address: str, count: int = 3) -> list[str]:
    """The MACs that answer the provider's ARP requests for ``address`` on the public network."""
    r = lab.exec_in(t.data, t.inet(vpc), f"arping -c {count} -w {count + 1} -I eth0 {address}", timeout=15)
    return sorted({m.lower() for m in re.findall(r"\[([0-9A-Fa-f:]{17})\]", r.stdout)})


def _unheld(t, vpc: str) -> str:
    """An address of the public network that nobody holds: no public IP, gateway or tier of the site."""
    zone = t.site["zones"][t.vpcs[vpc]["zone"]]["public"]
    held = {zone["gateway"]} | {a for v in t.site["vpcs"].values() for a in v["public_ips"].values()}
    tiers = [ipaddress.ip_network(x["cidr"]) for v in t.site["vpcs"].values() for x in v["tiers"].values()]
    for a in reversed(list(ipaddress.ip_network(zone["cidr"]).hosts())):
        if str(a) not in held and not any(a in n for n in tiers):
            return str(a)
    return ""


def _arp(t, vpc: str, tier: str) -> tuple[bool, str]:
    _, address = t.hosts(vpc, tier)[0]
    macs = _arping(t, vpc, address)
    nobody = _unheld(t, vpc)
    stray = _arping(t, vpc, nobody, 2) if nobody else []
    ok = len(macs) == 1 and not stray
    return ok, (f"{address} answered by {', '.join(macs) or 'nobody'}; "
                f"{nobody or 'no free address'} answered by {', '.join(stray) or 'nobody'}")


def _neighbour(t, vpc: str, address: str) -> str:
    out = lab.exec_in(t.data, t.inet(vpc), f"ip neigh show {address} dev eth0").stdout
    m = re.search(r"lladdr (\S+)", out)
    return m.group(1) if m else "none"


def _takeover(t, vpc: str, tier: str, figures: dict) -> tuple[bool, str]:
    """A TCP connect every 20 ms from the provider to a host's own address on a port its ingress
    list allows; the master dies 1 s in. The longest gap between answers is the takeover, as the
    provider sees it (its neighbour entry for the host is never flushed: it must follow)."""
    v = t.vpcs[vpc]
    node, address = t.hosts(vpc, tier)[0]
    inet = Endpoint("internet", address=t.inet_address(vpc))
    port = next((p for proto, p in probes(t.site["acls"][v["tiers"][tier]["acl"]])
                 if proto == "tcp" and t.expect(inet, address, "tcp", p).delivered), None)
    if port is None:
        return False, f"the tier's ingress list lets no TCP port in from {inet.address}: nothing to time"
    t.probe(t.inet(vpc), address, port)  # the provider has an entry for the host, as before a real failure
    before = _neighbour(t, vpc, address)
    out = t.during_failover(vpc, t.inet(vpc), CONNECTS.replace("ADDRESS", address).replace("PORT", str(port)),
                            1.0, 30)
    after = _neighbour(t, vpc, address)
    try:
        gap, answered = out.strip().splitlines()[-1].split()
        gap = float(gap)
    except (AttributeError, ValueError):
        return False, f"no measurement ({out!r})"
    figures["public_takeover_s"] = round(gap, 3)
    return gap <= TAKEOVER_LIMIT_S and int(answered) > 0, (
        f"{gap:.2f} s without an answer ({answered} answers); the provider's entry for {address}: "
        f"{before} before, {after} after")


# a TCP connect every 20 ms for 8 s; prints the longest gap between answered connects (s) and their count
CONNECTS = """
import socket, time
last, gap, answered, end = time.monotonic(), 0.0, 0, time.monotonic() + 8
while time.monotonic() < end:
    try:
        socket.create_connection(("ADDRESS", PORT), timeout=0.2).close()
        now = time.monotonic(); gap = max(gap, now - last); last = now; answered += 1
    except OSError:
        pass
    time.sleep(0.02)
gap = max(gap, time.monotonic() - last)
print(f"{gap:.3f} {answered}")
"""
