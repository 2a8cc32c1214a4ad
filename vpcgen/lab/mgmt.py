"""The lab's management network: every router answers SSH on ``eth0`` at its ``mgmt`` address, so
that `vpcgen deploy`, `status`, `switchover`, `rollback` and plain `ssh` reach lab routers as they
reach real ones.

- A management namespace ``<lab>-mgmt`` holds a bridge with the station address (where `lab run`
  commands come from); each router's ``eth0`` is a veth into that bridge carrying its ``mgmt``
  address (/32, with a host route to the station: nothing else of the router's routing changes).
- Each router runs its own sshd inside its private mount namespace (the lab's /etc overlay and
  /run), with a host key of its own, and its deploy state folder bind-mounted from the lab's run
  folder: a deploy writes the router's /etc and release folder, never the machine's.
- `lab run` runs a command in the management namespace with the lab's key, the routers' pinned
  host keys (an ssh_config of the lab's bound over /etc/ssh/ssh_config in a private mount
  namespace) and the lab's service command overrides (VPCGEN_COMMANDS): the namespaces have no
  systemd, so reloads and health checks talk to the daemons the lab started. The tree is never
  changed for the lab.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..errors import VpcgenError
from ..ops import netns
from ..tree import MANIFEST, on_router

STATION = "169.254.254.254"  # the management station's address when the site lets SSH in from anywhere
BRIDGE = "mgmt0"
SSHD = "/usr/sbin/sshd"
LAB_ONLY = "lab only: libipsec"  # the comment on the lab's twin rules (run.load_rules and the reload below)
INSIDE = "/run/vpcgen-lab-mgmt"  # in the router's private /run (the lab's run folder is not visible there)
LAB_STRONGSWAN = "/etc/vpcgen-lab/strongswan.conf"  # the lab's charon settings (see run.LAB_STRONGSWAN_CONF)


def _ns(lab: str) -> str:
    return f"{lab}-mgmt"


def _sh(*cmd: str, input: str | None = None) -> None:
    r = netns.run(list(cmd), input=input)
    if r.returncode != 0:
        raise VpcgenError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")


def _keygen(path: Path) -> str:
    if not path.exists():
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vpcgen-lab", "-f", str(path))
    return path.with_suffix(".pub").read_text().split()[:2]


def commands() -> dict:
    """The lab's service commands (ops.overrides format): the daemons the lab started, no systemd."""
    conntrackd = on_router("conntrackd")
    haproxy = on_router("haproxy")
    rules = on_router("iptables")
    notify = on_router("keepalived-notify")
    from .run import DNSMASQ_HEALTH, DNSMASQ_RESTART, KEEPALIVED_START  # the lab starts them so
    return {
        "reload": {
            # the lab made the links; addresses and routes follow the deployed file as with ifupdown
            "networking": f"{shlex.quote(sys.executable)} -m vpcgen.lab.ifreload",
            # the tree's own reload, then the lab's libipsec twins of the tier-to-internet accepts
            "iptables": (f"if [ -x {notify} ]; then {notify} apply-firewall; else iptables-restore --wait=10 {rules}; "
                         f"fi && while read -r rule; do iptables -w -A $rule -m comment --comment "
                         f"{shlex.quote(LAB_ONLY)} || exit 1; done < {INSIDE}/twins"),
            "conntrackd": (f"conntrackd -C {conntrackd} -k >/dev/null 2>&1 || true; sleep 0.3; rm -f /run/lock/conntrackd.lock; "
                           f"conntrackd -d -C {conntrackd}"),
            # started by the deploy that brings it (a single router's VPC converted to a pair)
            "keepalived": f"kill -HUP $(cat /run/keepalived.pid 2>/dev/null) 2>/dev/null || {KEEPALIVED_START}",
            "haproxy": (f"p=$(cat /run/haproxy.pid 2>/dev/null || true); "
                        f"haproxy -D -n 4096 -p /run/haproxy.pid -f {haproxy} ${{p:+-sf $p}}"),
            # additive, as `vtysh -b` at start (frr-reload.py, which also removes, is not installed here)
            "frr": f"vtysh -f {on_router('frr')}",
            "chrony": "true",  # the lab runs no time daemon
            "dnsmasq": DNSMASQ_RESTART,  # as Debian's unit: a restart (the leases stay in the router's folder)
        },
        "health": {
            "keepalived": "kill -0 $(cat /run/keepalived.pid)",
            "haproxy": "kill -0 $(cat /run/haproxy.pid)",
            "strongswan": "swanctl --stats >/dev/null",
            "frr": "vtysh -c 'show version' >/dev/null",
            "chrony": "true",
            "dnsmasq": DNSMASQ_HEALTH,
        },
        "status": {
            # the lab's own platform rules (libipsec twins) are not the router's
            "firewall": f"iptables-save | grep -v -e {shlex.quote(LAB_ONLY)}",
            "switchover": ("kill $(cat /run/keepalived.pid); i=0; while [ -e /run/keepalived.pid ] && [ $i -lt 100 ]; "
                           f"do sleep 0.05; i=$((i+1)); done; {KEEPALIVED_START}"),
        },
    }


