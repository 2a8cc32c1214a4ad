"""`vpcgen lab test`: the scenario rounds against a running lab, with a pass/fail table.

Expectations come from the tree's site.json (the resolved site, ACL lists included), never from
the routers' files: the routers' files are what is being proved.
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import run as lab
from ..ops import netns
from ..tree import GENERATED, VRRP_STATE
from .run import PROBE_TCP_PORT, WHOAMI_PORT

HTTP_GET = "GET / HTTP/1.0\\n\\n"


@dataclass
class Check:
    round: str
    name: str
    ok: bool
    detail: str
    seconds: float


class Runner:
    def __init__(self, tree_dir, progress=lambda m: None):
        self.tree_dir = Path(tree_dir)
        self.data = lab.status(tree_dir)
        self.trees = lab.staged_root(self.tree_dir)  # the lab's verified copy, never the tree itself
        self.site = json.loads((self.trees / "site.json").read_text())
        self.checks: list[Check] = []
        self.figures: dict = {}
        self.say = progress
        self.vpcs = {name: vpc for name, vpc in self.site["vpcs"].items()
                     if any(r in self.data["nodes"] for r in vpc["routers"])}

    # --- helpers -----------------------------------------------------------------------------

    def check(self, round_: str, name: str, fn) -> bool:
        start = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as exc:  # a probe that blew up is a failed check, reported, never a traceback
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.checks.append(Check(round_, name, ok, detail, time.monotonic() - start))
        self.say(f"{'ok  ' if ok else 'FAIL'} {round_}: {name}  {detail}")
        return ok

    def probe(self, node: str, host: str, port: int, proto: str = "tcp", payload: str = "hello",
              source: str = "") -> str:
        return lab.probe(self.data, node, host, port, proto, payload, source)

    def parallel(self, probes: list[tuple]) -> list[str]:
        """Probes (node, host, port, proto, source) at once: a denied one waits for its timeout."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda a: self.probe(a[0], a[1], a[2], a[3], source=a[4]), probes))

    def hosts(self, vpc: str, tier: str) -> list[tuple[str, str]]:
        """(node, address) of a tier's test hosts."""
        out = []
        for name, info in self.data["nodes"].items():
            if info["kind"] == "host" and name.startswith(f"{vpc}-{tier}-"):
                out.append((name, self._address(name)))
        return sorted(out, key=lambda x: ipaddress.ip_address(x[1]))

    def _address(self, node: str) -> str:
        r = netns.run(["ip", "-n", self.data["nodes"][node]["ns"], "-o", "-4", "addr", "show", "dev", "eth0"])
        return r.stdout.split()[3].split("/")[0]

    def host_at(self, vpc: str, address: str) -> str | None:
        for tier in self.vpcs[vpc]["tiers"]:
            for node, addr in self.hosts(vpc, tier):
                if addr == address:
                    return node
        return None

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

    def reload_data(self) -> None:
        self.data = lab.status(self.tree_dir)

    # --- what NAT exposes --------------------------------------------------------------------

    def nat_targets(self, vpc: str) -> list[tuple[str, str, int, str, set[str]]]:
        """(what, public address, port, proto, expected host names) reachable from the internet."""
        v = self.vpcs[vpc]
        out = []
        for pf in v["port_forwarding"]:
            out.append((f"port forwarding {pf['protocol']}/{pf['public_port'][0]}", v["public_ips"][pf["public_ip"]],
                        pf["public_port"][0], pf["protocol"], {self.host_at(vpc, pf["private_ip"])}))
        for public, private in v["static_nat"].items():
            allowed = self.allowed_from_internet(vpc, private)
            if allowed:
                proto, port = allowed
                out.append((f"static NAT {public} {proto}/{port}", v["public_ips"][public], port, proto,
                            {self.host_at(vpc, private)}))
        for name, lb in v["load_balancers"].items():
            out.append((f"load balancer {name}", v["public_ips"][lb["public_ip"]], lb["public_port"],
                        "http" if lb["protocol"] == "http" else "tcp", {self.host_at(vpc, m) for m in lb["members"]}))
        return out

    def source_host(self, vpc: str, destination: str, ports: list[tuple[str, int]],
                    within: list[str] | None = None) -> tuple[tuple[str, str] | None, bool]:
        """A test host (not behind static NAT, inside ``within`` when given) whose tier's egress list
        lets every (proto, port) out to ``destination``: (host, True). With none, the first such
        host and False: its own list denies the traffic, which is then what to expect."""
        v = self.vpcs[vpc]
        hosts = [h for t in sorted(v["tiers"]) for h in self.hosts(vpc, t) if h[1] not in v["static_nat"].values()
                 and (within is None or any(ipaddress.ip_address(h[1]) in ipaddress.ip_network(c) for c in within))]
        for host in hosts:
            rules = self.site["acls"][self.tier_of(vpc, host[1])["acl"]]
            if all(decide(rules, "egress", proto, port, destination) for proto, port in ports):
                return host, True
        return (hosts[0] if hosts else None), False

    def tier_of(self, vpc: str, address: str) -> dict | None:
        for tier in self.vpcs[vpc]["tiers"].values():
            if ipaddress.ip_address(address) in ipaddress.ip_network(tier["cidr"]):
                return tier
        return None

    def allowed_from_internet(self, vpc: str, private: str) -> tuple[str, int] | None:
        tier = self.tier_of(vpc, private)
        source = self.inet_address(vpc)
        for rule in self.site["acls"][tier["acl"]]:
            for proto, port in rule_probes(rule):
                if proto == "tcp" and decide(self.site["acls"][tier["acl"]], "ingress", proto, port, source):
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

    # --- round 1: CloudStack's redundant VPC rounds ------------------------------------------

    def round_redundancy(self) -> None:
        for vpc, v in sorted(self.vpcs.items()):
            if not v["redundant"]:
                continue
            r = f"redundancy {vpc}"
            wait = 3 * self.advert_s(vpc) + 2
            self.check(r, "exactly one master", lambda: self._one_master(vpc, wait))
            if v["kind"] != "nat":
                continue
            targets = self.nat_targets(vpc)
            self.check(r, "connect through NAT to every target", lambda: self._all_reach(vpc, targets, True))
            master = (self.masters(vpc) or [None])[0]
            if master is None:
                continue
            lab.stop_router(self.data, master)
            self.data["nodes"][master].pop("holder", None)
            self.check(r, f"master {master} stopped: the backup takes over",
                       lambda: self._one_master(vpc, wait))
            self.check(r, "every connection works again", lambda: self._all_reach(vpc, targets, True, retry=5))
            for peer_name, peer in sorted(v["vpn_peers"].items()):
                self.check(r, f"VPN {peer_name} comes up on the new master",
                           lambda n=peer_name, pe=peer: self._site_to_site(vpc, n, pe))
            survivor = (self.masters(vpc) or [None])[0]
            self.check(r, "forwarding rules removed: connections fail",
                       lambda: self._without_forwarding(vpc, survivor, targets))
            lab.start_router(self.tree_dir, master)
            self.reload_data()
            self.check(r, f"{master} started again: still exactly one master",
                       lambda: self._one_master_stays(vpc, wait))
            self.check(r, "forwarding rules restored: connections work",
                       lambda: self._restore_forwarding(vpc, survivor, targets))

    def _one_master(self, vpc: str, wait: float) -> tuple[bool, str]:
        found = self.wait_one_master(vpc, wait)
        states = {r: self.state(r) for r in self.vpcs[vpc]["routers"]}
        return len(found) == 1, ", ".join(f"{k} {v}" for k, v in states.items())

    def _one_master_stays(self, vpc: str, wait: float) -> tuple[bool, str]:
        time.sleep(wait)  # long enough for a wrong election to happen
        states = {r: self.state(r) for r in self.vpcs[vpc]["routers"]}
        ok = sorted(states.values()) == ["BACKUP", "MASTER"]
        return ok, ", ".join(f"{k} {v}" for k, v in states.items())

    def _all_reach(self, vpc: str, targets, expect: bool, retry: int = 1) -> tuple[bool, str]:
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

    def _apply_rules(self, router: str, drop_forwarding: bool) -> None:
        tree = self.trees / router
        drop = ("port forwarding", "static nat", "load balancer") if drop_forwarding else ()
        if self.state(router) == "MASTER":
            drop += ("vpcgen-ha-guard",)  # what notify.sh apply-firewall does on a master
        text = "".join(line for line in (tree / GENERATED["iptables"]).read_text().splitlines(keepends=True)
                       if not any(d in line for d in drop))
        lab.load_rules(self.data["nodes"][router]["ns"], tree, text)

    def _without_forwarding(self, vpc: str, router: str, targets) -> tuple[bool, str]:
        self._apply_rules(router, drop_forwarding=True)
        nat = [t for t in targets if not t[0].startswith("load balancer")]  # haproxy answers on INPUT
        return self._all_reach(vpc, nat, False)

    def _restore_forwarding(self, vpc: str, router: str, targets) -> tuple[bool, str]:
        for r in self.vpcs[vpc]["routers"]:
            self._apply_rules(r, drop_forwarding=False)
        return self._all_reach(vpc, targets, True, retry=3)

    # --- round 2: ACL probes --------------------------------------------------------------------

    def round_acl(self) -> None:
        for vpc, v in sorted(self.vpcs.items()):
            tiers = sorted(v["tiers"])
            for src in tiers:
                for dst in tiers:
                    if src == dst:
                        self.check(f"acl {vpc}", f"inside tier {src}: never filtered",
                                   lambda s=src: self._same_tier(vpc, s))
                        continue
                    self.check(f"acl {vpc}", f"{src} -> {dst}", lambda s=src, d=dst: self._between(vpc, s, d))
            if v["kind"] == "nat":
                for public, private in sorted(v["static_nat"].items()):
                    self.check(f"acl {vpc}", f"internet -> static NAT {public}",
                               lambda p=public, q=private: self._from_internet(vpc, p, q))

    def _probes_for(self, acls: list[list[dict]]) -> list[tuple[str, int]]:
        out = {("tcp", PROBE_TCP_PORT), ("udp", lab.PROBE_UDP_PORT)}
        for rules in acls:
            for rule in rules:
                out |= set(rule_probes(rule))
        return sorted(out)

    def _between(self, vpc: str, src: str, dst: str) -> tuple[bool, str]:
        v, acls = self.vpcs[vpc], self.site["acls"]
        src_acl, dst_acl = acls[v["tiers"][src]["acl"]], acls[v["tiers"][dst]["acl"]]
        (src_node, src_addr), (_, dst_addr) = self.hosts(vpc, src)[0], self.hosts(vpc, dst)[0]
        cases = [(proto, port, decide(src_acl, "egress", proto, port, dst_addr)
                  and decide(dst_acl, "ingress", proto, port, src_addr))
                 for proto, port in self._probes_for([src_acl, dst_acl])]
        got = self.parallel([(src_node, dst_addr, port, proto, "") for proto, port, _ in cases])
        bad = [f"{proto}/{port} expected {'allow' if want else 'deny'}, got {g}"
               for (proto, port, want), g in zip(cases, got) if (not g.startswith("FAILED")) != want]
        return not bad, "; ".join(bad) or f"{len(cases)} probes as the lists decide"

    def _same_tier(self, vpc: str, tier: str) -> tuple[bool, str]:
        hosts = self.hosts(vpc, tier)
        got = self.probe(hosts[0][0], hosts[1][1], PROBE_TCP_PORT)
        return got == hosts[1][0], got

    def _from_internet(self, vpc: str, public: str, private: str) -> tuple[bool, str]:
        tier = self.tier_of(vpc, private)
        rules = self.site["acls"][tier["acl"]]
        sources = {self.inet_address(vpc)} | {a.split("/")[0] for a in lab.internet_sources(self.site, self.vpcs[vpc]["zone"])}
        address = self.vpcs[vpc]["public_ips"][public]
        cases = [(proto, port, source, decide(rules, "ingress", proto, port, source))
                 for proto, port in self._probes_for([rules]) if proto != "icmp"
                 for source in sorted(sources)]
        got = self.parallel([(self.inet(vpc), address, port, proto, source) for proto, port, source, _ in cases])
        bad = [f"{proto}/{port} from {source} expected {'allow' if want else 'deny'}, got {g}"
               for (proto, port, source, want), g in zip(cases, got) if (not g.startswith("FAILED")) != want]
        return not bad, "; ".join(bad) or f"{len(cases)} probes as the list decides"

    # --- round 3: services ---------------------------------------------------------------------

    def round_services(self) -> None:
        for vpc, v in sorted(self.vpcs.items()):
            r = f"services {vpc}"
            if v["kind"] == "nat":
                for public, private in sorted(v["static_nat"].items()):
                    self.check(r, f"static NAT {public} outbound: the internet sees {v['public_ips'][public]}",
                               lambda p=public, q=private: self._whoami(vpc, self.host_at(vpc, q),
                                                                        v["public_ips"][p]))
                if "source-nat" in v["public_ips"]:
                    self.check(r, f"source NAT: the internet sees {v['public_ips']['source-nat']}",
                               lambda: self._source_nat(vpc))
                for pf in v["port_forwarding"]:
                    low, high = pf["public_port"]
                    if high != low:
                        self.check(r, f"port forwarding range {pf['protocol']}/{low}-{high}",
                                   lambda pf=pf: self._range(vpc, pf))
                for name, lb in sorted(v["load_balancers"].items()):
                    self.check(r, f"load balancer {name}: requests spread over members",
                               lambda lb=lb: self._spread(vpc, lb))
                    if lb["stickiness"] != "none":
                        self.check(r, f"load balancer {name}: {lb['stickiness']} stickiness holds",
                                   lambda lb=lb: self._sticky(vpc, lb))
                    self.check(r, f"load balancer {name}: a stopped member is taken out",
                               lambda lb=lb: self._health(vpc, lb))
            for gw_name, gw in sorted(v["private_gateways"].items()):
                self.check(r, f"private gateway {gw_name}: static routes, no source NAT",
                           lambda gw=gw, g=gw_name: self._gateway(vpc, g, gw))
            for peer_name, peer in sorted(v["vpn_peers"].items()):
                self.check(r, f"site-to-site VPN {peer_name}: tier host <-> peer network, no source NAT",
                           lambda n=peer_name, pe=peer: self._site_to_site(vpc, n, pe))
            if v.get("remote_access"):
                self.check(r, "remote-access VPN: the client gets a pool address and reaches a tier as its list allows",
                           lambda: self._remote_access(vpc))
            if v["kind"] == "routed":
                self.check(r, "the OSPF core learns the VPC's prefix from the master",
                           lambda: self._ospf_learned(vpc))
                others = [o for o, ov in self.vpcs.items() if ov["kind"] == "routed" and o != vpc]
                for other in others:
                    self.check(r, f"hosts reach routed VPC {other} without NAT",
                               lambda o=other: self._routed_reach(vpc, o))

    def _source_nat(self, vpc: str) -> tuple[bool, str]:
        host, allowed = self.source_host(vpc, self.inet_address(vpc), [("tcp", WHOAMI_PORT)])
        if host is None:
            return False, "no host behind source NAT"
        if not allowed:  # every tier's egress list denies it: that is what the router must do
            got = self.probe(host[0], self.inet_address(vpc), WHOAMI_PORT)
            return got.startswith("FAILED"), f"every tier's egress list denies it; from {host[0]}: {got}"
        return self._whoami(vpc, host[0], self.vpcs[vpc]["public_ips"]["source-nat"])

    def _whoami(self, vpc: str, host: str, expected: str) -> tuple[bool, str]:
        got = self.probe(host, self.inet_address(vpc), WHOAMI_PORT)
        return got == expected, f"seen as {got}"

    def _range(self, vpc: str, pf: dict) -> tuple[bool, str]:
        address = self.vpcs[vpc]["public_ips"][pf["public_ip"]]
        want = self.host_at(vpc, pf["private_ip"])
        got = [self.probe(self.inet(vpc), address, p, pf["protocol"]) for p in pf["public_port"]]
        return all(g == want for g in got), ", ".join(got)

    def _lb_get(self, vpc: str, lb: dict, headers: str = "") -> str:
        address = self.vpcs[vpc]["public_ips"][lb["public_ip"]]
        payload = f"GET / HTTP/1.0\\n{headers}\\n" if lb["protocol"] == "http" else "hello"
        return self.probe(self.inet(vpc), address, lb["public_port"], "tcp", payload)

    def _spread(self, vpc: str, lb: dict) -> tuple[bool, str]:
        if lb["stickiness"] == "source":  # one client always lands on one member: spread needs clients
            return True, "source stickiness: spread is per client (see the stickiness check)"
        seen = [self._lb_get(vpc, lb) for _ in range(6)]
        return len(set(seen)) >= min(2, len(lb["members"])), ", ".join(seen)

    def _sticky(self, vpc: str, lb: dict) -> tuple[bool, str]:
        if lb["stickiness"] == "cookie":
            first = self._lb_get(vpc, lb)
            cookie = f"Cookie: VPCGEN_SERVER={self._server_name(vpc, lb, first)}\\n"
            seen = [self._lb_get(vpc, lb, cookie) for _ in range(4)]
        else:
            seen = [self._lb_get(vpc, lb) for _ in range(4)]
        return len(set(seen)) == 1 and not seen[0].startswith("FAILED"), ", ".join(seen)

    def _server_name(self, vpc: str, lb: dict, host: str) -> str:
        name = next(n for n, x in self.vpcs[vpc]["load_balancers"].items() if x is lb)
        address = self._address(host)
        return f"{name}-{lb['members'].index(address) + 1}"

    def _health(self, vpc: str, lb: dict) -> tuple[bool, str]:
        victim = self.host_at(vpc, lb["members"][0])
        lab.stop_host(self.data, victim)
        try:
            deadline, seen = time.monotonic() + self.health_s(lb, "fall"), []
            while time.monotonic() < deadline:  # fall x inter of the health check, then no more
                seen = [self._lb_get(vpc, lb) for _ in range(4)]
                if victim not in seen and not any(s.startswith("FAILED") for s in seen):
                    break
                time.sleep(0.5)
        finally:
            lab.start_host(self.tree_dir, victim)
            self.reload_data()
            self._back_in_rotation(vpc, lb, victim)
        ok = victim not in seen and not any(s.startswith("FAILED") for s in seen)
        return ok, f"{victim} stopped; then answers: {', '.join(seen)}"

    def health_s(self, lb: dict, edge: str) -> float:
        """How long haproxy's health check needs to take a member out (fall) or back in (rise), from
        the load balancer's own timers in site.json, with slack for the first check's timing."""
        hc = lb["health_check"]
        return (hc[edge] + 1) * hc["interval_ms"] / 1000 + 2

    def _back_in_rotation(self, vpc: str, lb: dict, member: str) -> None:
        """Wait until haproxy's checks have risen for a restarted member (for every LB using it)."""
        for other in self.vpcs[vpc]["load_balancers"].values():
            if self._address(member) not in other["members"]:
                continue
            deadline = time.monotonic() + self.health_s(other, "rise")
            if other["stickiness"] == "source":  # one client sees one member: wait out the rise
                time.sleep(max(0.0, deadline - time.monotonic()))
                continue
            while time.monotonic() < deadline and member not in {self._lb_get(vpc, other) for _ in range(4)}:
                time.sleep(0.3)

    def _gateway(self, vpc: str, gw_name: str, gw: dict) -> tuple[bool, str]:
        node = f"{vpc}-pg-{gw_name}"
        target = str(ipaddress.ip_network(gw["routes"][0]).network_address + 5)
        acl = self.site["acls"][gw["acl"]]
        tier_name = sorted(self.vpcs[vpc]["tiers"])[0]
        tier = self.vpcs[vpc]["tiers"][tier_name]
        host, address = self.hosts(vpc, tier_name)[0]
        bad = []
        for proto, port in self._probes_for([acl]):
            if proto != "tcp":
                continue
            want = decide(self.site["acls"][tier["acl"]], "egress", proto, port, target) and \
                decide(acl, "egress", proto, port, target)
            got = self.probe(host, target, port, proto)
            if (got == node) != want:
                bad.append(f"tcp/{port} expected {'allow' if want else 'deny'}, got {got}")
        seen = self.probe(host, target, WHOAMI_PORT)
        if seen != address:
            bad.append(f"the gateway's side sees {seen}, not {address}")
        return not bad, "; ".join(bad) or f"{address} reaches {target} as the lists decide, not NATed"

    def _site_to_site(self, vpc: str, name: str, peer: dict) -> tuple[bool, str]:
        node = f"{vpc}-peer-{name}"
        target = str(ipaddress.ip_network(peer["peer_cidrs"][0]).network_address + 1)
        local = self._local_ts(vpc, name)
        host, allowed = self.source_host(vpc, target, [("tcp", PROBE_TCP_PORT), ("tcp", WHOAMI_PORT)], local)
        if host is None:
            return False, "no test host inside the VPN's local networks"
        if not allowed:  # the tiers' own egress lists deny it: the tunnel must not carry it either
            got = self.probe(host[0], target, PROBE_TCP_PORT)
            return got.startswith("FAILED"), f"every local tier's egress list denies it; {host[0]} -> {target}: {got}"
        deadline = time.monotonic() + 20  # the first packet triggers IKE; the tunnel needs a moment
        while (got := self.probe(host[0], target, PROBE_TCP_PORT)) != node and time.monotonic() < deadline:
            time.sleep(1)
        seen = self.probe(host[0], target, WHOAMI_PORT)
        # from the peer's network the tier's ingress list decides, as for any other traffic
        rules = self.site["acls"][self.tier_of(vpc, host[1])["acl"]]
        back = []
        for proto, port in self._probes_for([rules]):
            if proto != "tcp":
                continue
            want = decide(rules, "ingress", proto, port, target)
            answer = self.probe(node, host[1], port, proto, source=target)
            back.append((port, want, answer))
        wrong = [f"tcp/{p} expected {'allow' if w else 'deny'}, got {a}" for p, w, a in back
                 if (a == host[0]) != w]
        ok = got == node and seen == host[1] and not wrong
        return ok, (f"{host[0]} -> {target}: {got}, seen as {seen}; back from {target}: "
                    + ("; ".join(wrong) or f"{len(back)} probes as the tier's list decides"))

    def _remote_access(self, vpc: str) -> tuple[bool, str]:
        client = f"{vpc}-ra-client"
        pool = ipaddress.ip_network(self.vpcs[vpc]["remote_access"]["pool"])
        # a fresh connection to whichever router is master now (a client reconnects after a failover)
        lab.exec_in(self.data, client, "swanctl --terminate --ike ra --timeout 5 >/dev/null 2>&1")
        deadline, vip = time.monotonic() + 20, None
        while vip is None and time.monotonic() < deadline:
            lab.exec_in(self.data, client, "swanctl --initiate --child ra --timeout 5 >/dev/null 2>&1")
            out = netns.run(["ip", "-n", self.data["nodes"][client]["ns"], "-o", "-4", "addr"]).stdout
            vip = next((a.split("/")[0] for a in out.split() if "/" in a
                        and ipaddress.ip_address(a.split("/")[0]) in pool), None)
            if vip is None:
                time.sleep(1)
        if vip is None:
            return False, f"no address from {pool} on the client"
        results = []
        for tier_name, tier in sorted(self.vpcs[vpc]["tiers"].items()):
            node, address = self.hosts(vpc, tier_name)[0]
            rules = self.site["acls"][tier["acl"]]
            for proto, port in self._probes_for([rules]):
                if proto != "tcp":
                    continue
                want = decide(rules, "ingress", proto, port, vip)
                got = self.probe(client, address, port, proto, source=vip)
                results.append((f"{tier_name} tcp/{port}", want, got == node, got))
        wrong = [f"{w} expected {'allow' if want else 'deny'}, got {got}" for w, want, ok, got in results if ok != want]
        allowed = [w for w, want, ok, _ in results if want and ok]
        return not wrong and bool(allowed), (f"client holds {vip}; " + ("; ".join(wrong) or
                                             f"{len(results)} probes as the lists decide, reached {', '.join(allowed)}"))

    def _local_ts(self, vpc: str, name: str) -> list[str]:
        return self.vpcs[vpc]["vpn_peers"][name]["local_cidrs"]  # from site.json, never from swanctl.conf

    def _ospf_learned(self, vpc: str) -> tuple[bool, str]:
        core = f"core-{self.vpcs[vpc]['zone']}"
        cidr = self.vpcs[vpc]["cidr"]
        deadline = time.monotonic() + 60  # the first adjacency waits for the dead interval
        while time.monotonic() < deadline:
            routes = lab.exec_in(self.data, core, f"ip route show {cidr}").stdout.strip()
            if routes:
                break
            time.sleep(1)
        masters = self.masters(vpc) if self.vpcs[vpc]["redundant"] else self.vpcs[vpc]["routers"]
        via = [self._transit_address(m) for m in masters]
        ok = bool(routes) and any(f"via {a} " in routes + " " for a in via)
        return ok, routes or "no route"

    def _transit_address(self, router: str) -> str:
        for addresses in self.site["vpcs"][self.data["nodes"][router]["vpc"]]["routers"][router]["interfaces"].values():
            for a in addresses:
                if a.startswith(tuple(self._transit_prefixes())):
                    return a.split("/")[0]
        return "?"

    def _transit_prefixes(self) -> list[str]:
        return [z["ospf_transit"].rsplit(".", 1)[0] + "." for z in self.site["zones"].values() if z.get("ospf_transit")]

    def _routed_reach(self, vpc: str, other: str) -> tuple[bool, str]:
        src = self.hosts(vpc, sorted(self.vpcs[vpc]["tiers"])[0])[0]
        dst_node, dst_addr = self.hosts(other, sorted(self.vpcs[other]["tiers"])[0])[0]
        deadline = time.monotonic() + 60  # both VPCs' adjacencies with the core must be up
        while (got := self.probe(src[0], dst_addr, PROBE_TCP_PORT)) != dst_node and time.monotonic() < deadline:
            time.sleep(1)
        seen = self.probe(src[0], dst_addr, WHOAMI_PORT)  # the far host sees the near host's own address
        return got == dst_node and seen == src[1], f"{got} sees {seen}"

    # --- round 4: failover figures -------------------------------------------------------------

    def round_failover(self, runs: int = 5) -> None:
        for vpc, v in sorted(self.vpcs.items()):
            if v["redundant"] and v["kind"] == "routed":
                self.check(f"failover {vpc}", f"master killed: the core routes to the new master within 1 s "
                           f"(BFD), median of {runs}", lambda: self._ospf_failover(vpc, runs))
                self.check(f"failover {vpc}", "50 transitions: the VPC announced by the new master after each",
                           lambda: self._transitions(vpc))
            if not (v["redundant"] and v["kind"] == "nat"):
                continue
            udp = next((pf for pf in v["port_forwarding"] if pf["protocol"] == "udp"), None)
            if udp is None:
                continue
            limit = 500 if v["vrrp"]["advert_interval_ms"] <= 100 else 4000
            self.check(f"failover {vpc}", f"traffic interruption, median of {runs} (target < {limit} ms)",
                       lambda: self._measure(vpc, udp, runs, limit))
            self.check(f"failover {vpc}", "an established TCP connection through source NAT survives",
                       lambda: self._tcp_survives(vpc))

    def _measure(self, vpc: str, udp: dict, runs: int, limit: int) -> tuple[bool, str]:
        gaps = [g for g in (self._interruption(vpc, udp) for _ in range(runs)) if g is not None]
        median = statistics.median(gaps) if gaps else None
        self.figures.setdefault(vpc, {}).update({
            "advert_interval_ms": self.vpcs[vpc]["vrrp"]["advert_interval_ms"], "interruptions_ms": gaps,
            "median_interruption_ms": median})
        if median is None:
            return False, "no measurement"
        return median < limit, f"{median:.0f} ms; runs: {', '.join(f'{g:.0f}' for g in gaps)}"

    def _core_route(self, vpc: str) -> str:
        core, cidr = f"core-{self.vpcs[vpc]['zone']}", self.vpcs[vpc]["cidr"]
        return lab.exec_in(self.data, core, f"ip route show {cidr}").stdout.strip()

    def _announced_by(self, vpc: str, router: str, timeout: float) -> float | None:
        """Seconds until the core routes the VPC through ``router`` alone (None: not within timeout)."""
        want, start = f"via {self._transit_address(router)} ", time.monotonic()
        while time.monotonic() - start < timeout:
            route = self._core_route(vpc) + " "
            if want in route and route.count("via") == 1:
                return time.monotonic() - start
            time.sleep(0.02)
        return None

    def _adjacent(self, router: str, timeout: float) -> bool:
        """The router has a full OSPF adjacency with the core (a restarted router needs a few hellos)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Full/" in lab.exec_in(self.data, router, "vtysh -c 'show ip ospf neighbor'").stdout:
                return True
            time.sleep(0.5)
        return False

    def _ospf_failover(self, vpc: str, runs: int = 5) -> tuple[bool, str]:
        """The master dies; the core routes to the new master within 1 s (BFD), median of ``runs``."""
        times = []
        for _ in range(runs):
            master = self.wait_one_master(vpc, self.settle_s(vpc) + 5)
            if len(master) != 1:
                return False, f"masters: {master}"
            peer = next(r for r in self.vpcs[vpc]["routers"] if r != master[0])
            if not self._adjacent(peer, 2 * self.dead_s(vpc) + 10) or self._announced_by(vpc, master[0], 30) is None:
                return False, f"before: {self._core_route(vpc) or 'no route'}"
            lab.stop_router(self.data, master[0])
            self.data["nodes"][master[0]].pop("holder", None)
            try:
                took = self._announced_by(vpc, peer, 60)
            finally:
                lab.start_router(self.tree_dir, master[0])
                self.reload_data()
            if took is None:
                return False, f"the core never routed through {peer}: {self._core_route(vpc)}"
            times.append(took)
        median = statistics.median(times)
        self.figures.setdefault(vpc, {})["core_reroute_s"] = [round(t, 3) for t in times]
        return median <= 1.0, f"median {median:.2f} s; runs: {', '.join(f'{t:.2f}' for t in times)}"

    def _transitions(self, vpc: str, count: int = 50) -> tuple[bool, str]:
        """Mastership moves ``count`` times (keepalived stopped on the master, then started again as
        backup); after every move the core routes the VPC through the new master only."""
        missed = []
        for i in range(count):
            master = self.wait_one_master(vpc, self.settle_s(vpc) + 5)
            if len(master) != 1:
                return False, f"transition {i + 1}: masters {master}"
            peer = next(r for r in self.vpcs[vpc]["routers"] if r != master[0])
            if not self._adjacent(peer, 2 * self.dead_s(vpc) + 10):  # a backup that can announce
                return False, f"transition {i + 1}: {peer} has no OSPF adjacency"
            lab.exec_in(self.data, master[0], "kill -TERM $(cat /run/keepalived.pid)")
            if self._announced_by(vpc, peer, 10) is None:
                missed.append(f"{i + 1}: {self._core_route(vpc) or 'no route'}")
                if len(missed) == 3:
                    return False, f"stopped after {i + 1} transitions: missed {'; '.join(missed)}"
            start = time.monotonic()
            while self._keepalived_runs(master[0]) and time.monotonic() - start < 10:
                time.sleep(0.1)
            # its own session: the command's process group is killed when the command returns
            lab.exec_in(self.data, master[0], f"STRONGSWAN_CONF={lab.LAB_STRONGSWAN_PATH} setsid -f "
                        f"{lab.KEEPALIVED_START}")
            while self.state(master[0]) != "BACKUP" and time.monotonic() - start < 20:
                time.sleep(0.1)
        self.figures.setdefault(vpc, {})["announced_transitions"] = f"{count - len(missed)}/{count}"
        return not missed, f"{count - len(missed)}/{count} announced" + (f"; missed {'; '.join(missed[:3])}"
                                                                             if missed else "")

    def _keepalived_runs(self, router: str) -> bool:
        return any(lab._comm(int(p)) == "keepalived"
                   for p in netns.run(["ip", "netns", "pids", self.data["nodes"][router]["ns"]]).stdout.split())

    def _during_failover(self, vpc: str, node: str, script: str, lead_s: float, timeout: float) -> str | None:
        """The output of ``script`` run in ``node`` while the VPC's master dies ``lead_s`` seconds in;
        the dead router is started again afterwards and given time to settle as backup."""
        wait = 3 * self.advert_s(vpc) + 2
        master = self.wait_one_master(vpc, wait)
        if len(master) != 1:
            return None
        proc = subprocess.Popen(["ip", "netns", "exec", self.data["nodes"][node]["ns"], sys.executable, "-c", script],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(lead_s)
        lab.stop_router(self.data, master[0])
        self.data["nodes"][master[0]].pop("holder", None)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            lab.start_router(self.tree_dir, master[0])
            self.reload_data()
            time.sleep(wait)
        return out

    def _interruption(self, vpc: str, pf: dict) -> float | None:
        """Milliseconds without answers from a port-forwarded UDP service while the master dies."""
        address = self.vpcs[vpc]["public_ips"][pf["public_ip"]]
        script = UDP_STREAM.replace("ADDRESS", address).replace("PORT", str(pf["public_port"][0]))
        out = self._during_failover(vpc, self.inet(vpc), script, 1.0, 30)
        try:
            return float(out.strip().splitlines()[-1])
        except (AttributeError, ValueError, IndexError):
            return None

    def _tcp_survives(self, vpc: str) -> tuple[bool, str]:
        host, allowed = self.source_host(vpc, self.inet_address(vpc), [("tcp", 80)])
        if host is None or not allowed:
            return False, "no host whose egress list lets tcp/80 out"
        out = self._during_failover(vpc, host[0], TCP_STREAM.replace("ADDRESS", self.inet_address(vpc)), 2.0, 60)
        last = out.strip().splitlines()[-1] if out and out.strip() else "no output (or no master)"
        self.figures.setdefault(vpc, {})["tcp_survives"] = last.startswith("SURVIVED")
        return last.startswith("SURVIVED"), last

    # --- round 5: faults a pair must survive ------------------------------------------------

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
            took = self._announced_by(vpc, owner, 10)
            return took is not None, f"the core routes through {owner}" if took is not None else \
                f"the core does not route through {owner}: {self._core_route(vpc) or 'no route'}"
        targets = [t for t in self.nat_targets(vpc) if t[0].startswith("port forwarding")]
        ok, detail = self._all_reach(vpc, targets, True, retry=5)
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

    def round_ha(self) -> None:
        for vpc, v in sorted(self.vpcs.items()):
            if not v["redundant"]:
                continue
            r = f"ha {vpc}"
            self.check(r, "sync link lost: one holder after settling, no flapping, traffic flows",
                       lambda: self._sync_lost(vpc))
            self.check(r, "sync link back: one master, no second handover", lambda: self._sync_back(vpc))
            self.check(r, "upstream lost on the master: the peer holds every address within 3 s",
                       lambda: self._upstream_lost(vpc))
            services = ["conntrackd"] + (["haproxy"] if v["load_balancers"] else []) + \
                (["charon"] if v["vpn_peers"] or v.get("remote_access") else [])
            for service in services:
                self.check(r, f"{service} killed on the master: restarted or handed over, traffic flows",
                           lambda s=service: self._daemon_killed(vpc, s))

    def _fault(self, *args: str) -> None:
        lab.fault(self.tree_dir, args[0], list(args[1:]))
        self.reload_data()

    def _heal(self, vpc: str) -> None:
        """Faults undone, and the pair back to full strength: one master, a restarted router adjacent
        to the core again (the next fault assumes a peer that can forward)."""
        lab.heal(self.tree_dir)
        self.reload_data()
        self.wait_one_master(vpc, self.settle_s(vpc) + 5)
        if self.vpcs[vpc]["kind"] == "routed":
            for router in self.vpcs[vpc]["routers"]:
                self._adjacent(router, 2 * self.dead_s(vpc) + 10)
        time.sleep(self.settle_s(vpc))

    def dead_s(self, vpc: str) -> int:
        return self.site["zones"][self.vpcs[vpc]["zone"]]["ospf"]["dead_interval_s"]

    def _sync_lost(self, vpc: str) -> tuple[bool, str]:
        before = self.sample(vpc, 0.3)[-1][1]
        self._fault("sync-link", vpc)
        samples = self.sample(vpc, self.settle_s(vpc) + 4)
        ok_traffic, traffic = self.traffic(vpc)
        settled = [w for t, w in samples if t >= self.settle_s(vpc)]
        doubles = sum("+" in w for w in settled)
        nones = sum(w in ("none", "mixed") for w in settled)
        changes = sum(a != b for a, b in zip(settled, settled[1:]))
        early = [t for t, w in samples if "+" in w]
        self.figures.setdefault(vpc, {})["sync_lost"] = {
            "settle_window_s": self.settle_s(vpc), "double_until_s": round(max(early), 2) if early else 0,
            "settled_samples": len(settled), "double": doubles, "none": nones, "changes": changes}
        self.sync_holder = settled[-1] if settled else "?"
        ok = doubles == 0 and nones == 0 and changes == 0 and ok_traffic
        return ok, (f"before {before}; settled on {self.sync_holder} ({len(settled)} samples: {doubles} double, "
                    f"{nones} none, {changes} changes; two holders until {max(early) if early else 0:.1f} s); "
                    f"{traffic}")

    def _sync_back(self, vpc: str) -> tuple[bool, str]:
        lab.heal(self.tree_dir)
        self.reload_data()
        samples = self.sample(vpc, self.settle_s(vpc) + 3)
        holders = {w for _, w in samples}
        masters = self.masters(vpc)
        ok = holders == {self.sync_holder} and len(masters) == 1
        return ok, f"holders while healing: {', '.join(sorted(holders))}; masters {masters}"

    def _upstream_lost(self, vpc: str) -> tuple[bool, str]:
        master = self.wait_one_master(vpc, self.settle_s(vpc))
        if len(master) != 1:
            return False, f"masters before: {master}"
        peer = next(r for r in self.vpcs[vpc]["routers"] if r != master[0])
        self._fault("upstream", master[0])
        start, took = time.monotonic(), None
        try:
            while time.monotonic() - start < 10:
                if all(h == [peer] for h in self.holders(vpc).values()):
                    took = time.monotonic() - start
                    break
                time.sleep(0.05)
            ok_traffic, traffic = self.traffic(vpc)
        finally:
            self._heal(vpc)
        self.figures.setdefault(vpc, {})["upstream_handover_s"] = round(took, 2) if took is not None else None
        if took is None:
            return False, f"{peer} does not hold every address after 10 s"
        return took <= 3 and ok_traffic, f"{peer} holds every address after {took:.2f} s; {traffic}"

    def _daemon_killed(self, vpc: str, service: str) -> tuple[bool, str]:
        master = self.wait_one_master(vpc, self.settle_s(vpc))
        if len(master) != 1:
            return False, f"masters before: {master}"
        self._fault("kill", master[0], service)
        try:
            time.sleep(4)  # a health check or two: the daemon is back, or the peer holds everything
            by_vip = self.holders(vpc)
            owners = {r for h in by_vip.values() for r in h}
            running = any(lab._comm(int(p)) in lab.SERVICE_PROCESSES[service] for p in netns.run(
                ["ip", "netns", "pids", self.data["nodes"][master[0]]["ns"]]).stdout.split())
            ok_traffic, traffic = self.traffic(vpc)
        finally:
            self._heal(vpc)
        one = len(owners) == 1 and all(len(h) == 1 for h in by_vip.values())
        where = owners.pop() if len(owners) == 1 else "+".join(sorted(owners)) or "nobody"
        outcome = "restarted" if running and where == master[0] else "handed over" if where != master[0] else \
            "still dead on the master"
        return one and outcome != "still dead on the master" and ok_traffic, f"{outcome} (holder {where}); {traffic}"


# a UDP client sending every 10 ms for 8 s; prints the longest gap between answers, in ms
UDP_STREAM = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.01)
last, gap, end = None, 0.0, time.monotonic() + 8
while time.monotonic() < end:
    s.sendto(b"x", ("ADDRESS", PORT))
    try:
        s.recv(100)
        now = time.monotonic()
        if last is not None: gap = max(gap, now - last)
        last = now
    except OSError:
        pass
    time.sleep(0.01)
print(gap * 1000)
"""

