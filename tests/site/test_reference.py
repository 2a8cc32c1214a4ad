"""The schemas document the input: descriptions, defaults the intent takes, docs/site-reference.md, schemas/."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from conftest import run_cli
from vpcgen.compiler import render
from vpcgen.site.intent import build_intent
from vpcgen.site.loader import Document, SiteFiles
from vpcgen.site.reference import FILES, reference
from vpcgen.site.schema import KINDS, default, inlined, schema_text

from conftest import ROOT
REFERENCE = ROOT / "docs" / "site-reference.md"
ALL = (*KINDS, "defs")


def properties(node, path=()):
    """(path, name, property schema) of every property of a schema file, $defs included."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield path + (name,), name, sub
        for key, sub in node.items():
            if key != "properties":
                yield from properties(sub, path + (key,))
            else:
                for name, prop in sub.items():
                    yield from properties(prop, path + (name,))
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from properties(sub, path + (i,))


@pytest.mark.parametrize("kind", ALL)
def test_every_property_has_a_description(kind):
    schema = json.loads(schema_text(kind))
    missing = [".".join(map(str, path)) for path, _, prop in properties(schema)
               if not (isinstance(prop.get("description"), str) and prop["description"].strip())]
    assert not missing, f"{kind}.schema.json: properties without a description: {missing}"
    assert schema.get("description"), f"{kind}.schema.json has no description of the whole document"


def literal_defaults(kind):
    """(property path without list steps, default) of every property with a literal default."""
    out = []

    def walk(node, path):
        for name, prop in node.get("properties", {}).items():
            if "default" in prop:
                out.append((path + (name,), prop["default"]))
            walk(prop, path + (name,))
        items = node.get("items")
        if isinstance(items, dict):
            walk(items, path)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path)

    walk(inlined(kind), ())
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_satisfy_their_own_schema(kind):
    for path, value in literal_defaults(kind):
        node = inlined(kind)
        for key in path:
            while node.get("type") == "array":
                node = node["items"]
            node = node["properties"][key]
        assert Draft202012Validator(node).is_valid(value), (kind, path, value)
        assert default(kind, *path) == value


# --- the intent takes its defaults from the schemas ------------------------------------------------

SITE = {"name": "s", "defaults": {"ssh": {}, "deploy": {"commands": {}}}}
ZONE = {"name": "z", "guest_vlans": "100-199",
        "public": {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "ranges": ["203.0.113.10-203.0.113.20"]},
        "super_cidr": "10.128.0.0/12", "ospf": {"transit": {"cidr": "100.64.0.0/24"}},
        "vxlan": {"underlay": {"cidr": "10.0.0.0/24"}, "vnis": "5000-5999"}}
NAT_VPC = {
    "name": "nat", "zone": "z", "cidr": "10.1.0.0/16",
    "routers": [{"name": "r1", "mgmt": "198.51.100.1"}, {"name": "r2", "mgmt": "198.51.100.2"}],
    "tiers": [{"name": "web", "netmask": 24, "dhcp": {}}],
    "public_ips": [{"name": "www"}],
    "port_forwarding": [{"public_ip": "www", "protocol": "tcp", "public_port": 2222, "private_ip": "10.1.0.10"}],
    "load_balancers": [{"name": "lb", "public_ip": "www", "public_port": 80, "protocol": "http",
                        "members": ["10.1.0.11"], "health_check": {}}],
    "vpn": {"site_to_site": [{"name": "hq", "peer": "192.0.2.1", "peer_cidrs": ["172.16.0.0/16"],
                              "psk": {"secret": "psk"}}]},
    "private_gateways": [{"name": "pg", "vlan": 3000, "address": "172.31.0.2/30", "gateway": "172.31.0.1"}],
}
ROUTED_VPC = {"name": "routed", "zone": "z", "netmask": 22, "redundant": False,
              "routers": [{"name": "r3", "mgmt": "198.51.100.3"}], "tiers": [{"name": "db", "netmask": 24}]}
ACL = {"name": "a", "rules": [{"number": 1, "action": "allow", "traffic": "ingress", "protocol": "all"}]}


def intent_of(site, zone, vpcs, acl):
    doc = lambda kind, data: Document(kind=kind, file=f"{kind}.yaml", data=data)  # noqa: E731
    return build_intent(SiteFiles(root=Path("."), site=doc("site", site), zones=[doc("zone", zone)],
                                  vpcs=[doc("vpc", v) for v in vpcs], acls=[doc("acl", acl)], lock=None,
                                  known_hosts=None))


def test_minimal_documents_are_valid():
    for kind, data in [("site", SITE), ("zone", ZONE), ("vpc", NAT_VPC), ("vpc", ROUTED_VPC), ("acl", ACL)]:
        assert Draft202012Validator(inlined(kind)).is_valid(data), kind


