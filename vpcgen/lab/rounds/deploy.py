"""Round deploy: `vpcgen deploy` into the running lab, through its management network, while traffic
flows. Each change is a copy of the site with one thing changed (an ACL rule, a load balancer's
member, a VPN peer network), built and deployed while probes run, then the lab's own tree again;
the probes say how long the data plane was interrupted. Then a tree that cuts SSH on eth0: deploy
must report it undone, and the router must be back on its previous release by itself."""

from __future__ import annotations

import ipaddress
import json
import re
import time

import yaml

from ...reach.model import Endpoint
from ..plan import PROBE_TCP_PORT, Peer
from .context import HTTP_GET
from .daytwo import _widen_one_rule, deploy, status_is
from .failover import UDP_STREAM, until_stop

# new TCP connections every 50 ms until STOP exists, each sending PAYLOAD and reading an answer;
# prints the longest gap between answered connections in ms, the failed ones, and all
TCP_CONNECTS = """
import os, socket, time
ok = bad = 0; last = None; gap = 0.0
while not os.path.exists("STOP"):
    start = time.monotonic()
    try:
        s = socket.create_connection(("ADDRESS", PORT), timeout=1); s.settimeout(1)
        s.sendall(PAYLOAD); data = s.recv(100); s.close()
        if not data: raise OSError("no answer")
        ok += 1; now = time.monotonic()
        if last is not None: gap = max(gap, now - last)
        last = now
    except OSError:
        bad += 1
    time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
print(gap * 1000, bad, ok + bad)
"""
# the failover round's UDP stream (every 10 ms, late answers counted), until STOP exists
UDP_UNTIL = until_stop(UDP_STREAM)


def run(t) -> None:
    r = "deploy"
    if not t.check(r, "the lab's tree deployed over the management network", lambda: deploy(t, t.tree_dir)):
        return
    for what, make in _changes(t):
        t.check(r, f"{what}: deployed while probes run", lambda m=make, w=what: _change(t, w, *m()))
    vpc = next((v for v in sorted(t.vpcs) if t.vpcs[v]["redundant"]), sorted(t.vpcs)[0])
    t.check(r, "a tree that cuts SSH on eth0: deploy reports it undone, the router is back by itself",
            lambda: _cuts_ssh(t, sorted(t.vpcs[vpc]["routers"])[0]))


