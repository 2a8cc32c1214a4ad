"""`vpcgen lab up|down`: a built site running for real in network namespaces.

Every router becomes a namespace whose interfaces, addresses, sysctls and iptables rules come
from its own tree (the files deploy ships), running the real daemons on its own files: the
tree's etc/ is overlaid on /etc in a private mount namespace with a private /run, exactly as
PLATFORM.md describes. Switches are bridges in one switch namespace; a VLAN sub-interface
eth2.<vlan> is a veth of that exact name whose peer sits in the VLAN's bridge (this kernel has
no VLAN devices). Test hosts, the internet side, VPN peers and OSPF core routers are namespaces
too. Nothing is connected to the machine's own namespace.

A built tree is untrusted input: before anything runs, every router is verified against its
manifest and its listed files (with site.json) are copied to the lab's run folder; the lab only
ever uses that copy. Only per-namespace sysctls are applied, and only in the router's namespace.

Everything a lab creates is recorded under /run/vpcgen-lab/<lab>/ as it is created, and every
name starts with the lab's prefix, so `lab down` removes it all by handle, also after a crash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..ops import check, netns
from . import mgmt
from ..errors import VpcgenError
from ..tree import _NAME, GENERATED, VRRP_STATE, TreeError, on_router, read_routers, read_site_json

RUN_ROOT = Path("/run/vpcgen-lab")


def lab_name(tree_dir: Path) -> str:
    return "vl" + hashlib.sha256(str(Path(tree_dir).resolve()).encode()).hexdigest()[:6]


@dataclass
class Link:
    ifname: str  # name inside the node's namespace
    segment: str  # the bridge's key, e.g. "zone1/eth2.1200"
    addresses: list[str] = field(default_factory=list)


@dataclass
class Node:
    name: str  # router name, or a host label
    kind: str  # router | host | inet | peer | core | gateway | client
    links: list[Link] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)  # `ip route replace` arguments
    loopback: list[str] = field(default_factory=list)  # extra addresses on lo
    tcp: str = ""  # host servers
    udp: str = ""
    whoami: int = 0
    tree: Path | None = None  # routers: their tree
    vpc: str = ""


@dataclass
class Plan:
    name: str
    tree_dir: Path
    site: dict
    nodes: list[Node]
    segments: list[str]


# --- what to build, from the tree only ------------------------------------------------------

def router_interfaces(tree: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Interfaces (name -> addresses) and routes of a router, from its interfaces file."""
    ifaces, routes = netns.parse_interfaces(tree)
    # parents of VLAN sub-interfaces only carry the tags: in the lab the sub-interfaces are veths
    for parent in ("eth1", "eth2"):
        if not ifaces.get(parent) and any(n.startswith(parent + ".") for n in ifaces):
            ifaces.pop(parent, None)
    return ifaces, routes


PEERS_NET = "198.18.0.0/24"  # between the internet side and the VPN peers (RFC 2544 space)
PEERS_GATEWAY = "198.18.0.1"
PROBE_TCP_PORT = 7777  # named by no ACL rule: what a default deny decides
PROBE_UDP_PORT = 7777
WHOAMI_PORT = 7  # on the internet side: answers with the address a connection came from


def internet_sources(site: dict, zone: str) -> list[str]:
    """Addresses on the internet side for every source network an ACL rule names outside the VPCs,
    so that ACL probes can come from each of them."""
    private = [ipaddress.ip_network(v["cidr"]) for v in site["vpcs"].values() if v["zone"] == zone and v["cidr"]]
    out = []
    for rules in site["acls"].values():
        for rule in rules:
            for cidr in rule["cidrs"]:
                net = ipaddress.ip_network(cidr)
                if net.prefixlen == 0 or any(net.overlaps(p) for p in private) or net.is_private:
                    continue
                out.append(f"{net.network_address + min(7, net.num_addresses - 1)}/32")
    return sorted(set(out))


def _host_addresses(cidr: str, wanted: list[str], count: int = 2) -> list[str]:
    net = ipaddress.ip_network(cidr)
    out = sorted(set(wanted), key=ipaddress.ip_address)
    candidate = net.network_address + 10
    while len(out) < count:
        if str(candidate) not in out:
            out.append(str(candidate))
        candidate += 1
    return out


def staged_root(tree_dir: Path) -> Path:
    """The lab's verified copy of a built site: the only place the lab reads a tree from."""
    return RUN_ROOT / lab_name(tree_dir) / "trees"


