"""Rounds status and switchover: the day-two commands run as an operator runs them, through
`vpcgen lab run` on the lab's management network (SSH to every router's eth0), against the running lab.

status: the tree deployed, `vpcgen status` green; then one drift at a time, each undone before the
next: exactly its finding, naming its router, and nothing else (exit 1), then green again.
switchover: `vpcgen switchover` on each redundant VPC while a UDP stream runs through a port
forward and a TCP connection through source NAT: the interruption measured, the connection kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import run as lab
from ...ops import netns
from ...tree import GENERATED, MANIFEST, VPN_CHILD
from ..plan import ECHO_PORT
from ...reach.model import Endpoint
from .failover import TCP_STREAM, UDP_STREAM

RULES = GENERATED["iptables"]
EDITED = GENERATED["sysctl"]  # every router has it; a comment line changes nothing it does
GREEN_S = 60  # a reload may re-establish a pair's tunnels, a restarted router needs its adjacency


def vpcgen() -> list[str]:
    """The vpcgen an operator runs: this one's console script (python -m would import whatever
    vpcgen package the current folder holds)."""
    script = Path(sys.executable).parent / "vpcgen"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vpcgen"]


def lab_run(tree_dir: Path, *command: str, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`vpcgen lab run TREE_DIR -- COMMAND...`: the command on the lab's management network."""
    return subprocess.run([*vpcgen(), "lab", "run", str(tree_dir), "--", *command], capture_output=True, text=True,
                          input=input, timeout=timeout)


def ssh(t, router: str, command: str, input: str | None = None) -> subprocess.CompletedProcess:
    mgmt = t.site["vpcs"][t.data["nodes"][router]["vpc"]]["routers"][router]["mgmt"]
    return lab_run(t.tree_dir, "ssh", mgmt, command, input=input)


def status(t, tree: Path | None = None) -> tuple[int, list[dict], str]:
    """`vpcgen status --format json` through the management network: exit code, findings, output."""
    r = lab_run(t.tree_dir, *vpcgen(), "status", str(tree or t.tree_dir), "--format", "json")
    try:
        found = json.loads(r.stdout)["findings"]
    except (ValueError, KeyError):
        found = [{"router": "?", "check": "?", "message": (r.stdout + r.stderr).strip()[-300:]}]
    return r.returncode, found, r.stdout + r.stderr


def shown(found: list[dict]) -> str:
    return "; ".join(f"{f['router']} {f['check']}: {f['message']}" for f in found) or "no finding"


def green(t, timeout: float = GREEN_S) -> tuple[bool, str]:
    """Status exits 0 within ``timeout`` (asked every few seconds)."""
    start = time.monotonic()
    while True:
        code, found, _ = status(t)
        if code == 0 and not found:
            return True, f"exit 0, no finding after {time.monotonic() - start:.0f} s"
        if time.monotonic() - start > timeout:
            return False, f"exit {code} after {timeout:.0f} s: {shown(found)}"
        time.sleep(3)


