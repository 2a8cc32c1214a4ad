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
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import VpcgenError
from ..ops import check, netns
from ..tree import _NAME, DEPLOY_STATE, DNSMASQ_LEASES, GENERATED, VRRP_STATE, TreeError, on_router, read_routers, read_site_json
from . import ifreload, mgmt
from .plan import (CORE_LOOPBACK, UPSTREAM_ADDRESS, UPSTREAM_NAME, Client, Core, DhcpClient, Host, Hypervisor, Node,
                   Peer, Plan, Router, build as build_plan, tier_ifname)

RUN_ROOT = Path("/run/vpcgen-lab")
SWITCH_MTU = 9000  # the largest tier MTU a site may set


def lab_name(tree_dir: Path) -> str:
    return "vl" + hashlib.sha256(str(Path(tree_dir).resolve()).encode()).hexdigest()[:6]


def results_path(tree_dir: Path) -> Path:
    """Where `lab test` writes its results unless told: next to the tree (never the current folder)."""
    tree_dir = Path(tree_dir).resolve()
    return tree_dir.parent / f"{tree_dir.name}.lab-results.json"


def staged_root(tree_dir: Path) -> Path:
    """The lab's verified copy of a built site: the only place the lab reads a tree from."""
    return RUN_ROOT / lab_name(tree_dir) / "trees"


def plan(tree_dir: Path, only_vpc: str | None = None) -> Plan:
    """What to build for a lab whose verified copy has been staged (``up`` does that): from its
    site.json alone."""
    tree_dir = Path(tree_dir)
    root = staged_root(tree_dir)
    site = read_site_json(root)
    if only_vpc and only_vpc not in site["vpcs"]:
        raise VpcgenError(f"no VPC {only_vpc} in {tree_dir} (VPCs: {', '.join(site['vpcs'])})")
    return build_plan(site, lab_name(tree_dir), tree_dir, root, only_vpc)


def router_config(node: Router) -> tuple[dict[str, list[str]], list[str]]:
    """A router's addresses and routes from its own interfaces file (as ifupdown applies them), on
    the links site.json says it has: a link the file and site.json disagree on is refused."""
    ifaces, routes = netns.parse_interfaces(node.tree)
    links = {link.ifname for link in node.links}
    for ifname, addresses in ifaces.items():
        parent_only = not addresses and any(n.startswith(ifname + ".") for n in links)
        if ifname not in links and not parent_only:
            raise VpcgenError(f"{node.tree / GENERATED['interfaces']}: interface {ifname} is not one of "
                              f"{node.name}'s interfaces in site.json ({', '.join(sorted(links))})")
    return {ifname: ifaces.get(ifname, []) for ifname in sorted(links)}, routes


_PRE_UP = re.compile(r"^\s*pre-up\s+(.+)$")


def overlay_commands(node: Router, ifname: str) -> list[list[str]]:
    """The `pre-up` commands of a router's interfaces file that build its VXLAN device ``ifname``
    (``ip link add IFNAME type vxlan …``, ``ip link set IFNAME …``, ``bridge fdb … dev IFNAME …``),
    run by the lab as ifupdown would, without a shell. A device site.json names but no line builds
    is refused: the router would have no such interface."""
    path = node.tree / GENERATED["interfaces"]
    out, current = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.split()[:1] == ["iface"] and len(line.split()) > 1:
            current = line.split()[1]
        m = _PRE_UP.match(line)
        if not m or current is None:
            continue
        words = shlex.split(m.group(1).replace("${IFACE}", current).replace("$IFACE", current))
        if words[:4] == ["ip", "link", "add", ifname] and words[4:6] == ["type", "vxlan"] \
                or words[:3] == ["ip", "link", "set"] and ifname in words[3:5] \
                or words[:2] == ["bridge", "fdb"] and ["dev", ifname] in [words[i:i + 2] for i in range(len(words))]:
            out.append(words)
    if not any(w[:3] == ["ip", "link", "add"] for w in out):
        raise VpcgenError(f"{path}: no pre-up line builds {ifname} (ip link add {ifname} type vxlan …), "
                          f"which site.json gives {node.name}")
    return out


def router_mtus(node: Router) -> dict[str, int]:
    """The MTUs a router's interfaces file sets, on the links it has (a parent such as eth2 is no
    device of the lab: its VLAN sub-interfaces are veths of their own)."""
    links = {link.ifname for link in node.links}
    return {ifname: mtu for ifname, mtu in netns.interface_mtus(node.tree).items() if ifname in links}


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


