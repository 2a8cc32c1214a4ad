"""`vpcgen deploy` against a real OpenSSH server: each router is a folder on this machine reached
over its own loopback address, with the site's service commands logging what they are run on."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURE_SITES, run_cli
from sshd import Sshd, keygen
from vpcgen.ops import deploy as deploy_module

ROUTERS = {"pair-r1": "127.0.0.11", "pair-r2": "127.0.0.12", "solo-r1": "127.0.0.21"}
SOLO_R2 = "127.0.0.22"  # the second router a test gives the single-router VPC
SECRETS = {"VPCGEN_SECRET_HQ_PSK": "s3cret 'psk' with \"quotes\""}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sshd = Sshd(tmp_path_factory.mktemp("sshd"), sorted([*ROUTERS.values(), SOLO_R2])).start()
    yield sshd
    sshd.stop()


class Lab:
    """A site wired to the test sshd, its built tree, and the folders standing in for the routers."""

    def __init__(self, tmp: Path, server: Sshd, monkeypatch):
        self.tmp, self.server = tmp, server
        self.site = tmp / "site"
        shutil.copytree(FIXTURE_SITES / "deploy", self.site)
        self.routers = tmp / "routers"
        self.routers.mkdir()
        text = (self.site / "site.yaml.in").read_text()
        (self.site / "site.yaml.in").unlink()  # a file vpcgen does not read is an error in a site folder
        (self.site / "site.yaml").write_text(text.replace("@PORT@", str(server.port))
                                             .replace("@ROUTERS@", str(self.routers)))
        (self.site / "known_hosts").write_text(server.known_hosts())
        for key, value in SECRETS.items():
            monkeypatch.setenv(key, value)
        self.out = tmp / "out"

    def build(self, *extra: str) -> Path:
        code, out, err = run_cli("build", self.site, "--output", self.out, *extra)
        assert code == 0, out + err
        return self.out / "deploy"

    def deploy(self, *extra: str):
        return run_cli("deploy", self.out / "deploy", "-i", self.server.user_key, *extra)

    def root(self, router: str) -> Path:
        return self.routers / router

    def current(self, router: str) -> Path | None:
        link = self.root(router) / "var/lib/vpcgen/current"
        return link.resolve() if link.is_symlink() else None

    def releases(self, router: str) -> list[str]:
        folder = self.root(router) / "var/lib/vpcgen/releases"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def log(self) -> list[tuple[str, str, str]]:
        path = self.routers / "log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [tuple(line.split()) for line in lines]

    def clear_log(self) -> None:
        (self.routers / "log").unlink(missing_ok=True)

    def set_state(self, router: str, state: str) -> None:
        self.root(router).mkdir(parents=True, exist_ok=True)
        (self.root(router) / "vrrp.state").write_text(state + "\n")

    def command(self, kind: str, service: str, command: str) -> None:
        """Replace one of the site's service commands (reload, check, health)."""
        site = yaml.safe_load((self.site / "site.yaml").read_text())
        site["defaults"]["deploy"]["commands"].setdefault(kind, {})[service] = command
        (self.site / "site.yaml").write_text(yaml.safe_dump(site))

    def change_acl(self, port: int) -> None:
        acl = self.site / "acls/web.yaml"
        acl.write_text(re.sub(r"ports: \d+", f"ports: {port}", acl.read_text()))

    def pending(self, router: str) -> Path:
        return self.root(router) / "var/lib/vpcgen/pending"

    def complete(self, router: str) -> str:
        """The current release's name, after checking it is complete: every file matches its sum
        (secret ones included) and every link of the router leads to it."""
        current = self.current(router)
        assert current is not None and current.parent.name == "releases", current
        manifest = json.loads((current / "etc/vpcgen/manifest.json").read_text())
        sums_file = current / "etc/vpcgen/secret-sums.json"
        secret = json.loads(sums_file.read_text()) if sums_file.exists() else {}
        for entry in manifest["files"]:
            data = (current / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == (entry.get("sha256") or secret[entry["path"]]), entry
            link = self.root(router) / entry["path"]
            assert link.is_symlink() and link.read_bytes() == data, link
        return current.name


@pytest.fixture
def lab(tmp_path, server, monkeypatch) -> Lab:
    lab = Lab(tmp_path, server, monkeypatch)
    lab.set_state("pair-r1", "MASTER")
    lab.set_state("pair-r2", "BACKUP")
    return lab


def results(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\S+)\s+(changed|skipped|failed|rolled back|planned|unchanged)\s+\d", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_first_deploy_then_unchanged(lab):
    tree = lab.build()
    code, out, err = lab.deploy()
    assert code == 0, out + err
    assert results(out) == {r: "changed" for r in ROUTERS}
    for router in ROUTERS:
        current = lab.current(router)
        assert current is not None and current.parent.name == "releases"
        for entry in json.loads((tree / router / "etc/vpcgen/manifest.json").read_text())["files"]:
            link = lab.root(router) / entry["path"]
            # every file is a link through `current` into the release, with the tree's mode
            assert os.readlink(link) == str(lab.root(router) / "var/lib/vpcgen/current" / entry["path"])
            assert link.read_bytes() == (tree / router / entry["path"]).read_bytes()
            assert f"{stat.S_IMODE(link.stat().st_mode):04o}" == entry["mode"]
    assert stat.S_IMODE((lab.root("pair-r1") / "etc/swanctl/vpcgen-secrets.conf").stat().st_mode) == 0o600
    # a first deploy reloads every service of the router, in dependency order
    pair_r2 = [service for router, service, _ in lab.log() if router == "pair-r2"]
    assert pair_r2 == ["networking", "sysctl", "iptables", "conntrackd", "keepalived", "haproxy", "strongswan"]

    lab.clear_log()
    code, out, err = lab.deploy()
    assert code == 0 and results(out) == {r: "skipped" for r in ROUTERS}, out + err
    assert lab.log() == [] and all(len(lab.releases(r)) == 1 for r in ROUTERS)


def test_backup_before_master(lab):
    lab.build()
    for master, backup in (("pair-r1", "pair-r2"), ("pair-r2", "pair-r1")):
        lab.set_state(master, "MASTER")
        lab.set_state(backup, "BACKUP")
        lab.clear_log()
        # a change to both routers of the pair: the tier's list gets a rule
        acl = lab.site / "acls/web.yaml"
        acl.write_text(acl.read_text() + f"  - {{number: {len(acl.read_text())}, action: allow, traffic: ingress, "
                       "protocol: icmp}\n")
        lab.build()
        code, out, err = lab.deploy()
        assert code == 0, out + err
        order = [router for router, _, _ in lab.log() if router.startswith("pair")]
        assert order and order.index(master) > max(i for i, r in enumerate(order) if r == backup), order


def make_solo_a_pair(lab, keepalived: str, new_first: bool = False) -> None:
    """solo becomes a redundant pair with a new router solo-r2, listed second (or first: the pair's
    higher priority); ``keepalived`` is the site's reload command for keepalived."""
    solo = lab.site / "vpcs/solo.yaml"
    old, new = "  - {name: solo-r1, mgmt: 127.0.0.21}\n", f"  - {{name: solo-r2, mgmt: {SOLO_R2}}}\n"
    solo.write_text(solo.read_text().replace("redundant: false", "redundant: true").replace(
        old, new + old if new_first else old + new))
    lab.command("reload", "keepalived", f"echo {{router}} keepalived >> {lab.routers}/log && {keepalived}")
    lab.build()


@pytest.mark.parametrize("new_first", [False, True], ids=["new-router-second", "new-router-first"])
def test_a_single_router_made_a_pair_serves_until_the_new_router_is_master(lab, new_first):
    lab.build()
    code, out, err = lab.deploy()
    assert code == 0, out + err
    lab.clear_log()
    # keepalived's start: backup at once; the new router, with no adverts from the single one,
    # master a second later (its master-down interval), which it says in the log
    make_solo_a_pair(lab, f"echo BACKUP > {{root}}/vrrp.state && if [ {{router}} = solo-r2 ]; then "
                          f"(sleep 1; echo solo-r2 master >> {lab.routers}/log; echo MASTER > {{root}}/vrrp.state) "
                          "</dev/null >/dev/null 2>&1 & fi", new_first)
    code, out, err = lab.deploy()
    # (the pair's routers take the new reload command: nothing of theirs is reloaded)
    assert code == 0 and {r: results(out)[r] for r in ("solo-r1", "solo-r2")} == {
        "solo-r1": "changed", "solo-r2": "changed"}, out + err
    order = [(router, service) for router, service, *_ in lab.log() if router.startswith("solo")]
    # the single router is touched only once the new one is master: it kept the addresses until then
    handover = order.index(("solo-r2", "master"))
    assert {r for r, _ in order[:handover]} == {"solo-r2"}, order
    assert {r for r, _ in order[handover + 1:]} == {"solo-r1"} and ("solo-r1", "networking") in order, order
    assert "[solo-r2] waiting to be master: solo-r1 is not in VRRP" in err


def test_a_single_router_is_left_alone_when_its_new_peer_does_not_take_over(lab):
    lab.build()
    code, out, err = lab.deploy()
    assert code == 0, out + err
    before = lab.complete("solo-r1")
    lab.clear_log()
    make_solo_a_pair(lab, "echo BACKUP > {root}/vrrp.state")  # never master: say a broken sync link
    code, out, err = lab.deploy()
    assert code == 1 and {r: results(out)[r] for r in ("solo-r1", "solo-r2")} == {
        "solo-r1": "failed", "solo-r2": "failed"}, out + err
    assert "did not take over from solo-r1: VRRP state is BACKUP 3 s after the reload (expected MASTER)" in out
    assert "not deployed: solo-r2 of the same pair failed" in out
    assert lab.complete("solo-r1") == before and not [r for r, *_ in lab.log() if r == "solo-r1"]


def test_change_one_file_reloads_only_its_service(lab):
    lab.build()
    assert lab.deploy()[0] == 0
    first = lab.current("pair-r1")
    lab.clear_log()
    vpc = lab.site / "vpcs/pair.yaml"
    vpc.write_text(vpc.read_text().replace("public_port: 80, protocol: tcp", "public_port: 80, protocol: http"))
    lab.build()
    code, out, err = lab.deploy()
    assert code == 0, out + err
    assert results(out) == {"pair-r1": "changed", "pair-r2": "changed", "solo-r1": "skipped"}
    assert {service for _, service, _ in lab.log()} == {"haproxy"}
    assert lab.current("pair-r1") != first and first.is_dir()  # the previous release is kept for rollback


def test_checker_failure_keeps_the_previous_release(lab):
    lab.build()
    assert lab.deploy()[0] == 0
    before = {r: lab.current(r) for r in ROUTERS}
    (lab.root("solo-r1") / "fail-check").write_text("")
    (lab.site / "acls/web.yaml").write_text((lab.site / "acls/web.yaml").read_text().replace("ports: 80", "ports: 81"))
    lab.build()
    lab.clear_log()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1
    assert results(out) == {"solo-r1": "failed"} and "iptables checker rejected the new release" in out
    assert lab.current("solo-r1") == before["solo-r1"] and lab.log() == []  # nothing switched, nothing reloaded


def test_reload_failure_rolls_back(lab):
    lab.build()
    assert lab.deploy()[0] == 0
    old = lab.current("pair-r2")
    (lab.root("pair-r2") / "fail-reload").write_text("")
    vpc = lab.site / "vpcs/pair.yaml"
    vpc.write_text(vpc.read_text().replace("routers:", "vrrp: {advert_interval_ms: 300}\nrouters:"))
    lab.build()
    lab.clear_log()
    code, out, err = lab.deploy()
    assert code == 1
    res = results(out)
    assert res["pair-r2"] == "rolled back" and res["pair-r1"] == "failed"  # the master is left alone
    assert lab.current("pair-r2") == old
    log = [(service, release) for router, service, release in lab.log() if router == "pair-r2"]
    new = [release for service, release in log if release != str(old)]
    # keepalived was reloaded on the new release, failed, and was reloaded again on the old one
    assert ("keepalived", str(old)) == log[-1] and new and all(s == "keepalived" for s, _ in log)
    assert not [r for r, _, _ in lab.log() if r == "pair-r1"]


def test_dropped_connection_mid_upload(lab, server, monkeypatch):
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    old = lab.current("solo-r1")
    (lab.site / "acls/web.yaml").write_text((lab.site / "acls/web.yaml").read_text().replace("ports: 80", "ports: 8080"))
    lab.build()
    real_run = deploy_module.Remote.run

    def cut_during_upload(self, command, data=b"", timeout=deploy_module.COMMAND_TIMEOUT):
        if data and "tar -x" in command:
            channel = self.conn.client.get_transport().open_session()
            channel.exec_command(command)
            channel.sendall(data[: len(data) // 2])
            server.kill_sessions()  # the router side of the connection dies half-way
            channel.sendall(data[len(data) // 2:])
            return channel.recv_exit_status(), ""
        return real_run(self, command, data, timeout)

    monkeypatch.setattr(deploy_module.Remote, "run", cut_during_upload)
    code, out, _ = lab.deploy("--router", "solo-r1")
    assert code == 1 and results(out) == {"solo-r1": "failed"}
    assert lab.current("solo-r1") == old  # the previous release stays active
    assert [r for r in lab.releases("solo-r1") if not r.startswith(".partial-")] == [old.name]
    monkeypatch.setattr(deploy_module.Remote, "run", real_run)
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert not [r for r in lab.releases("solo-r1") if r.startswith(".partial-")]  # the leftover is gone


def test_unknown_and_changed_host_keys_are_refused(lab, server, tmp_path):
    tree = lab.build()
    # unknown: solo-r1's address is missing from known_hosts
    (tree / "known_hosts").write_text(server.known_hosts([ROUTERS["pair-r1"], ROUTERS["pair-r2"]]))
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1 and "is not in" in out + err and "refusing" in out + err
    # changed: solo-r1 is pinned with another key
    other = keygen(tmp_path / "other")
    (tree / "known_hosts").write_text(server.known_hosts([ROUTERS["solo-r1"]], key=other))
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1 and "has CHANGED" in out + err
    assert lab.current("solo-r1") is None and not (tree / "known_hosts").read_text().count("\n") > 1


def test_concurrent_deploys_are_locked_out(lab):
    tree = lab.build()
    target = deploy_module.load_targets(tree, ["solo-r1"])[0]
    holder = deploy_module.Remote(deploy_module.connect(target, tree / "known_hosts", [str(lab.server.user_key)]))
    holder.lock(f"{target.base}/lock")
    try:
        code, out, err = lab.deploy("--router", "solo-r1")
        assert code == 1 and "another deploy holds the lock" in out + err
        assert lab.current("solo-r1") is None
    finally:
        holder.close()
    assert lab.deploy("--router", "solo-r1")[0] == 0  # released with the holder's session


def test_placeholder_trees_are_refused(lab):
    lab.build("--placeholder-secrets")
    code, out, err = lab.deploy()
    assert code == 1 and "placeholder-secrets" in err
    assert not lab.routers.joinpath("solo-r1/var").exists()


def test_dry_run_changes_nothing(lab):
    lab.build()
    code, out, err = lab.deploy("--dry-run")
    assert code == 0, out + err
    assert results(out) == {r: "planned" for r in ROUTERS}
    assert "reload: networking, sysctl, iptables" in out and "etc/iptables/rules.v4" in out
    assert all(lab.current(r) is None for r in ROUTERS) and lab.log() == []
    assert lab.deploy()[0] == 0
    code, out, _ = lab.deploy("--dry-run")
    assert results(out) == {r: "unchanged" for r in ROUTERS}


def test_parallel_deploy_and_release_pruning(lab):
    lab.build()
    for port in (81, 82, 83):
        acl = lab.site / "acls/web.yaml"
        acl.write_text(re.sub(r"ports: \d+", f"ports: {port}", acl.read_text()))
        lab.build()
        code, out, err = lab.deploy("--parallel", "2")
        assert code == 0 and set(results(out).values()) == {"changed"}, out + err
    assert all(len(lab.releases(r)) == 2 for r in ROUTERS)  # keep_releases: 2


# --- faults: every one must end with a truthful result and the router on a complete release ---

def wait_idle(path: Path, timeout: float = 10.0) -> None:
    """Wait until no process has ``path`` in its command line: the router's side of a cut session
    may run on for a moment after the client has gone."""
    needle = str(path).encode()
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if needle in (proc / "cmdline").read_bytes():
                        busy.append(proc.name)
                except OSError:
                    pass
        if not busy:
            return
        assert time.monotonic() < deadline, f"processes still using {path}: {busy}"
        time.sleep(0.1)


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        try:
            wait_idle(path)
        finally:
            if subprocess.run(["umount", str(path)]).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=True)  # still busy: detach it anyway


@contextmanager
def immutable(path: Path):
    """A folder not even root can add to (chattr +i)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_disk_full_fails_and_keeps_the_previous_release(lab):
    lab.build()
    releases = lab.root("solo-r1") / "var/lib/vpcgen/releases"
    with tmpfs(releases, "1m"):
        assert lab.deploy("--router", "solo-r1")[0] == 0
        first = lab.complete("solo-r1")
        info = os.statvfs(releases)
        used = (info.f_blocks - info.f_bfree) * info.f_frsize
        # room for one more page: the next release cannot fit
        subprocess.run(["mount", "-o", f"remount,size={used + 4096}", str(releases)], check=True)
        lab.change_acl(8080)
        lab.build()
        lab.clear_log()
        code, out, err = lab.deploy("--router", "solo-r1")
        assert code == 1 and results(out) == {"solo-r1": "failed"}, out + err
        assert "upload failed" in out and "No space left on device" in out
        assert lab.complete("solo-r1") == first and lab.releases("solo-r1") == [first]  # the partial is gone
        assert lab.log() == [] and not lab.pending("solo-r1").exists()


def test_read_only_link_folder_is_not_reported_as_changed(lab):
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    # the new release brings a file into a folder the router does not let vpcgen write
    vpc = lab.site / "vpcs/solo.yaml"
    vpc.write_text(vpc.read_text() + "public_ips:\n  - {name: www}\nload_balancers:\n  - {name: www, public_ip: www, "
                   "public_port: 80, protocol: tcp, members: [10.2.0.10]}\n")
    lab.build()
    with immutable(lab.root("solo-r1") / "etc/haproxy"):
        code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1 and results(out) == {"solo-r1": "rolled back"}, out + err
    assert "switching releases failed" in out
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists()
    assert not (lab.root("solo-r1") / "etc/haproxy/haproxy.cfg").is_symlink()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert (lab.root("solo-r1") / "etc/haproxy/haproxy.cfg").is_file()


def test_client_dying_mid_upload_leaves_no_release(lab, monkeypatch):
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    lab.change_acl(8080)
    lab.build()
    real_run = deploy_module.Remote.run

    def die_during_upload(self, command, data=b"", timeout=deploy_module.COMMAND_TIMEOUT):
        if data and "tar -x" in command:
            channel = self.conn.client.get_transport().open_session()
            channel.exec_command(command)
            # every file but the last (the manifest) arrives whole: the checkers would pass
            channel.sendall(data[: data.index(b'"_generated"') + 100])
            self.conn.client.get_transport().close()  # the deployer's side of the connection dies
            raise EOFError("deployer killed")
        return real_run(self, command, data, timeout)

    monkeypatch.setattr(deploy_module.Remote, "run", die_during_upload)
    code, out, _ = lab.deploy("--router", "solo-r1")
    assert code == 1 and results(out) == {"solo-r1": "failed"}
    wait_idle(lab.root("solo-r1"))  # what the router does after the client has gone
    assert [r for r in lab.releases("solo-r1") if not r.startswith(".partial-")] == [first]
    assert lab.complete("solo-r1") == first
    monkeypatch.setattr(deploy_module.Remote, "run", real_run)
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert lab.complete("solo-r1") != first and not [r for r in lab.releases("solo-r1") if r.startswith(".")]


def test_session_lost_after_the_switch_is_undone_by_the_router(lab, server):
    # the iptables reload cuts the deploy's connection (the router's sshd child dies) before it runs
    lab.command("reload", "iptables", f"[ ! -e {{root}}/drop-session ] || {{ rm {{root}}/drop-session; "
                f"kill -9 $(pgrep -P {server.proc.pid}) 0; }}; "
                f"echo {{router}} iptables $(readlink -f {{root}}/var/lib/vpcgen/current) >> {lab.routers}/log")
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    lab.change_acl(8080)
    lab.build()
    (lab.root("solo-r1") / "drop-session").write_text("")
    lab.clear_log()
    start = time.monotonic()
    code, out, err = lab.deploy("--router", "solo-r1", "--confirm-timeout", "3")
    assert code == 1 and results(out) == {"solo-r1": "rolled back"}, out + err
    assert f"the router restored {first} by itself" in out and time.monotonic() - start >= 3
    # switched, never reloaded by the deployer; the router's own revert reloaded the first release
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists()
    assert lab.log() == [("solo-r1", "iptables", str(lab.current("solo-r1")))]
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert lab.complete("solo-r1") != first


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan may wait for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def killed_deployer(lab, timeout: str) -> tuple[str, str]:
    """Deploy a change to solo-r1 from a separate `vpcgen deploy` process that its router kills with
    SIGKILL while the iptables reload runs (after the switch); (first release, second release)."""
    pidfile = lab.root("solo-r1") / "deployer.pid"
    lab.command("reload", "iptables", f"[ ! -e {{root}}/kill-deployer ] || {{ rm {{root}}/kill-deployer; "
                f"kill -9 $(cat {pidfile}); }}; "
                f"echo {{router}} iptables $(readlink -f {{root}}/var/lib/vpcgen/current) >> {lab.routers}/log")
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    lab.change_acl(8080)
    lab.build()
    (lab.root("solo-r1") / "kill-deployer").write_text("")
    lab.clear_log()
    command = [sys.executable, "-m", "vpcgen", "deploy", str(lab.out / "deploy"), "-i", str(lab.server.user_key),
               "--router", "solo-r1", "--confirm-timeout", timeout]
    proc = subprocess.run(["sh", "-c", f'echo $$ > {pidfile}; exec "$@"', "sh", *command], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, proc.stdout + proc.stderr  # killed by the router, not finished
    assert "switching to" in proc.stderr and "rolled back" not in proc.stdout
    wait_idle(lab.root("solo-r1"))  # the killed session's reload may still be finishing on the router
    second = lab.current("solo-r1").name
    assert second != first and lab.pending("solo-r1").read_text().split()[:2] == [second, first]
    return first, second


def test_router_reverts_when_the_deployer_is_killed_after_the_switch(lab):
    first, second = killed_deployer(lab, "3")
    armed = lab.root("solo-r1") / "var/lib/vpcgen/confirm/armed"
    timer = int(armed.read_text().split()[1])
    deadline = time.monotonic() + 20
    while alive(timer):
        assert time.monotonic() < deadline, "the router's timer did not finish"
        time.sleep(0.2)
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists() and not armed.exists()
    # the router reloaded what the previous release needs, on that release
    assert lab.log()[-1] == ("solo-r1", "iptables", str(lab.current("solo-r1")))
    record = (lab.root("solo-r1") / "var/lib/vpcgen/confirm/reverted").read_text().split()
    assert record == [second, first, "restored"]
    # the next deploy says what the router did, and deploys the tree afresh
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert f"the router undid the unconfirmed release {second} by itself" in err
    assert lab.complete("solo-r1") not in (first,) and not lab.pending("solo-r1").exists()


def test_next_deploy_takes_over_a_dead_deployers_timer(lab):
    first, second = killed_deployer(lab, "600")
    timer = int((lab.root("solo-r1") / "var/lib/vpcgen/confirm/armed").read_text().split()[1])
    assert alive(timer)
    lab.clear_log()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert f"took over the confirm timer of the unconfirmed release {second}" in err
    assert "finishing the interrupted deploy" in out
    assert lab.complete("solo-r1") == second and not lab.pending("solo-r1").exists()
    assert lab.log() == [("solo-r1", "iptables", str(lab.current("solo-r1")))]
    deadline = time.monotonic() + 5
    while alive(timer):  # the dead deployer's timer was cancelled, not left to fire
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_timer_whose_cancel_missed_never_undoes_a_later_deploy(lab):
    """revert.sh is rewritten by every deploy that arms a timer: a timer of an earlier deploy that
    outlived its cancel runs the latest script, which acts only for the timer of its own release."""
    first, second = killed_deployer(lab, "600")
    base = lab.root("solo-r1") / "var/lib/vpcgen"
    timer = int((base / "confirm/armed").read_text().split()[1])
    try:
        stale = subprocess.run(["sh", "confirm/revert.sh", first], cwd=base, capture_output=True, text=True, timeout=60)
        assert stale.returncode == 0 and stale.stdout == "", stale.stdout + stale.stderr
        assert lab.current("solo-r1").name == second and (base / "confirm/armed").exists()
        assert not (base / "confirm/reverted").exists()
        # the timer of the release it guards does undo it
        own = subprocess.run(["sh", "confirm/revert.sh", second], cwd=base, capture_output=True, text=True, timeout=60)
        assert own.returncode == 0 and "restoring" in own.stdout, own.stdout + own.stderr
        assert lab.complete("solo-r1") == first
        assert (base / "confirm/reverted").read_text().split() == [second, first, "restored"]
    finally:
        os.killpg(timer, signal.SIGTERM)


def test_confirm_that_comes_too_late_is_undone(lab):
    """A deployer alive but slower than the timeout: the router's revert wins, deploy says so."""
    lab.command("health", "iptables", "sleep 4")
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    lab.change_acl(8080)
    lab.build()
    code, out, err = lab.deploy("--router", "solo-r1", "--confirm-timeout", "2")
    assert code == 1 and results(out) == {"solo-r1": "rolled back"}, out + err
    assert f"the router restored {first} by itself" in out
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists()


def test_traversal_and_broken_manifests_are_refused(lab, tmp_path):
    tree = lab.build()
    manifest_path = tree / "solo-r1/etc/vpcgen/manifest.json"
    good = manifest_path.read_text()
    evil = "../../../escape/pwned.conf"
    outside = tmp_path / "escape/pwned.conf"  # where the entry points from the tree
    outside.parent.mkdir()
    outside.write_text("read from outside the tree\n")
    manifest = json.loads(good)
    manifest["files"].append({"path": evil, "mode": "0644", "service": "iptables",
                              "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()})
    manifest_path.write_text(json.dumps(manifest))
    try:
        code, out, err = lab.deploy("--router", "solo-r1")
        assert code == 1 and str(manifest_path) in err and "not a file vpcgen generates" in err, out + err
        assert not (lab.root("solo-r1") / evil).exists() and not (lab.root("solo-r1") / "var").exists()
    finally:
        (lab.root("solo-r1") / evil).unlink(missing_ok=True)  # only there if the traversal worked
    for broken, message in (('{"files": [', "not valid JSON"), ("[]", "must be a JSON object"),
                            (good.replace('"root"', '"rooot"'), "deploy.root")):
        manifest_path.write_text(broken)
        code, out, err = lab.deploy("--router", "solo-r1")
        assert code == 1 and str(manifest_path) in err and message in err and "internal error" not in err, err
    assert not (lab.root("solo-r1") / "var").exists()


def test_health_check_failing_rolls_back(lab):
    lab.command("health", "iptables", "test ! -e {root}/fail-health")
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    (lab.root("solo-r1") / "fail-health").write_text("")
    lab.change_acl(8080)
    lab.build()
    lab.clear_log()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1 and results(out) == {"solo-r1": "rolled back"}, out + err
    assert "iptables is not healthy" in out
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists()
    # reloaded on the new release, then on the restored one
    assert [(s, Path(r).name) for _, s, r in lab.log()][-1] == ("iptables", first) and len(lab.log()) == 2
    (lab.root("solo-r1") / "fail-health").unlink()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
    assert lab.complete("solo-r1") != first


def test_failed_rollback_says_so_and_is_finished_later(lab):
    # an unhealthy new release, and a reload that then fails on the restored one too
    lab.command("health", "iptables", "test ! -e {root}/fail-health || { touch {root}/fail-restore; false; }")
    lab.command("reload", "iptables", f"echo {{router}} iptables $(readlink -f {{root}}/var/lib/vpcgen/current) >> "
                f"{lab.routers}/log && test ! -e {{root}}/fail-restore")
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    (lab.root("solo-r1") / "fail-health").write_text("")
    lab.change_acl(8080)
    lab.build()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1 and results(out) == {"solo-r1": "failed"}, out + err
    assert f"restoring {first} failed too" in out and f"current release is {first}" in out
    assert lab.complete("solo-r1") == first and lab.pending("solo-r1").exists()
    # back to the first tree: the router runs it on disk, but not confirmed, so it is applied again
    for marker in ("fail-health", "fail-restore"):
        (lab.root("solo-r1") / marker).unlink()
    lab.change_acl(80)
    lab.build()
    lab.clear_log()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "changed"} and "finishing the interrupted deploy" in out, out
    assert lab.log() == [("solo-r1", "iptables", str(lab.current("solo-r1")))]
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists()


def test_pruning_ignores_the_clock(lab, monkeypatch):
    """Releases named by a deployer whose clock was years ahead are pruned like any other."""
    lab.build()
    real_name = deploy_module.release_name
    names = []
    for port, future in ((81, True), (82, True), (83, False), (84, False)):
        monkeypatch.setattr(deploy_module, "release_name",
                            lambda t, taken, f=future: ("2999" if f else "") + real_name(t, taken)[4 if f else 0:])
        lab.change_acl(port)
        lab.build()
        code, out, err = lab.deploy("--router", "solo-r1")
        assert code == 0 and results(out) == {"solo-r1": "changed"}, out + err
        names.append(lab.complete("solo-r1"))
        # what stays is what was current and the release before it, whatever their names say
        assert lab.releases("solo-r1") == sorted(names[-2:]), names


def test_displaced_operator_files_keep_every_version(lab):
    lab.build()
    rules = lab.root("solo-r1") / "etc/iptables/rules.v4"
    rules.parent.mkdir(parents=True)
    rules.write_text("operator's first\n")
    assert lab.deploy("--router", "solo-r1")[0] == 0
    rules.unlink()
    rules.write_text("operator's second\n")  # edited by hand over vpcgen's link
    lab.change_acl(8080)
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    lab.complete("solo-r1")
    displaced = lab.root("solo-r1") / "var/lib/vpcgen/displaced/etc/iptables"
    assert sorted(p.read_text() for p in displaced.iterdir()) == ["operator's first\n", "operator's second\n"]


def test_changed_secret_is_deployed(lab, monkeypatch):
    tree = lab.build()
    assert lab.deploy()[0] == 0
    monkeypatch.setenv("VPCGEN_SECRET_HQ_PSK", "another secret")
    lab.build()
    lab.clear_log()
    code, out, _ = lab.deploy("--dry-run")
    assert results(out) == {"pair-r1": "planned", "pair-r2": "planned", "solo-r1": "unchanged"}
    assert "etc/swanctl/vpcgen-secrets.conf" in out and "reload: strongswan" in out
    code, out, err = lab.deploy()
    assert code == 0 and results(out) == {"pair-r1": "changed", "pair-r2": "changed", "solo-r1": "skipped"}, out + err
    assert {service for _, service, _ in lab.log()} == {"strongswan"}
    for router in ("pair-r1", "pair-r2"):
        lab.complete(router)
        secret = lab.root(router) / "etc/swanctl/vpcgen-secrets.conf"
        assert secret.read_bytes() == (tree / router / "etc/swanctl/vpcgen-secrets.conf").read_bytes()
        assert base64.b64encode(b"another secret") in secret.read_bytes()


def test_upload_verifies_every_file_secret_ones_included(lab):
    tree = lab.build()
    target = deploy_module.load_targets(tree, ["pair-r1"])[0]
    with tarfile.open(fileobj=io.BytesIO(deploy_module.tar_of(target))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        sums = dict(reversed(line.split("  ")) for line in
                    tar.extractfile(deploy_module.SUMS).read().decode().splitlines())
        for path in target.files():
            data = tar.extractfile(path).read()
            assert sums[path] == hashlib.sha256(data).hexdigest() and data == (tree / "pair-r1" / path).read_bytes()
            assert stat.S_IMODE(members[path].mode) == stat.S_IMODE((tree / "pair-r1" / path).stat().st_mode)
    assert set(sums) == set(target.files()) and {"etc/swanctl/vpcgen-secrets.conf", "etc/vpcgen/secret-sums.json"} <= set(sums)


def test_dnsmasq_and_chrony_reload_when_their_files_change(lab):
    """The routers' real checkers (dnsmasq --test, chronyd -p) pass the new files; a change of the
    zone's DNS servers reloads dnsmasq only, of its time sources chrony only."""
    for service, path in (("dnsmasq", "etc/dnsmasq.d/vpcgen.conf"), ("chrony", "etc/chrony/sources.d/vpcgen.sources")):
        lab.command("reload", service, f"echo {{router}} {service} $(readlink -f {{root}}/var/lib/vpcgen/current) "
                                       f">> {lab.routers}/log")
        lab.command("health", service, f"test -r {{root}}/{path}")
    zone = lab.site / "zones/z.yaml"
    zone.write_text(zone.read_text() + "dns_servers: [192.0.2.53]\nntp_servers: [192.0.2.123]\n")
    lab.build()
    code, out, err = lab.deploy()
    assert code == 0, out + err
    assert {"dnsmasq", "chrony"} <= {service for _, service, _ in lab.log()}
    for old, new, service in (("192.0.2.53", "192.0.2.54", "dnsmasq"), ("192.0.2.123", "192.0.2.124", "chrony")):
        lab.clear_log()
        zone.write_text(zone.read_text().replace(old, new))
        lab.build()
        code, out, err = lab.deploy()
        assert code == 0, out + err
        assert {s for _, s, _ in lab.log()} == {service}
        assert new in (lab.root("solo-r1") / ("etc/dnsmasq.d/vpcgen.conf" if service == "dnsmasq" else
                                               "etc/chrony/sources.d/vpcgen.sources")).read_text()


def test_dry_run_shows_the_deployed_files_against_the_tree_secrets_redacted(lab, monkeypatch):
    tree = lab.build()
    assert lab.deploy()[0] == 0
    rules = lab.root("solo-r1") / "etc/iptables/rules.v4"
    # a hand edit on the router shows too: the diff is against what is there now, not the last release
    rules.unlink()
    rules.write_text((tree / "solo-r1/etc/iptables/rules.v4").read_text() + "# edited by hand\n")
    lab.change_acl(8080)
    monkeypatch.setenv("VPCGEN_SECRET_HQ_PSK", "the new secret")
    lab.build()
    code, out, err = lab.deploy("--dry-run")
    assert code == 0 and results(out) == {r: "planned" for r in ROUTERS}, out + err
    root = lab.root("solo-r1")
    assert f"--- solo-r1:{root}/etc/iptables/rules.v4" in out
    assert f"+++ {tree}/solo-r1/etc/iptables/rules.v4" in out
    removed = [line for line in out.splitlines() if line.startswith("-") and "--dport 80 " in line + " "]
    added = [line for line in out.splitlines() if line.startswith("+") and "--dport 8080 " in line + " "]
    assert removed and added and "-# edited by hand" in out.splitlines()
    secret_file = f"pair-r1:{lab.root('pair-r1')}/etc/swanctl/vpcgen-secrets.conf"
    assert f"--- {secret_file}" in out and "@@ secret file differs: content not shown @@" in out
    for value in (SECRETS["VPCGEN_SECRET_HQ_PSK"], "the new secret"):
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in out + err
    # the routers are untouched
    assert lab.complete("pair-r1") and "# edited by hand" in rules.read_text()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    code, out, _ = lab.deploy("--router", "solo-r1", "--dry-run")
    assert results(out) == {"solo-r1": "unchanged"} and "---" not in out


def test_rollback_to_the_previous_and_to_a_named_release(lab):
    names = []
    for port in (81, 82):
        lab.change_acl(port)
        lab.build()
        assert lab.deploy("--router", "solo-r1")[0] == 0
        names.append(lab.complete("solo-r1"))
    first, second = names
    lab.clear_log()
    rollback = ("rollback", lab.out / "deploy", "--router", "solo-r1", "-i", lab.server.user_key)
    code, out, err = run_cli(*rollback)
    assert code == 0 and f"solo-r1  changed" in out and f"release {first}" in out, out + err
    assert lab.complete("solo-r1") == first and not lab.pending("solo-r1").exists()
    # the rolled-back-to release's own reload, on that release
    assert lab.log() == [("solo-r1", "iptables", str(lab.current("solo-r1")))]
    assert "--dport 81 " in (lab.root("solo-r1") / "etc/iptables/rules.v4").read_text()
    # the previous release is now the one rolled back from: a second rollback goes forward again
    code, out, err = run_cli(*rollback)
    assert code == 0 and lab.complete("solo-r1") == second, out + err
    # a named one
    code, out, err = run_cli(*rollback, "--to", first)
    assert code == 0 and lab.complete("solo-r1") == first, out + err
    code, out, err = run_cli(*rollback, "--to", first)
    assert code == 0 and "already the current release" in out and lab.complete("solo-r1") == first
    code, out, err = run_cli(*rollback, "--to", "20000101T000000Z-000000000000")
    assert code == 1 and "no release 20000101T000000Z-000000000000 on the router" in out
    assert f"releases: {first}, {second}" in out and lab.complete("solo-r1") == first
    # the deploy's checks apply: a release the checker rejects is not switched to
    (lab.root("solo-r1") / "fail-check").write_text("")
    lab.clear_log()
    code, out, err = run_cli(*rollback, "--to", second)
    assert code == 1 and "iptables checker rejected release" in out and lab.complete("solo-r1") == first
    assert lab.log() == []
    (lab.root("solo-r1") / "fail-check").unlink()
    # a release edited on the router is refused
    rules = lab.root("solo-r1") / "var/lib/vpcgen/releases" / second / "etc/iptables/rules.v4"
    rules.write_text(rules.read_text() + "# edited\n")
    code, out, err = run_cli(*rollback, "--to", second)
    assert code == 1 and f"release {second} does not match its manifest" in out
    assert lab.complete("solo-r1") == first


def test_rollback_without_a_previous_release(lab):
    lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    code, out, err = run_cli("rollback", lab.out / "deploy", "--router", "solo-r1", "-i", lab.server.user_key)
    assert code == 1 and "no previous release on the router" in out
    code, out, err = run_cli("rollback", lab.out / "deploy", "--router", "nope", "-i", lab.server.user_key)
    assert code == 1 and "no router nope" in err and "Traceback" not in out + err


def test_command_overrides_apply_without_changing_the_tree(lab):
    tree = lab.build()
    manifest = (tree / "solo-r1/etc/vpcgen/manifest.json").read_bytes()
    commands = lab.tmp / "commands.yaml"
    commands.write_text(yaml.safe_dump({"reload": {"iptables": f"echo {{router}} overridden {{root}} >> "
                                                               f"{lab.routers}/log"}}))
    code, out, err = lab.deploy("--router", "solo-r1", "--commands", commands)
    assert code == 0, out + err
    assert ("solo-r1", "overridden", str(lab.root("solo-r1"))) in lab.log()
    assert (tree / "solo-r1/etc/vpcgen/manifest.json").read_bytes() == manifest
    # the release is the tree's: a deploy without the overrides has nothing to do
    code, out, _ = lab.deploy("--router", "solo-r1")
    assert code == 0 and results(out) == {"solo-r1": "skipped"}
    commands.write_text("reload: [not, a, mapping]\n")
    code, out, err = lab.deploy("--router", "solo-r1", "--commands", commands)
    assert code == 1 and f"{commands}: 'reload' must map names to command strings" in err
