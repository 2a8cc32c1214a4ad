"""`vpcgen check` runs the real daemons' checkers; broken files must fail it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURE_SITES, copy_site, run_cli
from vpcgen.ops import check
from vpcgen.lab import run as lab
from vpcgen.ops import netns
from vpcgen.tree import CHECKED, MANIFEST, SECRET_SUMS, TreeError, dump_json, read_routers


def netns_list(prefix: str = f"vpcgen-chk-{os.getpid()}-") -> set[str]:
    """This test process's namespaces (others may run tests on the machine at the same time)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


DAEMONS = ("charon", "conntrackd", "keepalived", "haproxy", "zebra", "ospfd", "bfdd", "watchfrr")
PR_SET_CHILD_SUBREAPER = 36


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, name, state) of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        out[int(entry)] = (int(ppid), name, state)
    return out


@pytest.fixture
def own_daemons():
    """The daemons this test process started and that still run, and only those: the test process
    becomes a child subreaper, so a daemon that forks into the background is re-parented to it
    instead of to init, and stays recognisable as ours (other tests and labs on the machine may
    run the same daemons at the same time)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def alive() -> set[str]:
        procs, me = _processes(), os.getpid()
        mine, found = {me}, True
        while found:  # every descendant of this process
            found = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    found = True
        return {f"{procs[p][1]}[{p}]" for p in mine - {me} if procs[p][1] in DAEMONS and procs[p][2] != "Z"}

    try:
        yield alive
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid, (ppid, _, state) in _processes().items():  # reap the orphans that came to us
            if ppid == os.getpid() and state == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def test_daemons_of_others_are_not_counted(own_daemons, tmp_path):
    """A daemon someone else starts while a test runs (another test, a lab) is not this test's."""
    import ctypes
    import shutil
    import signal
    import time

    fake = tmp_path / "haproxy"
    shutil.copy("/bin/sleep", fake)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)  # its orphan goes elsewhere: it is not ours
    subprocess.run(["sh", "-c", f"{fake} 60 >/dev/null 2>&1 &"], check=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    deadline, pid = time.monotonic() + 5, None
    while pid is None and time.monotonic() < deadline:
        pid = next((p for p in _processes() if _cmdline(p).startswith(str(fake))), None)
    assert pid is not None
    try:
        assert f"haproxy[{pid}]" not in own_daemons()
    finally:
        os.kill(pid, signal.SIGTERM)  # by its own PID: the process this test started


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def built(site: Path, tmp_path: Path, *extra: str) -> Path:
    code, out, err = run_cli("build", copy_site(site, tmp_path / site.name), "--output", tmp_path / "out", *extra)
    assert code == 0, out + err
    return next(p for p in (tmp_path / "out").iterdir() if p.is_dir())


def rehash(router: Path, add: dict[str, str] | None = None) -> None:
    """Make a router's manifest describe its edited files again (as a hostile artifact would), listing
    the extra ``add`` paths (path -> service) too."""
    manifest = json.loads((router / MANIFEST).read_text())
    manifest["files"] += [{"path": p, "mode": "0644", "service": s} for p, s in (add or {}).items()]
    sums = json.loads((router / SECRET_SUMS).read_text()) if (router / SECRET_SUMS).exists() else {}
    for entry in manifest["files"]:
        digest = hashlib.sha256((router / entry["path"]).read_bytes()).hexdigest()
        if entry.get("secret"):
            sums[entry["path"]] = digest
        else:
            entry["sha256"] = digest
    (router / MANIFEST).write_bytes(dump_json(manifest))
    if sums:
        (router / SECRET_SUMS).write_bytes(dump_json(sums))


# each daemon file -> the checkers that must have run on it
CHECKED_BY = {"etc/network": {"interfaces"}, "etc/keepalived": {"keepalived", "conntrackd", "notify"}, "etc/haproxy": {"haproxy"},
              "etc/swanctl": {"strongswan"}, "etc/frr": {"frr"}, "etc/dnsmasq.d": {"dnsmasq"},
              "etc/chrony": {"chrony"}}


@pytest.mark.parametrize("site,extra", [(EXAMPLE, ()), (FIXTURE_SITES / "edge", ()),
                                        (FIXTURE_SITES / "services", ("--placeholder-secrets",))],
                         ids=["example", "edge", "services-placeholders"])
def test_check_passes_on_built_sites(site, extra, tmp_path, own_daemons):
    before = netns_list()
    assert not own_daemons()
    tree = built(site, tmp_path, *extra)
    code, stdout, stderr = run_cli("check", tree)
    assert code == 0, stdout + stderr
    checked = {tuple(line.split()[:2]) for line in stdout.splitlines() if " ok " in line}
    kinds = set()
    for router in (p.name for p in tree.iterdir() if p.is_dir()):
        assert (router, "iptables") in checked
        for folder, checkers in CHECKED_BY.items():
            if (tree / router / folder).exists():
                assert {(router, c) for c in checkers} <= checked
                kinds |= checkers
    assert netns_list() == before, "check must remove the namespaces it creates"
    assert not own_daemons(), "check must stop every daemon it starts"
    if site == EXAMPLE:  # the example exercises every checker
        assert kinds == {"interfaces", "keepalived", "conntrackd", "notify", "haproxy", "strongswan", "frr", "dnsmasq",
                         "chrony"}


BREAKAGES = [
    ("iptables", "etc/iptables/rules.v4", "-A INPUT -i lo -j ACCEPT", "-A INPUT -i lo -j NO_SUCH_CHAIN"),
    ("iptables", "etc/iptables/rules.v4", "--dport 3922", "--dport 99999"),
    ("keepalived", "etc/keepalived/keepalived.conf", "    track_interface {\n", "    track_interface {\n        eth7\n"),
    ("conntrackd", "etc/conntrackd/conntrackd.conf", "HashSize 32768", "HashSize"),
    ("conntrackd", "etc/conntrackd/conntrackd.conf", "IPv4_address 169.254.255.1\n        IPv4_Dest",
     "IPv4_address 192.0.2.99\n        IPv4_Dest"),
    ("notify", "etc/keepalived/notify.sh", "to_fault() {", "to_fault() {{"),
    ("haproxy", "etc/haproxy/haproxy.cfg", "balance leastconn", "balance leastconnections"),
    ("haproxy", "etc/haproxy/haproxy.cfg", "10.10.1.11:443 check", "10.10.1.11:99999 check"),
    ("strongswan", "etc/swanctl/swanctl.conf", "esp_proposals = aes256gcm16-modp2048",
     "esp_proposals = aes999-modp2048"),
    ("strongswan", "etc/swanctl/swanctl.conf", "        mobike = no\n", "        mobike = no\n        mobile = no\n"),
    ("strongswan", "etc/swanctl/swanctl.conf", "include vpcgen-secrets.conf", "include vpcgen-secret.conf"),
    ("strongswan", "etc/swanctl/vpcgen-secrets.conf", "    eap-1 {", "    eap-1 {{"),
    ("strongswan", "etc/swanctl/private/vpcgen-ra.pem", "-----BEGIN PRIVATE KEY-----\nM",
     "-----BEGIN PRIVATE KEY-----\nX"),
    ("dnsmasq", "etc/dnsmasq.d/vpcgen.conf", "dhcp-range=", "dhcp-rnage="),
    ("dnsmasq", "etc/dnsmasq.d/vpcgen.conf", "10.10.1.199,", "10.10.1.299,"),
    ("dnsmasq", "etc/dnsmasq.d/vpcgen.conf", "listen-address=10.10.1.1\n", "listen-address=10.10.1.300\n"),
    ("chrony", "etc/chrony/sources.d/vpcgen.sources", " iburst", " iburts"),
    ("chrony", "etc/chrony/sources.d/vpcgen.sources", "server 192.0.2.123", "allow 192.0.2.123"),
    # the VXLAN device's own pre-up line: a wrong group, a missing underlay, an MTU the underlay cannot carry
    ("interfaces", "etc/network/interfaces.d/vpcgen", "group 239.0.19.136", "group 10.0.19.136"),
    ("interfaces", "etc/network/interfaces.d/vpcgen", "dev eth2.90\n", "dev eth2.91\n"),
    ("interfaces", "etc/network/interfaces.d/vpcgen", "post-down ip link del vxlan5000\n    mtu 1450",
     "post-down ip link del vxlan5000\n    mtu 1451"),
    ("interfaces", "etc/network/interfaces.d/vpcgen", "type vxlan id 5000 ", "type vxlan id 16777216 "),
    ("interfaces", "etc/network/interfaces.d/vpcgen", "    post-down ip link del vxlan5000",
     "    pre-up touch /tmp/vpcgen-pwned\n    post-down ip link del vxlan5000"),
]
FRR_BREAKAGES = [
    ("frr", "etc/frr/frr.conf", " ip ospf passive", " ip ospf pasive"),
    ("frr", "etc/frr/frr.conf", "area 1 range 10.128.0.0/22", "area 1 range 10.128.0.0/33"),
]


ALL_BREAKAGES = [("shop-r1", *b) for b in BREAKAGES] + [("left-r1", *b) for b in FRR_BREAKAGES]


@pytest.mark.parametrize("router,checker,rel,old,new", ALL_BREAKAGES,
                         ids=[f"{b[1]}-{i}" for i, b in enumerate(ALL_BREAKAGES)])
def test_check_fails_on_broken_files(router, checker, rel, old, new, tmp_path):
    tree = built(EXAMPLE, tmp_path)
    path = tree / router / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    rehash(tree / router)
    before = netns_list()
    code, stdout, stderr = run_cli("check", tree, "--router", router)
    assert code == 1
    assert any(line.split()[:3] == [router, checker, "FAILED"] for line in stdout.splitlines()), stdout
    assert f"{tree / router / CHECKED[checker]}: error: {checker}:" in stderr
    assert netns_list() == before


def test_check_from_a_folder_the_checkers_cannot_see(tmp_path, monkeypatch):
    # checkers get private, empty /tmp and /var/tmp; haproxy -c returns to the caller's folder
    tree = built(EXAMPLE, tmp_path)
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli("check", tree, "--router", "shop-r1")
    assert code == 0, stdout + stderr


def test_check_unknown_router(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    code, _, stderr = run_cli("check", tree, "--router", "nope")
    assert code == 1 and "no router nope" in stderr


# --- a built tree is untrusted input: check and lab refuse what its manifest does not describe ---

def refused(tree: Path, *command: str) -> str:
    """stderr of a refused command (one line, exit 1); it must have created no namespace and no lab."""
    before = netns_list()
    code, stdout, stderr = run_cli(*command, tree)
    assert code == 1, stdout + stderr
    assert len(stderr.strip().splitlines()) == 1 and "internal error" not in stderr and "Traceback" not in stderr
    assert netns_list() == before and not netns_list(lab.lab_name(tree))
    assert not (lab.RUN_ROOT / lab.lab_name(tree)).exists()
    return stderr


def test_check_and_lab_refuse_an_unlisted_file(tmp_path):
    # an ld.so.preload overlaid on /etc would be loaded into every checker and daemon, as root
    tree = built(EXAMPLE, tmp_path)
    preload = tree / "shop-r1/etc/ld.so.preload"
    preload.write_text(f"{tmp_path}/evil.so\n")
    for command in (("check",), ("lab", "up")):
        assert f"{preload}: not listed in" in refused(tree, *command)


def test_check_and_lab_refuse_a_file_changed_after_the_build(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    cfg = tree / "shop-r1/etc/haproxy/haproxy.cfg"
    cfg.write_text(cfg.read_text() + "# edited\n")
    for command in (("check",), ("lab", "up")):
        assert f"{cfg} does not match its manifest" in refused(tree, *command)


def test_check_and_lab_refuse_a_broken_manifest_naming_it(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    manifest = tree / "blog-r1" / MANIFEST
    manifest.write_text("{")
    for command in (("check",), ("lab", "up")):
        assert str(manifest) in refused(tree, *command)


def test_check_and_lab_refuse_a_symlink(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    cfg = tree / "shop-r1/etc/haproxy/haproxy.cfg"
    same = tmp_path / "haproxy.cfg"  # same content, so only the link itself is wrong
    same.write_bytes(cfg.read_bytes())
    cfg.unlink()
    cfg.symlink_to(same)
    for command in (("check",), ("lab", "up")):
        assert "symlink" in refused(tree, *command)


def test_check_and_lab_refuse_a_manifest_path_outside_the_tree(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    (tree.parent / "x").write_text("outside\n")
    rehash(tree / "blog-r1", add={"../../x": "networking"})
    for command in (("check",), ("lab", "up")):
        assert "'../../x' is not a file vpcgen generates" in refused(tree, *command)


LUA = """-- a hostile tree's code, run by haproxy -c when it parses lua-load
local uid = io.popen("id -u"):read("*l")
local marker = io.open("/etc/vpcgen-lua-marker", "w")
print("lua ran as uid " .. uid .. (marker and ", marker written" or ", marker refused"))
"""


def hostile_haproxy(tree: Path) -> Path:
    """shop-r1's haproxy config loading Lua code the tree carries in a listed file, re-hashed."""
    router = tree / "shop-r1"
    (router / "etc/frr").mkdir()
    (router / "etc/frr/daemons").write_text(LUA)
    cfg = router / "etc/haproxy/haproxy.cfg"
    cfg.write_text(cfg.read_text().replace("global\n", "global\n    lua-load /etc/frr/daemons\n", 1))
    rehash(router, add={"etc/frr/daemons": "frr"})
    return cfg


def test_check_and_lab_refuse_haproxy_lua_load(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    cfg = hostile_haproxy(tree)
    line = cfg.read_text().splitlines().index("    lua-load /etc/frr/daemons") + 1
    for command in (("check",), ("lab", "up")):
        assert f"{cfg}:{line}: error: haproxy: 'lua-load' runs code" in refused(tree, *command)


@pytest.mark.parametrize("line", ["    lua-prepend-path /x/?.lua", "    option external-check",
                                  "    external-check command /bin/sh", "    acl a src -f /etc/shadow",
                                  "    http-request set-header X %[src,map(/etc/shadow)]",
                                  "    http-request use-service lua.x", "    setenv LD_PRELOAD /x.so"])
def test_haproxy_directives_that_run_code_or_read_files_are_refused(line, tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"global\n    maxconn 10\n{line}\n")
    with pytest.raises(TreeError, match=rf"{cfg}:3: error: haproxy: "):
        check.refuse_unsafe_haproxy(cfg, str(cfg))


def test_haproxy_check_runs_unprivileged_in_a_namespace(tmp_path):
    # even a config that got past the refusal cannot act as root: haproxy -c runs as nobody
    tree = built(EXAMPLE, tmp_path)
    hostile_haproxy(tree)
    router = read_routers(tree, ["shop-r1"])["shop-r1"]
    staged = netns.stage(router, tmp_path / "staged")
    before = netns_list()
    ok, output = check._haproxy(staged)
    assert "lua ran as uid 65534, marker refused" in output, output
    assert netns_list() == before


def test_lab_refuses_a_sysctl_that_is_not_per_namespace(tmp_path):
    tree = built(EXAMPLE, tmp_path)
    conf = tree / "shop-r1/etc/sysctl.d/90-vpcgen.conf"
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    want = "1" if swappiness.strip() != "1" else "2"
    conf.write_text(conf.read_text() + f"vm.swappiness = {want}\n")
    rehash(tree / "shop-r1")
    line = len(conf.read_text().splitlines())
    assert f"{conf}:{line}: error: 'vm.swappiness = {want}'" in refused(tree, "lab", "up")
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness


def test_lab_sysctl_allowlist(tmp_path):
    built_conf = (built(EXAMPLE, tmp_path) / "shop-r1/etc/sysctl.d/90-vpcgen.conf")
    assert ("net.ipv4.ip_forward", "1") in lab.sysctls(built_conf, built_conf)
    conf = tmp_path / "sysctl.conf"
    for good in ("net.ipv4.conf.eth2/1200.rp_filter = 1", "net.ipv6.conf.lo.disable_ipv6 = 0",
                 "net.ipv4.neigh.eth1/50.proxy_delay = 0",
                 "net.ipv4.tcp_syncookies = 1", "net.ipv4.ip_nonlocal_bind = 1"):
        conf.write_text(good + "\n")
        assert lab.sysctls(conf, conf) == [tuple(x.strip() for x in good.split("="))]
    for bad in ("vm.swappiness = 1", "kernel.core_pattern = |/x", "net.core.rmem_max = 1",
                "net.ipv4.conf.//.x = 1", "net.ipv4.ip_forward = 1; reboot", "net.ipv4.tcp_rmem = 1 2 3",
                "-net.ipv4.ip_forward = 1"):
        conf.write_text(bad + "\n")
        with pytest.raises(TreeError, match="only per-namespace sysctls"):
            lab.sysctls(conf, conf)


def test_a_terminated_check_leaves_no_namespace(tmp_path):
    """SIGTERM (CI cancelling a job) unwinds like an interrupt: every scratch namespace is removed."""
    import signal
    import sys
    import time
    tree = built(EXAMPLE, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "vpcgen", "check", str(tree)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    mine = f"vpcgen-chk-{proc.pid}-"
    deadline = time.monotonic() + 20
    while not netns_list(mine) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert netns_list(mine), "the check made no namespace before it ended"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted" in err
    assert netns_list(mine) == set()