def stage(tree_dir: Path, routers: dict, lab_tree: Path | None = None) -> None:
    """Copy the verified routers and site.json to the lab's run folder, refusing what the lab must
    not run: a haproxy config that runs code, a sysctl that is not per namespace, a name in
    site.json that is no name (names become namespace and file names), a router without a tree."""
    root = staged_root(lab_tree or tree_dir)  # another tree into a running lab: `add_router`
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


def ready_timeout(site: dict) -> float:
    """How long `up` may wait for the lab to be usable, from the site's own timers: VRRP adverts,
    the slowest load balancer's health checks rising, the OSPF dead interval (the core's election)."""
    vrrp = max([3 * v["vrrp"]["advert_interval_ms"] / 1000 + 2 for v in site["vpcs"].values() if v["vrrp"]] or [0])
    lbs = max([(lb["health_check"]["rise"] + 1) * lb["health_check"]["interval_ms"] / 1000 + 2
               for v in site["vpcs"].values() for lb in v["load_balancers"].values()] or [0])
    ospf = max([2 * z["ospf"]["dead_interval_s"] + 10 for z in site["zones"].values() if z.get("ospf")] or [0])
    return max(20.0, vrrp + lbs, ospf)


class _Waiting:
    """Progress while `up` waits: a line when it starts waiting for something, then every 5 s."""

    def __init__(self, progress):
        self.progress, self.start, self.last = progress, time.monotonic(), 0.0

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        if what != getattr(self, "what", None) or now - self.last >= 5:
            self.progress(f"waiting for {what} ({now - self.start:.0f} s)")
            self.what, self.last = what, now


def _wait_ready(p: Plan, data: dict, progress) -> None:
    """Up means usable: one master per pair, every load balancer answering (haproxy's health checks
    must rise first), every routed router adjacent to the core. Bounded by the site's own timers:
    what is not ready by then, `lab test` will report."""
    deadline = time.monotonic() + ready_timeout(p.site)
    waiting = _Waiting(progress)
    for vpc_name, vpc in p.vpcs().items():
        routers = [r for r in vpc["routers"] if r in data["nodes"]]
        if vpc["redundant"]:
            while time.monotonic() < deadline:
                states = [exec_in(data, r, f"cat {VRRP_STATE} 2>/dev/null").stdout.strip() for r in routers]
                if states.count("MASTER") == 1:
                    break
                waiting(f"one VRRP master in {vpc_name}")
                time.sleep(0.2)
        # hosts that take their address by DHCP (load balancers' members among them) need their lease
        for host in [h for h in p.hosts(vpc_name) if h.dhcp]:
            while time.monotonic() < deadline and lease(data, host.name) is None:
                waiting(f"{host.name}'s DHCP lease")
                time.sleep(0.2)
        inet = f"inet-{vpc['zone']}"
        for lb_name, lb in sorted(vpc["load_balancers"].items()) if inet in data["nodes"] else ():
            address = vpc["public_ips"][lb["public_ip"]]
            payload = "GET / HTTP/1.0\\n\\n" if lb["protocol"] == "http" else "hello"
            members = {p.host_at(vpc_name, m).name for m in lb["members"]}
            seen: set[str] = set()
            while time.monotonic() < deadline and not members <= seen:  # every member is up in haproxy
                seen.add(probe(data, inet, address, lb["public_port"], "tcp", payload))
                if lb["stickiness"] == "source" and seen & members:
                    break  # one client keeps landing on one member: one answer is enough
                if not members <= seen:
                    waiting(f"load balancer {lb_name}'s members ({len(seen & members)}/{len(members)} answering)")
                    time.sleep(0.2)
    # routed VPCs: every router adjacent to the core (the core's DR election waits a dead interval)
    for router in p.of(Router):
        if p.site["vpcs"][router.vpc]["kind"] != "routed":
            continue
        while time.monotonic() < deadline and "Full/" not in exec_in(
                data, router.name, "vtysh -c 'show ip ospf neighbor' 2>/dev/null").stdout:
            waiting(f"{router.name}'s OSPF adjacency with the core")
            time.sleep(0.5)
    progress(f"lab {p.name} ready ({time.monotonic() - waiting.start:.0f} s of waiting)")


