"""Round convert: a single router's VPC converted to a redundant pair by deploying the rebuilt site
(`redundant: true` and a second router), while traffic flows through it: the lab racks the second
router (links, addresses, rules, sshd; no daemons until its first deploy), `vpcgen deploy` through
the management network does the rest. Measured: the data plane's interruption. It runs last: from
then on the lab runs the rebuilt site."""

from __future__ import annotations

import ipaddress
import time

from .. import run as lab
from ...tree import read_site_json
from ..plan import ECHO_PORT, WHOAMI_PORT
from .daytwo import deploy, status_is
from .deploy import TCP_CONNECTS, _edit_vpc
from .failover import TCP_STREAM, until_stop

# the failover round's established TCP connection, kept open until STOP exists
TCP_UNTIL = until_stop(TCP_STREAM)


def run(t) -> None:
    singles = sorted(v for v, d in t.vpcs.items() if not d["redundant"] and d["kind"] == "nat")
    for vpc in singles[:1]:
        t.check(f"convert {vpc}", "a single router converted to a pair by a deploy, probes running",
                lambda: _convert(t, vpc))


def _free_mgmt(t, taken: set[str]) -> str:
    """An address for the new router's management: next to the first router's, inside ssh.allowed_from."""
    first = ipaddress.ip_address(min(taken))
    allowed = [ipaddress.ip_network(n) for n in (t.site.get("ssh") or {}).get("allowed_from") or []]
    used = {r["mgmt"] for v in t.site["vpcs"].values() for r in v["routers"].values()}
    for step in range(1, 256):
        candidate = first + step
        if str(candidate) not in used and (not allowed or any(candidate in n for n in allowed)):
            return str(candidate)
    raise RuntimeError("no free management address next to the first router's")


def _convert(t, vpc: str) -> tuple[bool, str]:
    v = t.vpcs[vpc]
    first = sorted(v["routers"])[0]
    second = first[:-1] + "2" if first[-1:] == "1" else f"{first}-2"
    mgmt = _free_mgmt(t, {v["routers"][first]["mgmt"]})

    def pair(doc):
        doc["redundant"] = True
        doc["routers"] = list(doc["routers"]) + [{"name": second, "mgmt": mgmt}]

    variant = t.variant(lambda p: _edit_vpc(p, vpc, pair))
    # probes: a host of the VPC to the internet through source NAT, new connections every 50 ms, and
    # (a figure, not a pass condition: the first router had no conntrackd to sync from) one
    # connection established before the conversion
    host, allowed = t.source_host(vpc, t.inet_address(vpc), [("tcp", WHOAMI_PORT), ("tcp", ECHO_PORT)])
    if host is None or not allowed:
        return False, "no host whose egress list lets it out to the internet"
    stop = variant.parent.parent / "stop"
    stop.unlink(missing_ok=True)
    script = (TCP_CONNECTS.replace("ADDRESS", t.inet_address(vpc)).replace("PORT", str(WHOAMI_PORT))
              .replace("PAYLOAD", repr(b"hello")).replace("STOP", str(stop)))
    stream = (TCP_UNTIL.replace("ADDRESS", t.inet_address(vpc)).replace("ECHO_PORT", str(ECHO_PORT))
              .replace("STOP", str(stop)))
    done = {}

    def convert():
        start = time.monotonic()
        lab.add_router(t.tree_dir, variant, second)
        t.reload_data()
        done["racked_s"] = time.monotonic() - start
        done["deploy"] = deploy(t, variant)
        done["deploy_s"] = time.monotonic() - start - done["racked_s"]
        # until the pair has its master (keepalived's first election) and a moment more
        t.vpcs[vpc] = read_site_json(variant)["vpcs"][vpc]
        done["masters"] = t.wait_one_master(vpc, 3 * t.advert_s(vpc) + 10)
        time.sleep(2)
        stop.touch()

    out, established = t.during_all([(host[0], script), (host[0], stream)], 1.0, convert, 180)
    gap, lost, sent = out.split()[:3]
    established = (established.strip().splitlines() or ["no output"])[-1]
    green, detail = status_is(t, variant, [], 60, routers=sorted(t.vpcs[vpc]["routers"]))
    t.figures.setdefault(vpc, {})["conversion"] = {
        "interruption_ms": round(float(gap)), "lost_probes": int(lost), "probes": int(sent),
        "rack_s": round(done["racked_s"], 1), "deploy_s": round(done["deploy_s"], 1),
        "established_tcp_survives": established.startswith("SURVIVED")}
    ok = done["deploy"][0] and len(done["masters"]) == 1 and green and int(sent) > 10
    return ok, (f"{second} racked in {done['racked_s']:.1f} s; deploy {done['deploy'][1]} in "
                f"{done['deploy_s']:.1f} s; masters {done['masters']}; probes through source NAT: longest gap "
                f"{float(gap):.0f} ms, {lost}/{sent} failed; a connection established before: {established}; status "
                f"against the rebuilt site: {detail}")

