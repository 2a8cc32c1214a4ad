"""Every kind of bad input: exit 1, located diagnostics (snapshotted), no traceback, output untouched."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from conftest import run_cli

from vpcgen import api, forked

# the example's zone has VXLAN (multicast) and one routed block; a tier for the single-router blog VPC
ZONE_VXLAN_BLOCK = 'vxlan:                           # tiers on VXLAN segments, as CloudStack\'s KVM hosts build them (multicast)\n  underlay: {cidr: 10.0.0.0/24, vlan: 90}\n  vnis: "5000-5999"\n'


def blog_tier(flow: str) -> tuple:
    return ("vpcs/blog.yaml", "- {name: web, netmask: 24, acl: web}", f"- {{name: web, netmask: 24, acl: web}}\n  - {flow}")


def routed_blocks(blocks: str) -> tuple:
    return ("zones/zone1.yaml", 'routed: ["203.0.113.208/28"]', f'routed: [{blocks}]')


# (case, [(file, old text, new text)]): old=None replaces the whole file (new=None deletes it)
CASES = [
    ("yaml-syntax", [("vpcs/shop.yaml", "zone: zone1", "zone: [zone1")]),
    ("duplicate-key", [("vpcs/shop.yaml", "redundant: true", "redundant: true\nredundant: false")]),
    ("wrong-type", [("vpcs/shop.yaml", "redundant: true", "redundant: 3")]),
    ("unknown-key", [("acls/web.yaml", "{number: 15,", "{number: 15, prot: tcp,")]),
    ("empty-file", [("acls/db.yaml", None, "")]),
    ("comment-only-file", [("acls/db.yaml", None, "# nothing here\n")]),
    ("not-utf8", [("acls/db.yaml", "Database tier", "Datab\xe4se tier".encode("latin-1").decode("latin-1"))]),
    ("multiple-documents", [("acls/db.yaml", "rules:", "rules: []\n---\nrules:")]),
    ("not-a-mapping", [("zones/zone1.yaml", None, "- zone1\n")]),
    ("missing-required", [("vpcs/blog.yaml", "zone: zone1\n", "")]),
    ("name-mismatch", [("acls/db.yaml", "name: db", "name: dbx")]),
    ("bad-name", [("vpcs/blog.yaml", "- {name: web, netmask: 24, acl: web}", "- {name: Web_1, netmask: 24, acl: web}")]),
    ("dangling-acl", [("vpcs/shop.yaml", "{name: db, netmask: 24, acl: db}", "{name: db,  netmask: 24, acl: dbz}")]),
    ("dangling-zone", [("vpcs/blog.yaml", "zone: zone1", "zone: zone9")]),
    ("dangling-public-ip", [("vpcs/shop.yaml", "{public_ip: bastion, private_ip", "{public_ip: bastio, private_ip")]),
    ("cidr-not-canonical", [("vpcs/shop.yaml", "cidr: 10.10.0.0/16", "cidr: 10.10.1.0/16")]),
    ("tier-overlap", [("vpcs/shop.yaml", "{name: app, netmask: 24, acl: app}",
                       "{name: app, cidr: 10.10.1.128/25, acl: app}")]),
    ("tier-outside-vpc", [("vpcs/shop.yaml", "cidr: 10.10.1.0/24", "cidr: 10.11.1.0/24")]),
    ("vpc-overlap", [("vpcs/blog.yaml", "cidr: 10.20.0.0/16", "cidr: 10.10.128.0/17")]),
    ("private-ip-outside", [("vpcs/shop.yaml", "private_ip: 10.10.1.10}", "private_ip: 10.10.9.10}")]),
    ("private-ip-reserved", [("vpcs/shop.yaml", "private_ip: 10.10.1.10}", "private_ip: 10.10.1.254}")]),
    ("port-collision", [("vpcs/shop.yaml", "public_port: 2222,", "public_port: 80,")]),
    ("port-range-size", [("vpcs/shop.yaml", "private_ip: 10.10.0.21}", "private_ip: 10.10.0.21, private_port: \"6000-6019\"}")]),
    ("public-ip-double-use", [("vpcs/shop.yaml", "{public_ip: www, protocol: tcp, public_port: 2222",
                               "{public_ip: bastion, protocol: tcp, public_port: 2222")]),
    ("duplicate-vlan", [("vpcs/blog.yaml", "{name: web, netmask: 24, acl: web}",
                         "{name: web, netmask: 24, acl: web, vlan: 1200}")]),
    ("router-count", [("vpcs/blog.yaml", "redundant: false", "redundant: true")]),
    ("duplicate-router", [("vpcs/blog.yaml", "name: blog-r1", "name: shop-r1")]),
    ("public-pool-exhausted", [("zones/zone1.yaml", "203.0.113.10-203.0.113.200", "203.0.113.10-203.0.113.12")]),
    ("vlan-pool-exhausted", [("zones/zone1.yaml", '"1000-1999"', '"1000-1002"')]),
    ("vpc-pool-exhausted", [("vpcs/blog.yaml", "cidr: 10.20.0.0/16", "cidr: 10.20.0.0/23"),
                            ("vpcs/blog.yaml", "- {name: web, netmask: 24, acl: web}",
                             "- {name: web, netmask: 24, acl: web}\n  - {name: b, netmask: 24}\n"
                             "  - {name: c, netmask: 24}")]),
    ("acl-rule-fields", [("acls/web.yaml", "protocol: icmp, icmp_type: 8", "protocol: udp, icmp_type: 8"),
                         ("acls/db.yaml", "protocol: all}", "protocol: all, ports: 80}"),
                         ("acls/app.yaml", "{number: 20,", "{number: 10,")]),
    ("builtin-acl", [("acls/default_allow.yaml", None, "name: default_allow\nrules: []\n")]),
    ("description-control-chars", [("site.yaml", "description: Demo site shipped with vpcgen",
                                    'description: "Demo\\nsite"')]),
    ("missing-secret", [("secrets/hq-psk", None, None), ("secrets/vpn-bob", None, None)]),
    # load balancers
    ("unknown-proposal", [("vpcs/shop.yaml", "ike_proposals: [aes256-sha256-modp2048]",
                           "ike_proposals: [aes256-sha257-modp2048]"),
                          ("vpcs/shop.yaml", "esp_proposals: [aes128-sha256-modp2048]",
                           "esp_proposals: [aes128-modp2048]")]),
    ("ikev1-aead-proposal", [("vpcs/shop.yaml", "ike_proposals: [aes128-sha256-modp2048]",
                              "ike_proposals: [aes128gcm16-prfsha256-modp2048]")]),
    ("cookie-needs-http", [("vpcs/shop.yaml", "stickiness: source", "stickiness: cookie")]),
    ("http-path-needs-http", [("vpcs/shop.yaml", "stickiness: source",
                               "stickiness: source\n    health_check: {http_path: /up}")]),
    ("lb-member-outside", [("vpcs/shop.yaml", "members: [10.10.1.11, 10.10.1.12]\n  - name: www-tls",
                            "members: [10.10.1.11, 10.10.9.12]\n  - name: www-tls")]),
    ("lb-members-span-tiers", [("vpcs/shop.yaml", "members: [10.10.1.11, 10.10.1.12]\n  - name: www-tls",
                                "members: [10.10.1.11, 10.10.0.12, 10.10.1.11]\n  - name: www-tls")]),
    ("lb-port-collision", [("vpcs/shop.yaml", "public_port: 443", "public_port: 2222")]),
    ("lb-on-source-nat-ip", [("vpcs/shop.yaml", "public_ip: www\n    public_port: 443",
                              "public_ip: source-nat\n    public_port: 443")]),
    # VPNs
    ("vpn-needs-source-nat", [("vpcs/shop.yaml", "source_nat: true", "source_nat: false")]),
    ("vpn-pool-overlaps-tier", [("vpcs/shop.yaml", "pool: 10.10.250.0/24", "pool: 10.10.1.128/25")]),
    ("vpn-pool-overlaps-peer", [("vpcs/shop.yaml", "pool: 10.10.250.0/24", "pool: 172.16.8.0/24")]),
    ("duplicate-vpn-peer", [("vpcs/shop.yaml", "peer: 192.0.2.201", "peer: 192.0.2.200")]),
    ("peer-overlaps-vpc", [("vpcs/shop.yaml", "peer_cidrs: [172.16.0.0/16]", "peer_cidrs: [10.10.64.0/18]")]),
    ("bad-secret", [("secrets/ospf-zone1", None, "a key far too long for FRR"),
                    ("secrets/ra-cert", None, "not a certificate\n")]),
    # private gateways
    ("private-gateway-routes", [("vpcs/shop.yaml", "routes: [192.168.0.0/16]",
                                 "routes: [192.168.0.0/16, 10.10.64.0/18, 192.168.4.0/24, 0.0.0.0/0]")]),
    ("private-gateway-address", [("vpcs/shop.yaml", "gateway: 172.31.0.1", "gateway: 172.31.0.9"),
                                 ("vpcs/shop.yaml", "address: 172.31.0.2/30", "address: 10.10.200.2/30")]),
    ("private-gateway-vlan", [("vpcs/shop.yaml", "vlan: 3000", "vlan: 1200")]),
    # routed VPCs
    ("routed-vpc-nat-fields", [("vpcs/blog.yaml", "cidr: 10.20.0.0/16", "netmask: 22")]),
    ("routed-vpc-lb-and-vpn", [("vpcs/right.yaml", "tiers:", "load_balancers: []\nvpn: {}\nsource_nat: false\ntiers:")]),
    ("routed-tier-cidr", [("vpcs/right.yaml", "{name: app, netmask: 24", "{name: app, cidr: 10.128.4.0/24")]),
    ("zone-not-routed", [("zones/zone1.yaml", "super_cidr: 10.128.0.0/12", "")]),
    ("super-cidr-exhausted", [("zones/zone1.yaml", "super_cidr: 10.128.0.0/12", "super_cidr: 10.128.0.0/22")]),
    ("transit-exhausted", [("zones/zone1.yaml", "cidr: 100.64.0.0/24", "cidr: 100.64.0.0/30")]),
    ("ikev1-two-networks", [("vpcs/shop.yaml", "peer_cidrs: [172.17.0.0/16]", "peer_cidrs: [172.17.0.0/16, 172.18.0.0/24]")]),
    ("acl-protocol-zero", [("acls/app.yaml", "protocol: 50", "protocol: 0")]),
    # folders and files vpcgen does not read, secrets written as values
    ("misnamed-folders", [("vpc/extra.yaml", None, "name: extra\n"), ("acl/extra.yaml", None, "name: extra\n")]),
    ("stray-top-level-file", [("zone.yaml", None, "name: zone2\n")]),
    ("secret-as-value", [("vpcs/shop.yaml", "psk: {secret: hq-psk}", "psk: s3cr3t-office"),
                         ("vpcs/shop.yaml", "server_key: {secret: ra-key}", "server_key: [k3y-m4t3r1al]"),
                         ("vpcs/shop.yaml", "password: {secret: vpn-bob}", "password: {secret: \"b0b pw\"}"),
                         ("zones/zone1.yaml", "auth_key: {secret: ospf-zone1}", "auth_key: 0.5")]),
    ("netmask-never-fits", [("vpcs/right.yaml", "netmask: 22", "netmask: 8")]),
    # warnings: fail only with --strict (STRICT)
    ("tier-without-acl", [("vpcs/shop.yaml", "{name: app, netmask: 24, acl: app}", "{name: app, netmask: 24}")]),
    ("nat-vpc-in-super-cidr", [("vpcs/blog.yaml", "cidr: 10.20.0.0/16", "cidr: 10.130.0.0/16"),
                               ("vpcs/blog.yaml", "private_ip: 10.20.0.10", "private_ip: 10.130.0.10")]),
    ("private-gateway-broadcast", [("vpcs/shop.yaml", "address: 172.31.0.2/30", "address: 172.31.0.3/30"),
                                   ("vpcs/shop.yaml", "gateway: 172.31.0.1", "gateway: 172.31.0.0")]),
    # guest services: tier hosts and DHCP ranges (one case per rule)
    ("host-outside-tier", [("vpcs/shop.yaml", "{name: bastion, address: 10.10.1.10}",
                            "{name: bastion, address: 10.10.9.10}"),
                           ("vpcs/shop.yaml", "address: 10.10.1.12, mac", "address: 10.10.1.255, mac")]),
    ("host-reserved", [("vpcs/shop.yaml", "{name: bastion, address: 10.10.1.10}",
                        "{name: bastion, address: 10.10.1.254}"),
                       ("vpcs/shop.yaml", "address: 10.10.1.12, mac", "address: 10.10.1.1, mac")]),
    ("duplicate-host", [("vpcs/shop.yaml", "{name: web2, address", "{name: web1, address")]),
    ("duplicate-host-address", [("vpcs/shop.yaml", "address: 10.10.1.12, mac", "address: 10.10.1.11, mac")]),
    ("duplicate-mac", [("vpcs/shop.yaml", 'mac: "02:00:0a:0a:01:0c"', 'mac: "02:00:0A:0A:01:0B"')]),
    ("mac-not-unicast", [("vpcs/shop.yaml", 'mac: "02:00:0a:0a:01:0b"', 'mac: "03:00:0a:0a:01:0b"'),
                         ("vpcs/shop.yaml", 'mac: "02:00:0a:0a:01:0c"', 'mac: "00:00:00:00:00:00"')]),
    ("bad-dhcp-range", [("vpcs/shop.yaml", '"10.10.1.100-10.10.1.199"', '"10.10.1.199-10.10.1.100"')]),
    ("dhcp-range-outside", [("vpcs/shop.yaml", '"10.10.1.100-10.10.1.199"', '"10.10.1.100-10.10.2.10"')]),
    ("dhcp-range-reserved", [("vpcs/shop.yaml", '"10.10.1.100-10.10.1.199"', '"10.10.1.100-10.10.1.254"')]),
    ("dhcp-range-overlaps-host", [("vpcs/shop.yaml", '"10.10.1.100-10.10.1.199"', '"10.10.1.5-10.10.1.99"')]),
    ("guest-fields-schema", [("vpcs/shop.yaml", "domain: shop.internal", "domain: Shop_Internal."),
                             ("vpcs/shop.yaml", "mtu: 1450", "mtu: 9001"),
                             ("vpcs/shop.yaml", 'mac: "02:00:0a:0a:01:0b"', 'mac: "02-00-0a-0a-01-0b"'),
                             ("vpcs/shop.yaml", "lease_s: 3600", "lease_s: 60"),
                             ("zones/zone1.yaml", "dns_servers: [192.0.2.53, 192.0.2.54]",
                              "dns_servers: [192.0.2.53, 192.0.2.53]")]),
    ("ssh-allowed-from-not-canonical", [("site.yaml", "allowed_from: [198.51.100.0/24]",
                                         "allowed_from: [198.51.100.7/24]")]),
    # VXLAN tiers (one case per rule)
    ("vni-out-of-range", [blog_tier("{name: vx, netmask: 24, isolation: vxlan, vni: 16777216}")]),
    ("bad-vni-range", [("zones/zone1.yaml", 'vnis: "5000-5999"', 'vnis: "5999-5000"')]),
    ("duplicate-vni", [blog_tier("{name: vx, netmask: 24, isolation: vxlan, vni: 7000}"),
                       ("vpcs/right.yaml", "{name: app, netmask: 24, acl: inter-vpc}",
                        "{name: app, netmask: 24, acl: inter-vpc, isolation: vxlan, vni: 7000}")]),
    ("zone-without-vxlan", [("zones/zone1.yaml", ZONE_VXLAN_BLOCK, "")]),
    ("vni-on-vlan-tier", [blog_tier("{name: vx, netmask: 24, vni: 5001}")]),
    ("vlan-on-vxlan-tier", [blog_tier("{name: vx, netmask: 24, isolation: vxlan, vlan: 1500}")]),
    ("vxlan-mtu-too-large", [blog_tier("{name: vx, netmask: 24, isolation: vxlan, mtu: 1451}")]),
    ("vxlan-underlay-mtu-too-small", [("zones/zone1.yaml", 'vnis: "5000-5999"', 'vnis: "5000-5999"\n  mtu: 1400'),
                                      blog_tier("{name: vx, netmask: 24, isolation: vxlan, mtu: 1400}")]),
    ("remote-outside-underlay", [("zones/zone1.yaml", 'vnis: "5000-5999"',
                                  'vnis: "5000-5999"\n  remotes: [10.0.0.21, 10.0.1.22]')]),
    ("remote-in-tier", [("zones/zone1.yaml", 'vnis: "5000-5999"', 'vnis: "5000-5999"\n  remotes: [10.0.0.99, 10.20.0.9]'),
                        ("zones/zone1.yaml", "cidr: 10.0.0.0/24, vlan: 90", "cidr: 10.0.0.0/8, vlan: 90")]),
    ("underlay-vlan-collision", [("zones/zone1.yaml", "vlan: 99", "vlan: 90")]),
    ("vni-pool-exhausted", [("zones/zone1.yaml", 'vnis: "5000-5999"', 'vnis: "5000-5000"'),
                            blog_tier("{name: vx, netmask: 24, isolation: vxlan}\n  - {name: vy, netmask: 24, isolation: vxlan}")]),
    # public tiers and the zone's routed blocks (one case per rule)
    ("routed-block-outside", [routed_blocks("203.0.113.208/28, 203.0.114.0/28")]),
    ("routed-block-gateway", [routed_blocks("203.0.113.208/28, 203.0.113.0/29")]),
    ("routed-block-overlaps-range", [routed_blocks("203.0.113.208/28, 203.0.113.192/28")]),
    ("routed-block-overlap", [routed_blocks("203.0.113.208/28, 203.0.113.216/29")]),
    ("routed-block-not-canonical", [routed_blocks("203.0.113.208/28, 203.0.113.225/28")]),
    ("public-tier-in-routed-vpc", [("vpcs/right.yaml", "{name: app, netmask: 24, acl: inter-vpc}",
                                    "{name: app, netmask: 24, acl: inter-vpc, public: true}")]),
    ("public-tier-netmask", [blog_tier("{name: dmz, netmask: 28, public: true}")]),
    ("public-tier-outside-block", [blog_tier("{name: dmz, cidr: 203.0.113.224/28, public: true}")]),
    ("public-tier-overlap", [blog_tier("{name: dmz, cidr: 203.0.113.208/29, public: true}")]),
    ("nat-targets-public-tier", [routed_blocks('"203.0.113.208/28", "203.0.113.224/28"'),
                                 blog_tier("{name: dmz, cidr: 203.0.113.224/28, public: true}"),
                                 ("vpcs/blog.yaml", "private_ip: 10.20.0.10}", "private_ip: 203.0.113.226}")]),
    ("public-ip-in-routed-block", [("vpcs/blog.yaml", "- {name: site}", "- {name: site, address: 203.0.113.212}")]),
]


# cases whose mistakes are warnings: the build succeeds unless --strict
STRICT = {"tier-without-acl", "nat-vpc-in-super-cidr"}


def apply(site: Path, edits) -> None:
    for rel, old, new in edits:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if old is None:
            if new is None:
                path.unlink()
            else:
                path.write_text(new, encoding="utf-8")
            continue
        text = path.read_text(encoding="utf-8")
        assert old in text, f"fixture edit does not apply: {old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("case,edits", CASES, ids=[c[0] for c in CASES])
def test_invalid_site(case, edits, example, tmp_path, monkeypatch, snapshot):
    out = tmp_path / "out"
    code, _, _ = run_cli("build", example, "--output", out)
    assert code == 0
    before = tree_digest(out)
    lock_before = (example / "allocations.lock.yaml").read_bytes()
    apply(example, edits)
    if case == "not-utf8":
        path = example / "acls/db.yaml"
        path.write_bytes(path.read_bytes().replace("Datab\xe4se".encode("utf-8"), b"Datab\xe4se"))
    monkeypatch.chdir(tmp_path)  # FILE as the user would open it: relative to where vpcgen runs
    code, stdout, stderr = run_cli("build", "example", "--output", "out", *(["--strict"] if case in STRICT else []))
    assert code == 1, stdout + stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith("example/") or line.startswith("error:") or
                         re.match(r"^[0-9]+ (errors?|warnings?)\b", line) for line in lines), stderr
    if case in STRICT:
        lines = lines[:-1]
        assert all(" warning: " in line for line in lines), stderr
    else:
        assert lines[-1].split(",")[0] == f"{sum(' error: ' in line or line.startswith('error:') for line in lines)} "\
            f"error{'s' if sum(' error: ' in line or line.startswith('error:') for line in lines) != 1 else ''}", stderr
    assert "s3cr3t" not in stderr and "k3y" not in stderr and "b0b" not in stderr and "0.5" not in stderr
    assert tree_digest(out) == before, "a failed build must leave the earlier output untouched"
    assert (example / "allocations.lock.yaml").read_bytes() == lock_before
    assert stderr == snapshot
    # a large site's build checks its intent in a child while it goes on as if nothing were found:
    # forced on this small one, the same problems come out, and nothing is written either
    monkeypatch.setattr(api, "_FORK_VPCS", 1)
    monkeypatch.setattr(forked, "start", forked.Forked)
    assert run_cli("build", "example", "--output", "out", *(["--strict"] if case in STRICT else [])) \
        == (1, stdout, stderr)
    assert tree_digest(out) == before
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    if case in STRICT:  # warnings alone never fail a build
        code, stdout, warned = run_cli("build", "example", "--output", "elsewhere")
        assert code == 0 and warned == "".join(line + "\n" for line in lines), stdout + warned


# ten independent mistakes in ten places, schema and semantic rules mixed: one run reports them all
TEN_MISTAKES = [
    ("site.yaml", "port: 3922", "port: 0", "example/site.yaml:10:11: error: ", "[schema-minimum]"),
    ("acls/web.yaml", "action: deny,", "action: reject,", "example/acls/web.yaml:", "[schema-enum]"),
    ("vpcs/left.yaml", "redundant: true", "redundant: 3", "example/vpcs/left.yaml:6:", "[schema-type]"),
    ("acls/app.yaml", "{number: 20,", "{number: 10,", "example/acls/app.yaml:6:", "[duplicate-rule-number]"),
    ("acls/db.yaml", "protocol: all}", "protocol: all, ports: 80}", "example/acls/db.yaml:", "[ports-without-tcp-udp]"),
    ("acls/corp-gw.yaml", "name: corp-gw", "name: corp-gw2", "example/acls/corp-gw.yaml:2:7:", "[name-mismatch]"),
    ("vpcs/blog.yaml", "zone: zone1", "zone: nowhere", "example/vpcs/blog.yaml:4:", "[unknown-zone]"),
    ("vpcs/right.yaml", "netmask: 22", "netmask: 8", "example/vpcs/right.yaml:5:", "[netmask-too-large]"),
    ("vpcs/shop.yaml", "private_ip: 10.10.1.10}", "private_ip: 10.10.9.10}", "example/vpcs/shop.yaml:",
     "[private-ip-outside]"),
    ("zone.yaml", None, "name: zone2\n", "example/zone.yaml: error: ", "[unknown-entry]"),
]


def test_validate_reports_every_error_at_once(example, monkeypatch, tmp_path):
    apply(example, [(rel, old, new) for rel, old, new, _, _ in TEN_MISTAKES])
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("validate", "example")
    assert code == 1
    lines = stderr.strip().splitlines()
    for _, _, _, where, code_ in TEN_MISTAKES:
        assert any(line.startswith(where) and line.endswith(code_) for line in lines), (where, code_, stderr)
    assert lines[-1] == "10 errors", stderr  # nothing reported twice, no consequence of another mistake


def test_usage_error_exit_2():
    code, _, _ = run_cli("build")
    assert code == 2
    code, _, _ = run_cli("frobnicate")
    assert code == 2


def test_locked_build_says_what_would_change(example, monkeypatch, tmp_path):
    apply(example, [("vpcs/shop.yaml", "{name: db, netmask: 24, acl: db}",
                     "{name: db, netmask: 24, acl: db}\n  - {name: cache, netmask: 24, acl: app}")])
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("build", "example", "--locked", "--output", "out")
    assert code == 1
    assert "example/allocations.lock.yaml would change (--locked): `vpcs.shop.tiers.cache.cidr`: 10.10.4.0/24 (new); " \
           "`vpcs.shop.tiers.cache.vlan`: " in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_help_has_no_type_labels():
    from vpcgen.cli import app

    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"validate", "build", "deploy", "diff"} <= set(commands)
    for command in commands:
        code, stdout, _ = run_cli(command, "--help")
        assert code == 0
        options = stdout.split("Options:")[-1]
        assert "<bool>" not in stdout and "BOOLEAN" not in stdout and "<list[" not in options, (command, stdout)