def _link(state: State, p: Plan, node: Node, ns: str, link, peer: str, addresses, mtus: dict) -> None:
    """One of the node's links: a veth whose far side ``peer`` sits in the segment's bridge (the
    switch's, or the hypervisor's that hosts the segment); a router's VXLAN device is built as its
    own interfaces file builds it."""
    if link.over:
        for command in overlay_commands(node, link.ifname):
            _in(ns, *command)
    else:
        hv, bridge = p.hosted.get(link.segment) or ("sw", state.data["bridges"][link.segment])
        where = ns_of(p.name, hv)
        # the far side takes any frame (the tier's MTU is the ends' business: jumbo tiers)
        _ip("link", "add", link.ifname, "netns", ns, "type", "veth", "peer", "name", peer, "netns", where,
            "mtu", str(SWITCH_MTU))
        _in(where, "ip", "link", "set", peer, "master", bridge)
        state.data["ports"][f"{node.name}/{link.ifname}"] = [peer, bridge]
        _in(where, "ip", "link", "set", peer, "up")
    if getattr(node, "mac", ""):
        _in(ns, "ip", "link", "set", link.ifname, "address", node.mac)
    if link.ifname in mtus:
        _in(ns, "ip", "link", "set", link.ifname, "mtu", str(mtus[link.ifname]))
    _in(ns, "ip", "link", "set", link.ifname, "up")
    for address in addresses:
        _in(ns, "ip", "addr", "add", address, "dev", link.ifname)


def _build(p: Plan, state: State, progress) -> None:
    sw = ns_of(p.name, "sw")
    _ip("netns", "add", sw)
    state.add_namespace(sw)
    _in(sw, "ip", "link", "set", "lo", "up")
    bridges = {}
    switched = set(p.segments) | {link.segment for n in p.nodes for link in n.links if link.segment}
    for i, segment in enumerate(sorted(switched - set(p.hosted))):
        bridges[segment] = f"b{i}"
        # no snooping: VXLAN's multicast groups flood without a querier, as on a plain switch
        _in(sw, "ip", "link", "add", f"b{i}", "type", "bridge", "mcast_snooping", "0")
        _in(sw, "ip", "link", "set", f"b{i}", "up")
    state.data["bridges"] = bridges
    state.data["ports"] = {}  # "node/ifname" -> its port in the switch (faults detach it)
    port = 0
    for node in p.nodes:
        ns = ns_of(p.name, node.name)
        _ip("netns", "add", ns)
        state.add_namespace(ns)
        _in(ns, "ip", "link", "set", "lo", "up")
        # a router's addresses come from its own interfaces file; everything else's from the plan
        addresses = router_config(node)[0] if isinstance(node, Router) else {l.ifname: l.addresses for l in node.links}
        mtus = router_mtus(node) if isinstance(node, Router) else {}
        if isinstance(node, DhcpClient) or (isinstance(node, Host) and node.dhcp):
            addresses = {link.ifname: () for link in node.links}  # its DHCP client configures it
        elif isinstance(node, Host) and node.mtu != 1500:
            mtus = {"eth0": node.mtu}  # a static host set up as the tier's MTU says
        elif isinstance(node, Hypervisor):
            mtus = {"eth0": node.mtu}
        for link in node.links:
            port += 1
            _link(state, p, node, ns, link, f"p{port}", addresses[link.ifname], mtus)
        for address in node.loopback:
            _in(ns, "ip", "addr", "add", address, "dev", "lo")
        if isinstance(node, Hypervisor):  # its bridges, before the hosts are plugged in
            for command in node.commands():
                _in(ns, *command)
        state.data["nodes"][node.name] = {"ns": ns, "kind": node.kind, "vpc": node.vpc}
        state.save()
    for node in p.nodes:
        ns = ns_of(p.name, node.name)
        if isinstance(node, Router):
            progress(f"{node.name}: sysctls, rules, daemons")
            _sysctls(ns, node.tree)
        else:
            _in(ns, "sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(node.forwards)}")
        if isinstance(node, Host) and node.dhcp:
            continue  # its routes come with its lease
        for route in router_config(node)[1] if isinstance(node, Router) else node.routes:
            _in(ns, "ip", "route", "replace", *route.split())
    for node in p.nodes:
        ns = ns_of(p.name, node.name)
        if isinstance(node, Router):
            load_rules(ns, node, p.site)
            _start_router(p, state, node, ns)
        elif isinstance(node, Core):
            _start_core(p, state, node, ns)
        elif isinstance(node, Peer):
            _start_peer(p, state, node, ns)
        elif isinstance(node, Client):
            _start_client(p, state, node, ns)
        if node.resolver:
            _start_resolver(state, node, ns)
        if node.tcp or node.udp:
            _start_host(state, node, ns)
    for node in p.of(Host):  # once the routers' dnsmasq runs (a pair's answers once it has a master)
        if node.dhcp:
            start_dhcp(state, node)
    state.save()


LIBIPSEC_DEVICE = "ipsec0"


