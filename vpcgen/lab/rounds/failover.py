"""Round failover: how long a failover interrupts traffic (NAT pairs: a UDP stream, a TCP
connection through source NAT; routed pairs: the core's reroute via BFD, 50 announced transitions)."""

from __future__ import annotations

import statistics
import time

from .. import run as lab
from ...reach.model import Endpoint
from ..plan import ECHO_PORT


def run(t, runs: int = 5) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        if v["redundant"] and v["kind"] == "routed":
            t.check(f"failover {vpc}", f"master killed: the core routes to the new master within 1 s of the "
                       f"takeover (BFD), median of {runs}", lambda: _ospf_failover(t, vpc, runs))
            t.check(f"failover {vpc}", "50 transitions: the VPC announced by the new master after each",
                       lambda: _transitions(t, vpc))
        if not (v["redundant"] and v["kind"] == "nat"):
            continue
        inet = Endpoint("internet", address=t.inet_address(vpc))
        udp = next((pf for pf in v["port_forwarding"] if pf["protocol"] == "udp" and t.expect(
            inet, v["public_ips"][pf["public_ip"]], "udp", pf["public_port"][0]).delivered), None)
        if udp is None:  # no UDP service the internet may reach: nothing to measure
            continue
        limit = 500 if v["vrrp"]["advert_interval_ms"] <= 100 else 4000
        t.check(f"failover {vpc}", f"traffic interruption, median of {runs} (target < {limit} ms)",
                   lambda: _measure(t, vpc, udp, runs, limit))
        if t.source_host(vpc, t.inet_address(vpc), [("tcp", ECHO_PORT)])[1]:  # some host may connect out
            t.check(f"failover {vpc}", "an established TCP connection through source NAT survives",
                    lambda: _tcp_survives(t, vpc))


def _measure(t, vpc: str, udp: dict, runs: int, limit: int) -> tuple[bool, str]:
    gaps = [g for g in (_interruption(t, vpc, udp) for _ in range(runs)) if g is not None]
    median = statistics.median(gaps) if gaps else None
    t.figures.setdefault(vpc, {}).update({
        "advert_interval_ms": t.vpcs[vpc]["vrrp"]["advert_interval_ms"], "interruptions_ms": gaps,
        "median_interruption_ms": median})
    if median is None:
        return False, "no measurement"
    return median < limit, f"{median:.0f} ms; runs: {', '.join(f'{g:.0f}' for g in gaps)}"


def _ospf_failover(t, vpc: str, runs: int = 5) -> tuple[bool, str]:
    """The master dies; the core routes to the new master within 1 s of the takeover (BFD), median of
    ``runs``. Timed from the kill, so the backup's master-down interval (3 adverts and its skew, at
    most one more advert) is added to the second."""
    times = []
    for _ in range(runs):
        master = t.wait_one_master(vpc, t.settle_s(vpc) + 5)
        if len(master) != 1:
            return False, f"masters: {master}"
        peer = next(r for r in t.vpcs[vpc]["routers"] if r != master[0])
        if not t.adjacent(peer, 2 * t.dead_s(vpc) + 10) or t.announced_by(vpc, master[0], 30) is None:
            return False, f"before: {t.core_route(vpc) or 'no route'}"
        lab.stop_router(t.data, master[0])
        t.data["nodes"][master[0]].pop("holder", None)
        try:
            took = t.announced_by(vpc, peer, 60)
        finally:
            lab.start_router(t.tree_dir, master[0])
            t.reload_data()
        if took is None:
            return False, f"the core never routed through {peer}: {t.core_route(vpc)}"
        times.append(took)
    median = statistics.median(times)
    limit = 1.0 + 4 * t.vpcs[vpc]["vrrp"]["advert_interval_ms"] / 1000
    t.figures.setdefault(vpc, {})["core_reroute_s"] = [round(t, 3) for t in times]
    return median <= limit, (f"median {median:.2f} s from the kill (limit {limit:.2f} s); "
                             f"runs: {', '.join(f'{t:.2f}' for t in times)}")


