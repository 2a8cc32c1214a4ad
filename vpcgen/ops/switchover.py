"""`vpcgen switchover`: a planned handover of a pair's mastership to its backup, for maintenance.

Before: both routers answer, exactly one is MASTER and the other BACKUP, both run the tree's
release with nothing pending, every health check of the backup passes, and its conntrackd external
cache holds the master's connections (in sync). Then the master is asked to hand over (the
switchover command: keepalived's stop sends priority 0, so the backup takes over at once; its start
brings it back as backup, nopreempt). After: VRRP sampled every 100 ms until the former backup is
the only master and the former master is BACKUP, held for a second; two masters at any sample is
reported.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import VpcgenError
from ..tree import STATUS_COMMANDS, read_routers, read_site_json
from .deploy import (CONNECTION_ERRORS, Remote, RouterDeploy, Target, _said, _settings_problem, connect,
                     substitute)
from .status import SYNC_SLACK, _counters, in_sync

SAMPLE_S = 0.1
STABLE_S = 1.0


@dataclass
class SwitchoverOptions:
    known_hosts: Path
    identity: list[str] = field(default_factory=list)
    timeout: float = 30.0  # for the new master to be the only one
    commands: dict = field(default_factory=dict)
    sync_slack: int = SYNC_SLACK  # connections the backup's external cache may lag behind the master's


@dataclass
class Result:
    vpc: str
    ok: bool
    old_master: str | None = None
    new_master: str | None = None
    seconds: float = 0.0  # from the handover command to the new master seen
    detail: str = ""


def pair_targets(tree_dir: Path, vpc: str, commands: dict) -> list[Target]:
    routers = read_routers(Path(tree_dir))
    targets = [Target(r, commands) for r in routers.values() if r.manifest.get("vpc") == vpc]
    if not targets:
        vpcs = sorted({r.manifest.get("vpc") for r in routers.values()})
        raise VpcgenError(f"no VPC {vpc} in {tree_dir} (VPCs: {', '.join(vpcs)})")
    if len(targets) != 2 or not all(t.manifest["deploy"].get("vrrp") for t in targets):
        raise VpcgenError(f"VPC {vpc} is not a redundant pair: nothing to switch over")
    if ((read_site_json(Path(tree_dir))["vpcs"].get(vpc) or {}).get("vrrp") or {}).get("preempt"):
        raise VpcgenError(f"VPC {vpc} preempts (vrrp preempt: true): its higher-priority router takes mastership "
                          "back as soon as it is backup again, so a switchover cannot hold")
    for t in targets:
        problem = _settings_problem(t.manifest)
        if problem:
            raise VpcgenError(f"{t.tree.dir}: '{problem}' is missing or malformed in its manifest")
    return targets


def switchover(tree_dir: Path, vpc: str, options: SwitchoverOptions, progress: Callable[[str], None]) -> Result:
    targets = pair_targets(tree_dir, vpc, options.commands)
    if not Path(options.known_hosts).is_file():
        raise VpcgenError(f"{options.known_hosts}: no known_hosts file: give --known-hosts")
    remotes: dict[str, Remote] = {}
    try:
        for t in targets:
            try:
                remotes[t.name] = Remote(connect(t, options.known_hosts, options.identity))
            except CONNECTION_ERRORS as exc:
                return Result(vpc, False, detail=f"{t.name}: {exc}: not switching over")
        routers = {t.name: RouterDeploy(t, remotes[t.name], lambda r, m: progress(f"[{r}] {m}")) for t in targets}
        try:
            return _switch(vpc, targets, routers, options, progress)
        except CONNECTION_ERRORS as exc:
            return Result(vpc, False, detail=f"lost a router during the switchover: {exc}")
    finally:
        for remote in remotes.values():
            remote.close()


def _states(routers: dict[str, RouterDeploy]) -> dict[str, str | None]:
    return {name: d.vrrp_state() for name, d in routers.items()}


def _switch(vpc: str, targets: list[Target], routers: dict[str, RouterDeploy], options: SwitchoverOptions,
            progress) -> Result:
    states = _states(routers)
    masters = [n for n, s in states.items() if s == "MASTER"]
    backups = [n for n, s in states.items() if s == "BACKUP"]
    shown = ", ".join(f"{n} {s or 'unknown'}" for n, s in sorted(states.items()))
    if len(masters) != 1 or len(backups) != 1:
        return Result(vpc, False, detail=f"the pair is not one MASTER and one BACKUP ({shown}): not switching over")
    master, backup = masters[0], backups[0]
    progress(f"{vpc}: {master} is MASTER, {backup} is BACKUP; checking {backup}")
    by_name = {t.name: t for t in targets}
    # both on the tree's release, nothing pending: the backup serves what the master serves
    for name in (backup, master):
        probe = routers[name].probe()
        current = probe.state(probe.current)
        if probe.pending or current is None or current.key() != by_name[name].state().key():
            why = f"release {probe.pending[0]} is not confirmed" if probe.pending else \
                f"it runs {probe.current or 'no release'}, not the tree's"
            return Result(vpc, False, master, detail=f"{name}: {why}: deploy the tree first; not switching over")
    d = routers[backup]
    failed, rc, out = d.r.steps([(f"health:{e['service']}", substitute(e["command"], d.t, ""))
                                 for e in d.t.settings["health"]])
    if failed:
        return Result(vpc, False, master, detail=f"{backup} is not healthy: {failed[7:]} (exit {rc}){_said(out, 200)}; "
                      "not switching over")
    services = {s["name"] for s in d.t.manifest["services"]}
    if "conntrackd" in services:
        command = STATUS_COMMANDS | options.commands.get("status", {})
        counts = {}
        for name in (master, backup):
            t = routers[name].t
            rc, text = routers[name].r.run(substitute(command["conntrackd"], t, ""), timeout=15)
            if rc != 0:
                return Result(vpc, False, master, detail=f"{name}: conntrackd does not answer (exit {rc}); "
                              "not switching over")
            counts[name] = _counters(text)
        ok, internal, external = in_sync(counts[master], counts[backup], options.sync_slack)
        if not ok:
            return Result(vpc, False, master, detail=f"{backup} is not in sync: its external cache holds "
                          f"{external if external is not None else '?'} connections, {master}'s internal cache "
                          f"{internal if internal is not None else '?'}; not switching over")
        progress(f"{vpc}: {backup} in sync ({external} of the master's {internal} connections)")
    command = substitute((STATUS_COMMANDS | options.commands.get("status", {}))["switchover"], routers[master].t, "")
    progress(f"{vpc}: asking {master} to hand over")
    # the backup watched on its own connection while the master's command runs (it returns once
    # keepalived is back as backup, well after the takeover)
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not seen:
            if routers[backup].vrrp_state() == "MASTER":
                seen.append(time.monotonic())
            time.sleep(SAMPLE_S)

    start = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rc, out = routers[master].r.run(command)
    finally:
        done.set()
        watcher.join()
    if rc != 0:
        return Result(vpc, False, master, detail=f"the handover command failed on {master} (exit {rc}){_said(out, 200)}")
    seen_at, stable_since, split = (seen[0] if seen else None), None, []
    deadline = start + options.timeout
    while time.monotonic() < deadline:
        states = _states(routers)
        now = time.monotonic()
        if sum(s == "MASTER" for s in states.values()) > 1:
            split.append(round(now - start, 2))
        if states[backup] == "MASTER" and seen_at is None:
            seen_at = now
        if states[backup] == "MASTER" and states[master] == "BACKUP":
            stable_since = stable_since or now
            if now - stable_since >= STABLE_S:
                note = f"; two masters seen {len(split)} time(s)" if split else ""
                return Result(vpc, not split, master, backup, seen_at - start,
                              f"{backup} is MASTER {seen_at - start:.2f} s after the handover, {master} BACKUP{note}")
        else:
            stable_since = None
        time.sleep(SAMPLE_S)
    shown = ", ".join(f"{n} {s or 'unknown'}" for n, s in sorted(_states(routers).items()))
    return Result(vpc, False, master, backup if seen_at else None, (seen_at or time.monotonic()) - start,
                  f"not exactly one new master within {options.timeout:g} s ({shown})")