def libipsec_rules(site: dict, router: Router) -> list[str]:
    """The one platform adaptation of a router's rules: kernel-libipsec hands tunnel traffic to a TUN
    device instead of the uplink, so each tier's way out to the internet gets its ipsec0 twin
    (appended after everything else; the tier's egress list still decides first)."""
    vpc = site["vpcs"][router.vpc]
    if not (vpc["vpn_peers"] or vpc.get("remote_access")):
        return []
    return [f"FORWARD -i {tier_ifname(vpc, router.name, name)} -s {tier['cidr']} -o {LIBIPSEC_DEVICE} -j ACCEPT"
            for name, tier in sorted(vpc["tiers"].items())]


def load_rules(ns: str, router: Router, site: dict) -> None:
    """Load a router's rules (the tree's own file), plus the libipsec twins."""
    r = netns.run(["ip", "netns", "exec", ns, "iptables-restore", "--wait=10"],
                  input=(router.tree / GENERATED["iptables"]).read_text())
    if r.returncode != 0:
        raise VpcgenError(f"in {ns}: iptables-restore: {r.stderr.strip()}")
    for rule in libipsec_rules(site, router):
        _in(ns, "iptables", "-w", "-A", *rule.split(), "-m", "comment", "--comment", mgmt.LAB_ONLY)


def restore_nat(ns: str, router: Router) -> None:
    """The router's nat table from its own file again (after a round flushed its forwarding)."""
    r = netns.run(["ip", "netns", "exec", ns, "iptables-restore", "--wait=10", "-T", "nat"],
                  input=(router.tree / GENERATED["iptables"]).read_text())
    if r.returncode != 0:
        raise VpcgenError(f"in {ns}: iptables-restore --table nat: {r.stderr.strip()}")


# the sysctls a network namespace has of its own (PLATFORM.md; an interface's neighbour settings
# too): anything else (vm.*, kernel.*, net.core.*) would change the machine itself. An interface name's dots are written as slashes.
_IFACE_KEY = r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*"
NAMESPACED_SYSCTL = re.compile(rf"^(net\.ipv4\.(?:ip_forward|ip_nonlocal_bind|tcp_syncookies"
                               rf"|(?:conf|neigh)\.{_IFACE_KEY}\.\w+)|net\.ipv6\.conf\.{_IFACE_KEY}\.\w+)$")


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
                            "(net.ipv4.ip_forward, net.ipv4.conf.*, net.ipv4.neigh.*, net.ipv4.ip_nonlocal_bind, "
                            "net.ipv4.tcp_syncookies, net.ipv6.conf.*) with a number: refusing the tree")
        out.append((key, value))
    return out


def _sysctls(ns: str, tree: Path) -> None:
    # checked when the tree was staged; checked again, as it is what is written
    for key, value in sysctls(tree / GENERATED["sysctl"], tree / GENERATED["sysctl"]):
        _in(ns, "sysctl", "-q", "-w", f"{key}={value}")


