"""What every round works with: the running lab, its plan (from site.json), the oracle
(vpcgen.reach.model, the same model that reviews a diff), and the helpers that look at or act on the routers."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import run as lab
from ...ops import netns
from ...tree import VRRP_STATE, read_site_json
from ...reach.model import Endpoint, Flow, Model, probes
from ..plan import CORE_LOOPBACK, WHOAMI_PORT, Host, build as build_plan, transit_ifname

HTTP_GET = "GET / HTTP/1.0\\n\\n"


@dataclass
class Check:
    round: str
    name: str
    ok: bool
    detail: str
    seconds: float


class Lab:

    def __init__(self, tree_dir, progress=lambda m: None, site_dir=None):
        self.tree_dir = Path(tree_dir)
        self.data = lab.status(tree_dir)
        self.trees = lab.staged_root(self.tree_dir)  # the lab's verified copy, never the tree itself
        self.site = read_site_json(self.trees)
        self.plan = build_plan(self.site, self.data["name"], self.tree_dir, self.trees)
        self.model = Model(self.site)
        self.checks: list[Check] = []
        self.figures: dict = {}
        self.say = progress
        self.vpcs = {name: vpc for name, vpc in self.site["vpcs"].items()
                     if any(r in self.data["nodes"] for r in vpc["routers"])}
        self.sync_holder = "?"
        # the site the tree was built from, for the rounds that deploy a changed site: given, or the
        # conventional sites/<name> under the current folder
        default = Path("sites") / self.site["site"]
        self.site_dir = Path(site_dir) if site_dir else default if (default / "site.yaml").is_file() else None
        self.variants = 0

    def variant(self, edit) -> Path:
        """A tree built from a copy of the site that ``edit(site_copy)`` changed (its lock and secrets
        copied along, so every allocation stays): the tree folder."""
        if self.site_dir is None:
            raise RuntimeError("this round deploys a changed site: give `lab test --site SITE_DIR`")
        self.variants += 1
        work = lab.RUN_ROOT / self.data["name"] / "variants" / str(self.variants)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(self.site_dir, work / "site", ignore=shutil.ignore_patterns(".git"))
        edit(work / "site")
        r = subprocess.run([sys.executable, "-m", "vpcgen", "build", str(work / "site"), "--output", str(work / "out")],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"the changed site does not build: {(r.stdout + r.stderr)[-400:]}")
        return work / "out" / self.site["site"]

    def check(self, round_: str, name: str, fn) -> bool:
        start = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as exc:  # a probe that blew up is a failed check, reported, never a traceback
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.checks.append(Check(round_, name, ok, detail, time.monotonic() - start))
        self.say(f"{'ok  ' if ok else 'FAIL'} {round_}: {name}  {detail}")
        return ok

    def probe(self, node: str, host: str, port: int | None, proto: str = "tcp", payload: str = "hello",
              source: str = "") -> str:
        return lab.probe(self.data, node, host, port or 0, proto, payload, source)

    def parallel(self, probes: list[tuple]) -> list[str]:
        """Probes (node, host, port, proto, source[, payload]) at once: a denied one waits for its timeout."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda a: self.probe(a[0], a[1], a[2], a[3], *a[5:6], source=a[4]), probes))

    def hosts(self, vpc: str, tier: str) -> list[tuple[str, str]]:
        """(node, address) of a tier's test hosts, from the plan."""
        return [(h.name, h.address) for h in self.plan.hosts(vpc, tier)]

    def host_at(self, vpc: str, address: str) -> str | None:
        host = self.plan.host_at(vpc, address)
        return host.name if host else None

    def endpoint(self, vpc: str, node: str) -> Endpoint:
        """The oracle's endpoint for a test host."""
        host = self.plan.node(node)
        return Endpoint("tier", vpc, host.tier, host.address) if isinstance(host, Host) else \
            Endpoint("internet", address=host.address)

    def expect(self, source: Endpoint, destination: str, proto: str, port: int | None):
        """The oracle's verdict on one probe."""
        return self.model.decide(Flow(source, destination, proto, port))

    def state(self, router: str) -> str:
        if not self.data["nodes"][router].get("holder"):
            return "STOPPED"
        r = lab.exec_in(self.data, router, f"cat {VRRP_STATE} 2>/dev/null")
        return r.stdout.strip() or "UNKNOWN"

    def masters(self, vpc: str) -> list[str]:
        return [r for r in self.vpcs[vpc]["routers"] if self.state(r) == "MASTER"]

    def wait_one_master(self, vpc: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.masters(vpc)
            if len(found) == 1 or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def advert_s(self, vpc: str) -> float:
        return self.vpcs[vpc]["vrrp"]["advert_interval_ms"] / 1000

    def inet(self, vpc: str) -> str:
        return f"inet-{self.vpcs[vpc]['zone']}"

    def internet(self, vpc: str) -> tuple[str, str]:
        """(node, address) standing for the internet as the VPC's tiers see it: the zone's public
        gateway behind a NAT VPC, the network behind the OSPF core for a routed one (its tiers route
        everything through the core, which knows nothing of the public side)."""
        if self.vpcs[vpc]["kind"] == "routed":
            return f"core-{self.vpcs[vpc]['zone']}", CORE_LOOPBACK.split("/")[0]
        return self.inet(vpc), self.inet_address(vpc)

    def reload_data(self) -> None:
        self.data = lab.status(self.tree_dir)

    def nat_targets(self, vpc: str) -> list[tuple[str, str, int, str, set[str]]]:
        """(what, public address, port, proto, expected host names) that the oracle says the internet
        reaches: port forwards, static NAT (one port its list allows), load balancers."""
        v = self.vpcs[vpc]
        out = []
        inet = Endpoint("internet", address=self.inet_address(vpc))
        for pf in v["port_forwarding"]:
            address = v["public_ips"][pf["public_ip"]]
            if self.expect(inet, address, pf["protocol"], pf["public_port"][0]).delivered:
                out.append((f"port forwarding {pf['protocol']}/{pf['public_port'][0]}", address,
                            pf["public_port"][0], pf["protocol"], {self.host_at(vpc, pf["private_ip"])}))
        for public, private in v["static_nat"].items():
            allowed = self.allowed_from_internet(vpc, public)
            if allowed:
                proto, port = allowed
                out.append((f"static NAT {public} {proto}/{port}", v["public_ips"][public], port, proto,
                            {self.host_at(vpc, private)}))
        for name, lb in v["load_balancers"].items():
            address = v["public_ips"][lb["public_ip"]]
            if self.expect(inet, address, "tcp", lb["public_port"]).delivered:
                out.append((f"load balancer {name}", address, lb["public_port"],
                            "http" if lb["protocol"] == "http" else "tcp", {self.host_at(vpc, m) for m in lb["members"]}))
        return out

    def source_host(self, vpc: str, destination: str, ports: list[tuple[str, int]],
                    within: list[str] | None = None, kind: str | None = None) -> tuple[tuple[str, str] | None, bool]:
        """A test host (not behind static NAT, inside ``within`` when given) from which the oracle
        delivers every (proto, port) to ``destination`` (to an endpoint of ``kind``): (host, True).
        With none, the first such host and False: the traffic is denied, which is then what to expect."""
        v = self.vpcs[vpc]
        candidates = [self.endpoint(vpc, h.name) for h in self.plan.hosts(vpc)
                      if h.address not in v["static_nat"].values()
                            and (within is None or any(_inside(h.address, c) for c in within))]
        chosen, allowed = self.model.pick_source(candidates, destination, ports, kind)
        if chosen is None:
            return None, False
        return (self.host_at(vpc, chosen.address), chosen.address), allowed

    def tier_of(self, vpc: str, address: str) -> dict | None:
        found = self.model.tier_of(address, vpc)
        return self.vpcs[vpc]["tiers"][found[1]] if found else None

    def allowed_from_internet(self, vpc: str, public: str) -> tuple[str, int] | None:
        """A TCP port on which the oracle lets the internet reach a static NAT address."""
        v = self.vpcs[vpc]
        tier = self.tier_of(vpc, v["static_nat"][public])
        inet = Endpoint("internet", address=self.inet_address(vpc))
        for proto, port in probes(self.site["acls"][tier["acl"]]):
            if proto == "tcp" and self.expect(inet, v["public_ips"][public], proto, port).delivered:
                return proto, port
        return None

    def inet_address(self, vpc: str) -> str:
        return self.site["zones"][self.vpcs[vpc]["zone"]]["public"]["gateway"]

    def reach(self, client: str, address: str, port: int, proto: str, expected: set[str]) -> tuple[bool, str]:
        if proto == "http":
            got = self.probe(client, address, port, "tcp", HTTP_GET)
        else:
            got = self.probe(client, address, port, proto)
        return got in expected, got

    def all_reach(self, vpc: str, targets, expect: bool, retry: int = 1) -> tuple[bool, str]:
        bad = []
        for what, address, port, proto, expected in targets:
            for attempt in range(retry):
                ok, got = self.reach(self.inet(vpc), address, port, proto, expected)
                if ok == expect:
                    break
                time.sleep(0.5)
            if ok != expect:
                bad.append(f"{what}: {got}")
        return not bad, "; ".join(bad) or f"{len(targets)} targets {'reached' if expect else 'refused'}"

    def health_s(self, lb: dict, edge: str) -> float:
        """How long haproxy's health check needs to take a member out (fall) or back in (rise), from
        the load balancer's own timers in site.json, with slack for the first check's timing."""
        hc = lb["health_check"]
        return (hc[edge] + 1) * hc["interval_ms"] / 1000 + 2

    def transit_address(self, router: str) -> str:
        """The router's address on the OSPF transit link (site.json)."""
        vpc = self.site["vpcs"][self.data["nodes"][router]["vpc"]]
        ifname = transit_ifname(self.site, vpc, router)
        return vpc["routers"][router]["interfaces"][ifname][0].split("/")[0] if ifname else "?"

    def core_route(self, vpc: str) -> str:
        core, cidr = f"core-{self.vpcs[vpc]['zone']}", self.vpcs[vpc]["cidr"]
        return lab.exec_in(self.data, core, f"ip route show {cidr}").stdout.strip()

    def core_routes(self, vpc: str, wait_s: float = 60) -> str:
        """The core's route to a routed VPC once it has one (the first adjacency waits for the dead
        interval): '' when none came within ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while not (routes := self.core_route(vpc)) and time.monotonic() < deadline:
            time.sleep(1)
        return routes

    def announced_by(self, vpc: str, router: str, timeout: float) -> float | None:
        """Seconds until the core routes the VPC through ``router`` alone (None: not within timeout)."""
        want, start = f"via {self.transit_address(router)} ", time.monotonic()
        while time.monotonic() - start < timeout:
            route = self.core_route(vpc) + " "
            if want in route and route.count("via") == 1:
                return time.monotonic() - start
            time.sleep(0.02)
        return None

    def adjacent(self, router: str, timeout: float) -> bool:
        """The router has a full OSPF adjacency with the core (a restarted router needs a few hellos)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Full/" in lab.exec_in(self.data, router, "vtysh -c 'show ip ospf neighbor'").stdout:
                return True
            time.sleep(0.5)
        return False

    def keepalived_runs(self, router: str) -> bool:
        return any(lab._comm(int(p)) == "keepalived"
                   for p in netns.run(["ip", "netns", "pids", self.data["nodes"][router]["ns"]]).stdout.split())

    def during_failover(self, vpc: str, node: str, script: str, lead_s: float, timeout: float) -> str | None:
        """The output of ``script`` run in ``node`` while the VPC's master dies ``lead_s`` seconds in;
        the dead router is started again afterwards and given time to settle as backup."""
        wait = 3 * self.advert_s(vpc) + 2
        master = self.wait_one_master(vpc, wait)
        if len(master) != 1:
            return None

        def kill() -> None:
            lab.stop_router(self.data, master[0])
            self.data["nodes"][master[0]].pop("holder", None)
        try:
            return self.during(node, script, lead_s, kill, timeout)
        finally:
            lab.start_router(self.tree_dir, master[0])
            self.reload_data()
            time.sleep(wait)

    def during(self, node: str, script: str, lead_s: float, action, timeout: float) -> str:
        """The output of the Python ``script`` run in ``node`` while ``action()`` runs ``lead_s`` seconds in."""
        return self.during_all([(node, script)], lead_s, action, timeout)[0]

    def during_all(self, scripts: list[tuple[str, str]], lead_s: float, action, timeout: float) -> list[str]:
        """The outputs of Python scripts, each run in its node, while ``action()`` runs ``lead_s`` seconds in."""
        procs = [subprocess.Popen(["ip", "netns", "exec", self.data["nodes"][node]["ns"], sys.executable, "-c", script],
                                  stdout=subprocess.PIPE, text=True) for node, script in scripts]
        try:
            time.sleep(lead_s)
            action()
            return [proc.communicate(timeout=timeout)[0] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def lab_run(self, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A command on the lab's management network, as an operator runs it (`vpcgen lab run`)."""
        return subprocess.run([sys.executable, "-m", "vpcgen", "lab", "run", str(self.tree_dir), "--", *command],
                              capture_output=True, text=True, timeout=timeout)

    def vpcgen(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`vpcgen ARGS` on the management network."""
        return self.lab_run(sys.executable, "-m", "vpcgen", *args, timeout=timeout)

    def vips(self, vpc: str) -> list[str]:
        """Every virtual address of a pair, from site.json: tier gateways, public IPs, private gateways."""
        v = self.vpcs[vpc]
        out = [t["gateway"] for t in v["tiers"].values()] + list(v["public_ips"].values())
        return sorted(out + [g["address"].split("/")[0] for g in v["private_gateways"].values()])

    def holders(self, vpc: str) -> dict[str, list[str]]:
        """Which routers hold each virtual address right now."""
        held = {}
        for router in self.vpcs[vpc]["routers"]:
            out = netns.run(["ip", "-n", self.data["nodes"][router]["ns"], "-4", "-o", "addr", "show"]).stdout
            held[router] = {w.split("/")[0] for line in out.splitlines() for w in line.split()[3:4]}
        return {vip: [r for r in sorted(held) if vip in held[r]] for vip in self.vips(vpc)}

    def sample(self, vpc: str, seconds: float) -> list[tuple[float, str]]:
        """Every 100 ms: which router holds every address ("r1", "r1+r2" when any address is held
        twice, "none" when any is held by nobody, "mixed" when they are spread)."""
        out, start = [], time.monotonic()
        while (now := time.monotonic() - start) < seconds:
            by_vip = self.holders(vpc)
            if any(len(h) > 1 for h in by_vip.values()):
                what = "+".join(sorted({r for h in by_vip.values() for r in h}))
            elif any(not h for h in by_vip.values()):
                what = "none"
            else:
                owners = {h[0] for h in by_vip.values()}
                what = owners.pop() if len(owners) == 1 else "mixed"
            out.append((now, what))
            time.sleep(max(0.0, 0.1 - (time.monotonic() - start - now)))
        return out

    def settle_s(self, vpc: str) -> float:
        return 3 * self.advert_s(vpc) + 1

    def traffic(self, vpc: str) -> tuple[bool, str]:
        """Traffic a pair serves: port forwarding from the internet and source NAT out (NAT VPCs),
        the core's route to the VPC (routed VPCs)."""
        v = self.vpcs[vpc]
        if v["kind"] == "routed":
            owners = {r for h in self.holders(vpc).values() for r in h}
            if len(owners) != 1:
                return False, f"addresses held by {sorted(owners)}"
            owner = owners.pop()
            took = self.announced_by(vpc, owner, 10)
            return took is not None, f"the core routes through {owner}" if took is not None else \
                f"the core does not route through {owner}: {self.core_route(vpc) or 'no route'}"
        targets = [t for t in self.nat_targets(vpc) if t[0].startswith("port forwarding")]
        ok, detail = self.all_reach(vpc, targets, True, retry=5)
        host, allowed = self.source_host(vpc, self.inet_address(vpc), [("tcp", WHOAMI_PORT)])
        if host and allowed and "source-nat" in v["public_ips"]:
            seen = ""
            for _ in range(5):
                seen = self.probe(host[0], self.inet_address(vpc), WHOAMI_PORT)
                if seen == v["public_ips"]["source-nat"]:
                    break
                time.sleep(0.5)
            ok, detail = ok and seen == v["public_ips"]["source-nat"], f"{detail}; source NAT seen as {seen}"
        return ok, detail

    def fault(self, *args: str) -> None:
        lab.fault(self.tree_dir, args[0], list(args[1:]))
        self.reload_data()

    def heal(self, vpc: str) -> None:
        """Faults undone, and the pair back to full strength: one master, a restarted router adjacent
        to the core again (the next fault assumes a peer that can forward)."""
        lab.heal(self.tree_dir)
        self.reload_data()
        self.wait_one_master(vpc, self.settle_s(vpc) + 5)
        if self.vpcs[vpc]["kind"] == "routed":
            for router in self.vpcs[vpc]["routers"]:
                self.adjacent(router, 2 * self.dead_s(vpc) + 10)
        time.sleep(self.settle_s(vpc))

    def dead_s(self, vpc: str) -> int:
        return self.site["zones"][self.vpcs[vpc]["zone"]]["ospf"]["dead_interval_s"]


def _inside(address: str, cidr: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
