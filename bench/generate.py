"""Generate a synthetic site: N redundant NAT VPCs x T tiers, one R-rule ACL list per tier.

    python3 bench/generate.py OUT_DIR --vpcs 1000 --tiers 4 --rules 30
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


def generate(out: Path, vpcs: int, tiers: int, rules: int) -> Path:
    site = out / "bench"
    for sub in ("zones", "vpcs", "acls"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    (site / "site.yaml").write_text("name: bench\ndefaults: {vrrp: {advert_interval_ms: 200}}\n")
    zones = (vpcs + VPCS_PER_ZONE - 1) // VPCS_PER_ZONE
    for z in range(zones):
        (site / "zones" / f"z{z}.yaml").write_text(
            f"name: z{z}\nguest_vlans: \"2-4094\"\npublic:\n  cidr: 100.{64 + z}.0.0/16\n"
            f"  gateway: 100.{64 + z}.0.1\n  ranges: [\"100.{64 + z}.0.10-100.{64 + z}.255.250\"]\n")
    for i in range(vpcs):
        name = f"vpc{i:05d}"
        base = (i % VPCS_PER_ZONE) * 4
        tier_lines = []
        for t in range(tiers):
            acl_name = f"{name}-t{t}"
            (site / "acls" / f"{acl_name}.yaml").write_text(acl(acl_name, rules, i))
            tier_lines.append(f"  - {{name: t{t}, netmask: 24, acl: {acl_name}}}")
        (site / "vpcs" / f"{name}.yaml").write_text(
            f"name: {name}\nzone: z{i // VPCS_PER_ZONE}\ncidr: 10.{base // 256}.{base % 256}.0/22\n"
            f"routers:\n  - {{name: {name}-a, mgmt: 198.{18 + i // 65536}.{i // 256 % 256}.{i % 256 + 0}}}\n"
            f"  - {{name: {name}-b, mgmt: 198.{20 + i // 65536}.{i // 256 % 256}.{i % 256}}}\n"
            f"tiers:\n" + "\n".join(tier_lines) + "\n"
            f"public_ips:\n  - {{name: www}}\n"
            f"port_forwarding:\n  - {{public_ip: www, protocol: tcp, public_port: 443, "
            f"private_ip: 10.{base // 256}.{base % 256}.10}}\n")
    return site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--vpcs", type=int, default=1000)
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    args = parser.parse_args()
    print(generate(args.out, args.vpcs, args.tiers, args.rules))


if __name__ == "__main__":
    main()