def _holder(state: State, node_name: str, ns: str, etc: Path, script: str, env: dict | None = None,
            binds: dict[str, Path] | None = None) -> int:
    """A process that keeps ``ns`` with a private /etc overlay and /run, and ``binds`` (path -> the
    lab's folder laid over it), running ``script``."""
    scratch = state.dir / "ovl" / node_name
    scratch.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    setup = (
        "set -e; "
        f"mkdir -p {q(str(scratch))}/upper {q(str(scratch))}/work; "
        f"mount -t overlay overlay -o lowerdir={q(str(etc))}:/etc,upperdir={q(str(scratch))}/upper,"
        f"workdir={q(str(scratch))}/work /etc; "
        # before /run is replaced: the lab's folders are under /run
        + "".join(f"mount --bind {q(str(source))} {q(target)}; " for target, source in sorted((binds or {}).items()))
        + "mount -t tmpfs vpcgen-lab-run /run; mkdir -p /run/lock /run/haproxy /run/vpcgen /run/frr /run/sshd; "
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


def _start_router(p: Plan, state: State, node: Node, ns: str, daemons: bool = True) -> None:
    """The router's holder (its /etc overlay, /run and disk) and, as at boot, its daemons; without
    ``daemons``, a router that waits for its first deploy to start them (`add_router`)."""
    etc = node.tree / "etc"
    # the interfaces file as applied: what the lab's networking reload compares a deployed one with
    parts = [f"mkdir -p {ifreload.APPLIED}/{os.path.dirname(GENERATED['interfaces'])} && "
             f"cp /{GENERATED['interfaces']} {ifreload.APPLIED}/{GENERATED['interfaces']}"]
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
    # the deploy state on a folder of the router's own (its disk), never the machine's own
    binds = {f"/{DEPLOY_STATE}": state.dir / "deploy" / node.name}
    binds[f"/{DEPLOY_STATE}"].mkdir(parents=True, exist_ok=True)
    os.makedirs(f"/{DEPLOY_STATE}", exist_ok=True)  # the mount point only
    if (node.tree / GENERATED["dnsmasq"]).exists():
        # leases on a folder of the router's own that outlives a restart (as a disk does), never the
        # machine's own lease folder
        binds[os.path.dirname(DNSMASQ_LEASES)] = state.dir / "leases" / node.name
        binds[os.path.dirname(DNSMASQ_LEASES)].mkdir(parents=True, exist_ok=True)
        parts.append(DNSMASQ_START)
    if not daemons:
        parts = parts[:1]
    # STRONGSWAN_CONF reaches charon, swanctl and the notify script's swanctl calls alike
    _holder(state, node.name, ns, etc, "; ".join(parts), env={"STRONGSWAN_CONF": LAB_STRONGSWAN_PATH},
            binds=binds)


# dnsmasq as Debian's unit starts it: the helper's config check, then the helper's exec (which reads
# /etc/default/dnsmasq and runs `dnsmasq -7 /etc/dnsmasq.d,... -u dnsmasq`); the lab only adds a log
# of the DHCP exchanges (DNSMASQ_OPTS, as /etc/default/dnsmasq may set it) for the rounds to read
DNSMASQ_LOG = "/run/dnsmasq.log"
DNSMASQ_START = ("/usr/share/dnsmasq/systemd-helper checkconfig >/run/dnsmasq-check.log 2>&1 && "
                 f"(DNSMASQ_OPTS='--log-facility={DNSMASQ_LOG} --log-dhcp' /usr/share/dnsmasq/systemd-helper exec)")
# the lab's service commands for dnsmasq (no systemd in a namespace), for deploy's overrides: the tree's
# reload is `systemctl restart dnsmasq` (a new configuration needs a restart); the leases stay in the
# router's lease folder. notify.sh needs none: dnsmasq answers on whatever gateway the router holds.
DNSMASQ_PID = "/run/dnsmasq/dnsmasq.pid"  # the helper's -x
DNSMASQ_RESTART = (f"p=$(cat {DNSMASQ_PID} 2>/dev/null || true); [ -n \"$p\" ] && kill $p; i=0; "
                   "while [ -n \"$p\" ] && kill -0 $p 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; "
                   + DNSMASQ_START)
DNSMASQ_HEALTH = f"kill -0 $(cat {DNSMASQ_PID})"


# the daemons the node's etc/frr/daemons enables (a router's bfdd among them), then its frr.conf once
# every one of them answers: `vtysh -b` silently skips a daemon that does not (its lines are lost and
# exit is 0), and a loaded machine starts them slowly
_FRR_START = ("/usr/lib/frr/zebra -d -A 127.0.0.1 -s 90000000 -u frr -g frr; "
              "/usr/lib/frr/staticd -d -A 127.0.0.1 -u frr -g frr; want='staticd zebra'; "
              f"for d in ospfd bfdd; do grep -q \"^$d=yes\" {on_router('frr-daemons')} && want=\"$want $d\" && "
              "/usr/lib/frr/$d -d -A 127.0.0.1 -u frr -g frr; done; want=$(echo $want | tr ' ' '\\n' | sort | xargs); "
              "i=0; until [ \"$(vtysh -c 'show daemons' 2>/dev/null | tr ' ' '\\n' | sort | xargs)\" = \"$want\" ] "
              "|| [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done; "
              "vtysh -b >/run/vtysh.log 2>&1; vtysh -c 'show daemons' >>/run/vtysh.log 2>&1")


def ospf_key(router: Router) -> str:
    """The zone's OSPF key, read from a router's secret file the way a secret is read: the one token
    after ``md5`` on the digest-key line (nothing else of the file is used)."""
    for line in (router.tree / GENERATED["frr"]).read_text().splitlines():
        words = line.split()
        if words[:3] == ["ip", "ospf", "message-digest-key"] and len(words) == 6 and words[4] == "md5":
            return words[5]
    raise VpcgenError(f"{router.tree / GENERATED['frr']}: site.json says the zone's OSPF is authenticated, "
                      "but the router's FRR file holds no key")


def _start_core(p: Plan, state: State, node: Core, ns: str) -> None:
    """The zone's OSPF core router, from site.json's zone timers: FRR in the backbone, DR of the
    transit link, default originator."""
    ospf = node.ospf
    auth = ""
    if ospf.authentication:
        router = next(r for r in p.of(Router) if r.zone == node.zone and p.site["vpcs"][r.vpc]["kind"] == "routed")
        auth = f" ip ospf authentication message-digest\n ip ospf message-digest-key 1 md5 {ospf_key(router)}\n"
    etc = state.dir / "etc" / node.name
    (etc / "frr").mkdir(parents=True, exist_ok=True)
    # what an operator's core needs (the README says so): BFD on the transit link, and new routes
    # taken at once (an SPF hold-down of at most 200 ms, no minimum LSA arrival interval)
    (etc / "frr/frr.conf").write_text(
        f"frr defaults traditional\nhostname {node.name}\nservice integrated-vtysh-config\n!\n"
        "bfd\n profile core\n  transmit-interval 100\n  receive-interval 100\n  detect-multiplier 3\n exit\nexit\n!\n"
        f"interface eth0\n ip ospf bfd\n ip ospf bfd profile core\n"
        f" ip ospf hello-interval {ospf.hello_s}\n ip ospf dead-interval {ospf.dead_s}\n ip ospf priority 100\n"
        f"{auth}exit\n!\nrouter ospf\n ospf router-id {node.address}\n timers throttle spf 0 50 200\n"
        " timers lsa min-arrival 0\n"
        f" network {ospf.transit} area 0\n"
        f" network {CORE_LOOPBACK} area 0\n default-information originate always\nexit\n!\n")
    (etc / "frr/frr.conf").chmod(0o640)
    (etc / "frr/daemons").write_text("zebra=yes\nstaticd=yes\nospfd=yes\nbfdd=yes\nvtysh_enable=yes\n")
    _holder(state, node.name, ns, etc, _FRR_START)


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


LAB_SECRETS = "lab-secrets.conf"  # the router's secrets file, included as it is (charon picks by identity)


def _router_of(p: Plan, vpc: str) -> Router:
    return next(n for n in p.of(Router) if n.vpc == vpc)


def _start_peer(p: Plan, state: State, node: Peer, ns: str) -> None:
    """The far end of a site-to-site VPN, from site.json's tunnel: its networks are the router's
    remote ones and the other way round. The PSK is the router's, from its secret file."""
    t = node.tunnel
    router = _router_of(p, node.vpc)
    _start_charon(state, node, ns, {LAB_SECRETS: router.tree / GENERATED["swanctl-secrets"]}, (
        f"connections {{\n lab {{\n  version = {t.version}\n  local_addrs = {t.peer_address}\n"
        f"  remote_addrs = {t.router_address}\n  proposals = {', '.join(t.ike_proposals)}\n"
        f"  rekey_time = {t.ike_lifetime_s}s\n"
        f"  local {{\n   auth = psk\n   id = {t.peer_address}\n  }}\n"
        f"  remote {{\n   auth = psk\n   id = {t.router_address}\n  }}\n"
        f"  children {{\n   lab {{\n    local_ts = {', '.join(t.peer_cidrs)}\n"
        f"    remote_ts = {', '.join(t.local_cidrs)}\n    esp_proposals = {', '.join(t.esp_proposals)}\n"
        f"    life_time = {t.esp_lifetime_s}s\n    start_action = trap\n   }}\n  }}\n }}\n}}\n"
        f"include {LAB_SECRETS}\n"))


def _start_client(p: Plan, state: State, node: Client, ns: str) -> None:
    """A remote-access VPN user: IKEv2, EAP-MSCHAPv2 as the first user (the password from the
    router's secret file), trusting the router's certificate, asking for a pool address."""
    router = _router_of(p, node.vpc)
    _start_charon(state, node, ns, {LAB_SECRETS: router.tree / GENERATED["swanctl-secrets"],
                                    "x509ca/router.pem": router.tree / GENERATED["ra-cert"]}, (
        f"connections {{\n ra {{\n  version = 2\n  remote_addrs = {node.server}\n  vips = 0.0.0.0\n"
        f"  local {{\n   auth = eap-mschapv2\n   eap_id = {node.user}\n  }}\n"
        f"  remote {{\n   auth = pubkey\n   id = %any\n  }}\n"
        f"  children {{\n   ra {{\n    remote_ts = {', '.join(node.local_cidrs)}\n    start_action = start\n"
        f"   }}\n  }}\n }}\n}}\ninclude {LAB_SECRETS}\n"))


def _start_host(state: State, node: Node, ns: str) -> None:
    args = [sys.executable, "-m", "vpcgen.lab.host", node.name]
    if node.tcp:
        args += ["--tcp", ",".join(map(str, node.tcp))]
    if node.udp:
        args += ["--udp", ",".join(map(str, node.udp))]
    if node.whoami:
        args += ["--whoami", str(node.whoami)]
    log = open(state.dir / f"{node.name}.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=log, stderr=log, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    state.data["nodes"][node.name]["server"] = proc.pid
    state.save()


# udhcpc's event script: configure the interface as a real host does, and record what the server said
DHCP_HOOK = """#!/bin/sh
{ echo "event=$1"; env | grep -E '^(ip|mask|router|dns|domain|mtu|serverid|lease)='; } > "$LEASE_OUT.$1.tmp"
mv "$LEASE_OUT.$1.tmp" "$LEASE_OUT.$1"
case "$1" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface"  # a renewal keeps connections alive
               for a in $(ip -4 -o addr show dev "$interface" | awk '{print $4}'); do
                   [ "$a" = "$ip/$mask" ] || ip addr del "$a" dev "$interface"
               done
               [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
               [ -n "$router" ] && ip route replace default via "$router" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
"""


def udhcpc_command(hook: Path, out: Path, ifname: str = "eth0") -> list[str]:
    """busybox's DHCP client asking for the MTU and domain too; a discover every second until a
    server answers (a pair answers only once it has a master)."""
    return ["env", f"LEASE_OUT={out}", "udhcpc", "-i", ifname, "-s", str(hook), "-O", "mtu", "-O", "domain",
            "-t", "3", "-T", "1", "-A", "1"]


def dhcp_files(state_dir: Path, node: str) -> tuple[Path, Path]:
    """The hook script and the prefix of a node's lease records (``PREFIX.bound``, ``.renew``, ``.nak``)."""
    hook = state_dir / "udhcpc-hook.sh"
    if not hook.exists():
        hook.write_text(DHCP_HOOK)
        hook.chmod(0o755)
    (state_dir / "dhcp").mkdir(exist_ok=True)
    return hook, state_dir / "dhcp" / node


def start_dhcp(state: State, node: Host) -> None:
    """A host's DHCP client, running as on a real host (it renews its lease, `lab test` asks it to)."""
    hook, out = dhcp_files(state.dir, node.name)
    log = open(state.dir / f"{node.name}.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", state.data["nodes"][node.name]["ns"],
                             *udhcpc_command(hook, out), "-f"], stdout=log, stderr=log, start_new_session=True)
    state.data["nodes"][node.name]["dhcp"] = proc.pid
    state.save()


def lease(data: dict, node: str, event: str = "bound") -> dict | None:
    """What a node's DHCP client last heard with ``event`` (bound, renew, nak), or None."""
    path = RUN_ROOT / data["name"] / "dhcp" / f"{node}.{event}"
    try:
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except FileNotFoundError:
        return None


def _start_resolver(state: State, node: Node, ns: str) -> None:
    """The zone's upstream DNS servers: a dnsmasq on their addresses that knows one name."""
    log = open(state.dir / f"{node.name}.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                             "--no-resolv", "--no-hosts", "--bind-interfaces", "--pid-file=", "--leasefile-ro",
                             *(f"--listen-address={a}" for a in node.resolver),
                             f"--address=/{UPSTREAM_NAME}/{UPSTREAM_ADDRESS}"],
                            stdout=log, stderr=log, start_new_session=True)
    state.data["nodes"][node.name]["resolver"] = proc.pid
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
        for key in ("holder", "server", "dhcp", "resolver"):
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
    node = p.node(host)
    _start_host(state, node, state.data["nodes"][host]["ns"])


