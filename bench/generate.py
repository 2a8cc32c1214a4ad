"""Generate a synthetic site: N redundant VPCs x T tiers, one R-rule ACL list per tier.

    .venv/bin/python bench/generate.py OUT_DIR --vpcs 1000 --tiers 4 --rules 30 [--no-services]

With services (the default) every fifth VPC is routed (OSPF) and the NAT VPCs carry a mix of
load balancers (1 in 4), site-to-site plus remote-access VPNs (1 in 4) and private gateways
(1 in 10).
"""

from __future__ import annotations

import argparse
from pathlib import Path

VPCS_PER_ZONE = 500  # each VPC needs T + 1 VLANs from its zone's pool of 4093


def acl(name: str, rules: int, vpc_index: int) -> str:
    lines = [f"name: {name}", "rules:"]
    for n in range(1, rules + 1):
        traffic = "ingress" if n % 3 else "egress"
        action = "deny" if n % 7 == 0 else "allow"
        proto = ("tcp", "udp", "icmp", "all")[n % 4]
        extra = f", ports: {1000 + n}" if proto in ("tcp", "udp") else ""
        lines.append(f"  - {{number: {n * 10}, action: {action}, traffic: {traffic}, protocol: {proto}{extra}, "
                     f"cidrs: [172.{16 + n % 16}.{vpc_index % 256}.0/24]}}")
    return "\n".join(lines) + "\n"


def services(i: int, base: int) -> str:
    """NAT-VPC services of VPC i: load balancer, VPNs, private gateway (a mix, see the docstring)."""
    net = f"10.{base // 256}.{base % 256}"
    out = ""
    if i % 4 == 0:
        out += (f"load_balancers:\n  - {{name: web, public_ip: lb, public_port: 80, protocol: http, "
                f"stickiness: cookie, health_check: {{http_path: /health}}, members: [{net}.11, {net}.12]}}\n")
    if i % 4 == 1:
        out += (f"vpn:\n  site_to_site:\n    - {{name: hq, peer: 192.0.{i // 250 % 256}.{i % 250 + 1}, "
                f"peer_cidrs: [172.16.{i % 256}.0/24], psk: {{secret: psk}}, esp_lifetime_s: 2700}}\n"
                f"  remote_access:\n    pool: 10.{base // 256}.{base % 256 + 3}.128/25\n"
                f"    server_cert: {{secret: cert}}\n    server_key: {{secret: key}}\n"
                f"    users: [{{name: alice, password: {{secret: alice}}}}]\n")
    if i % 10 == 2:
        out += (f"private_gateways:\n  - {{name: corp, vlan: {3000 + i % 1000 // 2}, address: 172.31.0.2/30, "
                f"gateway: 172.31.0.1, routes: [192.168.0.0/16]}}\n")
    return out


def generate(out: Path, vpcs: int, tiers: int, rules: int, with_services: bool = True) -> Path:
    site = out / "bench"
    for sub in ("zones", "vpcs", "acls"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    (site / "site.yaml").write_text("name: bench\ndefaults: {vrrp: {advert_interval_ms: 200}}\n")
    zones = (vpcs + VPCS_PER_ZONE - 1) // VPCS_PER_ZONE
    for z in range(zones):
        (site / "zones" / f"z{z}.yaml").write_text(
            f"name: z{z}\nguest_vlans: \"2-4094\"\npublic:\n  cidr: 100.{64 + z}.0.0/16\n"
            f"  gateway: 100.{64 + z}.0.1\n  ranges: [\"100.{64 + z}.0.10-100.{64 + z}.255.250\"]\n"
            f"super_cidr: 10.{64 + z * 8}.0.0/13\n"
            f"ospf:\n  transit: {{cidr: 100.{100 + z}.0.0/16}}\n  auth_key: {{secret: ospf}}\n")
    for i in range(vpcs):
        name = f"vpc{i:05d}"
        base = (i % VPCS_PER_ZONE) * 4
        tier_lines = []
        routed = with_services and i % 5 == 4
        for t in range(tiers):
            acl_name = f"{name}-t{t}"
            (site / "acls" / f"{acl_name}.yaml").write_text(acl(acl_name, rules, i))
            tier_lines.append(f"  - {{name: t{t}, netmask: {25 if with_services and not routed else 24}, acl: {acl_name}}}")
        if routed:
            (site / "vpcs" / f"{name}.yaml").write_text(
                f"name: {name}\nzone: z{i // VPCS_PER_ZONE}\nnetmask: 22\n"
                f"routers:\n  - {{name: {name}-a, mgmt: 198.{18 + i // 65536}.{i // 256 % 256}.{i % 256 + 0}}}\n"
                f"  - {{name: {name}-b, mgmt: 198.{20 + i // 65536}.{i // 256 % 256}.{i % 256}}}\n"
                f"tiers:\n" + "\n".join(tier_lines) + "\n")
            continue
        extra = services(i, base) if with_services else ""
        lb_ip = "  - {name: lb}\n" if "load_balancers" in extra else ""
        (site / "vpcs" / f"{name}.yaml").write_text(
            f"name: {name}\nzone: z{i // VPCS_PER_ZONE}\ncidr: 10.{base // 256}.{base % 256}.0/22\n"
            f"routers:\n  - {{name: {name}-a, mgmt: 198.{18 + i // 65536}.{i // 256 % 256}.{i % 256 + 0}}}\n"
            f"  - {{name: {name}-b, mgmt: 198.{20 + i // 65536}.{i // 256 % 256}.{i % 256}}}\n"
            f"tiers:\n" + "\n".join(tier_lines) + "\n"
            f"public_ips:\n  - {{name: www}}\n{lb_ip}"
            f"port_forwarding:\n  - {{public_ip: www, protocol: tcp, public_port: 443, "
            f"private_ip: 10.{base // 256}.{base % 256}.10}}\n" + extra)
    return site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--vpcs", type=int, default=1000)
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    parser.add_argument("--no-services", dest="services", action="store_false")
    args = parser.parse_args()
    print(generate(args.out, args.vpcs, args.tiers, args.rules, args.services))


if __name__ == "__main__":
    main()
