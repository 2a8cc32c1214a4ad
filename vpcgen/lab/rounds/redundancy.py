"""Round redundancy: CloudStack's redundant-VPC rounds (one master; NAT targets through a
failover; forwarding removed and restored)."""

from __future__ import annotations

import time

from .. import run as lab
from .services import site_to_site


def run(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        if not v["redundant"]:
            continue
        r = f"redundancy {vpc}"
        wait = 3 * t.advert_s(vpc) + 2
        t.check(r, "exactly one master", lambda: _one_master(t, vpc, wait))
        if v["kind"] != "nat":
            continue
        targets = t.nat_targets(vpc)
        t.check(r, "connect through NAT to every target", lambda: t.all_reach(vpc, targets, True))
        master = (t.masters(vpc) or [None])[0]
        if master is None:
            continue
        lab.stop_router(t.data, master)
        t.data["nodes"][master].pop("holder", None)
        t.check(r, f"master {master} stopped: the backup takes over",
                   lambda: _one_master(t, vpc, wait))
        t.check(r, "every connection works again", lambda: t.all_reach(vpc, targets, True, retry=5))
        for peer_name, peer in sorted(v["vpn_peers"].items()):
            t.check(r, f"VPN {peer_name} comes up on the new master",
                       lambda n=peer_name, pe=peer: site_to_site(t, vpc, n, pe))
        survivor = (t.masters(vpc) or [None])[0]
        t.check(r, "forwarding rules removed: connections fail",
                   lambda: _without_forwarding(t, vpc, survivor, targets))
        lab.start_router(t.tree_dir, master)
        t.reload_data()
        t.check(r, f"{master} started again: still exactly one master",
                   lambda: _one_master_stays(t, vpc, wait))
        t.check(r, "forwarding rules restored: connections work",
                   lambda: _restore_forwarding(t, vpc, survivor, targets))


def _one_master(t, vpc: str, wait: float) -> tuple[bool, str]:
    found = t.wait_one_master(vpc, wait)
    states = {r: t.state(r) for r in t.vpcs[vpc]["routers"]}
    return len(found) == 1, ", ".join(f"{k} {v}" for k, v in states.items())


def _one_master_stays(t, vpc: str, wait: float) -> tuple[bool, str]:
    time.sleep(wait)  # long enough for a wrong election to happen
    states = {r: t.state(r) for r in t.vpcs[vpc]["routers"]}
    ok = sorted(states.values()) == ["BACKUP", "MASTER"]
    return ok, ", ".join(f"{k} {v}" for k, v in states.items())


def _without_forwarding(t, vpc: str, router: str, targets) -> tuple[bool, str]:
    """The master's destination NAT taken away (its nat table's PREROUTING flushed): port forwards
    and static NAT stop; the load balancers (haproxy answers on INPUT) are not forwarding rules."""
    lab.exec_in(t.data, router, "iptables -w -t nat -F PREROUTING && conntrack -F 2>/dev/null; true")
    nat = [x for x in targets if not x[0].startswith("load balancer")]
    return t.all_reach(vpc, nat, False)


def _restore_forwarding(t, vpc: str, router: str, targets) -> tuple[bool, str]:
    lab.restore_nat(t.data["nodes"][router]["ns"], t.plan.node(router))
    return t.all_reach(vpc, targets, True, retry=3)