def start_router(tree_dir, router: str) -> None:
    """As after a reboot: links up with only the interface file's addresses, rules loaded (HA guard
    armed), daemons started on the tree's files."""
    p = plan(Path(tree_dir))
    state = State(p.name)
    node = p.node(router)
    ns = state.data["nodes"][router]["ns"]
    addresses, routes = router_config(node)
    mtus = router_mtus(node)
    _flush_daemon_routes(ns)
    for link in node.links:
        if link.over:  # gone with the reboot: built again by the file's pre-up lines
            _in(ns, "ip", "link", "del", link.ifname, check=False)
            for command in overlay_commands(node, link.ifname):
                _in(ns, *command)
        _in(ns, "ip", "addr", "flush", "dev", link.ifname)
        if link.ifname in mtus:
            _in(ns, "ip", "link", "set", link.ifname, "mtu", str(mtus[link.ifname]))
        _in(ns, "ip", "link", "set", link.ifname, "up")
        for address in addresses[link.ifname]:
            _in(ns, "ip", "addr", "add", address, "dev", link.ifname)
    for route in routes:
        _in(ns, "ip", "route", "replace", *route.split())
    if any(link.over for link in node.links):
        _sysctls(ns, node.tree)  # a rebuilt VXLAN device starts with the defaults: sysctl.d applies again
    load_rules(ns, node, p.site)
    # the overlay's upper folder and the deploy state are the router's disk: a deployed release
    # outlives the restart, as it outlives a real router's reboot
    _start_router(p, state, node, ns)
    if state.data.get("mgmt"):
        mgmt.restart(p, State(p.name), node)


