"""Round daytwo: `vpcgen status` and `vpcgen switchover` as an operator runs them, over the lab's
management network (`vpcgen lab run`). The tree is deployed, status is green; then each drift is
injected on one pair, status must report exactly it (that router, that check, nothing else), and
green again once it is undone. Last, a planned switchover while probes run."""

from __future__ import annotations

import json
import re
import shlex
import time

from .. import run as lab
from ...tree import GENERATED, HA_GUARD_TAG, VPN_CHILD
from ..plan import ECHO_PORT
from ...reach.model import Endpoint
from .failover import TCP_STREAM, UDP_STREAM

SAVED = "/run/vpcgen-lab-drift"  # the edited file's original, in the router's private /run


def run(t) -> None:
    r = "daytwo"
    if not t.check(r, "the tree deployed over the management network", lambda: deploy(t, t.tree_dir)):
        return
    if not t.check(r, "status: exit 0, every router as built", lambda: status_is(t, t.tree_dir, [], 60)):
        return
    pairs = sorted(v for v, d in t.vpcs.items() if d["redundant"] and d["kind"] == "nat")
    if not pairs:
        return
    # the pair with the most to report: VPN peers first
    vpc = max(pairs, key=lambda v: (bool(t.vpcs[v]["vpn_peers"]), v))
    for name, inject, heal, expected in _drifts(t, vpc):
        t.check(r, f"status reports {name}, and only that",
                lambda: _drift(t, inject, heal, expected))
    t.check(r, "status reports a router on an older release, and only that", lambda: _older_release(t, vpc))
    t.check(f"{r} {vpc}", "switchover: the backup takes over, probes answered, TCP through source NAT survives",
            lambda: _switchover(t, vpc))


def deploy(t, tree, *args: str) -> tuple[bool, str]:
    r = t.vpcgen("deploy", str(tree), "--parallel", "4", *args)
    last = (r.stdout.strip().splitlines() or ["no output"])[-1]
    # on a failure, each failed router's row (its reason first: a failed step quotes its whole script)
    said = [" ".join(line.split())[:240] for line in r.stdout.splitlines()
            if re.match(r"\S+\s+(failed|rolled back)\s+[\d.]+s\s", line)]
    return r.returncode == 0, f"exit {r.returncode}: {last}" + (f"; {' | '.join(said) or r.stderr.strip()[-300:]}"
                                                               if r.returncode else "")


def status(t, tree, routers=()) -> tuple[int, list[tuple[str, str]], str]:
    r = t.vpcgen("status", str(tree), "--format", "json", *(a for router in routers for a in ("--router", router)))
    try:
        findings = json.loads(r.stdout)["findings"]
    except (ValueError, KeyError):
        return r.returncode, [("?", "no JSON")], (r.stdout + r.stderr)[-300:]
    return (r.returncode, sorted((f["router"], f["check"]) for f in findings),
            "; ".join(f"{f['router']} {f['check']}: {f['message']}" for f in findings))


def status_is(t, tree, expected: list[tuple[str, str]], timeout: float, routers=()) -> tuple[bool, str]:
    """Status (of ``routers``, or all) reports exactly ``expected`` (router, check) within ``timeout``
    (exit 1; exit 0 when none)."""
    deadline = time.monotonic() + timeout
    while True:
        code, found, text = status(t, tree, routers)
        if found == sorted(expected) and code == (1 if expected else 0):
            return True, f"exit {code}" + (f": {text}" if text else ", all routers as built")
        if time.monotonic() > deadline:
            return False, f"exit {code}, expected {expected}: {text or 'no finding'}"
        time.sleep(2)


def _ssh(t, router: str, command: str) -> None:
    address = t.vpcs[t.data["nodes"][router]["vpc"]]["routers"][router]["mgmt"]
    r = t.lab_run("ssh", address, command, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"ssh {router} {command!r}: exit {r.returncode}: {r.stderr.strip()[-200:]}")


def _fault(t, *args: str) -> None:
    lab.fault(t.tree_dir, args[0], list(args[1:]))
    t.reload_data()


def _heal(t) -> None:
    lab.heal(t.tree_dir)
    t.reload_data()