def _edit_vpc(site_path, vpc: str, change) -> None:
    """``change(document)`` on the VPC's file of a site copy (comments are not kept: a copy)."""
    for path in sorted((site_path / "vpcs").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("name") == vpc:
            change(doc)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            return
    raise RuntimeError(f"no file of VPC {vpc} in the site")


def _changes(t):
    """(what, a function giving (VPC, variant tree, probing node, script)) per change kind the site has."""
    inet_udp = None
    for vpc, v in sorted(t.vpcs.items()):
        inet = Endpoint("internet", address=t.inet_address(vpc))
        udp = next((pf for pf in v["port_forwarding"] if pf["protocol"] == "udp" and t.expect(
            inet, v["public_ips"][pf["public_ip"]], "udp", pf["public_port"][0]).delivered), None)
        if udp and inet_udp is None:
            inet_udp = (vpc, udp)
    if inet_udp:
        vpc, udp = inet_udp
        tier = t.tier_of(vpc, udp["private_ip"])

        def acl():
            script = UDP_UNTIL.replace("ADDRESS", t.vpcs[vpc]["public_ips"][udp["public_ip"]]).replace(
                "PORT", str(udp["public_port"][0]))
            return vpc, t.variant(lambda p: _widen_one_rule(p, tier["acl"])), t.inet(vpc), script
        yield f"one ACL rule (acl {tier['acl']}, probes: UDP port forwarding into it)", acl
    for vpc, v in sorted(t.vpcs.items()):
        lb = next(((n, lb) for n, lb in sorted(v["load_balancers"].items())
                   if lb["protocol"] == "http" and len(lb["members"]) > 1), None)
        if lb:
            name, balancer = lb

            def member(vpc=vpc, name=name, balancer=balancer):
                def drop(doc):
                    for entry in doc["load_balancers"]:
                        if entry["name"] == name:
                            entry["members"] = entry["members"][:-1]
                script = _connects(t, t.vpcs[vpc]["public_ips"][balancer["public_ip"]], balancer["public_port"],
                                   HTTP_GET)
                return vpc, t.variant(lambda p: _edit_vpc(p, vpc, drop)), t.inet(vpc), script
            yield f"one load-balancer member (lb {name}, probes: HTTP through it)", member
            break
    for vpc, v in sorted(t.vpcs.items()):
        # an IKEv2 peer first: an IKEv1 tunnel has one network on each side
        for peer_name in sorted(v["vpn_peers"], key=lambda p: (v["vpn_peers"][p].get("ike_version") != 2, p)):
            node = t.plan.node(f"{vpc}-peer-{peer_name}")
            if not isinstance(node, Peer):
                continue
            target = node.loopback[0].split("/")[0]
            host, allowed = t.source_host(vpc, target, [("tcp", PROBE_TCP_PORT)], list(node.tunnel.local_cidrs),
                                          kind="peer")
            if host is None or not allowed:
                continue

            def peer(vpc=vpc, peer_name=peer_name, host=host, target=target):
                def widen(doc):
                    for entry in doc["vpn"]["site_to_site"]:
                        if entry["name"] == peer_name:
                            entry["peer_cidrs"] = list(entry["peer_cidrs"]) + [_spare_network(t)]
                return (vpc, t.variant(lambda p: _edit_vpc(p, vpc, widen)), host[0],
                        _connects(t, target, PROBE_TCP_PORT, "hello"))
            yield f"one VPN peer network (peer {peer_name}, probes: TCP through the tunnel)", peer
            return


def _spare_network(t) -> str:
    """A /24 no network of the site uses (an added peer network that overlaps nothing)."""
    used = [net for c in re.findall(r'"(\d+\.\d+\.\d+\.\d+/\d+)"', json.dumps(t.site))
            if (net := ipaddress.ip_network(c, strict=False)).prefixlen >= 8]  # not the "anywhere" of a rule
    for third in range(255, 0, -1):
        net = ipaddress.ip_network(f"172.31.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise RuntimeError("no spare /24 in 172.31.0.0/16")


def _connects(t, address: str, port: int, payload: str) -> str:
    return (TCP_CONNECTS.replace("ADDRESS", address).replace("PORT", str(port))
            .replace("PAYLOAD", repr(payload.replace("\\n", "\n").encode())))


def _change(t, what: str, vpc: str, variant, node: str, script: str) -> tuple[bool, str]:
    stop = variant.parent.parent / "stop"
    stop.unlink(missing_ok=True)
    script = script.replace("STOP", str(stop))
    done = {}

    def ship():
        start = time.monotonic()
        done["deploy"] = deploy(t, variant)
        done["s"] = time.monotonic() - start
        time.sleep(1.5)  # the probes go on a moment after the deploy
        stop.touch()

    out = t.during(node, script, 1.0, ship, 120)
    back = deploy(t, t.tree_dir)  # the later rounds run on the tree the lab was started from
    ok_deploy, detail = done["deploy"]
    try:
        gap, lost, sent = out.split()[:3]
    except (AttributeError, ValueError):
        return False, f"no measurement ({out!r}); deploy {detail}"
    lost, sent, gap = int(lost), int(sent), float(gap)
    kind = what.split(" (")[0]
    t.figures.setdefault("deploy", {})[kind] = {"vpc": vpc, "interruption_ms": round(gap), "lost_probes": lost,
                                                 "probes": sent, "deploy_s": round(done["s"], 1)}
    ok = ok_deploy and back[0] and sent > 10
    if kind == "one ACL rule":
        ok = ok and lost == 0  # an ACL-only change: the rules are swapped atomically, nothing is lost
    return ok, (f"deploy {detail} in {done['s']:.1f} s; probes: longest gap {gap:.0f} ms, {lost}/{sent} lost; "
                f"the lab's tree again: {back[1]}")


def _cuts_ssh(t, router: str) -> tuple[bool, str]:
    """ssh.allowed_from narrowed to the router's own address: the station loses SSH after the switch."""
    mgmt = t.vpcs[t.data["nodes"][router]["vpc"]]["routers"][router]["mgmt"]

    def narrow(site_path):
        path = site_path / "site.yaml"
        doc = yaml.safe_load(path.read_text())
        doc.setdefault("defaults", {}).setdefault("ssh", {})["allowed_from"] = [f"{mgmt}/32"]
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    variant = t.variant(narrow)
    timeout = 10
    start = time.monotonic()
    r = t.vpcgen("deploy", str(variant), "--router", router, "--confirm-timeout", str(timeout))
    took = time.monotonic() - start
    said = (r.stdout.strip().splitlines() or ["no output"])[-1]
    back, detail = status_is(t, t.tree_dir, [], 30)
    total = time.monotonic() - start
    t.figures.setdefault("deploy", {})["cuts_ssh"] = {"router": router, "confirm_timeout_s": timeout,
                                                      "deploy_returned_s": round(took, 1),
                                                      "back_and_green_s": round(total, 1)}
    undone = r.returncode != 0 and "rolled back" in r.stdout
    return undone and back, (f"deploy exit {r.returncode} after {took:.1f} s: {said}; status against the lab's "
                             f"tree {detail} ({total:.1f} s after the deploy started)")