def _flush_daemon_routes(ns: str) -> None:
    """A reboot starts without the routes the dead router's daemons had installed (keepalived's
    virtual routes, FRR's): left in the namespace, a backup would announce its stale blackhole."""
    protos = set()
    for line in _in(ns, "ip", "-o", "route", "show", "table", "main").stdout.splitlines():
        words = line.split()
        protos.add(words[words.index("proto") + 1] if "proto" in words else "boot")
    for proto in sorted(protos - {"kernel", "boot"}):  # connected routes, and the lab's and the file's own
        _in(ns, "ip", "route", "flush", "table", "main", "proto", proto)


# --- a router added to a running lab (a single router's VPC converted to a pair) ---------------

def add_router(tree_dir, new_tree, router: str) -> None:
    """Start ``router`` of the rebuilt site ``new_tree`` in the running lab as a router racked and
    booted with its links, addresses and rules, whose daemons its first deploy starts. From now on
    the lab runs the rebuilt site's files (verified and staged again), and the routers it runs get
    the links the rebuilt site adds to them (a pair's sync VLAN), without addresses: their deploy's
    networking reload gives them those."""
    tree_dir, new_tree = Path(tree_dir), Path(new_tree)
    state = _running(tree_dir)
    if router in state.data["nodes"]:
        raise VpcgenError(f"{router} runs in the lab already")
    stage(new_tree, read_routers(new_tree), lab_tree=tree_dir)
    p = plan(tree_dir)
    node = p.node(router)
    if not isinstance(node, Router):
        raise VpcgenError(f"{new_tree} has no router {router}")
    sw, bridges = ns_of(p.name, "sw"), state.data["bridges"]
    for segment in sorted({link.segment for n in p.nodes for link in n.links if link.segment}
                          - set(bridges) - set(p.hosted)):
        bridges[segment] = f"b{len(bridges)}"
        _in(sw, "ip", "link", "add", bridges[segment], "type", "bridge", "mcast_snooping", "0")
        _in(sw, "ip", "link", "set", bridges[segment], "up")
    ns = ns_of(p.name, router)
    _ip("netns", "add", ns)
    state.add_namespace(ns)
    _in(ns, "ip", "link", "set", "lo", "up")
    state.data["nodes"][router] = {"ns": ns, "kind": node.kind, "vpc": node.vpc}
    port = 1 + max(int(peer[1:]) for peer, _ in state.data["ports"].values())
    for other in (n for n in p.of(Router) if n.name in state.data["nodes"]):
        addresses = router_config(other)[0] if other is node else {}
        for link in other.links:
            if f"{other.name}/{link.ifname}" not in state.data["ports"] and (other is node or not link.over):
                _link(state, p, other, state.data["nodes"][other.name]["ns"], link, f"p{port}",
                      addresses.get(link.ifname, []), router_mtus(other))
                port += 1
    state.save()
    _sysctls(ns, node.tree)
    for route in router_config(node)[1]:
        _in(ns, "ip", "route", "replace", *route.split())
    load_rules(ns, node, p.site)
    _start_router(p, state, node, ns, daemons=False)
    mgmt.add(p, State(p.name), node)


# --- faults: vpcgen lab fault / heal ------------------------------------------------------------

# daemon processes by service name, as `lab fault kill ROUTER SERVICE` names them
SERVICE_PROCESSES = {"conntrackd": ("conntrackd",), "haproxy": ("haproxy",), "charon": ("charon",),
                     "keepalived": ("keepalived",), "frr": ("zebra", "staticd", "ospfd", "bfdd"),
                     "dnsmasq": ("dnsmasq",)}
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
    vpc = read_site_json(staged_root(Path(data["tree"])))["vpcs"][data["nodes"][router]["vpc"]]
    for ifname, addresses in sorted(vpc["routers"][router]["interfaces"].items()):
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
