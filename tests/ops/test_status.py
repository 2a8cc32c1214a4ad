"""`vpcgen status` against the deploy tests' real sshd: release, files and the pair verdict on the
router folders, and the live firewall of a network namespace this test creates and loads."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from conftest import run_cli
from test_deploy import Lab, killed_deployer, lab, server  # noqa: F401  (the same routers behind the same sshd)


@pytest.fixture
def netns():
    name = f"vpcgen-status-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=True)


def status(lab: Lab, *extra, commands: dict | None = None):
    args = ["status", lab.out / "deploy", "-i", lab.server.user_key, *extra]
    if commands is not None:
        path = lab.tmp / "commands.yaml"
        path.write_text(yaml.safe_dump(commands))
        args += ["--commands", path]
    return run_cli(*args)


def findings(out: str) -> list[dict]:
    return json.loads(out)["findings"]


def test_status_of_a_solo_router_files_release_and_live_firewall(lab, netns):
    tree = lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    rules = tree / "solo-r1/etc/iptables/rules.v4"
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore", str(rules)], check=True)
    commands = {"status": {"firewall": f"ip netns exec {netns} iptables-save"}}
    code, out, err = status(lab, "--router", "solo-r1", commands=commands)
    assert code == 0, out + err
    assert "all routers as built" in out and lab.complete("solo-r1") in out

    # a rule deleted by hand: exactly that finding
    filter_table = rules.read_text().split("*filter", 1)[1].split("COMMIT", 1)[0]
    rule = next(line for line in filter_table.splitlines() if line.startswith("-A FORWARD"))
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", f"iptables -t filter {rule.replace('-A ', '-D ', 1)}"],
                   check=True)
    code, out, err = status(lab, "--router", "solo-r1", "--format", "json", commands=commands)
    assert code == 1, out + err
    got = findings(out)
    assert len(got) == 1 and got[0]["router"] == "solo-r1" and got[0]["check"] == "firewall", got
    assert got[0]["message"].startswith("filter: missing -A FORWARD"), got
    code, out, _ = status(lab, "--router", "solo-r1", commands=commands)
    assert code == 1 and "solo-r1  firewall  filter: missing -A FORWARD" in out and "1 finding" in out
    # a rule added by hand
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore", str(rules)], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "2222",
                    "-j", "ACCEPT"], check=True)
    code, out, _ = status(lab, "--router", "solo-r1", "--format", "json", commands=commands)
    assert code == 1 and [f["message"] for f in findings(out)] == [
        "filter: not in rules.v4: -A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT"]
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore", str(rules)], check=True)

    # a file edited on the router (in place, through vpcgen's link) and one replaced by hand
    live = lab.root("solo-r1") / "etc/sysctl.d/90-vpcgen.conf"
    with open(live, "a") as handle:
        handle.write("net.ipv4.ip_forward = 0\n")
    code, out, _ = status(lab, "--router", "solo-r1", "--format", "json", commands=commands)
    assert code == 1 and [(f["check"], f["message"]) for f in findings(out)] == [
        ("file", f"{lab.root('solo-r1')}/etc/sysctl.d/90-vpcgen.conf differs from the tree (edited on the router)")]


def test_status_sees_an_older_release(lab, netns):
    tree = lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    first = lab.complete("solo-r1")
    lab.change_acl(8080)
    tree = lab.build()
    assert lab.deploy("--router", "solo-r1")[0] == 0
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore", str(tree / "solo-r1/etc/iptables/rules.v4")],
                   check=True)
    commands = {"status": {"firewall": f"ip netns exec {netns} iptables-save"}}
    assert status(lab, "--router", "solo-r1", commands=commands)[0] == 0
    code, out, err = run_cli("rollback", tree, "--router", "solo-r1", "-i", lab.server.user_key)
    assert code == 0, out + err
    code, out, _ = status(lab, "--router", "solo-r1", "--format", "json", commands=commands)
    got = [(f["check"], f["message"]) for f in findings(out)]
    # the namespace still runs the tree's rules: against the running (older) release, that is drift
    assert code == 1 and {c for c, _ in got} == {"release", "firewall"}, got
    # the firewall as the rollback's reload leaves it: the older release's rules
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore",
                    f"{lab.root('solo-r1')}/var/lib/vpcgen/releases/{first}/etc/iptables/rules.v4"], check=True)
    code, out, _ = status(lab, "--router", "solo-r1", "--format", "json", commands=commands)
    got = [(f["check"], f["message"]) for f in findings(out)]
    # one finding: the older release, naming its files that differ from the tree's (through
    # vpcgen's link into the older release: older files, not edited ones)
    assert code == 1 and got == [("release", f"runs release {first}, which is not the tree's (deploy the tree, or "
                                  "it was rolled back); its own files: etc/iptables/rules.v4")], got
    assert json.loads(out)["routers"][0]["release"] == first


def test_status_sees_an_unconfirmed_release(lab):
    first, second = killed_deployer(lab, "600")
    code, out, _ = status(lab, "--router", "solo-r1", "--format", "json",
                          commands={"status": {"firewall-expected": "cat >/dev/null; true", "firewall": "true"}})
    assert code == 1 and ("release", f"release {second} was switched to but never confirmed") in [
        (f["check"], f["message"]) for f in findings(out)]
    assert lab.deploy("--router", "solo-r1")[0] == 0  # takes over the timer: nothing left armed


def test_pair_verdict_two_masters_or_none(lab):
    lab.build()
    assert lab.deploy("--router", "pair-r1", "--router", "pair-r2")[0] == 0
    # the pair's daemons do not run on this machine: their status commands answer as the real ones
    # would when healthy, so that only VRRP is judged here
    canned = lab.tmp / "canned"
    canned.mkdir()
    (canned / "stat").write_text("# pxname,svname,status\nwww,FRONTEND,OPEN\nwww,m0,UP\nwww,BACKEND,UP\n")
    (canned / "sas").write_text("hq: #1, ESTABLISHED, IKEv2\n  s2s-hq: #1, reqid 1, INSTALLED, TUNNEL\n")
    commands = {"status": {"firewall-expected": "cat >/dev/null; true", "firewall": "true",
                           "conntrackd": "echo 'cache internal:'; echo 'current active connections: 3'",
                           "haproxy": f"cat {canned}/stat", "strongswan": f"cat {canned}/sas"}}
    for states, expected in ((("MASTER", "BACKUP"), []), (("BACKUP", "MASTER"), []),
                             (("MASTER", "MASTER"), ["two masters: pair-r1, pair-r2 (split brain)"]),
                             (("BACKUP", "BACKUP"), ["no master: pair-r1 BACKUP, pair-r2 BACKUP"])):
        lab.set_state("pair-r1", states[0])
        lab.set_state("pair-r2", states[1])
        code, out, err = status(lab, "--router", "pair-r1", "--router", "pair-r2", "--format", "json",
                                commands=commands)
        got = findings(out)
        assert [f["message"] for f in got] == expected and code == (1 if expected else 0), out + err
        assert all(f["router"] == "pair" and f["check"] == "pair" for f in got)
    lab.set_state("pair-r2", "FAULT")
    code, out, _ = status(lab, "--router", "pair-r2", commands=commands)
    assert code == 1 and "pair-r2  vrrp  VRRP state is FAULT (expected MASTER or BACKUP)" in out


def test_status_of_an_unreachable_router_is_a_finding(lab):
    tree = lab.build()
    (tree / "known_hosts").write_text("")
    code, out, err = status(lab, "--router", "solo-r1")
    assert code == 1 and "solo-r1  ssh" in out and "is not in" in out


# `show ip ospf database self-originate` as FRR 8 prints it on a router that announces 10.128.0.0/22
SELF_ORIGINATED = """
       OSPF Router with ID (10.255.0.2)

                Router Link States (Area 0.0.0.0)

Link ID         ADV Router      Age  Seq#       CkSum  Link count
10.255.0.2     10.255.0.2        12 0x80000004 0x5a1e 1

                AS External Link States

Link ID         ADV Router      Age  Seq#       CkSum  Route
10.128.0.0     10.255.0.2      {age} 0x80000002 0x7c3b E2 10.128.0.0/22 [0x0]
"""


def test_an_lsa_at_max_age_is_a_withdrawal_not_an_announcement():
    from vpcgen.ops.status import announced
    assert announced(SELF_ORIGINATED.format(age=15), "10.128.0.0")
    # a former master flushing its LSA (MaxAge) no longer announces the VPC
    assert not announced(SELF_ORIGINATED.format(age=3600), "10.128.0.0")
    # the network only in another LSA's route column, or the router's own LSA: not announced
    assert not announced(SELF_ORIGINATED.format(age=15), "10.255.0.3")
    assert not announced(SELF_ORIGINATED.format(age=15).replace("10.128.0.0     ", "10.129.0.0     "), "10.128.0.0")
