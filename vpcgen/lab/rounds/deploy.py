"""Round deploy: `vpcgen deploy` run through `vpcgen lab run` against the running lab, as against real
routers. Each change (one ACL rule, one load-balancer member, one VPN peer network) is made in a copy
of the site, built into a tree of its own and deployed while probe streams run, so the data-plane
interruption of each kind of change is measured (an ACL-only change must lose no probe); a tree that
cuts SSH on eth0 must be undone (deploy says so, the router runs its previous release and answers
SSH again within the confirm timeout). The lab's own tree is deployed again at the end.

Needs the site folder the tree was built from (`vpcgen lab test --site`): the changes are made there,
in a copy, never in the tree."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ..plan import PROBE_TCP_PORT
from .context import HTTP_GET
from ...tree import DEPLOY_STATE

VPCGEN = [sys.executable, "-m", "vpcgen"]
CONFIRM_S = 10  # the SSH-cut tree's confirm timeout: long enough for a reload, short for the round


def run(t) -> None:
    r = "deploy"
    if t.site_dir is None:
        t.check(r, "changes deployed into the running lab", lambda: (False, "the round builds changed copies of the "
                "site: give the site folder the tree was built from (vpcgen lab test --site SITE_DIR)"))
        return
    with tempfile.TemporaryDirectory(prefix="vpcgen-lab-deploy-") as tmp:
        d = Deployer(t, Path(tmp))
        if not t.check(r, "the lab's tree deployed over the management network", d.baseline):
            return
        acl, lb, vpn = _acl_change(t), _lb_change(t), _vpn_change(t)
        if acl:
            t.check(r, f"ACL change ({acl[1]}) while probes run: no probe lost", lambda: d.change("acl", *acl))
        if lb:
            t.check(r, f"load-balancer member change ({lb[1]}) while probes run: interruption measured",
                    lambda: d.change("lb_member", *lb))
        if vpn:
            t.check(r, f"VPN peer network change ({vpn[1]}) while probes run: interruption measured",
                    lambda: d.change("vpn_peer_cidr", *vpn))
        t.check(r, f"a tree that cuts SSH on eth0 is undone: the router runs its previous release and "
                   f"answers SSH within the confirm timeout ({CONFIRM_S} s)", d.ssh_cut)
        t.check(r, "the lab's tree deployed again", lambda: d.deploy_ok(t.tree_dir, "restore"))


class Deployer:
    def __init__(self, t, tmp: Path):
        self.t, self.tmp = t, tmp

    def lab_run(self, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*VPCGEN, "lab", "run", str(self.t.tree_dir), "--", *command], capture_output=True,
                              text=True, timeout=timeout)

    def deploy(self, tree: Path, *extra: str) -> subprocess.CompletedProcess:
        return self.lab_run(*VPCGEN, "deploy", str(tree), "--parallel", "4", *extra)

    def deploy_ok(self, tree: Path, what: str) -> tuple[bool, str]:
        start = time.monotonic()
        r = self.deploy(tree)
        took = time.monotonic() - start
        self.t.figures.setdefault("deploy", {}).setdefault(what, {})["deploy_s"] = round(took, 1)
        return r.returncode == 0, f"{_summary(r)} in {took:.1f} s" + ("" if r.returncode == 0 else _tail(r))

    def baseline(self) -> tuple[bool, str]:
        return self.deploy_ok(self.t.tree_dir, "baseline")

    def build(self, kind: str, edit) -> Path:
        """A copy of the site changed by ``edit(site_copy)``, built into a tree of its own."""
        site = self.tmp / kind / "site"
        shutil.copytree(self.t.site_dir, site)
        edit(site)
        r = subprocess.run([*VPCGEN, "build", str(site), "--output", str(self.tmp / kind / "out")],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"the changed site does not build: {(r.stderr or r.stdout).strip()[-400:]}")
        return self.tmp / kind / "out" / self.t.site["site"]

    def change(self, kind: str, vpc: str, what: str, edit, streams, after) -> tuple[bool, str]:
        """Deploy the changed tree while ``streams`` (node, host, port, proto, payload) run; then
        ``after()`` says whether the change took effect. The ACL change must lose no probe."""
        tree = self.build(kind, edit)
        for node, host, port, proto, payload in streams:  # flowing before the deploy
            if not _answers(self.t, node, host, port, proto, payload):
                return False, f"before the deploy: {node} -> {host}:{port}/{proto} gets no answer"
        procs = [Stream(self.t, *s) for s in streams]
        start = time.monotonic()
        r = self.deploy(tree)
        took = time.monotonic() - start
        time.sleep(1.0)  # a tail after the last reload
        results = [p.result() for p in procs]
        effect_ok, effect = after()
        lost = sum(x["lost"] for x in results)
        gap = max(x["max_gap_ms"] for x in results)
        self.t.figures.setdefault("deploy", {})[kind] = {
            "vpc": vpc, "change": what, "deploy_s": round(took, 1), "probes": sum(x["sent"] for x in results),
            "lost": lost, "max_gap_ms": round(gap), "streams": {s: x for s, x in zip(
                (f"{n} -> {h}:{p}/{pr}" for n, h, p, pr, _ in streams), results)}}
        ok = r.returncode == 0 and effect_ok and all(x["sent"] for x in results) and (kind != "acl" or lost == 0)
        detail = (f"{_summary(r)} in {took:.1f} s; {lost} of {sum(x['sent'] for x in results)} probes lost, "
                  f"longest gap {gap:.0f} ms; {effect}")
        return ok, detail + ("" if r.returncode == 0 else _tail(r))

    def ssh_cut(self) -> tuple[bool, str]:
        """A tree whose firewall admits SSH on eth0 from elsewhere than the management station, deployed
        to one router with a short confirm timeout, while the station tries new SSH sessions."""
        from ..mgmt import station
        # a single router's rules carry its traffic alone: the harder case
        vpc, router = min(((v["redundant"], name, r) for name, v in self.t.vpcs.items() for r in v["routers"]))[1:]
        mgmt = self.t.vpcs[vpc]["routers"][router]["mgmt"]
        me = station(self.t.site, {r["mgmt"] for v in self.t.site["vpcs"].values() for r in v["routers"].values()})
        elsewhere = next(str(n) for n in ipaddress.ip_network("192.0.2.0/24").subnets(new_prefix=32)
                         if ipaddress.ip_address(me) not in n)

        def edit(site: Path) -> None:
            doc = yaml.safe_load((site / "site.yaml").read_text())
            doc.setdefault("defaults", {}).setdefault("ssh", {})["allowed_from"] = [elsewhere]
            (site / "site.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

        tree = self.build("ssh_cut", edit)
        before = self.current(mgmt)
        if not before:
            return False, f"{router}: no current release before the deploy"
        watch = Watch(self, mgmt)
        start = time.time()
        r = self.deploy(tree, "--router", router, "--confirm-timeout", str(CONFIRM_S))
        took = time.time() - start
        time.sleep(2)
        seen = watch.stop()
        after = self.current(mgmt)
        cut = next((at for at, up in seen if at >= start and not up), None)
        back = next((at for at, up in seen if cut is not None and at > cut and up), None)
        figures = {"router": router, "confirm_timeout_s": CONFIRM_S, "deploy_s": round(took, 1),
                   "ssh_lost_after_s": round(cut - start, 1) if cut else None,
                   "ssh_back_after_cut_s": round(back - cut, 1) if back else None}
        self.t.figures.setdefault("deploy", {})["ssh_cut"] = figures
        said = next((line for line in r.stdout.splitlines() if line.startswith(router)), "no line for the router")
        ok = (r.returncode == 1 and "rolled back" in said and after == before and cut is not None
              and back is not None and back - cut <= CONFIRM_S + 2)
        return ok, (f"deploy exit {r.returncode}: {said.strip()}; SSH lost {figures['ssh_lost_after_s']} s after the "
                    f"deploy started, back {figures['ssh_back_after_cut_s']} s later; current release "
                    f"{'the previous one' if after == before else after} ({before})")

    def current(self, mgmt: str) -> str | None:
        r = self.lab_run("ssh", mgmt, f"readlink /{DEPLOY_STATE}/current", timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None


class Watch:
    """New SSH sessions from the management station to ``mgmt`` every 0.2 s: (time, answered)."""

    def __init__(self, d: Deployer, mgmt: str):
        loop = (f"while :; do if ssh -o ConnectTimeout=1 {mgmt} true 2>/dev/null; then echo \"$(date +%s.%N) 1\"; "
                f"else echo \"$(date +%s.%N) 0\"; fi; sleep 0.2; done")
        self.proc = subprocess.Popen([*VPCGEN, "lab", "run", str(d.t.tree_dir), "--", "sh", "-c", loop],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)

    def stop(self) -> list[tuple[float, bool]]:
        os.killpg(self.proc.pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return [(float(a), b == "1") for a, b in (line.split() for line in out.splitlines() if len(line.split()) == 2)]


class Stream:
    """A probe every 20 ms from ``node`` (a new UDP exchange or TCP connection each), until stopped."""

    def __init__(self, t, node: str, host: str, port: int, proto: str, payload: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", t.data["nodes"][node]["ns"], sys.executable, "-c",
                                      STREAM, host, str(port), proto, payload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def result(self) -> dict:
        out, _ = self.proc.communicate("", timeout=30)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"sent": 0, "lost": 0, "max_gap_ms": 0, "answers": {}}


def _answers(t, node: str, host: str, port: int, proto: str, payload: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while t.probe(node, host, port, proto, payload).startswith("FAILED"):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _summary(r: subprocess.CompletedProcess) -> str:
    lines = r.stdout.strip().splitlines()
    return lines[-1] if lines else f"exit {r.returncode}"


def _tail(r: subprocess.CompletedProcess) -> str:
    return f"; exit {r.returncode}: {(r.stdout + r.stderr).strip()[-600:]}"


# --- the changes, chosen from site.json and made in the site's YAML ------------------------------

def _file_named(site: Path, folder: str, name: str) -> Path:
    for path in sorted((site / folder).glob("*.yaml")):
        if (yaml.safe_load(path.read_text()) or {}).get("name") == name:
            return path
    raise RuntimeError(f"no {folder}/*.yaml named {name}")


def _edit(site: Path, folder: str, name: str, fn) -> None:
    path = _file_named(site, folder, name)
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _udp_stream(t, vpc: str) -> list[tuple]:
    """A port-forwarded UDP service the internet reaches, and a TCP target (a new connection each
    time) of the VPC's NAT targets: the traffic the VPC's routers forward while the change lands."""
    out = []
    for what, address, port, proto, _ in t.nat_targets(vpc):
        if proto == "udp" and not any(s[3] == "udp" for s in out):
            out.append((t.inet(vpc), address, port, "udp", "x"))
        elif proto == "tcp" and not any(s[3] == "tcp" for s in out):
            out.append((t.inet(vpc), address, port, "tcp", "hello"))
    return out


def _pair(t, want) -> str | None:
    """The first NAT VPC (a redundant one first) that ``want(vpc)`` accepts."""
    for vpc, v in sorted(t.vpcs.items(), key=lambda kv: (not kv[1]["redundant"], kv[0])):
        if v["kind"] == "nat" and want(vpc, v):
            return vpc
    return None


def _acl_change(t):
    vpc = _pair(t, lambda name, v: _udp_stream(t, name) and any(tier["acl"] for tier in v["tiers"].values()))
    if vpc is None:
        return None
    acl = next(tier["acl"] for _, tier in sorted(t.vpcs[vpc]["tiers"].items()) if tier["acl"])
    number = max([rule["number"] for rule in t.site["acls"][acl]] + [0]) + 10
    rule = {"number": number, "action": "allow", "traffic": "ingress", "protocol": "tcp", "ports": 65000,
            "cidrs": ["192.0.2.123/32"]}
    edit = lambda site: _edit(site, "acls", acl, lambda doc: doc["rules"].append(rule))  # noqa: E731
    streams = _udp_stream(t, vpc)
    return vpc, f"{vpc}: ACL {acl} gains rule {number}", edit, streams, lambda: _rule_live(t, vpc, number)


def _rule_live(t, vpc: str, number: int) -> tuple[bool, str]:
    from .. import run as lab
    found = [r for r in t.vpcs[vpc]["routers"] if "192.0.2.123" in lab.exec_in(t.data, r, "iptables-save").stdout]
    return found == sorted(t.vpcs[vpc]["routers"]), f"the new rule live on {', '.join(found) or 'no router'}"


def _lb_change(t):
    vpc = _pair(t, lambda name, v: any(len(lb["members"]) > 1 for lb in v["load_balancers"].values()))
    if vpc is None:
        return None
    name, lb = next((n, lb) for n, lb in sorted(t.vpcs[vpc]["load_balancers"].items()) if len(lb["members"]) > 1)
    gone = lb["members"][-1]
    address = t.vpcs[vpc]["public_ips"][lb["public_ip"]]
    payload = HTTP_GET if lb["protocol"] == "http" else "hello"

    def edit(site: Path) -> None:
        def drop(doc):
            entry = next(e for e in doc["load_balancers"] if e["name"] == name)
            entry["members"] = [m for m in entry["members"] if m != gone]
        _edit(site, "vpcs", vpc, drop)

    def after() -> tuple[bool, str]:
        seen = {t.probe(t.inet(vpc), address, lb["public_port"], "tcp", payload) for _ in range(6)}
        left = {t.host_at(vpc, m) for m in lb["members"] if m != gone}
        return seen <= left, f"answered after it by {', '.join(sorted(seen))}"

    streams = [(t.inet(vpc), address, lb["public_port"], "tcp", payload)]
    return vpc, f"{vpc}: member {gone} leaves {name}", edit, streams, after


def _vpn_change(t):
    vpc = _pair(t, lambda name, v: any(p["ike_version"] == 2 for p in v["vpn_peers"].values()))
    if vpc is None:
        return None
    peer_name = next(n for n, p in sorted(t.vpcs[vpc]["vpn_peers"].items()) if p["ike_version"] == 2)
    node = t.plan.node(f"{vpc}-peer-{peer_name}")
    taken = [ipaddress.ip_network(c) for v in t.site["vpcs"].values() for c in _cidrs(v)]
    extra = next(str(n) for n in ipaddress.ip_network("172.16.0.0/12").subnets(new_prefix=24)
                 if not any(n.overlaps(c) for c in taken))
    target = node.loopback[0].split("/")[0]
    host, allowed = t.source_host(vpc, target, [("tcp", PROBE_TCP_PORT)], list(node.tunnel.local_cidrs), kind="peer")
    if host is None or not allowed:
        return None

    def edit(site: Path) -> None:
        def add(doc):
            peer = next(p for p in doc["vpn"]["site_to_site"] if p["name"] == peer_name)
            peer["peer_cidrs"] = list(peer["peer_cidrs"]) + [extra]
        _edit(site, "vpcs", vpc, add)

    def after() -> tuple[bool, str]:
        from .. import run as lab
        routers = [r for r in t.vpcs[vpc]["routers"]
                   if extra in lab.exec_in(t.data, r, f"cat {_swanctl_conf()}").stdout]
        got = t.probe(host[0], target, PROBE_TCP_PORT)
        return got == node.name and routers == sorted(t.vpcs[vpc]["routers"]), \
            f"{extra} configured on {', '.join(routers) or 'no router'}; through the tunnel after it: {got}"

    streams = [(host[0], target, PROBE_TCP_PORT, "tcp", "hello")]
    return vpc, f"{vpc}: VPN peer {peer_name} gains {extra}", edit, streams, after


def _swanctl_conf() -> str:
    from ...tree import on_router
    return on_router("swanctl")


def _cidrs(v: dict) -> list[str]:
    out = [v["cidr"]] + [c for p in v["vpn_peers"].values() for c in p["peer_cidrs"]]
    out += [r for g in v["private_gateways"].values() for r in g["routes"]]
    if v.get("remote_access"):
        out.append(v["remote_access"]["pool"])
    return out


# a new UDP exchange or TCP connection every 20 ms until stdin closes; prints sent, lost, the longest
# time without an answer (ms) and who answered
STREAM = """
import json, socket, sys, threading, time
host, port, proto, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode().decode("unicode_escape")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
sent = lost = 0
answers = {}
start = last = time.monotonic()
gap = 0.0
while not stop.is_set():
    sent += 1
    try:
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
            s.sendto(payload.encode(), (host, port)); got = s.recv(300)
        else:
            s = socket.create_connection((host, port), timeout=0.5); s.settimeout(0.5)
            s.sendall(payload.encode()); got = s.recv(300)
        s.close()
        if not got:
            raise ConnectionError("closed")
        name = got.decode(errors="replace").strip().splitlines()[-1]
        answers[name] = answers.get(name, 0) + 1
        now = time.monotonic(); gap = max(gap, now - last); last = now
    except OSError:
        lost += 1
    time.sleep(0.02)
gap = max(gap, time.monotonic() - last)
print(json.dumps({"sent": sent, "lost": lost, "max_gap_ms": round(gap * 1000), "answers": answers}))
"""