def run_status(t) -> None:
    r = "status"
    if not t.check(r, "the tree deployed through the management network (vpcgen deploy, an older release "
                      "first on one router)", lambda: _deploy(t)):
        return
    if not t.check(r, "the deployed lab: exit 0, no finding", lambda: green(t)):
        return
    routers = sorted(n for n, v in t.data["nodes"].items() if v["kind"] == "router")
    pairs = [v for v in sorted(t.vpcs) if t.vpcs[v]["redundant"]]
    master = (t.masters(pairs[0]) or [None])[0] if pairs else None
    on = master or routers[0]
    rule = _a_rule(t, on)
    if rule:
        # iptables-save spells the rule its own way (the comment where it puts it): known by its comment
        _drift(t, f"a rule deleted by hand on {on}: exactly that rule",
               [(on, "firewall", f"filter: missing -A {rule[0]} ", rule[2].split(" --comment ", 1)[-1])],
               lambda: _ok(ssh(t, on, f"iptables -t filter -D {rule[2][3:]}")),
               lambda: _ok(ssh(t, on, f"iptables -t filter -I {rule[0]} {rule[1]} {rule[2].split(' ', 2)[2]}")))
    backup = next((x for x in t.vpcs[pairs[0]]["routers"] if x != master), None) if master else None
    on = backup or routers[-1]
    path = f"{_root(t, on)}{EDITED}"
    original = (t.tree_dir / on / EDITED).read_text()
    _drift(t, f"a managed file edited on {on}: exactly that file",
           [(on, "file", f"{path} differs from the tree (edited on the router)")],
           lambda: _ok(ssh(t, on, f"echo '# edited by hand' >> {path}")),
           lambda: _ok(ssh(t, on, f"cat > {path}", input=original)))
    if backup:
        t.check(r, f"conntrackd killed on {backup}: the router's health check restarts it, resynced: no finding",
                lambda: _conntrackd_restarted(t, backup))
        _drift(t, f"conntrackd killed on {backup} with keepalived (nothing restarts it): exactly both",
               [(backup, "service", "conntrackd is not healthy"), (backup, "service", "keepalived is not healthy")],
               lambda: (t.fault("kill", backup, "keepalived"), t.fault("kill", backup, "conntrackd")),
               lambda: t.heal(t.data["nodes"][backup]["vpc"]))
    vpn = next((v for v in pairs if t.vpcs[v]["vpn_peers"]), None)
    if vpn:
        serving = t.masters(vpn)[0]
        child = VPN_CHILD.format(name=sorted(t.vpcs[vpn]["vpn_peers"])[0])
        _drift(t, f"tunnel {child} terminated on {serving}: exactly that tunnel",
               [(serving, "vpn", f"tunnel {child} is down")],
               lambda: _ok(ssh(t, serving, f"swanctl --terminate --ike {child} --timeout 10")),
               lambda: _ok(ssh(t, serving, f"swanctl --initiate --child {child} --timeout 10")))
    for vpc in pairs:
        second = next(x for x, d in t.vpcs[vpc]["routers"].items() if d.get("role") == "second")
        _drift(t, f"the sync link of {vpc} cut: exactly its second router out (FAULT)",
               [(second, "vrrp", "VRRP state is FAULT: the sync link to its peer is down")],
               lambda v=vpc: (t.fault("sync-link", v), time.sleep(t.settle_s(v) + 2)),
               lambda v=vpc: t.heal(v))
    older = t.figures.get("status", {}).get("older_release")
    if older:
        on = older["router"]
        _drift(t, f"{on} rolled back to the older release: exactly that, naming the file that differs",
               [(on, "release", f"runs release {older['release']}, which is not the tree's (deploy the tree, or it "
                 f"was rolled back): its {RULES} differs from the tree's")],
               lambda: _ok(lab_run(t.tree_dir, *vpcgen(), "rollback", str(t.tree_dir), "--router", on)),
               lambda: _ok(lab_run(t.tree_dir, *vpcgen(), "deploy", str(t.tree_dir), "--router", on)))


def _ok(r: subprocess.CompletedProcess) -> None:
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")


def _root(t, router: str) -> str:
    root = json.loads((t.tree_dir / router / MANIFEST).read_text())["deploy"]["root"]
    return root.rstrip("/") + "/"


def _a_rule(t, router: str) -> tuple[str, int, str] | None:
    """An ACL rule of the router's filter table (chain, its position in the chain, the rule as
    iptables-save spells it): the first of an ingress list, else of FORWARD."""
    table = (t.tree_dir / router / RULES).read_text().split("*filter", 1)[1].split("COMMIT", 1)[0]
    rules = [line for line in table.splitlines() if line.startswith("-A ")]
    for prefix in ("-A ACL_INBOUND", "-A FORWARD"):
        for line in rules:
            if line.startswith(prefix):
                chain = line.split()[1]
                position = [x.split()[1] for x in rules[:rules.index(line)]].count(chain) + 1
                return chain, position, line
    return None


def _drift(t, name: str, expected: list[tuple], inject, undo) -> bool:
    """Inject, ask status once, undo, and see it green again: the check passes when the findings
    are exactly ``expected`` (router, check, start of the message[, a part of it]) and the lab is
    green after."""
    def check() -> tuple[bool, str]:
        try:
            inject()
            code, found, _ = status(t)
        finally:
            undo()
        exact = code == 1 and len(found) == len(expected) and all(
            f["router"] == e[0] and f["check"] == e[1] and f["message"].startswith(e[2]) and e[-1] in f["message"]
            for f, e in zip(found, sorted(expected)))
        again, detail = green(t)
        t.figures.setdefault("status", {}).setdefault("drifts", {})[name] = {
            "exit": code, "findings": [f"{f['router']} {f['check']}: {f['message']}" for f in found]}
        return exact and again, f"exit {code}: {shown(found)}; undone: {detail}"
    return t.check("status", name, check)