def plan(tree_dir: Path, only_vpc: str | None = None) -> Plan:
    """What to build for a lab whose verified copy has been staged (``up`` does that)."""
    tree_dir = Path(tree_dir)
    root = staged_root(tree_dir)
    site = json.loads((root / "site.json").read_text())
    vpcs = {k: v for k, v in site["vpcs"].items() if only_vpc in (None, k)}
    if only_vpc and not vpcs:
        raise VpcgenError(f"no VPC {only_vpc} in {tree_dir} (VPCs: {', '.join(site['vpcs'])})")
    name = lab_name(tree_dir)
    nodes: list[Node] = []
    segments: set[str] = set()
    zones_used: dict[str, set[str]] = {}
    for vpc_name, vpc in vpcs.items():
        zone = vpc["zone"]
        for router in vpc["routers"]:
            tree = root / router
            ifaces, routes = router_interfaces(tree)
            node = Node(router, "router", tree=tree, vpc=vpc_name, routes=routes)
            for ifname, addresses in sorted(ifaces.items()):
                segment = f"{zone}/{ifname}"
                segments.add(segment)
                node.links.append(Link(ifname, segment, addresses))
                if ifname.split(".")[0] == "eth1":
                    zones_used.setdefault(zone, set()).add(segment)
            nodes.append(node)
        # test hosts: the private addresses NAT and load balancers use, two per tier at least
        used = set(vpc["static_nat"].values()) | {p["private_ip"] for p in vpc["port_forwarding"]}
        used |= {m for lb in vpc["load_balancers"].values() for m in lb["members"]}
        tcp_ports = {22, 80, 443, 5432, 8080} | {p["private_port"][0] for p in vpc["port_forwarding"]
                                                  if p["protocol"] == "tcp"}
        tcp_ports |= {lb["private_port"] for lb in vpc["load_balancers"].values()}
        udp_ports = {p for f in vpc["port_forwarding"] if f["protocol"] == "udp"
                     for p in range(f["private_port"][0], f["private_port"][1] + 1)}
        for tier in vpc["tiers"].values():  # every port an ACL rule names, so probes find a listener
            for rule in site["acls"][tier["acl"]]:
                if rule["ports"] and rule["protocol"] in ("tcp", "udp"):
                    for port in {rule["ports"][0], rule["ports"][1]}:
                        (tcp_ports if rule["protocol"] == "tcp" else udp_ports).add(port)
        tcp_ports |= {PROBE_TCP_PORT}
        udp_ports |= {PROBE_UDP_PORT}
        udp = ",".join(map(str, sorted(udp_ports)))
        for tier_name, tier in sorted(vpc["tiers"].items()):
            mine = [a for a in used if ipaddress.ip_address(a) in ipaddress.ip_network(tier["cidr"])]
            prefix = tier["cidr"].split("/")[1]
            for i, address in enumerate(_host_addresses(tier["cidr"], mine)):
                host = Node(f"{vpc_name}-{tier_name}-{i + 1}", "host", vpc=vpc_name, whoami=WHOAMI_PORT,
                            tcp=",".join(map(str, sorted(tcp_ports))), udp=udp,
                            links=[Link("eth0", f"{zone}/eth2.{tier['vlan']}", [f"{address}/{prefix}"])],
                            routes=[f"default via {tier['gateway']}"])
                nodes.append(host)
        for gw_name, gw in sorted(vpc["private_gateways"].items()):
            prefix = gw["address"].split("/")[1]
            nodes.append(Node(f"{vpc_name}-pg-{gw_name}", "gateway", vpc=vpc_name, tcp=f"22,25,80,{PROBE_TCP_PORT}",
                              whoami=WHOAMI_PORT,
                              links=[Link("eth0", f"{zone}/eth2.{gw['vlan']}", [f"{gw['gateway']}/{prefix}"])],
                              routes=[f"default via {gw['address'].split('/')[0]}"],
                              loopback=[f"{ipaddress.ip_network(r).network_address + 5}/32" for r in gw["routes"]]))
    # site-to-site peers: beyond the internet side, on a link of their own, with their networks on lo
    for vpc_name, vpc in vpcs.items():
        for k, (peer_name, peer) in enumerate(sorted(vpc["vpn_peers"].items())):
            segment = f"{vpc['zone']}/peers"
            segments.add(segment)
            hop = f"{PEERS_NET.rsplit('.', 1)[0]}.{10 + len([n for n in nodes if n.kind == 'peer'])}"
            nodes.append(Node(f"{vpc_name}-peer-{peer_name}", "peer", vpc=vpc_name, whoami=WHOAMI_PORT,
                              tcp=f"22,80,{PROBE_TCP_PORT}",
                              links=[Link("eth0", segment, [f"{hop}/24", f"{peer['peer']}/32"])],
                              routes=[f"default via {PEERS_GATEWAY} src {peer['peer']}"],
                              loopback=[f"{ipaddress.ip_network(c).network_address + 1}/32" for c in peer["peer_cidrs"]]))
    # remote-access VPN clients: out on the internet, beyond the internet side as well
    for vpc_name, vpc in vpcs.items():
        if vpc.get("remote_access"):
            segment = f"{vpc['zone']}/peers"
            segments.add(segment)
            hop = f"{PEERS_NET.rsplit('.', 1)[0]}.{100 + len([n for n in nodes if n.kind == 'client'])}"
            nodes.append(Node(f"{vpc_name}-ra-client", "client", vpc=vpc_name,
                              links=[Link("eth0", segment, [f"{hop}/24"])], routes=[f"default via {PEERS_GATEWAY}"]))
    # the internet side of each zone: its public gateway, and beyond it the VPN peers
    for zone_name in sorted(zones_used):
        zone = site["zones"][zone_name]
        public = zone.get("public")
        for segment in sorted(zones_used[zone_name]):
            is_public = public and segment == f"{zone_name}/" + (f"eth1.{public['vlan']}" if public["vlan"]
                                                                 else "eth1")
            if is_public:
                prefix = public["cidr"].split("/")[1]
                inet = Node(f"inet-{zone_name}", "inet", links=[Link("eth0", segment,
                                                                    [f"{public['gateway']}/{prefix}"])],
                            tcp="80", whoami=WHOAMI_PORT, loopback=internet_sources(site, zone_name))
                peers = [n for n in nodes if n.kind == "peer" and site["vpcs"][n.vpc]["zone"] == zone_name]
                if peers or any(n.kind == "client" for n in nodes):
                    inet.links.append(Link("eth1", f"{zone_name}/peers", [f"{PEERS_GATEWAY}/24"]))
                    inet.routes += [f"{n.links[0].addresses[1].split('/')[0]}/32 via "
                                    f"{n.links[0].addresses[0].split('/')[0]}" for n in peers]
                nodes.append(inet)
            if zone.get("ospf_transit") and segment.endswith(_transit_ifname(root, vpcs, zone_name)):
                transit = zone["ospf_transit"]
                core = str(ipaddress.ip_network(transit).network_address + 1)
                nodes.append(Node(f"core-{zone_name}", "core", tcp="22,80",
                                  links=[Link("eth0", segment, [f"{core}/{transit.split('/')[1]}"])],
                                  loopback=["192.0.2.254/32"]))
    return Plan(name, tree_dir, site, nodes, sorted(segments))


