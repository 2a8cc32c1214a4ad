"""Round guest: DNS and DHCP on the tier gateways, as the routers' own dnsmasq files serve them.

Expectations from site.json: a VPC is served when a tier has `dhcp` or `hosts` or its zone has
`dns_servers`; a DHCP lease carries the reserved (or a range) address, the gateway as router, DNS
server and server identifier, the VPC's domain, the tier's MTU and lease time; `<host>.<domain>`
answers the host's address from every tier, whatever its list (`default_deny` too); other names are
forwarded to the zone's servers (the lab's upstream resolver knows one name); nobody outside a tier
gets an answer. On a pair only the master answers, and after a failover the new master
acknowledges the renewal of a lease the old one gave (ACK, not NAK). The oracle decides what a
host's direct query to the zone's servers meets (its tier's lists, NAT): the gateway's answers do
not depend on it.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import subprocess
import time

from .. import run as lab
from ..plan import UPSTREAM_ADDRESS, UPSTREAM_NAME, DhcpClient, Host

MISSING = "vpcgen-lab-missing"  # a name no site has: the VPC's domain must answer NXDOMAIN, not forward
LOOKUPS = 300  # queries of the rough lookups-per-second figure


def served(site: dict, vpc: dict) -> bool:
    """Does the VPC's router run dnsmasq, by site.json?"""
    return bool(site["zones"][vpc["zone"]].get("dns_servers")) or any(
        t.get("dhcp") or t.get("hosts") for t in vpc["tiers"].values())


def run(t) -> None:
    for vpc, v in sorted(t.vpcs.items()):
        if not served(t.site, v):
            continue
        r = f"guest {vpc}"
        figures = t.figures.setdefault(vpc, {}).setdefault("guest", {})
        for tier_name, tier in sorted(v["tiers"].items()):
            under = f" (list {tier['acl']})" if tier["acl"] == "default_deny" else ""
            for host in [h for h in t.plan.hosts(vpc, tier_name) if h.dhcp]:
                t.check(r, f"tier {tier_name}: {host.name} leases its reservation {host.address}{under}",
                        lambda h=host: _reserved_lease(t, vpc, h))
            client = next((n for n in t.plan.of(DhcpClient, vpc) if n.tier == tier_name), None)
            if client:
                t.check(r, f"tier {tier_name}: a guest without reservation leases an address of "
                           f"{tier['dhcp']['range']}{under}" + (", the backup stays silent" if v["redundant"] else ""),
                        lambda c=client: _range_lease(t, vpc, c, figures))
            t.check(r, f"tier {tier_name}: the gateway answers the VPC's names" +
                    (" and forwards others" if _resolvers(t, vpc) else "") + under,
                    lambda n=tier_name: _names(t, vpc, n))
            if _resolvers(t, vpc):
                t.check(r, f"tier {tier_name}: direct queries to the zone's DNS servers as the oracle decides",
                        lambda n=tier_name: _direct(t, vpc, n))
        if len(v["tiers"]) > 1:
            t.check(r, "a tier gets no answer from another tier's gateway", lambda: _other_gateway(t, vpc))
        t.check(r, "no DNS answer from outside the tiers", lambda: _outside(t, vpc))
        t.check(r, f"{LOOKUPS} lookups through a gateway (rough rate)", lambda: _rate(t, vpc, figures))
        if v["redundant"]:
            t.check(r, "failover: the new master renews a lease the old one gave (ACK, not NAK) and answers names",
                    lambda: _failover(t, vpc, figures))


# --- helpers -----------------------------------------------------------------------------------

def _resolvers(t, vpc: str) -> list[str]:
    return t.site["zones"][t.vpcs[vpc]["zone"]].get("dns_servers") or []


def dig(t, node: str, server: str, *query: str, short: bool = True) -> subprocess.CompletedProcess:
    words = ["dig", "+time=1", "+tries=2", *(["+short"] if short else []), f"@{server}", *query]
    return lab.exec_in(t.data, node, " ".join(shlex.quote(w) for w in words))


def _no_answer(t, node: str, server: str, name: str) -> tuple[bool, str]:
    """No DNS answer at all (dig exits 9 when no server replied)."""
    r = lab.exec_in(t.data, node, f"dig +time=1 +tries=1 @{shlex.quote(server)} {shlex.quote(name)}")
    return r.returncode == 9, "no answer" if r.returncode == 9 else f"dig exit {r.returncode}: " + \
        " ".join(line for line in r.stdout.splitlines() if "status:" in line or "SERVER:" in line)