def _deploy(t) -> tuple[bool, str]:
    """The tree deployed to every router (a fresh lab's routers have no release yet), with one
    router first given an older release (its rules.v4 without one ACL rule) to roll back to later."""
    single = sorted(n for n, v in t.data["nodes"].items() if v["kind"] == "router"
                    and not t.vpcs[v["vpc"]]["redundant"])
    on = (single or sorted(n for n, v in t.data["nodes"].items() if v["kind"] == "router"))[0]
    rule = _a_rule(t, on)
    notes = []
    if rule:
        with tempfile.TemporaryDirectory(prefix="vpcgen-older-") as tmp:
            older = _older_tree(t.tree_dir, Path(tmp) / t.tree_dir.name, on, rule[2])
            r = lab_run(t.tree_dir, *vpcgen(), "deploy", str(older), "--router", on)
            if r.returncode != 0:
                return False, f"the older release on {on}: exit {r.returncode}: {(r.stdout + r.stderr)[-300:]}"
        release = _current(t, on)
        t.figures.setdefault("status", {})["older_release"] = {"router": on, "release": release,
                                                                 "without": rule[2]}
        notes.append(f"{on} first on {release} (without {rule[2].split(' --comment ')[-1]})")
    start = time.monotonic()
    r = lab_run(t.tree_dir, *vpcgen(), "deploy", str(t.tree_dir), "--parallel", "8")
    took = time.monotonic() - start
    summary = (r.stdout.strip().splitlines() or ["no output"])[-1]
    t.figures.setdefault("status", {})["deploy_s"] = round(took, 1)
    return r.returncode == 0, f"{summary} in {took:.0f} s" + (f"; {'; '.join(notes)}" if notes else "") + \
        ("" if r.returncode == 0 else f": {(r.stdout + r.stderr)[-400:]}")