def _drift(t, inject, heal, expected) -> tuple[bool, str]:
    inject()
    try:
        ok, seen = status_is(t, t.tree_dir, expected(), 20)
    finally:
        heal()
    back, after = status_is(t, t.tree_dir, [], 90)
    return ok and back, f"{seen}; healed: {after}"


def _deleted_rule(t, router: str) -> tuple[str, str]:
    """A filter rule of the router's rules.v4 (an ACL rule when there is one): its -D and its -I."""
    rules = (t.trees / router / GENERATED["iptables"]).read_text()
    table, positions, candidates = "", {}, []
    for line in rules.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif table == "filter" and line.startswith("-A ") and HA_GUARD_TAG not in line:
            chain = line.split()[1]
            positions[chain] = positions.get(chain, 0) + 1
            candidates.append((not chain.startswith("ACL_"), line, chain, positions[chain]))
    _, line, chain, position = min(candidates, key=lambda c: c[0])
    rest = line.split(None, 2)[2]
    return f"iptables -w -D {chain} {rest}", f"iptables -w -I {chain} {position} {rest}"


def _drifts(t, vpc: str):
    """(what, inject, heal, expected findings) on one pair; who is master is asked when it runs."""
    routers = sorted(t.vpcs[vpc]["routers"])

    def master() -> str:
        return (t.wait_one_master(vpc, t.settle_s(vpc)) or [routers[0]])[0]

    def backup() -> str:
        return next(r for r in routers if r != master())

    chosen: dict = {}

    def delete_rule():
        chosen["router"] = master()
        chosen["rule"] = _deleted_rule(t, chosen["router"])
        _ssh(t, chosen["router"], chosen["rule"][0])

    yield ("a filter rule deleted by hand on the master", delete_rule,
           lambda: _ssh(t, chosen["router"], chosen["rule"][1]), lambda: [(chosen["router"], "firewall")])

    edited = "/" + GENERATED["sysctl"]

    def edit():
        chosen["edited"] = backup()
        _ssh(t, chosen["edited"], f"cp {edited} {SAVED} && echo '# edited by hand' >> {edited}")

    yield ("a managed file edited on the backup", edit,
           lambda: _ssh(t, chosen["edited"], f"cat {SAVED} > {edited}"), lambda: [(chosen["edited"], "file")])

    def kill_conntrackd():
        chosen["killed"] = backup()
        time.sleep(11)  # older than the slack status allows a deploy's own restart of conntrackd
        _fault(t, "kill", chosen["killed"], "conntrackd")

    yield ("conntrackd killed on the backup (the health check restarts it)", kill_conntrackd,
           lambda: _heal(t), lambda: [(chosen["killed"], "conntrackd")])

    for peer in sorted(t.vpcs[vpc]["vpn_peers"])[:1]:
        child = VPN_CHILD.format(name=peer)

        def terminate(child=child):
            chosen["tunnel"] = master()
            _ssh(t, chosen["tunnel"], f"swanctl --terminate --ike {shlex.quote(child)} --timeout 5")

        yield (f"the tunnel {child} terminated on the master", terminate,
               lambda child=child: _ssh(t, chosen["tunnel"], f"swanctl --initiate --child {shlex.quote(child)} "
                                        "--timeout 10"),
               lambda: [(chosen["tunnel"], "vpn")])

    # the lab cuts the second router's sync port; that router steps aside (FAULT)
    yield ("the sync link cut", lambda: _fault(t, "sync-link", vpc), lambda: _heal(t),
           lambda: [(routers[1], "vrrp")])