def _named(v: dict) -> dict[str, str]:
    """<host>.<domain> -> address, every tier's named hosts."""
    return {f"{name}.{v['domain']}": h["address"] for tier in v["tiers"].values()
            for name, h in sorted(tier.get("hosts", {}).items())}


def _expected_lease(v: dict, tier: dict) -> dict[str, str]:
    return {"router": tier["gateway"], "dns": tier["gateway"], "serverid": tier["gateway"], "domain": v["domain"],
            "mtu": str(tier["mtu"]), "lease": str(tier["dhcp"]["lease_s"])}


def _compare(got: dict | None, want: dict[str, str]) -> list[str]:
    if got is None:
        return ["no lease"]
    return [f"{k} {got.get(k, '(none)')}, expected {w}" for k, w in want.items() if got.get(k) != w]


def _mtu(t, node: str) -> str:
    out = lab.exec_in(t.data, node, "ip -o link show dev eth0").stdout.split()
    return out[out.index("mtu") + 1] if "mtu" in out else "?"


def _log(t, router: str) -> list[str]:
    return lab.exec_in(t.data, router, f"cat {lab.DNSMASQ_LOG} 2>/dev/null").stdout.splitlines()


def _replies(lines: list[str]) -> list[str]:
    return [line for line in lines if any(f"{kind}(" in line for kind in ("DHCPOFFER", "DHCPACK", "DHCPNAK"))]


# --- checks ------------------------------------------------------------------------------------

def _reserved_lease(t, vpc: str, host: Host) -> tuple[bool, str]:
    """The lease the host's DHCP client took at `lab up`, and the interface it configured."""
    v = t.vpcs[vpc]
    tier = v["tiers"][host.tier]
    got = lab.lease(t.data, host.name)
    bad = _compare(got, {"ip": host.address, **_expected_lease(v, tier)})
    if got and _mtu(t, host.name) != str(tier["mtu"]):
        bad.append(f"eth0 mtu {_mtu(t, host.name)}, expected {tier['mtu']}")
    if bad:
        return False, "; ".join(bad)
    return True, (f"{got['ip']} for {host.mac}: router/dns/server id {got['router']}, domain {got['domain']}, "
                  f"mtu {got['mtu']} (on eth0 too), {got['lease']} s")


