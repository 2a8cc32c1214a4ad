"""Allocation units: block search, and the routed-VPC pools (super-CIDR, OSPF areas, transit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpcgen.compiler.allocate import lowest_free_block
from vpcgen.api import validate_site
from vpcgen.errors import DiagnosticsError


def test_lowest_free_block_skips_used_and_aligns():
    assert lowest_free_block("10.0.0.0/16", 24, []) == "10.0.0.0/24"
    assert lowest_free_block("10.0.0.0/16", 24, ["10.0.0.0/25"]) == "10.0.1.0/24"
    assert lowest_free_block("10.0.0.0/16", 23, ["10.0.1.0/24", "10.0.2.0/24"]) == "10.0.4.0/23"
    assert lowest_free_block("10.0.0.0/24", 25, ["10.0.0.0/25", "10.0.0.128/26"]) is None


def routed_site(root: Path, super_cidr: str = "10.128.0.0/20") -> Path:
    (root / "zones").mkdir(parents=True)
    (root / "vpcs").mkdir()
    (root / "site.yaml").write_text("name: r\n")
    (root / "zones/z.yaml").write_text(
        f"name: z\nguest_vlans: \"100-199\"\nsuper_cidr: {super_cidr}\n"
        "ospf:\n  transit: {cidr: 100.64.0.0/29, vlan: 99}\n")
    for i, name in enumerate(("left", "right")):
        (root / f"vpcs/{name}.yaml").write_text(
            f"name: {name}\nzone: z\nnetmask: 22\nrouters:\n"
            f"  - {{name: {name}-1, mgmt: 192.0.2.{2 * i + 1}}}\n  - {{name: {name}-2, mgmt: 192.0.2.{2 * i + 2}}}\n"
            "tiers:\n  - {name: a, netmask: 24}\n  - {name: b, netmask: 24}\n")
    return root


def test_routed_vpcs_are_carved_from_the_super_cidr(tmp_path):
    v = validate_site(routed_site(tmp_path / "r"))
    a = v.alloc
    assert a.vpc_cidrs == {"left": "10.128.0.0/22", "right": "10.128.4.0/22"}
    assert a.tier_cidrs[("right", "a")] == "10.128.4.0/24" and a.tier_cidrs[("right", "b")] == "10.128.5.0/24"
    assert a.areas == {"left": 1, "right": 2}
    # the first usable transit address is left to the core router
    assert [a.transit[("left", "left-1")], a.transit[("right", "right-2")]] == ["100.64.0.2", "100.64.0.5"]


def test_exhausted_super_cidr_names_the_pool_and_the_request(tmp_path):
    with pytest.raises(DiagnosticsError) as exc:
        validate_site(routed_site(tmp_path / "r", super_cidr="10.128.0.0/22"))
    [d] = exc.value.diagnostics
    assert d.code == "pool-exhausted" and d.location.file.endswith("vpcs/right.yaml")
    assert "super_cidr 10.128.0.0/22 is exhausted: no free /22 left for VPC 'right'" in d.message
