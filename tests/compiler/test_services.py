"""What the new services must guarantee beyond their snapshots: ACL placement, NAT exemptions,
listener guards, secret handling, lifetimes and OSPF announcement on a pair."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURE_SITES, copy_site, run_cli


@pytest.fixture(scope="module")
def example_tree(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("services")
    code, out, err = run_cli("build", copy_site(EXAMPLE, tmp / "example"), "--output", tmp / "out")
    assert code == 0, out + err
    return tmp / "out" / "example"


def chain_rules(rules_v4: str, table: str, chain: str) -> list[str]:
    body = rules_v4.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return [line for line in body.splitlines() if line.startswith(f"-A {chain} ")]


def test_private_gateway_list_cannot_be_bypassed(example_tree):
    """apache/cloudstack#9838: a broad forwarding ACCEPT must never reach the private gateway."""
    rules = (example_tree / "shop-r1/etc/iptables/rules.v4").read_text()
    forward = chain_rules(rules, "filter", "FORWARD")
    pg = "eth2.3000"
    for line in forward:
        if " -j ACCEPT" in line and "RELATED,ESTABLISHED" not in line:
            assert "-o eth1 " in line, f"an ACCEPT that is not towards the uplink: {line}"
    to_pg = [line for line in forward if f"-o {pg} " in line]
    assert to_pg == [f"-A FORWARD -o {pg} -j PG_OUTBOUND_{pg} -m comment --comment \"to private gateway corp\""]
    # the list's egress rules, in number order, end in the default deny
    outbound = chain_rules(rules, "filter", f"PG_OUTBOUND_{pg}")
    assert [r.split(" -j ")[1].split()[0] for r in outbound] == ["DROP", "ACCEPT", "DROP"]
    assert "--dport 25" in outbound[0] and "-d 192.168.0.0/16" in outbound[1]
    # and nothing towards the gateway is source-NATed: every SNAT names the uplink
    for line in chain_rules(rules, "nat", "POSTROUTING"):
        if "-j SNAT" in line:
            assert "-o eth1 " in line or "--ctstate DNAT" in line


def test_vpn_traffic_skips_source_nat_and_passes_tier_lists(example_tree):
    rules = (example_tree / "shop-r1/etc/iptables/rules.v4").read_text()
    post = chain_rules(rules, "nat", "POSTROUTING")
    first_snat = next(i for i, line in enumerate(post) if "-j SNAT" in line)
    exempt = [line for line in post[:first_snat] if "-j ACCEPT" in line and "public tier" not in line]
    # hq: two local cidrs x one peer; branch (IKEv1): one local x one peer; the remote-access pool
    assert len(exempt) == 2 + 1 + 1
    assert any("-s 10.10.1.0/24 -d 172.16.0.0/16" in line for line in exempt)
    assert any("-d 10.10.250.0/24" in line for line in exempt)
    forward = chain_rules(rules, "filter", "FORWARD")
    uplink = next(line for line in forward if line.startswith("-A FORWARD -i eth1 ") and "public tier" not in line)
    assert "--pol none -j DROP" in uplink  # decrypted traffic goes on to the tiers' ingress lists
    assert forward.index(uplink) < min(i for i, line in enumerate(forward) if "ACL_INBOUND" in line
                                       and "public tier" not in line)
    inp = chain_rules(rules, "filter", "INPUT")
    ike = [line for line in inp if "--dports 500,4500" in line]
    assert all("-i eth1 " in line and "-d 203.0.113.12/32" in line for line in ike) and len(ike) == 3
    assert [line for line in inp if "-p esp" in line and "-s 192.0.2.200/32" in line]


def test_listener_guard_asks_the_member_tier_list(example_tree):
    rules = (example_tree / "shop-r1/etc/iptables/rules.v4").read_text()
    inp = chain_rules(rules, "filter", "INPUT")
    listeners = [line for line in inp if "-j LB_" in line]
    assert len(listeners) == 2 and all("-d 203.0.113.13/32 -p tcp" in line for line in listeners)
    # web's list: rule 10 allows tcp 80 from anywhere, nothing else about port 80, then the default deny
    assert [r.split(" -m comment")[0] for r in chain_rules(rules, "filter", "LB_203.0.113.13_80")] == [
        "-A LB_203.0.113.13_80 -j ACCEPT", "-A LB_203.0.113.13_80 -j DROP"]