def _older_release(t, vpc: str) -> tuple[bool, str]:
    """A changed site (one ACL rule's ports widened) deployed to every router; one router rolled
    back to the release before: status against the changed tree names that router's release."""
    site = t.site
    acl = next(a for a in sorted(site["acls"]) if any(r.get("ports") for r in site["acls"][a]))
    variant = t.variant(lambda path: _widen_one_rule(path, acl))
    steps = []
    ok, detail = deploy(t, variant)
    steps.append(f"changed site deployed: {detail}")
    if not ok:
        return False, "; ".join(steps)
    router = sorted(t.vpcs[vpc]["routers"])[-1]
    try:
        ok, detail = status_is(t, variant, [], 60)
        steps.append(f"status {detail}")
        r = t.vpcgen("rollback", str(variant), "--router", router)
        steps.append(f"rollback {router}: exit {r.returncode}")
        reported, detail = status_is(t, variant, [(router, "release")], 20)
        steps.append(f"status {detail}")
    finally:
        back, detail = deploy(t, t.tree_dir)  # the later rounds run on the tree the lab was started from
        steps.append(f"the lab's tree deployed again: {detail}")
    green, detail = status_is(t, t.tree_dir, [], 90)
    steps.append(f"status {detail}")
    return ok and r.returncode == 0 and reported and back and green, "; ".join(steps)


def _widen_one_rule(site_path, acl: str) -> None:
    """The first rule with ports of the ACL file named ``acl``: its upper port one higher."""
    for path in sorted((site_path / "acls").glob("*.yaml")):
        text = path.read_text()
        if re.search(rf"^name:\s*{re.escape(acl)}\s*$", text, re.M):
            m = re.search(r'ports:\s*"?(\d+)(?:-(\d+))?"?', text)
            if m:
                low, high = int(m.group(1)), int(m.group(2) or m.group(1))
                path.write_text(text[:m.start()] + f'ports: "{low}-{min(high + 1, 65535)}"' + text[m.end():])
                return
    raise RuntimeError(f"no rule with ports in the ACL file of {acl}")


def _switchover(t, vpc: str) -> tuple[bool, str]:
    v = t.vpcs[vpc]
    before = t.wait_one_master(vpc, t.settle_s(vpc))
    if len(before) != 1:
        return False, f"masters before: {before}"
    inet = Endpoint("internet", address=t.inet_address(vpc))
    udp = next((pf for pf in v["port_forwarding"] if pf["protocol"] == "udp" and t.expect(
        inet, v["public_ips"][pf["public_ip"]], "udp", pf["public_port"][0]).delivered), None)
    host, allowed = t.source_host(vpc, t.inet_address(vpc), [("tcp", ECHO_PORT)])
    scripts = []
    if udp:
        scripts.append((t.inet(vpc), UDP_STREAM.replace("ADDRESS", v["public_ips"][udp["public_ip"]])
                        .replace("PORT", str(udp["public_port"][0]))))
    if host and allowed:
        scripts.append((host[0], TCP_STREAM.replace("ADDRESS", t.inet_address(vpc))
                        .replace("ECHO_PORT", str(ECHO_PORT))))
    if not scripts:
        return False, "nothing to probe: no UDP port forward the internet may reach, no host that may connect out"
    done = {}

    def hand_over():
        start = time.monotonic()
        done["r"] = t.vpcgen("switchover", str(t.tree_dir), "--vpc", vpc)
        done["s"] = time.monotonic() - start

    outs = t.during_all(scripts, 2.0, hand_over, 60)
    after = t.wait_one_master(vpc, t.settle_s(vpc))
    r = done["r"]
    figures = {"command_s": round(done["s"], 2)}
    ok = r.returncode == 0 and after != before and len(after) == 1
    detail = [f"switchover exit {r.returncode} in {done['s']:.1f} s; masters {before} -> {after}"]
    if udp:
        gap, lost, sent = outs[0].split()
        figures.update(interruption_ms=round(float(gap)), lost_probes=int(lost), probes=int(sent))
        detail.append(f"UDP probes every 10 ms: longest gap {float(gap):.0f} ms, {lost}/{sent} lost")
        limit = 500 if v["vrrp"]["advert_interval_ms"] <= 100 else 4000
        ok = ok and float(gap) < limit
    if host and allowed:
        tcp = outs[-1].strip().splitlines()[-1] if outs[-1].strip() else "no output"
        figures["tcp_survives"] = tcp.startswith("SURVIVED")
        detail.append(f"TCP through source NAT: {tcp}")
        ok = ok and tcp.startswith("SURVIVED")
    t.figures.setdefault(vpc, {})["switchover"] = figures
    if r.returncode != 0:
        detail.append((r.stdout + r.stderr).strip()[-300:])
    return ok, "; ".join(detail)

