"""DNS and DHCP proven with the real daemons on a site no other test uses (tests/fixtures/sites/guest).

Each router is booted from its own tree in a network namespace (interfaces, MTU, sysctls and
iptables from its files) and dnsmasq is started on /etc/dnsmasq.d exactly as Debian's unit starts
it (``/usr/share/dnsmasq/systemd-helper checkconfig`` then ``exec``), with the tree laid over /etc.
Test hosts take their leases with busybox's udhcpc (a real DHCP client) and resolve names with dig;
an upstream resolver (another dnsmasq) stands behind the zone's public gateway.

On the pair, keepalived's part of a failover (the gateway address moving, the HA guard lifted on
the new master) is done by hand: the lab proves keepalived itself.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import FIXTURE_SITES, copy_site, run_cli
from vpcgen.lab.run import sysctls
from vpcgen.ops import netns
from vpcgen.tree import GENERATED, read_router

UPSTREAM_NAME, UPSTREAM_ADDRESS = "www.example.org", "198.51.100.80"
HOOK = """#!/bin/sh
# udhcpc's event script: record what the server said, configure the address like a real host
# (written aside, then renamed: the test polls for the file and must never read half of it)
{ echo "event=$1"; env | grep -E '^(ip|mask|router|dns|domain|mtu|serverid|lease)='; } > "$LEASE_OUT.$1.tmp"
mv "$LEASE_OUT.$1.tmp" "$LEASE_OUT.$1"
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"
               [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
               ip route replace default via "$router" ;;
esac
exit 0
"""


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


class Lab:
    """Namespaces, links and processes of one test; everything removed by its own handle."""

    def __init__(self, tmp: Path):
        self.tmp, self.prefix = tmp, f"vg{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.pids: list[int] = []
        self.links = itertools.count(1)

    def ns(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", full)
        self.namespaces.append(full)
        sh("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def link(self, a: str, a_name: str, b: str, b_name: str) -> None:
        """A veth pair between namespaces a and b, named as the tree (or the host) names it."""
        n = next(self.links)
        tmp_a, tmp_b = f"{self.prefix}a{n}", f"{self.prefix}b{n}"
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp_name, ns, name in ((tmp_a, a, a_name), (tmp_b, b, b_name)):
            sh("ip", "link", "set", tmp_name, "netns", ns)
            sh("ip", "-n", ns, "link", "set", tmp_name, "name", name)
            sh("ip", "-n", ns, "link", "set", name, "up")

    def close(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


@contextmanager
def lab(tmp: Path):
    lab = Lab(tmp)
    try:
        yield lab
    finally:
        lab.close()


def boot_router(lab: Lab, tree: Path, ns: str) -> None:
    """What ifupdown, sysctl and netfilter-persistent do on a router, from its own files."""
    text = (tree / GENERATED["interfaces"]).read_text()
    ifaces, routes = netns.parse_interfaces(tree)
    for name, addresses in ifaces.items():
        if sh("ip", "-n", ns, "link", "show", name, check=False).returncode != 0:
            continue  # parents (eth1, eth2) the test does not wire
        mtu = re.search(rf"iface {re.escape(name)} inet \w+\n(?:    .*\n)*?    mtu (\d+)", text)
        if mtu:
            sh("ip", "-n", ns, "link", "set", name, "mtu", mtu.group(1))
        for a in addresses:
            sh("ip", "-n", ns, "addr", "add", a, "dev", name)
    for route in routes:
        sh("ip", "-n", ns, "route", "replace", *route.split())
    for key, value in sysctls(tree / GENERATED["sysctl"], "sysctl"):
        sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")
    sh("ip", "netns", "exec", ns, "iptables-restore", str(tree / GENERATED["iptables"]))


def start_dnsmasq(lab: Lab, tree: Path, ns: str, name: str) -> int:
    """dnsmasq as Debian's systemd unit starts it (checkconfig, then exec: -7 /etc/dnsmasq.d, -u
    dnsmasq, --local-service), with the tree over /etc and private /run and /var/lib/misc (leases)."""
    scratch = lab.tmp / f"ovl-{name}"
    (scratch / "upper").mkdir(parents=True)
    (scratch / "work").mkdir()
    q = shlex.quote
    script = (
        "set -e; "
        f"mount -t overlay overlay -o lowerdir={q(str(tree / 'etc'))}:/etc,upperdir={q(str(scratch / 'upper'))},"
        f"workdir={q(str(scratch / 'work'))} /etc; "
        "mount -t tmpfs guest-run /run; mount -t tmpfs guest-leases /var/lib/misc; "
        "/usr/share/dnsmasq/systemd-helper checkconfig; "
        # the unit's ExecStart; DNSMASQ_OPTS (as /etc/default/dnsmasq may set it) only adds a log to read
        "DNSMASQ_OPTS='--log-facility=/run/dnsmasq.log --log-dhcp' /usr/share/dnsmasq/systemd-helper exec; "
        "i=0; while [ ! -s /run/dnsmasq/dnsmasq.pid ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
        "cat /run/dnsmasq/dnsmasq.pid; "
        "exec sleep 3600"  # keeps the mount namespace (the log) readable
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                             "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lab.pids.append(proc.pid)
    line = proc.stdout.readline().strip()
    assert line.isdigit(), f"dnsmasq did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
    lab.pids.append(int(line))
    return proc.pid


def dnsmasq_log(holder: int) -> str:
    return sh("nsenter", "-t", str(holder), "-m", "cat", "/run/dnsmasq.log").stdout


def host(lab: Lab, name: str, switch: str, mac: str) -> str:
    ns = lab.ns(name)
    lab.link(ns, "eth0", switch, f"{name[:10]}-sw")
    sh("ip", "netns", "exec", switch, "ip", "link", "set", f"{name[:10]}-sw", "master", "br0")
    sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
    return ns


def udhcpc(lab: Lab, ns: str, out: Path, background: bool = False):
    hook = lab.tmp / "hook.sh"
    if not hook.exists():
        hook.write_text(HOOK)
        hook.chmod(0o755)
    cmd = ["ip", "netns", "exec", ns, "env", f"LEASE_OUT={out}", "udhcpc", "-i", "eth0", "-s", str(hook),
           "-O", "mtu", "-O", "domain", "-t", "10", "-T", "1"]
    if background:
        proc = subprocess.Popen(cmd + ["-f", "-p", str(out) + ".pid"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        lab.pids.append(proc.pid)
        return proc
    start = time.monotonic()
    sh(*cmd, "-q", "-n", timeout=30)
    return time.monotonic() - start


def lease(out: Path, event: str = "bound") -> dict:
    text = Path(f"{out}.{event}").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def no_answer(ns: str, server: str, name: str) -> bool:
    r = sh("ip", "netns", "exec", ns, "dig", "+time=1", "+tries=1", f"@{server}", name, check=False)
    return r.returncode != 0 and "timed out" in r.stdout + r.stderr


def dig(ns: str, server: str, name: str, *extra: str) -> str:
    return sh("ip", "netns", "exec", ns, "dig", "+short", "+time=1", "+tries=2", f"@{server}", name, *extra,
              check=False).stdout.strip()


def switch(lab: Lab, name: str) -> str:
    ns = lab.ns(name)
    sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns, "link", "set", "br0", "up")
    return ns


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("guest")
    code, out, err = run_cli("build", copy_site(FIXTURE_SITES / "guest", tmp / "guest"), "--output", tmp / "out",
                             "--locked")
    assert code == 0, out + err
    code, out, err = run_cli("check", tmp / "out/guest")
    assert code == 0 and "dnsmasq      ok" in out, out + err
    return tmp / "out/guest"


def staged(built: Path, router: str, tmp: Path) -> Path:
    return netns.stage(read_router(built / router), tmp / f"tree-{router}")


def upstream(lab: Lab, router_ns: str) -> str:
    """The zone's public gateway (203.0.113.1) holding the zone's DNS server 192.0.2.53: a second
    dnsmasq that knows one name of the internet."""
    up = lab.ns("up")
    lab.link(router_ns, "eth1", up, "eth0")
    sh("ip", "-n", up, "addr", "add", "203.0.113.1/24", "dev", "eth0")
    sh("ip", "-n", up, "addr", "add", "192.0.2.53/32", "dev", "lo")
    proc = subprocess.Popen(["ip", "netns", "exec", up, "dnsmasq", "-k", "-C", "/dev/null", "--no-resolv",
                             "--no-hosts", "--listen-address=192.0.2.53", "--bind-interfaces",
                             f"--address=/{UPSTREAM_NAME}/{UPSTREAM_ADDRESS}", "--pid-file="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lab.pids.append(proc.pid)
    return up


def test_single_router_leases_and_names(built, tmp_path, record_property):
    site = json.loads((built / "site.json").read_text())
    tiers = site["vpcs"]["solo"]["tiers"]
    web, db = tiers["web"], tiers["db"]
    tree = staged(built, "solo-r1", tmp_path)
    with lab(tmp_path) as L:
        r = L.ns("r")
        sw_web, sw_db = switch(L, "sw-web"), switch(L, "sw-db")
        for tier, sw in ((web, sw_web), (db, sw_db)):
            L.link(r, f"eth2.{tier['vlan']}", sw, "r")
            sh("ip", "netns", "exec", sw, "ip", "link", "set", "r", "master", "br0")
        up = upstream(L, r)
        boot_router(L, tree, r)
        assert f"mtu {web['mtu']}" in sh("ip", "-n", r, "link", "show", f"eth2.{web['vlan']}").stdout
        holder = start_dnsmasq(L, tree, r, "solo")
        time.sleep(0.3)  # bind-dynamic opens its sockets as the addresses are seen

        # a reserved host of the open tier: its address, router, DNS, domain, MTU, server identifier
        app1 = host(L, "app1", sw_web, web["hosts"]["app1"]["mac"])
        took = udhcpc(L, app1, tmp_path / "app1")
        got = lease(tmp_path / "app1")
        assert got["ip"] == web["hosts"]["app1"]["address"]
        assert got["router"] == got["dns"] == got["serverid"] == web["gateway"]
        assert got["domain"] == site["vpcs"]["solo"]["domain"] == "corp.test"
        assert got["mtu"] == str(web["mtu"]) == "1400" and got["lease"] == str(web["dhcp"]["lease_s"])
        assert "mtu 1400" in sh("ip", "-n", app1, "link", "show", "eth0").stdout
        record_property("seconds_to_lease", round(took, 3))
        # a host without a reservation gets an address of the range
        other = host(L, "other", sw_web, "02:00:00:00:99:01")
        udhcpc(L, other, tmp_path / "other")
        first, last = (int(x.split(".")[-1]) for x in web["dhcp"]["range"].split("-"))
        ip = lease(tmp_path / "other")["ip"]
        assert ip.startswith("10.50.1.") and first <= int(ip.split(".")[-1]) <= last
        # the default_deny tier gets its reservation and answers too
        db1 = host(L, "db1", sw_db, db["hosts"]["db1"]["mac"])
        udhcpc(L, db1, tmp_path / "db1")
        assert lease(tmp_path / "db1")["ip"] == db["hosts"]["db1"]["address"]
        assert lease(tmp_path / "db1")["serverid"] == db["gateway"] and lease(tmp_path / "db1")["mtu"] == "1500"

        # names: local (with and without a MAC), the DHCP client's own, forwarded, from every tier
        for ns, gateway in ((app1, web["gateway"]), (db1, db["gateway"])):
            assert dig(ns, gateway, "nomac.corp.test") == "10.50.1.12"
            assert dig(ns, gateway, "app1.corp.test") == "10.50.1.11"
            assert dig(ns, gateway, "db1.corp.test") == "10.50.2.11"
            assert dig(ns, gateway, UPSTREAM_NAME) == UPSTREAM_ADDRESS
        assert dig(app1, web["gateway"], "-x", "10.50.1.12") == "nomac.corp.test."
        assert "NXDOMAIN" in sh("ip", "netns", "exec", app1, "dig", "+time=1", f"@{web['gateway']}",
                                "missing.corp.test").stdout
        # only a tier's own gateway answers: not the other tier's, never the uplink
        assert no_answer(app1, db["gateway"], "app1.corp.test")
        sh("ip", "-n", up, "route", "add", "10.50.0.0/16", "via", site["vpcs"]["solo"]["public_ips"]["source-nat"])
        assert no_answer(up, web["gateway"], "app1.corp.test")
        assert dig(app1, "10.50.1.1", "app1.corp.test") == "10.50.1.11"  # still fine from the tier

        # lookups per second through the gateway (a rough figure: dig's batch mode, one process)
        batch = tmp_path / "batch"
        batch.write_text("".join(f"{n}.corp.test\n{UPSTREAM_NAME}\n" for n in ("app1", "nomac", "db1") * 100))
        start = time.monotonic()
        out = sh("ip", "netns", "exec", app1, "dig", f"@{web['gateway']}", "+short", "+time=1", "-f", str(batch)).stdout
        rate = 600 / (time.monotonic() - start)
        assert out.split().count(UPSTREAM_ADDRESS) == 300
        record_property("lookups_per_second", round(rate))
        log = dnsmasq_log(holder)
        assert "DHCPACK(eth2.103) 10.50.1.11 02:00:0a:32:01:0b app1" in log


def test_pair_only_the_master_answers_and_a_lease_renews_on_the_new_master(built, tmp_path, record_property):
    site = json.loads((built / "site.json").read_text())
    app = site["vpcs"]["duo"]["tiers"]["app"]
    prefix = app["cidr"].split("/")[1]
    with lab(tmp_path) as L:
        sw = switch(L, "sw")
        routers, holders, trees = {}, {}, {}
        for name in ("duo-r1", "duo-r2"):
            tree = trees[name] = staged(built, name, tmp_path)
            r = L.ns(name)
            L.link(r, f"eth2.{app['vlan']}", sw, name[-2:])
            sh("ip", "netns", "exec", sw, "ip", "link", "set", name[-2:], "master", "br0")
            boot_router(L, tree, r)
            holders[name] = start_dnsmasq(L, tree, r, name)
            routers[name] = r
        own = {n: site["vpcs"]["duo"]["routers"][n]["interfaces"][f"eth2.{app['vlan']}"][0] for n in routers}

        def master(name: str) -> None:
            """What keepalived and notify.sh do on a takeover: the old master drops the gateway and
            arms its guard again (its rules file), the new one takes the gateway, lifts its guard
            and announces the address (gratuitous ARP)."""
            dev = f"eth2.{app['vlan']}"
            for other, ns in routers.items():
                if other != name:
                    sh("ip", "-n", ns, "addr", "del", f"{app['gateway']}/{prefix}", "dev", dev, check=False)
                    sh("ip", "netns", "exec", ns, "iptables-restore", str(trees[other] / GENERATED["iptables"]))
            ns = routers[name]
            sh("ip", "-n", ns, "addr", "add", f"{app['gateway']}/{prefix}", "dev", dev)
            sh("ip", "netns", "exec", ns, "iptables", "-w", "-t", "raw", "-F", "VPCGEN_HA_GUARD")
            sh("ip", "netns", "exec", ns, "arping", "-q", "-U", "-c", "1", "-I", dev, app["gateway"], check=False)

        # neither router holds the gateway yet: nobody answers (both are backups)
        api = host(L, "api", sw, app["hosts"]["api"]["mac"])
        assert sh("ip", "netns", "exec", api, "udhcpc", "-i", "eth0", "-s", "/bin/true", "-q", "-n", "-t", "2",
                  "-T", "1", check=False, timeout=20).returncode != 0
        master("duo-r1")
        time.sleep(0.3)
        client = udhcpc(L, api, tmp_path / "api", background=True)
        deadline = time.monotonic() + 15
        while not Path(f"{tmp_path / 'api'}.bound").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        got = lease(tmp_path / "api")
        # the server identifier is the gateway, never the router's own (primary) address
        assert got["ip"] == app["hosts"]["api"]["address"] and got["serverid"] == app["gateway"]
        assert own["duo-r1"].split("/")[0] != app["gateway"]
        assert dig(api, app["gateway"], "api.duo.internal") == app["hosts"]["api"]["address"]
        assert "DHCPOFFER" not in dnsmasq_log(holders["duo-r2"]), "the backup must stay silent"

        # failover: the second router, which never gave this lease, acknowledges its renewal
        master("duo-r2")
        time.sleep(0.3)
        start = time.monotonic()
        os.kill(client.pid, 10)  # SIGUSR1: udhcpc renews, unicast to the server identifier
        while not Path(f"{tmp_path / 'api'}.renew").exists() and time.monotonic() < start + 10:
            time.sleep(0.05)
        record_property("seconds_to_renewal_after_failover", round(time.monotonic() - start, 3))
        log = dnsmasq_log(holders["duo-r2"])
        assert f"DHCPACK(eth2.{app['vlan']}) {app['hosts']['api']['address']}" in log and "DHCPNAK" not in log
        assert lease(tmp_path / "api", "renew")["ip"] == app["hosts"]["api"]["address"]
        assert dig(api, app["gateway"], "api.duo.internal") == app["hosts"]["api"]["address"]
