"""The ACL work of a generated site as aerleon policies, for a side-by-side comparison.

    .venv/bin/python bench/aerleon_policies.py SITE_DIR OUT_DIR
    aclgen --base_directory OUT_DIR/policies --definitions_directory OUT_DIR/def --output_directory OUT_DIR/acls

Every acls/<acl>.yaml of the site becomes one aerleon policy with one iptables filter, one term per
rule (ingress rules match their CIDRs as sources, egress rules as destinations; ports and protocols
as written), so aerleon renders the same 30-rule lists that vpcgen renders into each router's
iptables-restore file. Networks and ports are named once each in the definitions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def convert(site: Path, out: Path) -> int:
    networks: dict[str, str] = {}
    services: dict[str, tuple[str, int]] = {}
    (out / "policies" / "pol").mkdir(parents=True, exist_ok=True)
    (out / "def").mkdir(parents=True, exist_ok=True)
    rules = 0
    for path in sorted((site / "acls").glob("*.yaml")):
        acl = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        terms = []
        for rule in acl["rules"]:
            term = {"name": f"r{rule['number']}", "action": "accept" if rule["action"] == "allow" else "deny"}
            names = []
            for cidr in rule.get("cidrs", []):
                name = "N_" + cidr.replace(".", "_").replace("/", "_")
                networks[name] = cidr
                names.append(name)
            if names:
                term["source-address" if rule["traffic"] == "ingress" else "destination-address"] = " ".join(names)
            if rule["protocol"] != "all":
                term["protocol"] = rule["protocol"]
            if "ports" in rule and rule["protocol"] in ("tcp", "udp"):
                name = f"P_{rule['protocol']}_{rule['ports']}"
                services[name] = (rule["protocol"], rule["ports"])
                term["destination-port"] = name
            terms.append(term)
            rules += 1
        policy = {"filters": [{"header": {"targets": {"iptables": "FORWARD DROP"}}, "terms": terms}]}
        (out / "policies" / "pol" / f"{acl['name']}.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    (out / "def" / "networks.yaml").write_text(yaml.safe_dump(
        {"networks": {n: {"values": [{"address": c}]} for n, c in sorted(networks.items())}}))
    (out / "def" / "services.yaml").write_text(yaml.safe_dump(
        {"services": {n: [{"port": p, "protocol": proto}] for n, (proto, p) in sorted(services.items())}}))
    return rules


if __name__ == "__main__":
    print(f"{convert(Path(sys.argv[1]), Path(sys.argv[2]))} rules")