def _transitions(t, vpc: str, count: int = 50) -> tuple[bool, str]:
    """Mastership moves ``count`` times (keepalived stopped on the master, then started again as
    backup); after every move the core routes the VPC through the new master only."""
    missed = []
    for i in range(count):
        master = t.wait_one_master(vpc, t.settle_s(vpc) + 5)
        if len(master) != 1:
            return False, f"transition {i + 1}: masters {master}"
        peer = next(r for r in t.vpcs[vpc]["routers"] if r != master[0])
        if not t.adjacent(peer, 2 * t.dead_s(vpc) + 10):  # a backup that can announce
            return False, f"transition {i + 1}: {peer} has no OSPF adjacency"
        lab.exec_in(t.data, master[0], "kill -TERM $(cat /run/keepalived.pid)")
        if t.announced_by(vpc, peer, 10) is None:
            missed.append(f"{i + 1}: {t.core_route(vpc) or 'no route'}")
            if len(missed) == 3:
                return False, f"stopped after {i + 1} transitions: missed {'; '.join(missed)}"
        start = time.monotonic()
        while t.keepalived_runs(master[0]) and time.monotonic() - start < 10:
            time.sleep(0.1)
        # its own session: the command's process group is killed when the command returns
        lab.exec_in(t.data, master[0], f"STRONGSWAN_CONF={lab.LAB_STRONGSWAN_PATH} setsid -f "
                    f"{lab.KEEPALIVED_START}")
        while t.state(master[0]) != "BACKUP" and time.monotonic() - start < 20:
            time.sleep(0.1)
    t.figures.setdefault(vpc, {})["announced_transitions"] = f"{count - len(missed)}/{count}"
    return not missed, f"{count - len(missed)}/{count} announced" + (f"; missed {'; '.join(missed[:3])}"
                                                                         if missed else "")


def _interruption(t, vpc: str, pf: dict) -> float | None:
    """Milliseconds without answers from a port-forwarded UDP service while the master dies."""
    address = t.vpcs[vpc]["public_ips"][pf["public_ip"]]
    script = UDP_STREAM.replace("ADDRESS", address).replace("PORT", str(pf["public_port"][0]))
    out = t.during_failover(vpc, t.inet(vpc), script, 1.0, 30)
    try:
        return float(out.strip().splitlines()[-1].split()[0])
    except (AttributeError, ValueError, IndexError):
        return None


def _tcp_survives(t, vpc: str) -> tuple[bool, str]:
    host, allowed = t.source_host(vpc, t.inet_address(vpc), [("tcp", ECHO_PORT)])
    if host is None or not allowed:
        return False, f"no host whose egress list lets tcp/{ECHO_PORT} out"
    script = TCP_STREAM.replace("ADDRESS", t.inet_address(vpc)).replace("ECHO_PORT", str(ECHO_PORT))
    out = t.during_failover(vpc, host[0], script, 2.0, 60)
    last = out.strip().splitlines()[-1] if out and out.strip() else "no output (or no master)"
    t.figures.setdefault(vpc, {})["tcp_survives"] = last.startswith("SURVIVED")
    return last.startswith("SURVIVED"), last



# a UDP client sending every 10 ms for 8 s; prints the longest gap between answers in ms, then the
# probes without an answer (late answers drained at the end count) and the probes sent
UDP_STREAM = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.01)
last, gap, sent, got, end = None, 0.0, 0, 0, time.monotonic() + 8
while time.monotonic() < end:
    s.sendto(b"x", ("ADDRESS", PORT)); sent += 1
    try:
        s.recv(100); got += 1
        now = time.monotonic()
        if last is not None: gap = max(gap, now - last)
        last = now
    except OSError:
        pass
    time.sleep(0.01)
s.settimeout(0.5)
try:
    while got < sent:
        s.recv(100); got += 1
except OSError:
    pass
print(gap * 1000, sent - got, sent)
"""

# one TCP connection to the internet side's echo service, a line every 100 ms for 12 s
TCP_STREAM = """
import socket, time
sent = got = 0
try:
    s = socket.create_connection(("ADDRESS", ECHO_PORT), timeout=5); s.settimeout(5)
    end = time.monotonic() + 12
    while time.monotonic() < end:
        s.sendall(b"ping\\n"); sent += 1
        data = s.recv(100)
        if not data: raise ConnectionResetError("closed")
        got += 1
        time.sleep(0.1)
    print(f"SURVIVED {got}/{sent} answers")
except Exception as exc:
    print(f"BROKEN after {got}/{sent} answers: {type(exc).__name__}")
"""


def until_stop(stream: str) -> str:
    """One of the stream scripts above, run until the file STOP exists instead of for its own time."""
    out = stream.replace("import socket, time", "import os, socket, time").replace(
        "while time.monotonic() < end:", 'while not os.path.exists("STOP"):')
    if "STOP" not in out:
        raise ValueError("the stream script has no loop to stop: until_stop no longer fits it")
    return out
