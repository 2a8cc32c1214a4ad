"""Properties of allocation: deterministic output, stable allocations (a change never moves another object's)."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpcgen.api import BuildOptions, build_site

NAMES = st.sampled_from([f"{w}{i}" for w in ("alpha", "beta", "gamma", "delta", "eps") for i in range(4)])


@st.composite
def sites(draw):
    vpc_names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    vpcs = {}
    for i, name in enumerate(vpc_names):
        redundant = draw(st.booleans())
        tiers = draw(st.lists(st.tuples(NAMES, st.sampled_from([24, 25, 26, 27, 28]), st.booleans()),
                              min_size=1, max_size=4, unique_by=lambda t: t[0]))
        vpcs[name] = {
            "name": name, "zone": "z", "cidr": f"10.{i}.0.0/16", "redundant": redundant,
            "routers": [{"name": f"{name}-r{k}", "mgmt": f"192.0.{i}.{k + 1}"} for k in range(2 if redundant else 1)],
            # VLAN and VXLAN tiers: VLAN ids, VNIs and the routers' VTEP addresses are allocated
            "tiers": [{"name": t, "netmask": m, **({"isolation": "vxlan"} if vx else {})} for t, m, vx in tiers],
            "public_ips": [{"name": p} for p in draw(st.lists(NAMES, max_size=3, unique=True))],
        }
    return vpcs


def write_site(root: Path, vpcs: dict, order: list[str] | None = None) -> Path:
    if root.exists():
        for sub in ("vpcs",):
            shutil.rmtree(root / sub, ignore_errors=True)
    (root / "zones").mkdir(parents=True, exist_ok=True)
    (root / "vpcs").mkdir(exist_ok=True)
    (root / "site.yaml").write_text("name: prop\n")
    (root / "zones/z.yaml").write_text(yaml.safe_dump({
        "name": "z", "guest_vlans": "100-3999",
        "public": {"cidr": "198.18.0.0/16", "gateway": "198.18.0.1", "ranges": ["198.18.0.10-198.18.255.200"]},
        "vxlan": {"underlay": {"cidr": "10.250.0.0/24", "vlan": 4000}, "vnis": "5000-5999"}}))
    for name in order or sorted(vpcs):
        (root / "vpcs" / f"{name}.yaml").write_text(yaml.safe_dump(vpcs[name]))
    return root


def build(root: Path):
    result = build_site(root, BuildOptions(placeholder_secrets=True, environ={}))
    (root / "allocations.lock.yaml").write_text(result.lock_text)
    return result


def allocations(root: Path) -> dict:
    """(vpc, kind, object) -> value, from the lock file (everything vpcgen chose)."""
    data = yaml.safe_load((root / "allocations.lock.yaml").read_text())["vpcs"]
    out = {}
    for vpc, entry in data.items():
        for key in ("vrid", "sync_vlan"):
            if key in entry:
                out[(vpc, key, "")] = entry[key]
        for name, address in entry.get("public_ips", {}).items():
            out[(vpc, "public_ip", name)] = address
        for router, address in entry.get("vteps", {}).items():
            out[(vpc, "vtep", router)] = address
        for tier, values in entry.get("tiers", {}).items():
            for key, value in values.items():
                out[(vpc, key, tier)] = value
    return out


def tiers(vpc: dict, isolation: str | None | bool = True) -> set[str]:
    """Names of a VPC's tiers (True: all; otherwise those of that isolation, None: VLAN)."""
    return {t["name"] for t in vpc["tiers"] if isolation is True or t.get("isolation") == isolation}


PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(vpcs=sites(), seed=st.integers(0, 1000))
def test_output_does_not_depend_on_file_order(vpcs, seed):
    with tempfile.TemporaryDirectory() as tmp:
        order = sorted(vpcs)
        random.Random(seed).shuffle(order)
        a = build_site(write_site(Path(tmp) / "a", vpcs), BuildOptions(placeholder_secrets=True, environ={}))
        b = build_site(write_site(Path(tmp) / "b", vpcs, order), BuildOptions(placeholder_secrets=True, environ={}))
        assert a.tree == b.tree and a.lock_text == b.lock_text


MUTATIONS = ("add_vpc", "remove_vpc", "add_tier", "remove_tier", "change_tier", "add_public_ip",
             "remove_public_ip", "toggle_redundant", "toggle_isolation", "add_vxlan_tier")


