"""Round acl: probes between every pair of tiers and from the internet to static NAT, each
compared with the oracle's verdict (source egress, then destination ingress; NAT, then ingress)."""

from __future__ import annotations

from ...reach.model import Endpoint, probes
from ..plan import PROBE_TCP_PORT, internet_sources


def run(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        tiers = sorted(v["tiers"])
        for src in tiers:
            for dst in tiers:
                if src == dst:
                    t.check(f"acl {vpc}", f"inside tier {src}: never filtered", lambda s=src: _same_tier(t, vpc, s))
                    continue
                t.check(f"acl {vpc}", f"{src} -> {dst}", lambda s=src, d=dst: _between(t, vpc, s, d))
        if v["kind"] == "nat":
            for public in sorted(v["static_nat"]):
                t.check(f"acl {vpc}", f"internet -> static NAT {public}", lambda p=public: _from_internet(t, vpc, p))


def compare(t, cases: list[tuple], label=lambda case: f"{case[2]}/{case[3]}") -> tuple[bool, str]:
    """Run probes (node, destination, port, proto, source address, verdict, expected node) at once;
    wrong where the lab and the oracle disagree."""
    got = t.parallel([(node, dest, port, proto, source) for node, dest, port, proto, source, _, _ in cases])
    bad = []
    for case, answer in zip(cases, got):
        *_, verdict, want_node = case
        reached = answer == want_node if want_node else not answer.startswith("FAILED")
        if reached != verdict.delivered:
            why = verdict.why if not verdict.delivered else ", ".join(
                f"{m.traffic} {m.list} rule {m.rule}" for m in verdict.matches) or verdict.why
            bad.append(f"{case[3]}/{case[2]} expected {'delivered' if verdict.delivered else 'denied'} ({why}), "
                       f"got {answer}")
    return not bad, "; ".join(bad) or f"{len(cases)} probes as the oracle decides"


def _between(t, vpc: str, src: str, dst: str) -> tuple[bool, str]:
    v, acls = t.vpcs[vpc], t.site["acls"]
    (src_node, src_addr), (dst_node, dst_addr) = t.hosts(vpc, src)[0], t.hosts(vpc, dst)[0]
    source = Endpoint("tier", vpc, src, src_addr)
    cases = [(src_node, dst_addr, port, proto, "", t.expect(source, dst_addr, proto, port),
              dst_node if proto != "icmp" else None)
             for proto, port in probes(acls[v["tiers"][src]["acl"]], acls[v["tiers"][dst]["acl"]])]
    return compare(t, cases)


def _same_tier(t, vpc: str, tier: str) -> tuple[bool, str]:
    hosts = t.hosts(vpc, tier)
    verdict = t.expect(Endpoint("tier", vpc, tier, hosts[0][1]), hosts[1][1], "tcp", PROBE_TCP_PORT)
    got = t.probe(hosts[0][0], hosts[1][1], PROBE_TCP_PORT)
    return (got == hosts[1][0]) == verdict.delivered, got


def _from_internet(t, vpc: str, public: str) -> tuple[bool, str]:
    v = t.vpcs[vpc]
    rules = t.site["acls"][t.tier_of(vpc, v["static_nat"][public])["acl"]]
    sources = {t.inet_address(vpc)} | {a.split("/")[0] for a in internet_sources(t.site, v["zone"])}
    address = v["public_ips"][public]
    host = t.host_at(vpc, v["static_nat"][public])
    cases = [(t.inet(vpc), address, port, proto, source,
              t.expect(Endpoint("internet", address=source), address, proto, port), host)
             for proto, port in probes(rules) if proto != "icmp" for source in sorted(sources)]
    return compare(t, cases)
