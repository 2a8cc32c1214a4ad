"""The lab's management network: `vpcgen lab run` reaches every router over SSH as a real one, and
`vpcgen deploy` and `vpcgen status` work through it (run under flock /tmp/vpcgen-lab.lock)."""

from __future__ import annotations

import json
import subprocess
import time
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE, copy_site, run_cli

VPCGEN = [sys.executable, "-m", "vpcgen"]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mgmt")
    site = copy_site(EXAMPLE, tmp / "example")
    code, out, err = run_cli("build", site, "--output", tmp / "out")
    assert code == 0, out + err
    tree = tmp / "out/example"
    code, out, err = run_cli("lab", "up", tree)
    try:
        assert code == 0, out + err
        yield site, tree
    finally:
        run_cli("lab", "down", tree)


def lab_run(tree: Path, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*VPCGEN, "lab", "run", str(tree), "--", *command], capture_output=True, text=True,
                          timeout=timeout)


def status_once_settled(tree: Path, wait_s: float = 60) -> subprocess.CompletedProcess:
    """`vpcgen status` until it is green or `wait_s` has passed: a reload on a pair's master may
    re-establish its tunnels (notify.sh initiates them), so only a finding that stays counts."""
    deadline = time.monotonic() + wait_s
    while (r := lab_run(tree, *VPCGEN, "status", str(tree))).returncode != 0 and time.monotonic() < deadline:
        time.sleep(2)
    return r


def test_deploy_and_status_through_the_management_network(running):
    site, tree = running
    # plain ssh: the router's own /etc and deploy state, never the machine's
    r = lab_run(tree, "ssh", "198.51.100.21", "ip -o addr show dev eth0; cat /etc/vpcgen/manifest.json")
    assert r.returncode == 0 and "198.51.100.21/32" in r.stdout and '"router": "blog-r1"' in r.stdout, r.stderr
    r = lab_run(tree, *VPCGEN, "deploy", str(tree), "--parallel", "4")
    assert r.returncode == 0 and r.stdout.count(" changed ") == 6, r.stdout + r.stderr
    assert not Path("/var/lib/vpcgen/current").exists()  # the machine's deploy state is untouched
    r = status_once_settled(tree)
    assert r.returncode == 0 and "all routers as built" in r.stdout, r.stdout + r.stderr
    # one ACL changed and deployed: only its routers change, and status is green again
    acl = site / "acls/web.yaml"
    acl.write_text(acl.read_text().replace('ports: "8000-8080"', 'ports: "8000-8081"'))
    assert run_cli("build", site, "--output", tree.parent)[0] == 0
    r = lab_run(tree, *VPCGEN, "deploy", str(tree), "--parallel", "4")
    assert r.returncode == 0 and r.stdout.count(" changed ") == 3 and r.stdout.count(" skipped ") == 3, r.stdout
    r = status_once_settled(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    # a rule deleted by hand: status names that router and that rule, nothing else
    rules = (tree / "blog-r1/etc/iptables/rules.v4").read_text()
    rule = next(line for line in rules.splitlines() if line.startswith("-A ACL_INBOUND"))
    r = lab_run(tree, "ssh", "198.51.100.21", "iptables " + rule.replace("-A ", "-D ", 1))
    assert r.returncode == 0, r.stderr
    r = lab_run(tree, *VPCGEN, "status", str(tree), "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr
    findings = json.loads(r.stdout)["findings"]
    assert [(f["router"], f["check"]) for f in findings] == [("blog-r1", "firewall")], findings
    assert findings[0]["message"].startswith("filter: missing -A ACL_INBOUND_eth2.1000")