@PROFILE
@given(vpcs=sites(), mutation=st.sampled_from(MUTATIONS), pick=st.integers(0, 100), new=NAMES)
def test_one_change_never_moves_another_allocation(vpcs, mutation, pick, new):
    with tempfile.TemporaryDirectory() as tmp:
        root = write_site(Path(tmp) / "s", vpcs)
        build(root)
        before = allocations(root)
        target = sorted(vpcs)[pick % len(vpcs)]
        vpc = vpcs[target]
        touched = {target}  # the object changed: its own allocations may change
        if mutation == "add_vpc":
            name = new + "x"
            vpcs[name] = {"name": name, "zone": "z", "cidr": "10.200.0.0/16", "redundant": True,
                          "routers": [{"name": f"{name}-a", "mgmt": "192.0.200.1"},
                                      {"name": f"{name}-b", "mgmt": "192.0.200.2"}],
                          "tiers": [{"name": "t", "netmask": 24}], "public_ips": [{"name": "p"}]}
            touched = {name}
        elif mutation == "remove_vpc":
            del vpcs[target]
        elif mutation == "add_tier" and new not in {t["name"] for t in vpc["tiers"]}:
            vpc["tiers"].append({"name": new, "netmask": 26})
            touched = set()
        elif mutation == "remove_tier" and len(vpc["tiers"]) > 1:
            vpc["tiers"].pop(pick % len(vpc["tiers"]))
            touched = set()
        elif mutation == "add_vxlan_tier" and new not in {t["name"] for t in vpc["tiers"]}:
            vpc["tiers"].append({"name": new, "netmask": 26, "isolation": "vxlan"})
            touched = set()
        elif mutation == "toggle_isolation":
            tier = vpc["tiers"][pick % len(vpc["tiers"])]
            if tier.pop("isolation", None) is None:
                tier["isolation"] = "vxlan"
            touched = {(target, tier["name"])}
            if sum(t.get("isolation") == "vxlan" for t in vpc["tiers"]) in (0, 1):
                touched.add(target)  # its routers gain or lose their VTEPs
        elif mutation == "change_tier":
            tier = vpc["tiers"][pick % len(vpc["tiers"])]
            tier["netmask"] = 28 if tier["netmask"] != 28 else 27
            touched = {(target, tier["name"])}
        elif mutation == "add_public_ip" and new not in {p["name"] for p in vpc["public_ips"]}:
            vpc["public_ips"].append({"name": new})
            touched = set()
        elif mutation == "remove_public_ip" and vpc["public_ips"]:
            vpc["public_ips"].pop(pick % len(vpc["public_ips"]))
            touched = set()
        elif mutation == "toggle_redundant":
            vpc["redundant"] = not vpc["redundant"]
            vpc["routers"] = [{"name": f"{target}-r{k}", "mgmt": vpc["routers"][0]["mgmt"] if k == 0 else "192.0.250.9"}
                              for k in range(2 if vpc["redundant"] else 1)]
        write_site(root, vpcs)
        build(root)
        after = allocations(root)
        for key, value in before.items():
            vpc_name, kind, obj = key
            if vpc_name in touched or (vpc_name, obj) in touched or key not in after:
                continue  # the changed object itself, or an object that no longer exists
            assert after[key] == value, f"{mutation} on {target} moved {key}: {value} -> {after[key]}"
        # and nothing that still exists lost its allocation
        for key in before:
            vpc_name, kind, obj = key
            still = vpc_name in vpcs and (kind in ("vrid", "sync_vlan") and vpcs[vpc_name]["redundant"]
                                          or kind == "public_ip" and obj in {p["name"] for p in vpcs[vpc_name]["public_ips"]}
                                          or kind == "cidr" and obj in tiers(vpcs[vpc_name])
                                          or kind == "vlan" and obj in tiers(vpcs[vpc_name], None)
                                          or kind == "vni" and obj in tiers(vpcs[vpc_name], "vxlan")
                                          or kind == "vtep" and any(t.get("isolation") for t in vpcs[vpc_name]["tiers"])
                                          and obj in {r["name"] for r in vpcs[vpc_name]["routers"]})
            if still:
                assert key in after