def test_listener_guard_keeps_rule_order(tmp_path):
    code, out, err = run_cli("build", copy_site(FIXTURE_SITES / "services", tmp_path / "s"), "--output",
                             tmp_path / "out", "--placeholder-secrets")
    assert code == 0, out + err
    rules = (tmp_path / "out/services/solo-r1/etc/iptables/rules.v4").read_text()
    web = [r.split(" -m comment")[0] for r in chain_rules(rules, "filter", "LB_198.51.100.100_80")]
    # rule 5 (deny 8000-9000 from the bad net) covers private port 8080 and comes first; udp rule 15 does not apply
    assert web == ["-A LB_198.51.100.100_80 -s 198.51.100.0/25 -j DROP", "-A LB_198.51.100.100_80 -j ACCEPT",
                   "-A LB_198.51.100.100_80 -s 10.0.0.0/8 -j ACCEPT", "-A LB_198.51.100.100_80 -j DROP"]
    api = [r.split(" -m comment")[0] for r in chain_rules(rules, "filter", "LB_198.51.100.100_8443")]
    assert api == ["-A LB_198.51.100.100_8443 -j DROP"]  # members in a default_deny tier
    swanctl = (tmp_path / "out/services/solo-r1/etc/swanctl/swanctl.conf").read_text()
    # 61 s and 7201 s lifetimes: hard limits to the second, rekeying 10% earlier
    assert "rekey_time = 55s\n        over_time = 6s" in swanctl
    assert "rekey_time = 6481s\n                life_time = 7201s" in swanctl
    assert "dpd_delay" not in swanctl.split("    ra {")[0]  # dpd_delay_s: 0 disables DPD


