"""`vpcgen deploy` against a real OpenSSH server: each router is a folder on this machine reached
over its own loopback address, with the site's service commands logging what they are run on."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from conftest import FIXTURE_SITES, run_cli
from sshd import Sshd, keygen
from vpcgen import deploy as deploy_module

ROUTERS = {"pair-r1": "127.0.0.11", "pair-r2": "127.0.0.12", "solo-r1": "127.0.0.21"}
SECRETS = {"VPCGEN_SECRET_HQ_PSK": "s3cret 'psk' with \"quotes\""}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sshd = Sshd(tmp_path_factory.mktemp("sshd"), sorted(ROUTERS.values())).start()
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