def _transit_ifname(root: Path, vpcs: dict, zone: str) -> str:
    for vpc in vpcs.values():
        if vpc["zone"] == zone and vpc["kind"] == "routed":
            router = root / next(iter(vpc["routers"]))
            text = (router / GENERATED["frr"]).read_text()
            return re.search(r"^interface (eth1\S*)", text, re.M).group(1)
    return "\0"  # no routed VPC in the zone: matches no segment


# --- state -----------------------------------------------------------------------------------

class State:
    """What a lab created, written to disk as it goes."""

    def __init__(self, name: str):
        self.dir = RUN_ROOT / name
        self.file = self.dir / "state.json"
        self.data = json.loads(self.file.read_text()) if self.file.exists() else {
            "name": name, "namespaces": [], "nodes": {}}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.file)

    def add_namespace(self, ns: str) -> None:
        self.data["namespaces"].append(ns)
        self.save()


def ns_of(lab: str, node: str) -> str:
    return f"{lab}-{node}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = netns.run(["ip", *args])
    if check and r.returncode != 0:
        raise VpcgenError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _in(ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = netns.run(["ip", "netns", "exec", ns, *cmd], timeout=timeout)
    if check and r.returncode != 0:
        raise VpcgenError(f"in {ns}: {' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
    return r


# --- up --------------------------------------------------------------------------------------

def up(tree_dir, only_vpc: str | None = None, progress=lambda m: None) -> Plan:
    if os.geteuid() != 0:
        raise VpcgenError("vpcgen lab needs root: it creates network namespaces")
    tree_dir = Path(tree_dir)
    state = State(lab_name(tree_dir))
    if state.file.exists():
        raise VpcgenError(f"lab {state.data['name']} for {tree_dir} is already up: "
                          f"run `vpcgen lab down {tree_dir}` first")
    routers = read_routers(tree_dir)  # every router verified against its manifest, before anything
    state.data["tree"] = str(tree_dir.resolve())
    state.save()
    try:
        stage(tree_dir, routers)
        p = plan(tree_dir, only_vpc)
        _build(p, state, progress)
        mgmt.setup(p, state, progress)
        _wait_ready(p, state.data, progress)
    except BaseException:
        down(tree_dir)
        raise
    return p


def stage(tree_dir: Path, routers: dict) -> None:
    """Copy the verified routers and site.json to the lab's run folder, refusing what the lab must
    not run: a haproxy config that runs code, a sysctl that is not per namespace, a name in
    site.json that is no name (names become namespace and file names), a router without a tree."""
    root = staged_root(tree_dir)
    shutil.rmtree(root, ignore_errors=True)  # ours: a run folder that a crash left behind
    site = read_site_json(tree_dir)
    shown = str(tree_dir / "site.json")
    try:
        names = [*site["zones"], *site["vpcs"]]
        for vpc in site["vpcs"].values():
            names += [*vpc["routers"], *vpc["tiers"], *vpc["private_gateways"], *vpc["vpn_peers"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise TreeError(f"{shown}: not a site.json vpcgen writes ({type(exc).__name__}: {exc})") from None
    for n in names:
        if not isinstance(n, str) or not _NAME.match(n):
            raise TreeError(f"{shown}: {n!r} is not a vpcgen name: refusing the tree")
    for vpc in site["vpcs"].values():
        for router in vpc["routers"]:
            if router not in routers:
                raise TreeError(f"{tree_dir / router}: no router tree for {router} of {shown}")
    staged = check.stage_routers(routers, root)
    for tree in staged.values():
        sysctls(tree / GENERATED["sysctl"], tree_dir / tree.name / GENERATED["sysctl"])
    (root / "site.json").write_text(json.dumps(site), encoding="utf-8")


def _wait_ready(p: Plan, data: dict, progress, timeout: float = 20) -> None:
    """Up means usable: one master per pair, and every load balancer answering (haproxy's health
    checks must rise first). Bounded: what is not ready by then, `lab test` will report."""
    deadline = time.monotonic() + timeout
    for vpc_name, vpc in p.site["vpcs"].items():
        routers = [r for r in vpc["routers"] if r in data["nodes"]]
        if vpc["redundant"] and routers:
            while time.monotonic() < deadline:
                states = [exec_in(data, r, f"cat {VRRP_STATE} 2>/dev/null").stdout.strip() for r in routers]
                if states.count("MASTER") == 1:
                    break
                time.sleep(0.2)
        inet = f"inet-{vpc['zone']}"
        for lb in vpc["load_balancers"].values() if routers and inet in data["nodes"] else ():
            address = vpc["public_ips"][lb["public_ip"]]
            payload = "GET / HTTP/1.0\\n\\n" if lb["protocol"] == "http" else "hello"
            members = {n.name for n in p.nodes if n.kind == "host"
                       and any(a.split("/")[0] in lb["members"] for a in n.links[0].addresses)}
            seen: set[str] = set()
            while time.monotonic() < deadline and not members <= seen:  # every member is up in haproxy
                seen.add(probe(data, inet, address, lb["public_port"], "tcp", payload))
                if lb["stickiness"] == "source":
                    break  # one client keeps landing on one member: one answer is enough
                time.sleep(0.2)
    # routed VPCs: every router adjacent to the core (the core's DR election waits a dead interval)
    routed = [r for v in p.site["vpcs"].values() if v["kind"] == "routed" for r in v["routers"] if r in data["nodes"]]
    adjacent_by = time.monotonic() + 2 * max([z["ospf"]["dead_interval_s"] for z in p.site["zones"].values()
                                              if z["ospf"]] or [0]) + 10
    for router in routed:
        while time.monotonic() < adjacent_by and "Full/" not in exec_in(
                data, router, "vtysh -c 'show ip ospf neighbor' 2>/dev/null").stdout:
            time.sleep(0.5)
    progress(f"lab {p.name} ready")


def _build(p: Plan, state: State, progress) -> None:
    sw = ns_of(p.name, "sw")
    _ip("netns", "add", sw)
    state.add_namespace(sw)
    _in(sw, "ip", "link", "set", "lo", "up")
    bridges = {}
    for i, segment in enumerate(sorted(set(p.segments) | {link.segment for n in p.nodes for link in n.links})):
        bridges[segment] = f"b{i}"
        _in(sw, "ip", "link", "add", f"b{i}", "type", "bridge")
        _in(sw, "ip", "link", "set", f"b{i}", "up")
    state.data["bridges"] = bridges
    state.data["ports"] = {}  # "node/ifname" -> its port in the switch (faults detach it)
    port = 0
    for node in p.nodes:
        ns = ns_of(p.name, node.name)
        _ip("netns", "add", ns)
        state.add_namespace(ns)
        _in(ns, "ip", "link", "set", "lo", "up")
        for link in node.links:
            port += 1
            peer = f"p{port}"
            _ip("link", "add", link.ifname, "netns", ns, "type", "veth", "peer", "name", peer, "netns", sw)
            _in(sw, "ip", "link", "set", peer, "master", bridges[link.segment])
            state.data["ports"][f"{node.name}/{link.ifname}"] = [peer, bridges[link.segment]]
            _in(sw, "ip", "link", "set", peer, "up")
            _in(ns, "ip", "link", "set", link.ifname, "up")
            for address in link.addresses:
                _in(ns, "ip", "addr", "add", address, "dev", link.ifname)
        for address in node.loopback:
            _in(ns, "ip", "addr", "add", address, "dev", "lo")
        state.data["nodes"][node.name] = {"ns": ns, "kind": node.kind, "vpc": node.vpc}
        state.save()
    for node in p.nodes:
        ns = ns_of(p.name, node.name)
        if node.kind == "router":
            progress(f"{node.name}: sysctls, rules, daemons")
            _sysctls(ns, node.tree)
        else:
            _in(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1" if node.kind in ("inet", "core", "gateway")
                else "net.ipv4.ip_forward=0")
        for route in node.routes:
            _in(ns, "ip", "route", "replace", *route.split())
    for node in p.nodes:
        ns = ns_of(p.name, node.name)
        if node.kind == "router":
            load_rules(ns, node.tree)
            _start_router(p, state, node, ns)
        elif node.kind == "core":
            _start_core(p, state, node, ns)
        elif node.kind == "peer":
            _start_peer(p, state, node, ns)
        elif node.kind == "client":
            _start_client(p, state, node, ns)
        if node.tcp or node.udp:
            _start_host(state, node, ns)
    state.save()


LIBIPSEC_DEVICE = "ipsec0"


def libipsec_rules(rules_v4: str) -> list[str]:
    """The one platform adaptation of a router's rules: kernel-libipsec hands tunnel traffic to a TUN
    device instead of the uplink, so each "tier to the internet" accept gets its ipsec0 twin
    (appended after everything else, like the original; ACL chains still decide first)."""
    out = []
    for line in rules_v4.splitlines():
        if line.startswith("-A FORWARD -i ") and " -o eth1" in line and line.split(" -j ")[1].startswith("ACCEPT"):
            match = re.sub(r" -o eth1(\.\d+)? ", f" -o {LIBIPSEC_DEVICE} ", line.split(" -m comment")[0])
            out.append(match[len("-A "):])
    return out


def load_rules(ns: str, tree: Path, text: str | None = None) -> None:
    """Load a router's rules (the tree's file, or a variant of it), plus the libipsec twins."""
    source = (tree / GENERATED["iptables"]).read_text()
    r = netns.run(["ip", "netns", "exec", ns, "iptables-restore", "--wait=10"], input=text or source)
    if r.returncode != 0:
        raise VpcgenError(f"in {ns}: iptables-restore: {r.stderr.strip()}")
    if (tree / GENERATED["swanctl"]).exists():
        for rule in libipsec_rules(source):
            _in(ns, "iptables", "-w", "-A", *rule.split(), "-m", "comment", "--comment", "lab only: libipsec")


# the sysctls a network namespace has of its own (PLATFORM.md): anything else (vm.*, kernel.*,
# net.core.*) would change the machine itself. An interface name's dots are written as slashes.
_IFACE_KEY = r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*"
NAMESPACED_SYSCTL = re.compile(rf"^(net\.ipv4\.(?:ip_forward|ip_nonlocal_bind|tcp_syncookies"
                               rf"|conf\.{_IFACE_KEY}\.\w+)|net\.ipv6\.conf\.{_IFACE_KEY}\.\w+)$")


def sysctls(path: Path, shown: Path | str) -> list[tuple[str, str]]:
    """(key, value) of a router's sysctl file; any setting that is not per namespace is refused."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, eq, value = (x.strip() for x in line.partition("="))
        if not (eq and NAMESPACED_SYSCTL.match(key) and re.fullmatch(r"-?\d+", value)):
            raise TreeError(f"{shown}:{number}: error: {line!r}: the lab applies only per-namespace sysctls "
                            "(net.ipv4.ip_forward, net.ipv4.conf.*, net.ipv4.ip_nonlocal_bind, "
                            "net.ipv4.tcp_syncookies, net.ipv6.conf.*) with a number: refusing the tree")
        out.append((key, value))
    return out


def _sysctls(ns: str, tree: Path) -> None:
    # checked when the tree was staged; checked again, as it is what is written
    for key, value in sysctls(tree / GENERATED["sysctl"], tree / GENERATED["sysctl"]):
        _in(ns, "sysctl", "-q", "-w", f"{key}={value}")


def _holder(state: State, node_name: str, ns: str, etc: Path, script: str, env: dict | None = None) -> int:
    """A process that keeps ``ns`` with a private /etc overlay and /run, running ``script``."""
    scratch = state.dir / "ovl" / node_name
    scratch.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    setup = (
        "set -e; "
        f"mkdir -p {q(str(scratch))}/upper {q(str(scratch))}/work; "
        f"mount -t overlay overlay -o lowerdir={q(str(etc))}:/etc,upperdir={q(str(scratch))}/upper,"
        f"workdir={q(str(scratch))}/work /etc; "
        "mount -t tmpfs vpcgen-lab-run /run; mkdir -p /run/lock /run/haproxy /run/vpcgen /run/frr /run/sshd; "
        "chown frr:frr /run/frr 2>/dev/null || true; "
        "set +e; "
    )
    log = open(state.dir / f"{node_name}.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                             "sh", "-c", setup + script + "; echo vpcgen-lab-ready; exec sleep 2147483647"],
                            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    if b"vpcgen-lab-ready" not in line:
        raise VpcgenError(f"{node_name}: could not start ({(state.dir / f'{node_name}.log').read_text()[-500:]})")
    state.data["nodes"][node_name]["holder"] = proc.pid
    state.save()
    return proc.pid


LAB_STRONGSWAN_CONF = """charon {
    load_modular = yes
    plugins {
        include /etc/strongswan.d/charon/*.conf
        # the lab's kernel has no ESP: IPsec runs in userspace over a TUN device (PLATFORM.md)
        kernel-libipsec {
            load = yes
        }
    }
}
"""


LAB_STRONGSWAN_PATH = "/etc/vpcgen-lab/strongswan.conf"  # written into the router's /etc overlay only
# charon in the foreground of a holder's shell, then every connection and secret of /etc/swanctl
CHARON_START = ("/usr/lib/ipsec/charon >/run/charon.log 2>&1 & "
                "i=0; while [ ! -S /run/charon.vici ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
                "swanctl --load-all --noprompt >/run/swanctl.log 2>&1")


KEEPALIVED_START = (f"keepalived -f {on_router('keepalived')} -p /run/keepalived.pid -r /run/vrrp.pid "
                    "-c /run/checkers.pid")


def _start_router(p: Plan, state: State, node: Node, ns: str) -> None:
    etc = node.tree / "etc"
    parts = []
    if (etc / "conntrackd/conntrackd.conf").exists():
        conf = on_router("conntrackd")
        parts.append(f"conntrackd -d -C {conf}; "
                     f"i=0; while ! conntrackd -C {conf} -s >/dev/null 2>&1 && "
                     "[ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done")
    if (etc / "frr/frr.conf").exists():
        parts.append(_FRR_START)
    if (etc / "swanctl/swanctl.conf").exists():
        parts.append(f"mkdir -p /etc/vpcgen-lab; printf %s {shlex.quote(LAB_STRONGSWAN_CONF)} > {LAB_STRONGSWAN_PATH}; "
                     + CHARON_START)
    if (etc / "haproxy/haproxy.cfg").exists():
        # -n: this machine's file-descriptor limit is below what the router's maxconn needs
        parts.append(f"haproxy -D -n 4096 -p /run/haproxy.pid -f {on_router('haproxy')}")
    if (etc / "keepalived/keepalived.conf").exists():
        parts.append(KEEPALIVED_START)
    # STRONGSWAN_CONF reaches charon, swanctl and the notify script's swanctl calls alike
    _holder(state, node.name, ns, etc, "; ".join(parts) or "true", env={"STRONGSWAN_CONF": LAB_STRONGSWAN_PATH})


# the daemons the node's etc/frr/daemons enables (a router's bfdd among them), then its frr.conf
_FRR_START = ("/usr/lib/frr/zebra -d -A 127.0.0.1 -s 90000000 -u frr -g frr; "
              "/usr/lib/frr/staticd -d -A 127.0.0.1 -u frr -g frr; "
              f"for d in ospfd bfdd; do grep -q \"^$d=yes\" {on_router('frr-daemons')} && "
              "/usr/lib/frr/$d -d -A 127.0.0.1 -u frr -g frr; done; "
              # the config is applied once ospfd answers (a loaded machine starts it slowly)
              "i=0; until vtysh -c 'show ip ospf' >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; "
              "vtysh -b >/run/vtysh.log 2>&1")


def _start_core(p: Plan, state: State, node: Node, ns: str) -> None:
    """The zone's OSPF core router: FRR in the backbone, DR of the transit link, default originator."""
    zone = node.name.split("-", 1)[1]
    sample = next(n for n in p.nodes if n.kind == "router" and (n.tree / GENERATED["frr"]).exists()
                  and p.site["vpcs"][n.vpc]["zone"] == zone)
    text = (sample.tree / GENERATED["frr"]).read_text()
    hello = re.search(r"hello-interval (\d+)", text).group(1)
    dead = re.search(r"dead-interval (\d+)", text).group(1)
    key = re.search(r"message-digest-key 1 md5 (\S+)", text)
    transit = p.site["zones"][zone]["ospf_transit"]
    address = node.links[0].addresses[0].split("/")[0]
    auth = (f" ip ospf authentication message-digest\n ip ospf message-digest-key 1 md5 {key.group(1)}\n"
            if key else "")
    etc = state.dir / "etc" / node.name
    (etc / "frr").mkdir(parents=True, exist_ok=True)
    # what an operator's core needs (the README says so): BFD on the transit link, and new routes
    # taken at once (no SPF hold-down, no minimum LSA arrival interval)
    (etc / "frr/frr.conf").write_text(
        f"frr defaults traditional\nhostname {node.name}\nservice integrated-vtysh-config\n!\n"
        "bfd\n profile core\n  transmit-interval 100\n  receive-interval 100\n  detect-multiplier 3\n exit\nexit\n!\n"
        f"interface eth0\n ip ospf bfd\n ip ospf bfd profile core\n"
        f" ip ospf hello-interval {hello}\n ip ospf dead-interval {dead}\n ip ospf priority 100\n"
        f"{auth}exit\n!\nrouter ospf\n ospf router-id {address}\n timers throttle spf 0 50 1000\n"
        " timers lsa min-arrival 0\n"
        f" network {transit} area 0\n"
        " network 192.0.2.254/32 area 0\n default-information originate always\nexit\n!\n")
    (etc / "frr/frr.conf").chmod(0o640)
    (etc / "frr/daemons").write_text("zebra=yes\nstaticd=yes\nospfd=yes\nbfdd=yes\nvtysh_enable=yes\n")
    _holder(state, node.name, ns, etc, _FRR_START)


def _block(text: str, name: str) -> str:
    """The body of the `name { ... }` section of a swanctl file."""
    start = text.index(f" {name} {{")
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise ValueError(name)


def _setting(block: str, key: str) -> str:
    return re.search(rf"^\s*{key} = (.+)$", block, re.M).group(1).strip()


def _start_charon(state: State, node: Node, ns: str, files: dict[str, Path], swanctl_conf: str) -> None:
    """A lab-only charon (VPN peer, remote-access client): its own /etc/swanctl (0600, it holds the
    secrets) and the lab's strongswan.conf, in a holder like a router's."""
    etc = state.dir / "etc" / node.name
    (etc / "vpcgen-lab").mkdir(parents=True, exist_ok=True)
    (etc / "vpcgen-lab/strongswan.conf").write_text(LAB_STRONGSWAN_CONF)
    for rel, source in files.items():
        (etc / "swanctl" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, etc / "swanctl" / rel)
    (etc / "swanctl").mkdir(parents=True, exist_ok=True)
    (etc / "swanctl/swanctl.conf").write_text(swanctl_conf)
    (etc / "swanctl/swanctl.conf").chmod(0o600)
    _holder(state, node.name, ns, etc, CHARON_START, env={"STRONGSWAN_CONF": LAB_STRONGSWAN_PATH})


def _start_peer(p: Plan, state: State, node: Node, ns: str) -> None:
    """The far end of a site-to-site VPN: charon with the router's connection mirrored."""
    conn = "s2s-" + node.name.split("-peer-", 1)[1]
    router = next(n for n in p.nodes if n.kind == "router" and n.vpc == node.vpc)
    conf = (router.tree / GENERATED["swanctl"]).read_text()
    secret = _setting(_block((router.tree / GENERATED["swanctl-secrets"]).read_text(), f"ike-{conn}"), "secret")
    block = _block(conf, conn)
    child = _block(block, "children")
    peer, local = _setting(block, "remote_addrs"), _setting(block, "local_addrs")
    _start_charon(state, node, ns, {}, (
        f"connections {{\n lab {{\n  version = {_setting(block, 'version')}\n  local_addrs = {peer}\n"
        f"  remote_addrs = {local}\n  proposals = {_setting(block, 'proposals')}\n"
        f"  local {{\n   auth = psk\n   id = {peer}\n  }}\n  remote {{\n   auth = psk\n   id = {local}\n  }}\n"
        f"  children {{\n   lab {{\n    local_ts = {_setting(child, 'remote_ts')}\n"
        f"    remote_ts = {_setting(child, 'local_ts')}\n    esp_proposals = {_setting(child, 'esp_proposals')}\n"
        f"    start_action = trap\n   }}\n  }}\n }}\n}}\n"
        f"secrets {{\n ike-lab {{\n  id-1 = {peer}\n  id-2 = {local}\n  secret = {secret}\n }}\n}}\n"))


def _start_client(p: Plan, state: State, node: Node, ns: str) -> None:
    """A remote-access VPN user: IKEv2, EAP-MSCHAPv2 with the first user's password, trusting the
    router's certificate, asking for a virtual address from the pool."""
    router = next(n for n in p.nodes if n.kind == "router" and n.vpc == node.vpc)
    swanctl = router.tree / "etc/swanctl"
    block = _block((swanctl / "swanctl.conf").read_text(), "ra")
    server, local_ts = _setting(block, "local_addrs"), _setting(_block(block, "children"), "local_ts")
    user = p.site["vpcs"][node.vpc]["remote_access"]["users"][0]
    secrets = (swanctl / "vpcgen-secrets.conf").read_text()  # a user's section is eap-<n>, holding its id
    secret = next(_setting(section, "secret") for section in re.findall(r" eap-\d+ \{([^}]*)\}", secrets)
                  if _setting(section, "id") == user)
    _start_charon(state, node, ns, {"x509ca/router.pem": swanctl / "x509/vpcgen-ra.pem"}, (
        f"connections {{\n ra {{\n  version = 2\n  remote_addrs = {server}\n  vips = 0.0.0.0\n"
        f"  local {{\n   auth = eap-mschapv2\n   eap_id = {user}\n  }}\n  remote {{\n   auth = pubkey\n   id = %any\n  }}\n"
        f"  children {{\n   ra {{\n    remote_ts = {local_ts}\n    start_action = start\n   }}\n  }}\n }}\n}}\n"
        f"secrets {{\n eap-user {{\n  id = {user}\n  secret = {secret}\n }}\n}}\n"))


def _start_host(state: State, node: Node, ns: str) -> None:
    args = [sys.executable, "-m", "vpcgen.lab.host", node.name]
    if node.tcp:
        args += ["--tcp", node.tcp]
    if node.udp:
        args += ["--udp", node.udp]
    if node.whoami:
        args += ["--whoami", str(node.whoami)]
    log = open(state.dir / f"{node.name}.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=log, stderr=log, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    state.data["nodes"][node.name]["server"] = proc.pid
    state.save()


# --- down ------------------------------------------------------------------------------------

def down(tree_dir) -> list[str]:
    """Remove every namespace (and with it every link and bridge) and process of the lab."""
    name = lab_name(Path(tree_dir))
    state = State(name)
    namespaces = list(dict.fromkeys(state.data["namespaces"] + _leftover_namespaces(name)))
    removed = []
    for ns in reversed(namespaces):
        pids = netns.run(["ip", "netns", "pids", ns]).stdout.split()
        for pid in pids:  # processes started in this lab's namespace, killed by PID
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        deadline = time.monotonic() + 5
        while netns.run(["ip", "netns", "pids", ns]).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.05)
        if netns.run(["ip", "netns", "del", ns]).returncode == 0:
            removed.append(ns)
    for node in state.data["nodes"].values():
        for key in ("holder", "server"):
            if node.get(key):
                try:
                    os.kill(node[key], signal.SIGKILL)
                except ProcessLookupError:
                    pass
    shutil.rmtree(state.dir, ignore_errors=True)
    return removed


def _leftover_namespaces(name: str) -> list[str]:
    """This lab's namespaces by their prefix, for a state file that a crash cut short."""
    out = netns.run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith(name + "-")]


def status(tree_dir) -> dict:
    state = State(lab_name(Path(tree_dir)))
    if not state.file.exists():
        raise VpcgenError(f"no lab is up for {tree_dir}: run `vpcgen lab up {tree_dir}`")
    return state.data


# --- looking inside ---------------------------------------------------------------------------

def exec_in(data: dict, node: str, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run a shell command in a lab node: in its namespace, and for routers and core routers in
    their private mount namespace (their /etc and /run)."""
    info = data["nodes"][node]
    if info.get("holder"):
        cmd = ["nsenter", "-t", str(info["holder"]), "-m", "-n", "sh", "-c", command]
    else:
        cmd = ["ip", "netns", "exec", info["ns"], "sh", "-c", command]
    return netns.run(cmd, timeout=timeout)


PROBE = """
import socket, sys
host, port, payload, proto, source = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4], sys.argv[5]
bind = (source, 0) if source else None
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        if bind: s.bind(bind)
        s.sendto(payload, (host, port)); print(s.recv(200).decode().strip())
    elif proto == "icmp":
        import subprocess
        r = subprocess.run(["ping", "-c1", "-W1"] + (["-I", source] if source else []) + [host],
                           capture_output=True)
        print("ICMP-OK" if r.returncode == 0 else "FAILED no reply")
    else:
        s = socket.create_connection((host, port), timeout=1.0, source_address=bind); s.settimeout(1.0)
        s.sendall(payload.replace(b"\\\\n", b"\\n")); print(s.recv(300).decode().strip().splitlines()[-1])
except Exception as exc:
    print("FAILED " + type(exc).__name__)
"""


def probe(data: dict, node: str, host: str, port: int, proto: str = "tcp", payload: str = "hello",
          source: str = "") -> str:
    """What a test host or client sees when it connects: the answering host's name, or FAILED ..."""
    info = data["nodes"][node]
    r = netns.run(["ip", "netns", "exec", info["ns"], sys.executable, "-c", PROBE, host, str(port), payload, proto,
                   source], timeout=10)
    return (r.stdout.strip().splitlines() or ["FAILED no output"])[-1]


# --- stopping and starting a router (the failover rounds) -------------------------------------

def stop_router(data: dict, router: str) -> None:
    """As if the router died: every process in its namespace killed, every link down."""
    ns = data["nodes"][router]["ns"]
    for pid in netns.run(["ip", "netns", "pids", ns]).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    for line in _in(ns, "ip", "-o", "link", "show").stdout.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname != "lo":  # devices of the killed daemons (charon's ipsec0) may vanish meanwhile
            _in(ns, "ip", "link", "set", ifname, "down", check=False)


def stop_host(data: dict, host: str) -> None:
    """A test host's servers die (its port closes: health checks see a refused connection)."""
    try:
        os.kill(data["nodes"][host]["server"], signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_host(tree_dir, host: str) -> None:
    p = plan(Path(tree_dir))
    state = State(p.name)
    node = next(n for n in p.nodes if n.name == host)
    _start_host(state, node, state.data["nodes"][host]["ns"])


def start_router(tree_dir, router: str) -> None:
    """As after a reboot: links up with only the interface file's addresses, rules loaded (HA guard
    armed), daemons started on the tree's files."""
    p = plan(Path(tree_dir))
    state = State(p.name)
    node = next(n for n in p.nodes if n.name == router)
    ns = state.data["nodes"][router]["ns"]
    for link in node.links:
        _in(ns, "ip", "addr", "flush", "dev", link.ifname)
        _in(ns, "ip", "link", "set", link.ifname, "up")
        for address in link.addresses:
            _in(ns, "ip", "addr", "add", address, "dev", link.ifname)
    for route in node.routes:
        _in(ns, "ip", "route", "replace", *route.split())
    load_rules(ns, node.tree)
    shutil.rmtree(state.dir / "ovl" / router, ignore_errors=True)
    _start_router(p, state, node, ns)


# --- faults: vpcgen lab fault / heal ------------------------------------------------------------

# daemon processes by service name, as `lab fault kill ROUTER SERVICE` names them
SERVICE_PROCESSES = {"conntrackd": ("conntrackd",), "haproxy": ("haproxy",), "charon": ("charon",),
                     "keepalived": ("keepalived",), "frr": ("zebra", "staticd", "ospfd", "bfdd")}
FAULTS = {"sync-link": "VPC", "upstream": "ROUTER", "kill": "ROUTER SERVICE", "stop": "ROUTER", "start": "ROUTER"}


def _running(tree_dir) -> State:
    state = State(lab_name(Path(tree_dir)))
    if not state.file.exists():
        raise VpcgenError(f"no lab is up for {tree_dir}: run `vpcgen lab up {tree_dir}` first")
    return state


def _routers(data: dict) -> list[str]:
    return sorted(n for n, v in data["nodes"].items() if v["kind"] == "router")


def _router(data: dict, name: str) -> dict:
    if name not in _routers(data):
        raise VpcgenError(f"no router {name} in the lab (routers: {', '.join(_routers(data))})")
    return data["nodes"][name]


def _port(data: dict, router: str, which) -> list[str]:
    """The switch port of the router's link that ``which(ifname, addresses)`` picks."""
    ifaces, _ = router_interfaces(staged_root(Path(data["tree"])) / router)
    for ifname, addresses in sorted(ifaces.items()):
        if which(ifname, addresses):
            return data["ports"][f"{router}/{ifname}"]
    raise VpcgenError(f"router {router} has no such link")


def fault(tree_dir, kind: str, args: list[str]) -> str:
    """Inject one fault into the running lab; `heal` undoes every fault injected since."""
    state = _running(tree_dir)
    data = state.data
    if kind not in FAULTS:
        raise VpcgenError(f"unknown fault {kind} (faults: {', '.join(f'{k} {v}' for k, v in FAULTS.items())})")
    if len(args) != len(FAULTS[kind].split()):
        raise VpcgenError(f"lab fault {kind} takes {FAULTS[kind]}")
    sw = ns_of(data["name"], "sw")
    record: dict = {"kind": kind, "args": args}
    if kind == "sync-link":
        pair = [r for r in _routers(data) if data["nodes"][r]["vpc"] == args[0]]
        if len(pair) != 2:
            raise VpcgenError(f"{args[0]} is not a redundant VPC of the lab")
        # as when the sync VLAN is not trunked to the second router's host: its links all stay up
        record["port"] = _port(data, pair[1], lambda i, a: any(x.startswith("169.254.255.") for x in a))
        _in(sw, "ip", "link", "set", record["port"][0], "nomaster")
        done = f"sync link of {args[0]} cut at {pair[1]}'s port (links stay up)"
    elif kind == "upstream":
        _router(data, args[0])
        record["port"] = _port(data, args[0], lambda i, a: i.split(".")[0] == "eth1")
        _in(sw, "ip", "link", "set", record["port"][0], "nomaster")
        done = f"{args[0]}'s uplink cut in the switch (its link stays up)"
    elif kind == "kill":
        ns = _router(data, args[0])["ns"]
        names = SERVICE_PROCESSES.get(args[1])
        if names is None:
            raise VpcgenError(f"unknown service {args[1]} (services: {', '.join(SERVICE_PROCESSES)})")
        pids = [int(p) for p in netns.run(["ip", "netns", "pids", ns]).stdout.split()
                if _comm(int(p)) in names]
        if not pids:
            raise VpcgenError(f"{args[1]} does not run on {args[0]}")
        for pid in pids:
            _kill(pid)
        done = f"{args[1]} killed on {args[0]} ({len(pids)} process{'es' if len(pids) > 1 else ''})"
    elif kind == "stop":
        _router(data, args[0])
        stop_router(data, args[0])
        done = f"{args[0]} stopped (every process killed, links down)"
    else:
        _router(data, args[0])
        start_router(tree_dir, args[0])
        state = State(data["name"])  # start_router saved its own changes
        data = state.data
        done = f"{args[0]} started"
    data.setdefault("faults", []).append(record)
    state.save()
    return done


def heal(tree_dir) -> list[str]:
    """Undo every fault: ports back into their bridges, stopped routers and routers that lost a
    daemon started again from their trees."""
    state = _running(tree_dir)
    data = state.data
    sw = ns_of(data["name"], "sw")
    healed, restart = [], set()
    for record in reversed(data.get("faults", [])):
        if "port" in record:
            _in(sw, "ip", "link", "set", record["port"][0], "master", record["port"][1])
            healed.append(f"{record['kind']} {' '.join(record['args'])}: port back in its bridge")
        elif record["kind"] in ("kill", "stop"):
            restart.add(record["args"][0])
    for router in sorted(restart):
        stop_router(data, router)
        start_router(tree_dir, router)
        healed.append(f"{router}: started again")
    state = State(data["name"])
    state.data["faults"] = []
    state.save()
    return healed


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