def _older_tree(tree: Path, to: Path, router: str, rule: str) -> Path:
    """A copy of the built tree whose router's rules.v4 lacks ``rule`` (its manifest says so): the
    release before an ACL change."""
    shutil.copytree(tree, to)
    rules = to / router / RULES
    lines = rules.read_text().splitlines(keepends=True)
    lines.remove(rule + "\n")
    rules.write_text("".join(lines))
    manifest = to / router / MANIFEST
    data = json.loads(manifest.read_text())
    for entry in data["files"]:
        if entry["path"] == RULES:
            entry["sha256"] = hashlib.sha256(rules.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return to


def _current(t, router: str) -> str:
    r = ssh(t, router, "readlink /var/lib/vpcgen/current")
    return r.stdout.strip().rsplit("/", 1)[-1]


def _daemon_pids(t, router: str, comm: str) -> set[int]:
    return {int(p) for p in netns.run(["ip", "netns", "pids", t.data["nodes"][router]["ns"]]).stdout.split()
            if lab._comm(int(p)) == comm}


def _conntrackd_restarted(t, router: str) -> tuple[bool, str]:
    """conntrackd killed on a router of a pair: notify.sh's health check (every second) starts it
    again and it asks the master for a resync, so that status, once it is back, finds nothing (its
    pair check compares the backup's external cache with the master's internal one)."""
    before = _daemon_pids(t, router, "conntrackd")
    for pid in before:  # by PID, as `lab fault kill` does, but not recorded for `heal`: the router heals it
        lab._kill(pid)
    start = time.monotonic()
    while not (_daemon_pids(t, router, "conntrackd") - before) and time.monotonic() - start < 10:
        time.sleep(0.1)
    back = time.monotonic() - start
    if not _daemon_pids(t, router, "conntrackd") - before:
        lab.stop_router(t.data, router)
        lab.start_router(t.tree_dir, router)
        t.reload_data()
        return False, "not restarted within 10 s"
    code, found, _ = status(t)
    t.figures.setdefault("status", {})["conntrackd_restart_s"] = round(back, 2)
    return code == 0 and not found, f"restarted after {back:.1f} s; status exit {code}: {shown(found)}"


def run_switchover(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        if v["redundant"]:
            name = ("vpcgen switchover refused: the pair preempts" if v["vrrp"]["preempt"] else
                    "vpcgen switchover while probes run: the backup is the only master, interruption measured"
                    + (", TCP through source NAT survives" if v["kind"] == "nat" else ""))
            t.check(f"switchover {vpc}", name, lambda vpc=vpc: _switchover(t, vpc))


def _switchover(t, vpc: str) -> tuple[bool, str]:
    v = t.vpcs[vpc]
    if v["vrrp"]["preempt"]:  # its first router takes mastership back: refused, and nothing changes
        before = t.masters(vpc)
        r = lab_run(t.tree_dir, *vpcgen(), "switchover", str(t.tree_dir), "--vpc", vpc, timeout=120)
        said = (r.stdout + r.stderr).strip()
        return r.returncode == 1 and "preempts" in said and t.masters(vpc) == before, f"exit {r.returncode}: {said}"
    before = t.wait_one_master(vpc, t.settle_s(vpc))
    if len(before) != 1:
        return False, f"masters before: {before}"
    backup = next(r for r in v["routers"] if r != before[0])
    streams = {}
    inet = Endpoint("internet", address=t.inet_address(vpc))
    udp = next((pf for pf in v["port_forwarding"] if pf["protocol"] == "udp" and t.expect(
        inet, v["public_ips"][pf["public_ip"]], "udp", pf["public_port"][0]).delivered), None)
    if udp:
        script = UDP_STREAM.replace("ADDRESS", v["public_ips"][udp["public_ip"]]).replace(
            "PORT", str(udp["public_port"][0])).replace("SECONDS", "300")
        streams["udp"] = _start(t, t.inet(vpc), script)
    host, allowed = t.source_host(vpc, t.inet_address(vpc), [("tcp", ECHO_PORT)]) if v["kind"] == "nat" else \
        (None, False)
    if host and allowed:
        script = TCP_STREAM.replace("ADDRESS", t.inet_address(vpc)).replace("ECHO_PORT", str(ECHO_PORT)).replace(
            "SECONDS", "300")
        streams["tcp"] = _start(t, host[0], script)
    time.sleep(2)  # the streams under way, the TCP connection synced to the backup
    start = time.monotonic()
    r = lab_run(t.tree_dir, *vpcgen(), "switchover", str(t.tree_dir), "--vpc", vpc, timeout=120)
    took = time.monotonic() - start
    time.sleep(1)  # the streams run across the whole switchover, and a moment after it
    for p in streams.values():
        p.terminate()
    outs = {k: (p.communicate(timeout=60)[0].strip().splitlines() or ["no output"])[-1] for k, p in streams.items()}
    after = t.masters(vpc)
    figure = {"from": before[0], "to": backup, "exit": r.returncode, "command_s": round(took, 2),
              "said": (r.stdout.strip().splitlines() or [""])[-1]}
    ok = r.returncode == 0 and after == [backup]
    detail = [f"exit {r.returncode} in {took:.1f} s: {figure['said']}", f"masters after: {after}"]
    if "udp" in outs:
        try:
            sent, answered, gap = (float(x) for x in outs["udp"].split())
            figure.update({"udp_sent": int(sent), "udp_lost": int(sent - answered), "udp_max_gap_ms": round(gap)})
            detail.append(f"UDP stream: {int(sent - answered)} of {int(sent)} lost, longest gap {gap:.0f} ms")
        except ValueError:
            ok = False
            detail.append(f"UDP stream: {outs['udp']}")
    if "tcp" in outs:
        figure["tcp_survives"] = outs["tcp"].startswith("SURVIVED")
        ok = ok and figure["tcp_survives"]
        detail.append(f"TCP through source NAT: {outs['tcp']}")
    elif v["kind"] == "routed":
        took_route = t.announced_by(vpc, backup, 10)
        figure["core_routes_new_master_s"] = round(took_route, 2) if took_route is not None else None
        ok = ok and took_route is not None
        detail.append(f"the core routes through {backup}" if took_route is not None else
                      f"the core does not route through {backup}: {t.core_route(vpc) or 'no route'}")
    t.figures.setdefault(vpc, {})["switchover"] = figure
    return ok, "; ".join(detail)


def _start(t, node: str, script: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", t.data["nodes"][node]["ns"], sys.executable, "-c", script],
                            stdout=subprocess.PIPE, text=True)