def station(site: dict, taken: set[str]) -> str:
    """The management station's address: inside the site's ``ssh.allowed_from`` when it has one (the routers'
    firewall admits SSH on eth0 from there only): the highest usable address no router uses."""
    allowed = (site.get("ssh") or {}).get("allowed_from")
    if not allowed:
        return STATION
    for cidr in allowed:
        net = ipaddress.ip_network(cidr)
        if net.prefixlen >= 31:
            candidates = list(net)
        else:
            candidates = [net.broadcast_address - i for i in range(1, min(net.num_addresses - 1, 64))]
        for address in candidates:
            if str(address) not in taken:
                return str(address)
    raise VpcgenError(f"no free address in ssh.allowed_from {allowed} for the lab's management station")


def setup(p, state, progress=lambda m: None) -> None:
    """Give every router of the running lab its management address and sshd (lab up calls this)."""
    lab, folder = p.name, state.dir / "mgmt"
    folder.mkdir(parents=True, exist_ok=True)
    mg = _ns(lab)
    routers = [n for n in p.nodes if n.kind == "router"]
    me = station(p.site, {json.loads((n.tree / MANIFEST).read_text())["mgmt"] for n in routers})
    _sh("ip", "netns", "add", mg)
    state.add_namespace(mg)
    _sh("ip", "netns", "exec", mg, "ip", "link", "set", "lo", "up")
    _sh("ip", "netns", "exec", mg, "ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "netns", "exec", mg, "ip", "addr", "add", f"{me}/32", "dev", BRIDGE)
    _sh("ip", "netns", "exec", mg, "ip", "link", "set", BRIDGE, "up")
    key_type, key = _keygen(folder / "id_ed25519")
    (folder / "authorized_keys").write_text(f"{key_type} {key}\n")
    known, config = [], ["GlobalKnownHostsFile /dev/null", f"UserKnownHostsFile {folder / 'known_hosts'}",
                         f"IdentityFile {folder / 'id_ed25519'}", "StrictHostKeyChecking yes",
                         "BatchMode yes", "ConnectTimeout 5"]
    for i, node in enumerate(routers):
        info = state.data["nodes"][node.name]
        manifest = json.loads((node.tree / MANIFEST).read_text())
        address, ssh = manifest["mgmt"], manifest["deploy"]["ssh"]
        port = f"m{i}"
        _sh("ip", "link", "add", "eth0", "netns", info["ns"], "type", "veth", "peer", "name", port, "netns", mg)
        _sh("ip", "netns", "exec", mg, "ip", "link", "set", port, "master", BRIDGE, "up")
        _sh("ip", "netns", "exec", mg, "ip", "route", "add", f"{address}/32", "dev", BRIDGE)
        _sh("ip", "netns", "exec", info["ns"], "ip", "addr", "add", f"{address}/32", "dev", "eth0")
        host_type, host_key = _keygen(folder / f"host-{node.name}")
        shown = address if ssh["port"] == 22 else f"[{address}]:{ssh['port']}"
        known.append(f"{shown} {host_type} {host_key}")
        config += [f"Host {address}", f"  Port {ssh['port']}", f"  User {ssh['user']}"]
        _sshd(p, info, node, folder, me)
        progress(f"{node.name}: sshd on eth0 {address}:{ssh['port']}")
    _tunnels_up(p, state)
    (folder / "known_hosts").write_text("\n".join(known) + "\n")
    (folder / "ssh_config").write_text("\n".join(config) + "\n")
    (folder / "commands.yaml").write_text(yaml.safe_dump(commands(), sort_keys=True))
    state.data["mgmt"] = {"ns": mg, "dir": str(folder), "station": me}
    state.save()


def _sshd(p, info: dict, node, folder: Path, me: str) -> None:
    """eth0 up with its route to the station, and the router's sshd in its private mount namespace."""
    from .run import libipsec_rules
    manifest = json.loads((node.tree / MANIFEST).read_text())
    address, ssh = manifest["mgmt"], manifest["deploy"]["ssh"]
    for cmd in (["ip", "link", "set", "eth0", "up"], ["ip", "route", "replace", f"{me}/32", "dev", "eth0"]):
        _sh("ip", "netns", "exec", info["ns"], *cmd)
    holder = str(info["holder"])
    files = {
        "host_key": (folder / f"host-{node.name}").read_text(),
        "authorized_keys": (folder / "authorized_keys").read_text(),
        "sshd_config": "\n".join([
            f"Port {ssh['port']}", f"ListenAddress {address}", f"HostKey {INSIDE}/host_key",
            f"PidFile {INSIDE}/sshd.pid", f"AuthorizedKeysFile {INSIDE}/authorized_keys", "StrictModes no",
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "MaxSessions 100", "MaxStartups 100", "LogLevel ERROR",
            f"SetEnv STRONGSWAN_CONF={LAB_STRONGSWAN}", ""]),
        # the lab's libipsec twins of this router's rules, re-added after each reload of its rules
        "twins": "".join(f"{rule}\n" for rule in libipsec_rules(p.site, node)),
    }
    for name, text in files.items():
        _sh("nsenter", "-t", holder, "-m", "sh", "-c", f"umask 077; mkdir -p {INSIDE}; cat > {INSIDE}/{name}",
            input=text)
    _sh("nsenter", "-t", holder, "-m", "-n", SSHD, "-f", f"{INSIDE}/sshd_config", "-E", f"{INSIDE}/sshd.log")


def add(p, state, node) -> None:
    """A router added to the running lab (run.add_router): its eth0, host key, pinned key and sshd."""
    mg, folder = state.data["mgmt"], Path(state.data["mgmt"]["dir"])
    info = state.data["nodes"][node.name]
    manifest = json.loads((node.tree / MANIFEST).read_text())
    address, ssh = manifest["mgmt"], manifest["deploy"]["ssh"]
    port = f"m{sum(n['kind'] == 'router' for n in state.data['nodes'].values())}"
    _sh("ip", "link", "add", "eth0", "netns", info["ns"], "type", "veth", "peer", "name", port, "netns", mg["ns"])
    _sh("ip", "netns", "exec", mg["ns"], "ip", "link", "set", port, "master", BRIDGE, "up")
    _sh("ip", "netns", "exec", mg["ns"], "ip", "route", "add", f"{address}/32", "dev", BRIDGE)
    _sh("ip", "netns", "exec", info["ns"], "ip", "addr", "add", f"{address}/32", "dev", "eth0")
    host_type, host_key = _keygen(folder / f"host-{node.name}")
    shown = address if ssh["port"] == 22 else f"[{address}]:{ssh['port']}"
    with open(folder / "known_hosts", "a") as known:
        known.write(f"{shown} {host_type} {host_key}\n")
    with open(folder / "ssh_config", "a") as config:
        config.write(f"Host {address}\n  Port {ssh['port']}\n  User {ssh['user']}\n")
    _sshd(p, info, node, folder, mg["station"])


def restart(p, state, node) -> None:
    """After a router's restart (lab fault stop/start, heal): its eth0 and sshd back, as at boot."""
    mg = state.data["mgmt"]
    _sh("ip", "netns", "exec", state.data["nodes"][node.name]["ns"], "ip", "addr", "replace",
        f"{json.loads((node.tree / MANIFEST).read_text())['mgmt']}/32", "dev", "eth0")
    _sshd(p, state.data["nodes"][node.name], node, Path(mg["dir"]), mg["station"])


def _tunnels_up(p, state) -> None:
    """The lab starts the VPN peers after the routers, so a master's own initiation at its takeover
    found no peer: bring each site-to-site tunnel up on every serving router, as a router that had
    its peers all along would have (`vpcgen status` expects them up on a master). A peer's charon
    may still be loading its connections (it answers NO_PROPOSAL_CHOSEN meanwhile), so each tunnel
    is initiated again until it is installed, for a bounded time: what stays down, status reports."""
    from ..ops.status import child_sas
    from ..tree import VPN_CHILD, VRRP_STATE
    from .run import exec_in
    swanctl = f"STRONGSWAN_CONF={LAB_STRONGSWAN} swanctl"
    for node in (n for n in p.nodes if n.kind == "router"):
        children = [VPN_CHILD.format(name=peer) for peer in sorted(p.site["vpcs"][node.vpc]["vpn_peers"])]
        if not children:
            continue
        if p.site["vpcs"][node.vpc]["redundant"]:  # once keepalived has decided, and only on the master
            decided = exec_in(state.data, node.name, f"i=0; while [ ! -s {VRRP_STATE} ] && [ $i -lt 100 ]; do "
                              f"sleep 0.1; i=$((i+1)); done; cat {VRRP_STATE}")
            if decided.stdout.strip() != "MASTER":
                continue
        for _ in range(10):
            installed = child_sas(exec_in(state.data, node.name, f"{swanctl} --list-sas 2>/dev/null").stdout)
            down = [c for c in children if installed.get(c) != "INSTALLED"]
            if not down:
                break
            exec_in(state.data, node.name, "; ".join(f"{swanctl} --initiate --child {c} --timeout 5 >/dev/null 2>&1"
                                                     for c in down), timeout=10 + 5 * len(down))
            time.sleep(1)


def run(tree_dir, command: list[str]) -> int:
    """Run ``command`` on the running lab's management network; its exit status."""
    from .run import status
    data = status(tree_dir)
    mg = data.get("mgmt")
    if not mg:
        raise VpcgenError(f"the lab of {tree_dir} has no management network: bring it up again with this vpcgen")
    if not command:
        raise VpcgenError("give a command to run, after --")
    folder = Path(mg["dir"])
    env = {**os.environ, "VPCGEN_COMMANDS": str(folder / "commands.yaml"),
           "VPCGEN_KNOWN_HOSTS": str(folder / "known_hosts"), "VPCGEN_IDENTITY": str(folder / "id_ed25519")}
    # plain ssh reads /etc/ssh/ssh_config: the lab's one, in a mount namespace of this command only
    wrapper = 'mount --bind "$0" /etc/ssh/ssh_config && exec "$@"'
    try:
        return subprocess.run(["ip", "netns", "exec", mg["ns"], "unshare", "--mount", "--propagation", "private",
                               "sh", "-c", wrapper, str(folder / "ssh_config"), *command], env=env).returncode
    except KeyboardInterrupt:
        return 130