def test_intent_does_not_change_when_the_schema_defaults_are_written_out():
    """Every literal default of the schemas, filled into minimal documents, gives the same intent."""
    def fill(schema, data):  # the schemas give defaults under properties and items only
        if isinstance(data, dict):
            for key, sub in schema.get("properties", {}).items():
                if key not in data and "default" in sub:
                    data[key] = copy.deepcopy(sub["default"])
                if key in data:
                    fill(sub, data[key])
        elif isinstance(data, list) and isinstance(schema.get("items"), dict):
            for item in data:
                fill(schema["items"], item)

    def filled(kind, data):
        data = copy.deepcopy(data)
        fill(inlined(kind), data)  # writes every default into data
        return data

    minimal = intent_of(SITE, ZONE, [NAT_VPC, ROUTED_VPC], ACL)
    explicit = (filled("site", SITE), filled("zone", ZONE), [filled("vpc", NAT_VPC), filled("vpc", ROUTED_VPC)],
                filled("acl", ACL))
    assert explicit[0]["defaults"]["vrrp"] == default("site", "defaults", "vrrp")
    assert explicit[2][0]["load_balancers"][0]["health_check"]["rise"] == default(
        "vpc", "load_balancers", "health_check", "rise")
    # the one default the intent leaves to the renderer: commands are overrides of built-in ones
    assert explicit[0]["defaults"]["deploy"]["commands"].pop("vrrp_state") == render.VRRP_STATE_COMMAND
    assert intent_of(*explicit) == minimal


def test_intent_of_minimal_documents_equals_the_schema_defaults():
    site = intent_of(SITE, ZONE, [NAT_VPC, ROUTED_VPC], ACL)
    vpc, routed, zone = site.vpcs["nat"], site.vpcs["routed"], site.zones["z"]
    lb, s2s, pg = vpc.load_balancers[0], vpc.site_to_site[0], vpc.private_gateways[0]
    taken = {
        ("site", "defaults", "vrrp"): {"advert_interval_ms": vpc.vrrp.advert_interval_ms,
                                       "preempt": vpc.vrrp.preempt},
        ("site", "defaults", "ssh", "user"): site.ssh.user,
        ("site", "defaults", "ssh", "port"): site.ssh.port,
        ("site", "defaults", "deploy", "root"): site.deploy.root,
        ("site", "defaults", "deploy", "keep_releases"): site.deploy.keep_releases,
        ("site", "defaults", "deploy", "vrrp_wait_s"): site.deploy.vrrp_wait_s,
        ("site", "defaults", "deploy", "commands"): site.deploy.commands,
        # vrrp_state: absent from the intent's commands; the renderer's fallback is the schema's default
        ("site", "defaults", "deploy", "commands", "vrrp_state"): site.deploy.commands.get(
            "vrrp_state", render.VRRP_STATE_COMMAND),
        ("zone", "ospf", "hello_interval_s"): zone.ospf.hello_interval_s,
        ("zone", "ospf", "dead_interval_s"): zone.ospf.dead_interval_s,
        ("zone", "vxlan", "mtu"): zone.vxlan.mtu,
        ("vpc", "redundant"): vpc.redundant,
        ("vpc", "tiers", "acl"): vpc.tiers[0].acl,
        ("vpc", "tiers", "mtu"): vpc.tiers[0].mtu,
        ("vpc", "tiers", "isolation"): vpc.tiers[0].isolation,
        ("vpc", "tiers", "public"): vpc.tiers[0].public,
        ("vpc", "tiers", "dhcp", "lease_s"): vpc.tiers[0].dhcp.lease_s,
        ("vpc", "tiers", "hosts"): list(vpc.tiers[0].hosts),
        ("vpc", "public_ips"): [p.name for p in vpc.public_ips if p.name != "source-nat"][1:],
        ("vpc", "source_nat"): vpc.source_nat,
        ("vpc", "static_nat"): list(vpc.static_nat),
        ("vpc", "port_forwarding"): list(routed.port_forwarding),
        ("vpc", "load_balancers"): list(routed.load_balancers),
        ("vpc", "load_balancers", "algorithm"): lb.algorithm,
        ("vpc", "load_balancers", "stickiness"): lb.stickiness,
        ("vpc", "load_balancers", "health_check", "interval_ms"): lb.health_check.interval_ms,
        ("vpc", "load_balancers", "health_check", "rise"): lb.health_check.rise,
        ("vpc", "load_balancers", "health_check", "fall"): lb.health_check.fall,
        ("vpc", "vpn", "site_to_site"): list(routed.site_to_site),
        ("vpc", "vpn", "site_to_site", "ike_version"): s2s.ike_version,
        ("vpc", "vpn", "site_to_site", "ike_proposals"): list(s2s.ike_proposals),
        ("vpc", "vpn", "site_to_site", "esp_proposals"): list(s2s.esp_proposals),
        ("vpc", "vpn", "site_to_site", "ike_lifetime_s"): s2s.ike_lifetime_s,
        ("vpc", "vpn", "site_to_site", "esp_lifetime_s"): s2s.esp_lifetime_s,
        ("vpc", "vpn", "site_to_site", "dpd_delay_s"): s2s.dpd_delay_s,
        ("vpc", "private_gateways"): list(routed.private_gateways),
        ("vpc", "private_gateways", "routes"): list(pg.routes),
        ("vpc", "private_gateways", "acl"): pg.acl,
        ("acl", "rules", "cidrs"): list(site.acls["a"].rules[0].cidrs),
    }
    every = {(kind, *path) for kind in KINDS for path, _ in literal_defaults(kind)}
    assert set(taken) == every, "a schema default the intent is not checked against (or one that is gone)"
    for (kind, *path), value in taken.items():
        assert value == default(kind, *path), (kind, path)
    # the computed defaults, which the schemas describe in words
    assert not routed.source_nat and "source-nat" not in {p.name for p in routed.public_ips}
    assert vpc.domain == "nat.internal" and site.ssh.allowed_from is None and zone.dns_servers == ()
    assert "source-nat" in {p.name for p in vpc.public_ips}
    assert vpc.port_forwarding[0].private_port == vpc.port_forwarding[0].public_port
    assert lb.private_port == lb.public_port and lb.health_check.http_path is None
    assert s2s.local_cidrs is None  # every tier of the VPC, once their CIDRs are allocated
    assert vpc.tiers[0].gateway is None and vpc.tiers[0].vlan is None  # first usable address; from the pool
    assert zone.vxlan.remotes == () and zone.vxlan.multicast and zone.vxlan.underlay_vlan is None


