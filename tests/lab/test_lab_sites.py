"""`vpcgen lab` on a small fixture site: its first tier may open nothing (internet, VPN, private
gateway) and its load balancer checks every 10 s. No false failure: the probes start from a host
the oracle lets out, and the waits follow the site's own health-check timers."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from conftest import ROOT, copy_site, run_cli
from vpcgen.lab import run as lab

EGRESS = ROOT / "tests/fixtures/lab/egress"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lab-egress")
    site = copy_site(EGRESS, tmp / "egress")
    (site / "secrets").mkdir()  # secret values are never in git: the test makes its own
    (site / "secrets/solo-psk").write_text(secrets.token_urlsafe(24) + "\n")
    code, out, err = run_cli("build", site, "--output", tmp / "out")
    assert code == 0, out + err
    return tmp / "out/egress"


def test_lab_test_on_a_site_whose_first_tier_denies_egress(tree, tmp_path, monkeypatch):
    site = json.loads((tree / "site.json").read_text())
    assert site["vpcs"]["solo"]["load_balancers"]["slow"]["health_check"]["interval_ms"] == 10000
    code, out, err = run_cli("lab", "up", tree)
    try:
        assert code == 0, out + err
        assert "waiting for load balancer slow's members" in err  # progress while it waits (stderr)
        monkeypatch.chdir(tmp_path)  # the results never land in the current folder
        code, out, err = run_cli("lab", "test", tree)
        assert code == 0, out + err
        results = lab.results_path(tree)
        assert results == tree.parent / "egress.lab-results.json" and f"results in {results}" in out
        assert not (tmp_path / "lab-results.json").exists()
        report = json.loads(results.read_text())
        checks = {f"{c['round']}: {c['name']}": c for c in report["checks"]}
        assert report["failed"] == 0
        # the private gateway and source NAT are probed from the tier that may go out
        assert checks["services solo: private gateway corp: static routes, no source NAT"]["detail"].startswith(
            "from solo-web-")
        assert "seen as 203.0.113." in checks["services solo: source NAT: the internet sees 203.0.113.10"]["detail"]
        # the tunnel's only local network may not go out: denied outbound, the peer still reaches ssh
        vpn = checks["services solo: site-to-site VPN hq: tier host <-> peer network, no source NAT"]["detail"]
        assert vpn.startswith("every local tier's egress list denies it"), vpn
        # the 10 s health check takes a stopped member out within its own fall time
        assert checks["services solo: load balancer slow: a stopped member is taken out"]["ok"]
    finally:
        code, out, err = run_cli("lab", "down", tree)
        assert code == 0, out + err
