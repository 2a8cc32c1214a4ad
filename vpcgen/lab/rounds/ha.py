"""Round ha: the faults a pair must survive (sync link lost and back, upstream lost, a daemon
killed), with which router holds each virtual address sampled every 100 ms."""

from __future__ import annotations

import time

from .. import run as lab
from ...ops import netns


def run(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        if not v["redundant"]:
            continue
        r = f"ha {vpc}"
        t.check(r, "sync link lost: one holder after settling, no flapping, traffic flows",
                   lambda: _sync_lost(t, vpc))
        t.check(r, "sync link back: one master, no second handover", lambda: _sync_back(t, vpc))
        t.check(r, "upstream lost on the master: the peer holds every address within 3 s",
                   lambda: _upstream_lost(t, vpc))
        services = ["conntrackd"] + (["haproxy"] if v["load_balancers"] else []) + \
            (["charon"] if v["vpn_peers"] or v.get("remote_access") else [])
        for service in services:
            t.check(r, f"{service} killed on the master: restarted or handed over, traffic flows",
                       lambda s=service: _daemon_killed(t, vpc, s))


def _sync_lost(t, vpc: str) -> tuple[bool, str]:
    before = t.sample(vpc, 0.3)[-1][1]
    t.fault("sync-link", vpc)
    samples = t.sample(vpc, t.settle_s(vpc) + 4)
    ok_traffic, traffic = t.traffic(vpc)
    settled = [w for at, w in samples if at >= t.settle_s(vpc)]
    doubles = sum("+" in w for w in settled)
    nones = sum(w in ("none", "mixed") for w in settled)
    changes = sum(a != b for a, b in zip(settled, settled[1:]))
    early = [at for at, w in samples if "+" in w]
    t.figures.setdefault(vpc, {})["sync_lost"] = {
        "settle_window_s": t.settle_s(vpc), "double_until_s": round(max(early), 2) if early else 0,
        "settled_samples": len(settled), "double": doubles, "none": nones, "changes": changes}
    t.sync_holder = settled[-1] if settled else "?"
    ok = doubles == 0 and nones == 0 and changes == 0 and ok_traffic
    return ok, (f"before {before}; settled on {t.sync_holder} ({len(settled)} samples: {doubles} double, "
                f"{nones} none, {changes} changes; two holders until {max(early) if early else 0:.1f} s); "
                f"{traffic}")


def _sync_back(t, vpc: str) -> tuple[bool, str]:
    lab.heal(t.tree_dir)
    t.reload_data()
    samples = t.sample(vpc, t.settle_s(vpc) + 3)
    holders = {w for _, w in samples}
    masters = t.masters(vpc)
    ok = holders == {t.sync_holder} and len(masters) == 1
    return ok, f"holders while healing: {', '.join(sorted(holders))}; masters {masters}"


def _upstream_lost(t, vpc: str) -> tuple[bool, str]:
    master = t.wait_one_master(vpc, t.settle_s(vpc))
    if len(master) != 1:
        return False, f"masters before: {master}"
    peer = next(r for r in t.vpcs[vpc]["routers"] if r != master[0])
    t.fault("upstream", master[0])
    start, took = time.monotonic(), None
    try:
        while time.monotonic() - start < 10:
            if all(h == [peer] for h in t.holders(vpc).values()):
                took = time.monotonic() - start
                break
            time.sleep(0.05)
        ok_traffic, traffic = t.traffic(vpc)
    finally:
        t.heal(vpc)
    t.figures.setdefault(vpc, {})["upstream_handover_s"] = round(took, 2) if took is not None else None
    if took is None:
        return False, f"{peer} does not hold every address after 10 s"
    return took <= 3 and ok_traffic, f"{peer} holds every address after {took:.2f} s; {traffic}"


def _daemon_killed(t, vpc: str, service: str) -> tuple[bool, str]:
    master = t.wait_one_master(vpc, t.settle_s(vpc))
    if len(master) != 1:
        return False, f"masters before: {master}"
    t.fault("kill", master[0], service)
    try:
        time.sleep(4)  # a health check or two: the daemon is back, or the peer holds everything
        by_vip = t.holders(vpc)
        owners = {r for h in by_vip.values() for r in h}
        running = any(lab._comm(int(p)) in lab.SERVICE_PROCESSES[service] for p in netns.run(
            ["ip", "netns", "pids", t.data["nodes"][master[0]]["ns"]]).stdout.split())
        ok_traffic, traffic = t.traffic(vpc)
    finally:
        t.heal(vpc)
    one = len(owners) == 1 and all(len(h) == 1 for h in by_vip.values())
    where = owners.pop() if len(owners) == 1 else "+".join(sorted(owners)) or "nobody"
    outcome = "restarted" if running and where == master[0] else "handed over" if where != master[0] else \
        "still dead on the master"
    return one and outcome != "still dead on the master" and ok_traffic, f"{outcome} (holder {where}); {traffic}"