# one TCP connection to the internet side's echo service, a line every 100 ms for 12 s
TCP_STREAM = """
import socket, time
sent = got = 0
try:
    s = socket.create_connection(("ADDRESS", 80), timeout=5); s.settimeout(5)
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


# --- ACL semantics (the expectation side) -----------------------------------------------------

NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}


def rule_probes(rule: dict) -> list[tuple[str, int]]:
    proto = rule["protocol"]
    if proto in ("tcp", "udp"):
        if rule["ports"]:
            return [(proto, rule["ports"][0])]
        return [(proto, PROBE_TCP_PORT)]
    if proto == "icmp":
        return [("icmp", 0)]
    if proto == "all" or proto == 0:
        return [("tcp", PROBE_TCP_PORT), ("icmp", 0)]
    return []  # other protocol numbers: no probe can be sent from a test host


def decide(rules: list[dict], traffic: str, proto: str, port: int, address: str) -> bool:
    """CloudStack semantics: first matching rule by number wins; unmatched traffic is denied."""
    for rule in sorted(rules, key=lambda r: r["number"]):
        if rule["traffic"] != traffic:
            continue
        p = rule["protocol"]
        if p not in ("all", 0, proto, NUMBERS.get(proto)):
            continue
        if rule["ports"] and proto in ("tcp", "udp") and not rule["ports"][0] <= port <= rule["ports"][1]:
            continue
        if proto == "icmp" and rule["icmp_type"] not in (None, 8):
            continue
        if proto == "icmp" and rule["icmp_code"] not in (None, 0):
            continue
        if not any(ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in rule["cidrs"]):
            continue
        return rule["action"] == "allow"
    return False


ROUNDS = ("redundancy", "acl", "services", "failover", "ha")


def run(tree_dir, rounds=ROUNDS, progress=lambda m: None) -> Runner:
    runner = Runner(tree_dir, progress)
    for name in rounds:
        getattr(runner, f"round_{name}")()
    return runner


def results_json(runner: Runner) -> str:
    return json.dumps({"checks": [asdict(c) for c in runner.checks], "failover": runner.figures,
                       "passed": sum(c.ok for c in runner.checks), "failed": sum(not c.ok for c in runner.checks)},
                      indent=2, sort_keys=True) + "\n"
