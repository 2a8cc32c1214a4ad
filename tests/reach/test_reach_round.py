"""The lab's reach round picks its probes at the edges of the model's allowed boxes (no root: the
probes are recorded, not sent; tests/lab sends them for real)."""

from __future__ import annotations

import json

from conftest import EXAMPLE, copy_site, run_cli
from vpcgen.lab.plan import build as build_plan
from vpcgen.lab.rounds import reach
from vpcgen.lab.rounds.context import HTTP_GET, Lab
from vpcgen.reach.model import Model


def lab_of(tree, answer):
    """A Lab on the example's plan whose probes are answered by ``answer`` (recorded in .sent)."""
    site = json.loads((tree / "site.json").read_text())
    lab = Lab.__new__(Lab)
    lab.site, lab.model, lab.vpcs, lab.checks, lab.figures, lab.say = site, Model(site), site["vpcs"], [], {}, print
    lab.plan = build_plan(site, "t", tree, tree.parent)
    lab.sent = []
    lab.parallel = lambda probes: lab.sent.extend(probes) or [answer(*p[:5]) for p in probes]
    lab.core_routes = lambda vpc, wait_s=60: f"{site['vpcs'][vpc]['cidr']} proto ospf"
    return lab


def test_probes_sit_inside_and_just_outside_each_allowed_box(tmp_path):
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp_path / "example"), "--output", tmp_path / "out")
    assert code == 0, out + err
    lab = lab_of(tmp_path / "out" / "example", lambda *p: "FAILED timeout")
    reach.run(lab)
    assert len(lab.sent) <= reach.PROBES and len({p[:5] for p in lab.sent}) == len(lab.sent)
    # shop: app -> db tcp/5432 (db's ingress rule): the port, its neighbours, another protocol, the
    # other tier's address across the destination edge
    assert {p for p in lab.sent if p[0] == "shop-app-1" and p[1].startswith("10.10.")} >= {
        ("shop-app-1", "10.10.2.10", 5432, "tcp", "", "hello"), ("shop-app-1", "10.10.2.10", 5431, "tcp", "", "hello"),
        ("shop-app-1", "10.10.2.10", 5433, "tcp", "", "hello"), ("shop-app-1", "10.10.2.10", None, "icmp", "", "hello")}
    checks = {f"{c.round}: {c.name}": c for c in lab.checks}
    # nothing answered: every inside probe is a failure, and only those
    app_db = checks["reach shop: shop/app -> shop/db"]
    assert not app_db.ok and app_db.detail.count("inside:") == 1 and "outside:" not in app_db.detail


def test_a_lab_that_answers_as_the_model_decides_passes(tmp_path, monkeypatch):
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp_path / "example"), "--output", tmp_path / "out")
    assert code == 0, out + err
    answers = {}  # (node, destination, port, proto, source) -> what a lab that obeys the model answers
    real = reach._observable

    def observe(t, vpc, internet, node, address, dest, proto, port):
        found = real(t, vpc, internet, node, address, dest, proto, port)
        if found:
            verdict, want = found[:2]
            answers[(node, dest, port, proto, address if internet else "")] = \
                sorted(want)[0] if verdict.delivered else "FAILED timeout"
        return found

    monkeypatch.setattr(reach, "_observable", observe)
    lab = lab_of(tmp_path / "out" / "example", lambda *probe: answers[probe])
    reach.run(lab)
    assert len(lab.checks) > 10 and all(c.ok for c in lab.checks), [c.detail for c in lab.checks if not c.ok]


def test_the_internet_of_a_routed_vpc_is_behind_the_core_and_load_balancers_get_a_request(tmp_path):
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp_path / "example"), "--output", tmp_path / "out")
    assert code == 0, out + err
    lab = lab_of(tmp_path / "out" / "example", lambda *p: "FAILED timeout")
    waited = []
    lab.core_routes = lambda vpc, wait_s=60: waited.append(vpc) or "routes"
    reach.run(lab)
    routed = sorted(v for v, vpc in lab.vpcs.items() if vpc["kind"] == "routed")
    assert routed and waited == routed  # probed only once the core routes them
    hosts = {h.name for h in lab.plan.hosts(None)}
    for vpc in routed:
        # from the internet: the core, from the network behind it, never the NAT side's gateway
        inward = [p for p in lab.sent if p[0] not in hosts and lab.model.tier_of(p[1], vpc)]
        assert inward and all(p[0] == "core-zone1" and p[4] == "192.0.2.254" for p in inward), inward
        # to the internet: the network behind the core
        outward = [p for p in lab.sent if p[0] in {h.name for h in lab.plan.hosts(vpc)} and not lab.model.tier_of(p[1])]
        assert outward and {p[1] for p in outward} == {"192.0.2.254"}, outward
    # the HTTP load balancer is sent a request; everything else a bare payload
    www = lab.vpcs["shop"]["public_ips"]["www"]
    to_lb = [p for p in lab.sent if p[1] == www and p[2] == 80 and p[3] == "tcp"]
    assert to_lb and all(p[5] == HTTP_GET for p in to_lb), to_lb
    assert {p[5] for p in lab.sent if p not in to_lb} == {"hello"}