# --- docs/site-reference.md ------------------------------------------------------------------------

def test_site_reference_is_current():
    assert REFERENCE.read_text(encoding="utf-8") == reference(), (
        "docs/site-reference.md is out of date: run `python -m vpcgen.site.reference > docs/site-reference.md`")


def test_python_m_vpcgen_reference_prints_it():
    out = subprocess.run([sys.executable, "-m", "vpcgen.site.reference"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out == reference()


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {part.split("\n", 1)[0]: part for part in parts[1:]}


def test_site_reference_names_every_property_of_every_schema():
    text = reference()
    sections = _sections(text)
    defs = json.loads(schema_text("defs"))["$defs"]

    def names(node, seen=()):
        """Every property name reachable in a schema, following $refs into defs.schema.json."""
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and ref not in seen:
                yield from names(defs[ref.split("#/$defs/", 1)[1]], seen + (ref,))
            for name, sub in node.get("properties", {}).items():
                yield name
                yield from names(sub, seen)
            for key, sub in node.items():
                if key not in ("properties", "$ref"):
                    yield from names(sub, seen)
        elif isinstance(node, list):
            for sub in node:
                yield from names(sub, seen)

    for kind, title, _ in FILES:
        section = sections[f"`{title}`"]
        headings = re.findall(r"^#### `([^`]+)`$", section, flags=re.M)
        last = {re.split(r"\.|\[\]\.", h)[-1] for h in headings}
        missing = sorted(set(names(json.loads(schema_text(kind)))) - last)
        assert not missing, f"{title}: no entry for {missing}"
        for heading in headings:  # every entry has the parts the reference promises
            entry = section.split(f"#### `{heading}`\n", 1)[1].split("\n#### ", 1)[0]
            assert all(f"\n- {part}: " in entry for part in ("Type", "Default", "Constraints")), heading
    formats = sections["Value formats"]
    for name, node in defs.items():
        assert f"**`{name}`**" in formats
        for prop in node.get("properties", {}):
            assert f"`{prop}`" in formats


def test_site_reference_gives_examples_and_defaults():
    text = reference()
    entry = text.split("#### `tiers[].acl`\n", 1)[1].split("\n#### ", 1)[0]
    assert "- Default: `default_deny`" in entry and "- Example: `web`" in entry
    entry = text.split("#### `vpn.site_to_site[].local_cidrs`\n", 1)[1].split("\n#### ", 1)[0]
    assert "- Default: *every tier of the VPC*" in entry
    leaves = re.findall(r"^#### `([^`]+)`\n\n.*?\n\n- Type: (\w+)(.*?)(?=\n#### |\n## |\Z)", text, flags=re.M | re.S)
    no_example = [path for path, kind, rest in leaves if kind in ("string", "integer", "boolean")
                  and "- Example:" not in rest]
    assert not no_example, f"fields without an example: {no_example}"


# --- schemas/ at the top level ---------------------------------------------------------------------

def test_top_level_schemas_are_what_vpcgen_schema_writes(tmp_path):
    code, _, _ = run_cli("schema", "--output", tmp_path)
    assert code == 0
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    shipped = {p.name: p.read_bytes() for p in (ROOT / "schemas").iterdir()}
    assert shipped == written, "schemas/ differs from the package's schemas: run `vpcgen schema --output schemas`"