def _range_lease(t, vpc: str, client: DhcpClient, figures: dict) -> tuple[bool, str]:
    """A DHCP client that no reservation names gets a range address; timed; on a pair the backup's
    dnsmasq sends nothing meanwhile."""
    v = t.vpcs[vpc]
    tier = v["tiers"][client.tier]
    backups = [r for r in v["routers"] if r not in t.masters(vpc)] if v["redundant"] else []
    before = {r: len(_log(t, r)) for r in backups}
    hook, out = lab.dhcp_files(lab.RUN_ROOT / t.data["name"], client.name)
    for event in ("bound", "deconfig"):
        out.with_name(f"{out.name}.{event}").unlink(missing_ok=True)
    start = time.monotonic()
    r = lab.exec_in(t.data, client.name, " ".join(shlex.quote(w) for w in lab.udhcpc_command(hook, out))
                    + " -t 10 -q -n -R", timeout=30)  # -R: released on exit, the next run is a fresh lease
    took = time.monotonic() - start
    got = lab.lease(t.data, client.name)
    bad = _compare(got, _expected_lease(v, tier))
    low, high = (ipaddress.ip_address(a) for a in tier["dhcp"]["range"].split("-"))
    if got and not low <= ipaddress.ip_address(got.get("ip", "0.0.0.0")) <= high:
        bad.append(f"{got.get('ip')} is outside the range")
    if got is None:
        bad.append(f"udhcpc: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    for router in backups:
        if spoke := _replies(_log(t, router)[before[router]:]):
            bad.append(f"backup {router} answered: {spoke[0]}")
    if bad:
        return False, "; ".join(bad)
    figures["seconds_to_lease"] = round(took, 2)
    return True, f"{got['ip']} in {took:.2f} s, options as the tier says"


def _names(t, vpc: str, tier: str) -> tuple[bool, str]:
    """From a test host of the tier (a DHCP host asks the DNS server its lease names): every named
    host, one address backwards, a missing name of the domain, and a forwarded name."""
    v = t.vpcs[vpc]
    hosts = t.plan.hosts(vpc, tier)
    host = next((h for h in hosts if h.dhcp), hosts[0])
    server = (lab.lease(t.data, host.name) or {}).get("dns", "").split(" ")[0] if host.dhcp else ""
    server = server or v["tiers"][tier]["gateway"]
    bad, asked = [], 0
    for name, address in _named(v).items():
        asked += 1
        if (got := dig(t, host.name, server, name).stdout.strip()) != address:
            bad.append(f"{name}: {got or 'nothing'}, expected {address}")
    if _named(v):
        name, address = next(iter(_named(v).items()))
        asked += 1
        if (got := dig(t, host.name, server, "-x", address).stdout.strip()) != name + ".":
            bad.append(f"-x {address}: {got or 'nothing'}, expected {name}.")
    asked += 1
    missing = dig(t, host.name, server, f"{MISSING}.{v['domain']}", short=False).stdout
    if "status: NXDOMAIN" not in missing:
        bad.append(f"{MISSING}.{v['domain']}: not NXDOMAIN")
    if _resolvers(t, vpc):
        asked += 1
        if (got := dig(t, host.name, server, UPSTREAM_NAME).stdout.strip()) != UPSTREAM_ADDRESS:
            bad.append(f"{UPSTREAM_NAME} (forwarded): {got or 'nothing'}, expected {UPSTREAM_ADDRESS}")
    return not bad, "; ".join(bad) or f"from {host.name} at {server}: {asked} queries answered as site.json says"


def _direct(t, vpc: str, tier: str) -> tuple[bool, str]:
    """A host's own query to the zone's DNS server: its tier's lists and NAT decide (the oracle)."""
    host = t.plan.hosts(vpc, tier)[0]
    server = _resolvers(t, vpc)[0]
    verdict = t.expect(t.endpoint(vpc, host.name), server, "udp", 53)
    for attempt in range(3 if verdict.delivered else 1):  # a path that is being rerouted gets a second chance
        answered = dig(t, host.name, server, UPSTREAM_NAME).stdout.strip() == UPSTREAM_ADDRESS
        if answered == verdict.delivered:
            break
    tries = f" (try {attempt + 1})" if attempt else ""
    return answered == verdict.delivered, (f"{'answered' if answered else 'no answer'} from {server}{tries}, the "
                                          f"oracle {'delivers' if verdict.delivered else 'denies'} it "
                                          f"({verdict.why or 'allowed'})")


def _other_gateway(t, vpc: str) -> tuple[bool, str]:
    """DNS is a tier's service from its own gateway only: nothing else is opened."""
    v = t.vpcs[vpc]
    tiers = sorted(v["tiers"])
    host = t.plan.hosts(vpc, tiers[0])[0]
    other = v["tiers"][tiers[1]]["gateway"]
    ok, detail = _no_answer(t, host.name, other, UPSTREAM_NAME)
    return ok, f"{host.name} asking {other} ({tiers[1]}'s gateway): {detail}"


def _outside(t, vpc: str) -> tuple[bool, str]:
    """The uplink never reaches dnsmasq: the internet side asks the VPC's public addresses (NAT),
    the core asks a tier gateway (routed)."""
    v = t.vpcs[vpc]
    if v["kind"] == "nat":
        node, targets = t.inet(vpc), sorted(set(v["public_ips"].values()))
    else:
        node, targets = f"core-{v['zone']}", [sorted(v["tiers"].values(), key=lambda x: x["cidr"])[0]["gateway"]]
    if node not in t.data["nodes"]:
        return True, f"no {node} in this lab"
    bad = [f"{a}: {d}" for a in targets for ok, d in [_no_answer(t, node, a, UPSTREAM_NAME)] if not ok]
    return not bad, "; ".join(bad) or f"{node} gets no answer from {', '.join(targets)}"


def _rate(t, vpc: str, figures: dict) -> tuple[bool, str]:
    """One dig process sending queries one after the other through the gateway (a rough figure)."""
    v = t.vpcs[vpc]
    tier = next(n for n, x in sorted(v["tiers"].items()) if x.get("hosts")) if _named(v) else sorted(v["tiers"])[0]
    host = t.plan.hosts(vpc, tier)[0]
    # (name, its answer): the named hosts, the forwarded name (cached after the first), else a missing name
    pairs = list(_named(v).items()) + ([(UPSTREAM_NAME, UPSTREAM_ADDRESS)] if _resolvers(t, vpc) else []) \
        or [(f"{MISSING}.{v['domain']}", None)]
    asked = [pairs[i % len(pairs)] for i in range(LOOKUPS)]
    batch = lab.RUN_ROOT / t.data["name"] / f"lookups-{vpc}"
    batch.write_text("".join(f"{name}\n" for name, _ in asked))
    start = time.monotonic()
    r = lab.exec_in(t.data, host.name, f"dig @{v['tiers'][tier]['gateway']} +short +time=1 +tries=1 -f {batch}",
                    timeout=120)
    rate = LOOKUPS / (time.monotonic() - start)
    expected = [answer for _, answer in asked if answer]
    if r.stdout.split() != expected:
        return False, f"{len(r.stdout.split())} answers, {len(expected)} expected"
    figures["lookups_per_second"] = round(rate)
    return True, f"{rate:.0f} lookups/s from {host.name} ({len(pairs)} names, {len(expected)} answers)"


def _failover(t, vpc: str, figures: dict) -> tuple[bool, str]:
    """The master dies; once its peer is master, a DHCP host renews (udhcpc's SIGUSR1: a unicast
    request to the server identifier, the gateway) and gets an ACK from the new master, and names
    resolve through the gateway. The dead router is started again afterwards."""
    v = t.vpcs[vpc]
    settle = t.settle_s(vpc)
    master = t.wait_one_master(vpc, settle + 5)
    if len(master) != 1:
        return False, f"masters before: {master}"
    old = master[0]
    peer = next(r for r in v["routers"] if r != old)
    host = next((h for h in t.plan.hosts(vpc) if h.dhcp), None)
    asker = host or t.plan.hosts(vpc)[0]
    name, address = next(iter(_named(v).items()), (UPSTREAM_NAME, UPSTREAM_ADDRESS))
    gateway = v["tiers"][asker.tier]["gateway"]
    bad, detail = [], []
    lab.stop_router(t.data, old)
    t.data["nodes"][old].pop("holder", None)
    try:
        new = t.wait_one_master(vpc, settle + 5)
        if new != [peer]:
            return False, f"after stopping {old}: masters {new}"
        if host:
            _, out = lab.dhcp_files(lab.RUN_ROOT / t.data["name"], host.name)
            for event in ("renew", "nak"):
                out.with_name(f"{out.name}.{event}").unlink(missing_ok=True)
            start = time.monotonic()
            os.kill(t.data["nodes"][host.name]["dhcp"], signal.SIGUSR1)  # udhcpc: renew now
            while time.monotonic() - start < 15 and not any(
                    lab.lease(t.data, host.name, e) for e in ("renew", "nak")):
                time.sleep(0.05)
            took = time.monotonic() - start
            renew, nak = lab.lease(t.data, host.name, "renew"), lab.lease(t.data, host.name, "nak")
            log = "\n".join(_log(t, peer))
            if nak or "DHCPNAK(" in log:
                bad.append(f"NAK: {nak or [line for line in log.splitlines() if 'DHCPNAK(' in line][:1]}")
            if not renew or renew.get("ip") != host.address or renew.get("serverid") != gateway:
                bad.append(f"renewal: {renew or 'none within 15 s'}")
            elif "DHCPACK(" not in log or host.address not in log:
                bad.append(f"{peer}'s dnsmasq log has no ACK for {host.address}")
            else:
                figures["seconds_to_renewal_after_failover"] = round(took, 2)
                detail.append(f"{host.name} renewed {host.address} on {peer} in {took:.2f} s (ACK)")
        got = dig(t, asker.name, gateway, name).stdout.strip()
        if got != address:
            bad.append(f"{name} from {asker.name}: {got or 'nothing'}, expected {address}")
        else:
            detail.append(f"{name} answered through {gateway}")
    finally:
        lab.start_router(t.tree_dir, old)
        t.reload_data()
        t.wait_one_master(vpc, settle + 5)
        if v["kind"] == "routed":
            t.adjacent(old, 2 * t.dead_s(vpc) + 10)
        time.sleep(settle)
    return not bad, "; ".join(bad or detail)
