"""`vpcgen switchover`'s checks and waits, against the deploy tests' sshd. keepalived does not run on
these router folders: the handover command below plays its part (the master stops, the backup takes
over, the old master comes back as backup) by writing the routers' VRRP state files, so what is
tested here is what switchover checks, asks and waits for; the lab runs it against keepalived."""

from __future__ import annotations

import yaml

from conftest import run_cli
from test_deploy import Lab, lab, server  # noqa: F401


def setup(lab: Lab, master_conns: int = 10, backup_conns: int = 10) -> dict:
    lab.build()
    assert lab.deploy("--router", "pair-r1", "--router", "pair-r2")[0] == 0
    for router, internal, external in (("pair-r1", master_conns, 0), ("pair-r2", 0, backup_conns)):
        (lab.root(router) / "ct.stats").write_text(
            f"cache internal:\ncurrent active connections:\t{internal}\n"
            f"cache external:\ncurrent active connections:\t{external}\n")
    handover = (f"for r in pair-r1 pair-r2; do [ $r = {{router}} ] || other={lab.routers}/$r; done; "
                "echo STOP > {root}/vrrp.state; "
                "( sleep 0.3; echo MASTER > $other/vrrp.state; sleep 0.3; echo BACKUP > {root}/vrrp.state ) "
                "</dev/null >/dev/null 2>&1 &")
    return {"status": {"conntrackd": "cat {root}/ct.stats", "switchover": handover},
            "health": {"keepalived": "test ! -e {root}/unhealthy"}}


def switch(lab: Lab, commands: dict, *extra):
    path = lab.tmp / "commands.yaml"
    path.write_text(yaml.safe_dump(commands))
    return run_cli("switchover", lab.out / "deploy", "--vpc", "pair", "-i", lab.server.user_key,
                   "--commands", path, *extra)


def state(lab: Lab, router: str) -> str:
    return (lab.root(router) / "vrrp.state").read_text().strip()


def test_switchover_hands_over_and_waits_for_one_master(lab):
    commands = setup(lab)
    code, out, err = switch(lab, commands)
    assert code == 0, out + err
    assert out.startswith("pair: switched over: pair-r2 is MASTER") and "pair-r1 BACKUP" in out
    assert state(lab, "pair-r1") == "BACKUP" and state(lab, "pair-r2") == "MASTER"
    assert "pair-r2 in sync (10 of the master's 10 connections)" in err


def test_switchover_refuses_an_unhealthy_or_unsynced_backup(lab):
    commands = setup(lab, master_conns=100, backup_conns=0)
    code, out, _ = switch(lab, commands)
    assert code == 1 and "pair-r2 is not in sync: its external cache holds 0 connections" in out
    assert state(lab, "pair-r1") == "MASTER" and state(lab, "pair-r2") == "BACKUP"  # nothing asked
    (lab.root("pair-r2") / "ct.stats").write_text("cache external:\ncurrent active connections:\t95\n")
    (lab.root("pair-r2") / "unhealthy").write_text("")
    code, out, _ = switch(lab, commands)
    assert code == 1 and "pair-r2 is not healthy: keepalived" in out and state(lab, "pair-r1") == "MASTER"


def test_switchover_refuses_a_pair_without_one_master(lab):
    commands = setup(lab)
    lab.set_state("pair-r2", "FAULT")
    code, out, _ = switch(lab, commands)
    assert code == 1 and "not one MASTER and one BACKUP (pair-r1 MASTER, pair-r2 FAULT)" in out
    code, out, err = run_cli("switchover", lab.out / "deploy", "--vpc", "solo", "-i", lab.server.user_key)
    assert code == 1 and "VPC solo is not a redundant pair" in err


def test_switchover_that_does_not_happen_fails(lab):
    commands = setup(lab)
    commands["status"]["switchover"] = "true"  # the master ignores the request
    code, out, _ = switch(lab, commands, "--timeout", "2")
    assert code == 1 and "not exactly one new master within 2 s (pair-r1 MASTER, pair-r2 BACKUP)" in out
