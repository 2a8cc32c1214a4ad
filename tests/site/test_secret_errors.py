"""No error message ever shows a value written into a field that takes a secret, whatever its shape.

The fields are found from the schemas (every use of defs.schema.json's secret reference), so a new
secret field is covered without touching this test."""

from __future__ import annotations

import pytest
import yaml

from conftest import copy_site, EXAMPLE, run_cli
from vpcgen.site.schema import secret_paths

DOCS = {"zone": "zones/zone1.yaml", "vpc": "vpcs/shop.yaml"}
FIELDS = [(kind, path) for kind in ("site", "zone", "vpc", "acl") for path in secret_paths(kind)]
VALUE = "S3cretZq9"
SHAPES = {
    "string": VALUE,
    "integer": 982734519,
    "huge-integer": "!!int 98273451998273451998273451",
    "fraction": 98273.4519,
    "list": [VALUE],
    "key": {VALUE: 1},
    "extra-key": {"secret": "hq-psk", "value": VALUE},
    "bad-name": {"secret": f"{VALUE} with spaces"},
    "control-character": f"{VALUE}\x07",
    "nested": {"secret": {"value": VALUE}},
}


def test_every_secret_field_is_found():
    assert {(k, p[-1]) for k, p in FIELDS} >= {("zone", "auth_key"), ("vpc", "psk"), ("vpc", "server_cert"),
                                                ("vpc", "server_key"), ("vpc", "password")}


def _set(data, path, value):
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("kind,path", FIELDS, ids=[f"{k}:{'.'.join(map(str, p))}" for k, p in FIELDS])
def test_secret_value_never_shown(kind, path, shape, tmp_path):
    site = copy_site(EXAMPLE, tmp_path / "example")
    doc = site / DOCS[kind]
    data = yaml.safe_load(doc.read_text(encoding="utf-8"))
    value = SHAPES[shape]
    marker = "@@VALUE@@"
    _set(data, path, marker)
    text = yaml.safe_dump(data, sort_keys=False, width=1000)
    if isinstance(value, str) and value.startswith("!!int"):
        shown = value
    else:
        shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()
        if shown.endswith("..."):
            shown = shown[:-3].strip()
    doc.write_text(text.replace(f"'{marker}'", shown).replace(marker, shown), encoding="utf-8")
    for command in (("validate", site), ("build", site, "--output", tmp_path / "out")):
        code, stdout, stderr = run_cli(*command)
        assert code == 1, (shown, stdout, stderr)
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr
        for secret in ("S3cret", "Zq9", "982734", "9827345199"):
            assert secret not in stdout + stderr, (shown, stderr)


def test_the_shipped_placeholders_are_valid_and_the_key_belongs_to_the_certificate():
    """--placeholder-secrets trusts them without parsing them at every build: checked here instead."""
    from vpcgen.site import secrets
    for kind, (placeholder, valid, shape) in secrets.KINDS.items():
        assert valid(placeholder()), f"the {kind} placeholder is not {shape}"
    cert, key = secrets._certificate(secrets.KINDS["cert"][0]()), secrets._private_key(secrets.KINDS["key"][0]())
    assert secrets._public(cert.public_key()) == secrets._public(key.public_key())