def test_secrets_never_leak(example_tree):
    secrets_dir = EXAMPLE / "secrets"
    values = {p.name: p.read_text().rstrip("\n") for p in secrets_dir.iterdir() if p.name != "README.md"}
    for path in sorted(example_tree.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_text()
        mode = path.stat().st_mode & 0o777
        for name, value in values.items():
            if value.strip() in data:
                assert mode == 0o600, f"{path} holds secret {name} but has mode {mode:04o}"
                assert path.name not in ("site.json", "manifest.json", "swanctl.conf")
    # swanctl secrets are base64 only: no character of the value reaches the file's syntax
    text = (example_tree / "shop-r1/etc/swanctl/vpcgen-secrets.conf").read_text()
    assert values["hq-psk"] not in text
    encoded = re.findall(r"secret = 0s(\S+)", text)
    assert values["hq-psk"] in [base64.b64decode(e).decode() for e in encoded]
    site = (example_tree / "site.json").read_text()
    assert not any(v in site for v in values.values())


def test_only_the_master_announces_a_routed_vpc(example_tree):
    pair = [(example_tree / r / "etc/frr/frr.conf").read_text() for r in ("left-r1", "left-r2")]
    single = (example_tree / "right-r1/etc/frr/frr.conf").read_text()
    for text in pair:
        assert re.search(r"^ area \d+ range 10\.128\.0\.0/22 not-advertise$", text, re.M)
    assert re.search(r"^ area \d+ range 10\.128\.4\.0/22$", single, re.M)
    ids = [re.search(r"ospf router-id (\S+)", t).group(1) for t in pair + [single]]
    assert len(set(ids)) == 3 and all(i.startswith("100.64.0.") for i in ids)
    # a pair announces the VPC as the route keepalived installs on the master only, redistributed
    for router, text in zip(("left-r1", "left-r2"), pair):
        assert re.search(r"^ redistribute kernel route-map VPCGEN-ANNOUNCE$", text, re.M)
        assert re.search(r"^ip prefix-list VPCGEN-ANNOUNCE seq 5 permit 10\.128\.0\.0/22$", text, re.M)
        keepalived = (example_tree / router / "etc/keepalived/keepalived.conf").read_text()
        routes = keepalived.split("virtual_routes {", 1)[1].split("}", 1)[0]
        assert "blackhole 10.128.0.0/22" in routes
        assert re.search(r"^ ip ospf bfd$", text, re.M) and "detect-multiplier 3" in text
    assert "redistribute" not in single
    rules = (example_tree / "left-r1/etc/iptables/rules.v4").read_text()
    guard = chain_rules(rules, "raw", "VPCGEN_HA_GUARD")
    # the router's own traffic and OSPF pass before any drop: adjacencies and health checks survive on the backup
    assert guard[0].startswith("-A VPCGEN_HA_GUARD -m addrtype --dst-type LOCAL -j RETURN")
    assert guard[1].startswith("-A VPCGEN_HA_GUARD -i eth1.99 -p 89 -j RETURN")
    manifest = json.loads((example_tree / "left-r1/etc/vpcgen/manifest.json").read_text())
    frr = next(s for s in manifest["services"] if s["name"] == "frr")
    assert frr["reload"] == "systemctl reload frr"  # the announcement is a kernel route: nothing to replay


def test_site_json_lists_the_services(example_tree):
    site = json.loads((example_tree / "site.json").read_text())
    shop, left = site["vpcs"]["shop"], site["vpcs"]["left"]
    assert shop["private_gateways"]["corp"]["routes"] == ["192.168.0.0/16"]
    assert shop["load_balancers"]["www-http"]["members"] == ["10.10.1.11", "10.10.1.12"]
    assert shop["vpn_peers"]["hq"]["peer"] == "192.0.2.200"
    assert left["kind"] == "routed" and left["cidr"] == "10.128.0.0/22" and left["ospf_area"] == 1


def test_guest_services_open_only_the_tiers_own_gateway(example_tree):
    """DNS and DHCP: accepted from a tier to its own gateway only, never on the uplink; SSH on eth0
    only from allowed_from."""
    site = json.loads((example_tree / "site.json").read_text())
    for router in ("shop-r1", "blog-r1", "left-r1"):
        rules = (example_tree / router / "etc/iptables/rules.v4").read_text()
        inputs = chain_rules(rules, "filter", "INPUT")
        services = [line for line in inputs if re.search(r"--dport (53|67) ", line)]
        vpc = next(v for v in site["vpcs"].values() if router in v["routers"])
        by_iface = {f"eth2.{t['vlan']}" if t["vlan"] else f"vxlan{t['vni']}": t for t in vpc["tiers"].values()}
        expected = 0
        for line in services:
            if "--pol ipsec" in line:  # remote-access clients, decrypted, to the DNS address only
                assert "-s 10.10.250.0/24 -d 10.10.0.1/32" in line and "--dport 53 " in line
                continue
            iface = re.search(r"-i (\S+) ", line).group(1)
            tier = by_iface[iface]  # a tier interface, never the uplink
            assert f"-d {tier['gateway']}/32 " in line or "-d 255.255.255.255/32 " in line, line
            assert "--dport 67 " not in line or tier["dhcp"], line
        for tier in vpc["tiers"].values():
            expected += 2 + (2 if tier["dhcp"] else 0)
        assert len([s for s in services if "--pol ipsec" not in s]) == expected
        ssh = [line for line in inputs if "--dport 3922 " in line]
        assert ssh == [f"-A INPUT -i eth0 -s {cidr} -p tcp -m tcp --dport 3922 -j ACCEPT -m comment "
                       "--comment \"ssh on management only, from allowed_from\"" for cidr in site["ssh"]["allowed_from"]]


def test_dnsmasq_and_chrony_follow_the_intent(tmp_path):
    site = copy_site(EXAMPLE, tmp_path / "example")
    zone = site / "zones/zone1.yaml"
    zone.write_text(re.sub(r"(dns|ntp)_servers: .*\n", "", zone.read_text()))
    code, out, err = run_cli("build", site, "--output", tmp_path / "out")
    assert code == 0, out + err
    tree = tmp_path / "out/example"
    # without dns_servers only the VPCs with dhcp or hosts run dnsmasq; nobody gets time sources
    assert (tree / "shop-r1/etc/dnsmasq.d/vpcgen.conf").exists()
    for router in ("blog-r1", "left-r1", "right-r1"):
        assert not (tree / router / "etc/dnsmasq.d").exists()
        rules = (tree / router / "etc/iptables/rules.v4").read_text()
        assert "--dport 53 " not in rules and "--dport 67 " not in rules
    assert not list(tree.glob("*/etc/chrony"))
    conf = (tree / "shop-r1/etc/dnsmasq.d/vpcgen.conf").read_text()
    assert "server=" not in conf and "no-resolv" in conf  # local names only, nothing forwarded
    assert "        dns = 10.10.0.1\n" in (tree / "shop-r1/etc/swanctl/swanctl.conf").read_text()  # still served
    # both routers of a pair carry the same file (only the master holds the addresses it names)
    assert conf.split("\n", 2)[2] == (tree / "shop-r2/etc/dnsmasq.d/vpcgen.conf").read_text().split("\n", 2)[2]


def test_keepalived_runs_its_scripts_through_the_shell_never_a_link_into_a_release(example_tree):
    """keepalived resolves a script's links once, when it loads its config: /etc's notify.sh would
    stay the release it pointed to then, and every check and transition would fail once a later
    deploy pruned that release. The shell is what keepalived resolves; sh finds the current script."""
    commands = []
    for conf in sorted(example_tree.glob("*/etc/keepalived/keepalived.conf")):
        commands += re.findall(r'^\s*(?:script|notify)\s+"([^"]+)"', conf.read_text(), re.M)
        assert not re.search(r"^\s*(?:script|notify)\s+[^\"\s]", conf.read_text(), re.M), conf
    assert commands and all(c.split()[:2] == ["/bin/sh", "/etc/keepalived/notify.sh"] for c in commands), commands
