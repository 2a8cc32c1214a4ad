"""A corpus of hostile inputs: each one ends in exit 1 with one located error of a
specific code, within seconds and a little memory, and changes nothing it must not change (the
site, its lock, an earlier output). Plus the filesystem cases (symlinks out of the site, an output
folder that would replace the site, a read-only site, leftovers of a killed build) and builds with
every schema bound's edge value, which must pass `vpcgen check`.

Every run of vpcgen happens in a forked child with a bounded address space and a timeout
(``run_bounded``); the read-only site is a read-only bind mount in the child's private mount
namespace, which disappears with the child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import signal
import stat
from pathlib import Path

import pytest

from conftest import EXAMPLE, copy_site, run_cli
from test_fuzz import FILE_LEVEL, LOCATED, assert_checks, diagnostics, run_bounded

MiB = 1 << 20


# ---------------------------------------------------------------------------------------------
# helpers

def snapshot(root: Path) -> dict:
    """Every entry under root: path -> (kind, content or link target, mode)."""
    out = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), 0)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", b"", stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("other", b"", stat.S_IFMT(st.st_mode))
    return out


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory) -> Path:
    """An earlier output of the example (placeholder secrets), copied next to every case's site."""
    tmp = tmp_path_factory.mktemp("prebuilt")
    site = copy_site(EXAMPLE, tmp / "example")
    code, out, err = run_cli("build", site, "--output", tmp / "out", "--placeholder-secrets")
    assert code == 0, out + err
    assert (site / "allocations.lock.yaml").read_bytes() == (EXAMPLE / "allocations.lock.yaml").read_bytes()
    return tmp / "out"


@pytest.fixture
def workspace(tmp_path, prebuilt):
    """tmp/example (a copy of the example site) and tmp/out (an earlier build of it)."""
    copy_site(EXAMPLE, tmp_path / "example")
    shutil.copytree(prebuilt, tmp_path / "out", symlinks=True)
    return tmp_path


def replace(site: Path, rel: str, old, new) -> int:
    """Replace the first ``old`` in a file (text or bytes; old=None: the whole file); returns the
    line the replacement starts on."""
    path = site / rel
    if old is None:
        data = new.encode("utf-8") if isinstance(new, str) else new
        path.write_bytes(data)
        return 1
    data = path.read_bytes()
    old_b = old.encode("utf-8") if isinstance(old, str) else old
    new_b = new.encode("utf-8") if isinstance(new, str) else new
    assert old_b in data, f"edit does not apply: {old!r} not in {rel}"
    at = data.index(old_b)
    path.write_bytes(data[:at] + new_b + data[at + len(old_b):])
    return data.count(b"\n", 0, at) + 1


def one_error(outcome, code, file: str, line: int | None, file_level: bool = False) -> re.Match:
    found = diagnostics(outcome, allow_file_level=file_level)
    assert len(found) == 1, f"expected one error, got {len(found)}\n{outcome.describe()}"
    m = found[0]
    codes = code if isinstance(code, tuple) else (code,)
    assert m["code"] in codes, f"expected [{'|'.join(codes)}]\n{outcome.describe()}"
    assert m["file"] == file, f"expected the error in {file}\n{outcome.describe()}"
    if line is not None:
        assert "line" in m.groupdict() and m["line"] is not None and int(m["line"]) == line, \
            f"expected line {line}\n{outcome.describe()}"
    return m

# ---------------------------------------------------------------------------------------------
# Document cases: (id, edits, code, file, line)
#   edits: [(file, old, new)] (old=None: the whole file) or a callable(site); line: "edit" is the
#   line of the first edit, an int that line, None not checked; file: where the error is


def bomb(mapping: bool = False) -> str:
    lines = ["name: db", "rules: []"]
    lines.append("a0: &a0 [" + ", ".join(['"lol"'] * 9) + "]")
    for n in range(1, 10):
        if mapping:
            lines.append(f"a{n}: &a{n} {{" + ", ".join(f"k{i}: *a{n - 1}" for i in range(9)) + "}")
        else:
            lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def zones_is_a_file(site: Path) -> None:
    shutil.rmtree(site / "zones")
    (site / "zones").write_text("name: zone1\n")


def fifo_in_vpcs(site: Path) -> None:
    os.mkfifo(site / "vpcs" / "pipe.yaml")


def yaml_symlinked_outside(site: Path) -> None:
    outside = site.parent / "outside.yaml"
    outside.write_text("name: evil\nzone: zone1\n")
    (site / "vpcs" / "evil.yaml").symlink_to("../../outside.yaml")


def lock_symlinked_outside(site: Path) -> None:
    outside = site.parent / "outside.yaml"
    shutil.move(site / LOCK, outside)
    (site / LOCK).symlink_to(outside)


def folder_symlinked_outside(site: Path) -> None:
    outside = site.parent / "outside.yaml"  # a folder here, named so that the listing check knows it
    outside.mkdir()
    shutil.move(site / "vpcs" / "blog.yaml", outside / "blog.yaml")
    shutil.rmtree(site / "vpcs")
    (site / "vpcs").symlink_to("../outside.yaml")


def huge_file(site: Path) -> None:
    with open(site / "acls" / "db.yaml", "ab") as handle:
        handle.write(b"# " + b"x" * (17 * MiB) + b"\n")


SHOP, APP, WEB, LOCK, SITE = "vpcs/shop.yaml", "acls/app.yaml", "acls/web.yaml", "allocations.lock.yaml", "site.yaml"

DOC_CASES = [
    # YAML bombs and bounds
    ("alias-bomb", [("acls/db.yaml", None, bomb())], "yaml-alias-bomb", "acls/db.yaml", None),
    ("alias-bomb-mappings", [("acls/db.yaml", None, bomb(mapping=True))], "yaml-alias-bomb", "acls/db.yaml", None),
    ("recursive-alias", [("acls/db.yaml", None, "name: db\nrules: &l [*l]\n")], "yaml-recursive-alias",
     "acls/db.yaml", 2),
    ("recursive-alias-mapping", [(SHOP, "vrrp: {advert_interval_ms: 200}", "vrrp: &m {a: *m}")],
     "yaml-recursive-alias", SHOP, "edit"),
    ("nested-50000-unclosed", [("acls/db.yaml", None, "name: db\nrules: " + "[" * 50000 + "\n")],
     ("yaml-too-deep", "yaml-syntax"), "acls/db.yaml", 2),
    ("nested-50000-closed", [("acls/db.yaml", None, "name: db\nrules: " + "[" * 50000 + "]" * 50000 + "\n")],
     ("yaml-too-deep", "yaml-syntax"), "acls/db.yaml", 2),
    ("nested-900", [("acls/db.yaml", None, "name: db\nrules: " + "[" * 900 + "]" * 900 + "\n")],
     "yaml-too-deep", "acls/db.yaml", 2),
    ("nested-mappings-40", [("acls/db.yaml", None, "name: db\nrules: []\nx: " + "{a: " * 40 + "b" + "}" * 40 + "\n")],
     "yaml-too-deep", "acls/db.yaml", 3),
    ("integer-5000-digits", [(SHOP, "vlan: 1200", "vlan: " + "1" * 5000)], "yaml-value", SHOP, "edit"),
    ("value-20000-chars", [(SHOP, "description: Web shop, redundant router pair", "description: " + "x" * 20000)],
     "yaml-too-long", SHOP, "edit"),
    ("file-17-mib", huge_file, ("file-too-large", "unreadable"), "acls/db.yaml", None),
    # tags
    ("tag-int-dc1", [("vpcs/blog.yaml", "zone: zone1", "zone: !!int dc1")], "yaml-value", "vpcs/blog.yaml", "edit"),
    ("tag-timestamp-x", [("vpcs/blog.yaml", "zone: zone1", "zone: !!timestamp x")], ("yaml-tag", "yaml-value"),
     "vpcs/blog.yaml", "edit"),
    ("tag-timestamp-date", [("vpcs/blog.yaml", "zone: zone1", "zone: !!timestamp 2001-12-14")], "yaml-tag",
     "vpcs/blog.yaml", "edit"),
    ("tag-set", [(SHOP, "{name: app, netmask: 24, acl: app}", "{name: app, netmask: 24, acl: !!set {a}}")],
     "yaml-tag", SHOP, "edit"),
    ("tag-binary", [("vpcs/blog.yaml", "zone: zone1", "zone: !!binary em9uZTE=")], "yaml-tag", "vpcs/blog.yaml",
     "edit"),
    ("tag-python-object", [("vpcs/blog.yaml", "zone: zone1", "zone: !!python/object/apply:os.system [id]")],
     "yaml-tag", "vpcs/blog.yaml", "edit"),
    ("tag-omap", [("vpcs/blog.yaml", "zone: zone1", "zone: !!omap [a: 1]")], "yaml-tag", "vpcs/blog.yaml", "edit"),
    ("tag-float-17", [(APP, "protocol: 50}", "protocol: !!float 17}")], "yaml-float", APP, "edit"),
    ("tag-local", [("vpcs/blog.yaml", "zone: zone1", "zone: !zone zone1")], "yaml-tag", "vpcs/blog.yaml", "edit"),
    ("merge-key", [(SHOP, "  - {name: shop-r1, mgmt: 198.51.100.11}\n  - {name: shop-r2, mgmt: 198.51.100.12}",
                    "  - &r {name: shop-r1, mgmt: 198.51.100.11}\n  - {<<: *r, name: shop-r2, mgmt: 198.51.100.12}")],
     "schema-additionalProperties", SHOP, 10),
    # no fraction ever passes as a whole number
    ("protocol-17.0", [(APP, "protocol: 50}", "protocol: 17.0}")], "yaml-float", APP, "edit"),
    ("vlan-1200.0", [(SHOP, "vlan: 1200", "vlan: 1200.0")], "yaml-float", SHOP, "edit"),
    ("advert-interval-200.0", [(SHOP, "advert_interval_ms: 200}", "advert_interval_ms: 200.0}")], "yaml-float",
     SHOP, "edit"),
    ("site-advert-interval-1000.0", [(SITE, "advert_interval_ms: 1000", "advert_interval_ms: 1000.0")],
     "yaml-float", SITE, "edit"),
    ("tier-netmask-24.0", [(SHOP, "{name: app, netmask: 24, acl: app}", "{name: app, netmask: 24.0, acl: app}")],
     "yaml-float", SHOP, "edit"),
    ("vpc-netmask-22.0", [("vpcs/left.yaml", "netmask: 22", "netmask: 22.0")], "yaml-float", "vpcs/left.yaml",
     "edit"),
    ("acl-ports-80.0", [(WEB, "ports: 80,", "ports: 80.0,")], "yaml-float", WEB, "edit"),
    ("pf-public-port-2222.0", [(SHOP, "public_port: 2222,", "public_port: 2222.0,")], "yaml-float", SHOP, "edit"),
    ("pf-private-port-22.0", [(SHOP, "private_port: 22}", "private_port: 22.0}")], "yaml-float", SHOP, "edit"),
    ("lb-public-port-80.0", [(SHOP, "public_port: 80\n", "public_port: 80.0\n")], "yaml-float", SHOP, "edit"),
    ("ssh-port-3922.0", [(SITE, "port: 3922", "port: 3922.0")], "yaml-float", SITE, "edit"),
    ("port-inf", [(SHOP, "public_port: 2222,", "public_port: .inf,")], "yaml-float", SHOP, "edit"),
    ("protocol-0", [(APP, "protocol: 50}", "protocol: 0}")], "schema-anyOf", APP, "edit"),
    # a trailing newline (or another line break) in a value that reaches a generated file
    ("tier-name-newline", [(SHOP, "  - name: web\n", '  - name: "web\\n"\n')], "yaml-control-character", SHOP,
     "edit"),
    ("tier-name-literal-block", [(SHOP, "  - name: web\n", "  - name: |\n      web\n")], "yaml-control-character",
     SHOP, "edit"),
    ("router-name-newline", [(SHOP, "{name: shop-r1,", '{name: "shop-r1\\n",')], "yaml-control-character", SHOP,
     "edit"),
    ("lb-name-newline", [(SHOP, "  - name: www-http", '  - name: "www-http\\n"')], "yaml-control-character", SHOP,
     "edit"),
    ("vpn-name-newline", [(SHOP, "    - name: hq", '    - name: "hq\\n"')], "yaml-control-character", SHOP, "edit"),
    ("private-gateway-name-newline", [(SHOP, "  - name: corp", '  - name: "corp\\n"')], "yaml-control-character",
     SHOP, "edit"),
    ("vpn-user-name-newline", [(SHOP, "{name: alice,", '{name: "alice\\n",')], "yaml-control-character", SHOP,
     "edit"),
    ("site-name-newline", [(SITE, "name: example", 'name: "example\\n"')], "yaml-control-character", SITE, "edit"),
    ("vpc-name-line-separator", [("vpcs/blog.yaml", "name: blog", 'name: "blog\\L"')], "yaml-control-character",
     "vpcs/blog.yaml", "edit"),
    ("vpc-name-next-line", [("vpcs/blog.yaml", "name: blog", 'name: "blog\\N"')], "yaml-control-character",
     "vpcs/blog.yaml", "edit"),
    ("acl-name-nul-escape", [("acls/db.yaml", "name: db", 'name: "db\\0"')], "yaml-control-character",
     "acls/db.yaml", "edit"),
    ("key-newline", [(SHOP, "redundant: true", '"redundant\\n": true')], "yaml-control-character", SHOP, "edit"),
    ("http-path-newline", [(SHOP, "http_path: /healthz}", 'http_path: "/healthz\\n"}')], "yaml-control-character",
     SHOP, "edit"),
    ("ssh-user-newline", [(SITE, "user: root", 'user: "root\\n"')], "yaml-control-character", SITE, "edit"),
    ("deploy-root-newline", [(SITE, "root: /", 'root: "/\\n"')], "yaml-control-character", SITE, "edit"),
    ("vpc-cidr-newline", [(SHOP, "cidr: 10.10.0.0/16", 'cidr: "10.10.0.0/16\\n"')], "yaml-control-character", SHOP,
     "edit"),
    ("mgmt-newline", [(SHOP, "mgmt: 198.51.100.11}", 'mgmt: "198.51.100.11\\n"}')], "yaml-control-character", SHOP,
     "edit"),
    ("port-range-newline", [(SHOP, 'public_port: "5000-5009"', 'public_port: "5000-5009\\n"')],
     "yaml-control-character", SHOP, "edit"),
    ("acl-cidr-newline", [(WEB, "cidrs: [10.10.0.0/16]", 'cidrs: ["10.10.0.0/16\\n"]')], "yaml-control-character",
     WEB, "edit"),
    ("proposal-newline", [(SHOP, "ike_proposals: [aes256-sha256-modp2048]",
                           'ike_proposals: ["aes256-sha256-modp2048\\n"]')], "yaml-control-character", SHOP, "edit"),
    ("secret-name-newline", [(SHOP, "psk: {secret: hq-psk}", 'psk: {secret: "hq-psk\\n"}')],
     "yaml-control-character", SHOP, "edit"),
    # raw bytes
    ("nul-byte", [(SHOP, b"description: Web shop", b"description: Web\x00 shop")], "yaml-syntax", SHOP, "edit"),
    ("nul-byte-first", [("acls/db.yaml", None, b"\x00name: db\nrules: []\n")], "yaml-syntax", "acls/db.yaml", 1),
    ("not-utf8-document", [(SHOP, b"Web shop", b"Web sh\xf6p")], "not-utf8", SHOP, "edit"),
    ("escape-sequence-byte", [(SHOP, b"Web shop", b"Web \x1b[2Jshop")], ("yaml-syntax", "yaml-control-character"),
     SHOP, "edit"),
    # an error at the end of a file without a final newline is located in the file, not past its end
    ("eof-unclosed-flow-no-newline", [("acls/db.yaml", None, "name: db\nrules: [")], "yaml-syntax", "acls/db.yaml",
     2),
    ("eof-key-without-colon-no-newline", [("acls/db.yaml", None, "name: db\nrules: []\nr")], "yaml-syntax",
     "acls/db.yaml", 3),
    # the lock file is untrusted input too
    ("lock-wrong-shape", [(LOCK, None, "- a\n")], "schema-type", LOCK, 1),
    ("lock-cidr-plus", [(LOCK, "cidr: 10.10.2.0/24", "cidr: 10.10.2.0/+24")], "schema-pattern", LOCK, "edit"),
    ("lock-cidr-netmask", [(LOCK, "cidr: 10.10.2.0/24", "cidr: 10.10.2.0/255.255.255.0")], "schema-pattern", LOCK,
     "edit"),
    ("lock-cidr-newline", [(LOCK, "cidr: 10.10.2.0/24", 'cidr: "10.10.2.0/24\\n"')], "yaml-control-character", LOCK,
     "edit"),
    ("lock-vrid-true", [(LOCK, "vrid: 1", "vrid: true")], "schema-type", LOCK, "edit"),
    ("lock-vlan-float", [(LOCK, "vlan: 1002", "vlan: 1002.0")], "yaml-float", LOCK, "edit"),
    ("lock-vlan-too-big", [(LOCK, "vlan: 1002", "vlan: 5000")], "schema-maximum", LOCK, "edit"),
    ("lock-address-newline", [(LOCK, "www: 203.0.113.13", 'www: "203.0.113.13\\n"')], "yaml-control-character",
     LOCK, "edit"),
    ("lock-vpc-name", [(LOCK, "  shop:\n", "  Shop;rm:\n")], "schema-pattern", LOCK, "edit"),
    # the site folder's shape
    ("zones-is-a-file", zones_is_a_file, "bad-file-name", "zones", None),
    ("fifo-in-vpcs", fifo_in_vpcs, "bad-file-name", "vpcs/pipe.yaml", None),
    ("document-symlinked-outside", yaml_symlinked_outside, "unreadable", "vpcs/evil.yaml", None),
    ("folder-symlinked-outside", folder_symlinked_outside, "unreadable", "vpcs/blog.yaml", None),
    ("lock-symlinked-outside", lock_symlinked_outside, "unreadable", LOCK, None),
]
FILE_LEVEL_CASES = {"file-17-mib", "zones-is-a-file", "fifo-in-vpcs", "document-symlinked-outside",
                    "folder-symlinked-outside", "lock-symlinked-outside"}


@pytest.mark.parametrize("case,edits,code,file,line", DOC_CASES, ids=[c[0] for c in DOC_CASES])
def test_hostile_document(case, edits, code, file, line, workspace):
    site, out = workspace / "example", workspace / "out"
    if callable(edits):
        edits(site)
        first = None
    else:
        first = [replace(site, rel, old, new) for rel, old, new in edits][0]
    expected_line = first if line == "edit" else line
    outside = workspace / "outside.yaml"
    outside_before = outside.read_bytes() if outside.is_file() else snapshot(outside)
    site_before, out_before = snapshot(site), snapshot(out)
    for command in (["validate", "example"], ["build", "example", "--output", "out", "--placeholder-secrets"]):
        outcome = run_bounded(*command, cwd=workspace, timeout=10)
        one_error(outcome, code, f"example/{file}", expected_line, file_level=case in FILE_LEVEL_CASES)
        seconds, memory = (3, 100 * MiB) if case.startswith(("alias-bomb", "recursive", "nested")) else (5, 200 * MiB)
        assert outcome.seconds < seconds, f"took {outcome.seconds:.1f}s\n{outcome.describe()}"
        assert outcome.rss_growth < memory, f"grew by {outcome.rss_growth >> 20} MiB\n{outcome.describe()}"
        assert snapshot(site) == site_before, "a failed run must not change the site (lock, secrets, documents)"
        assert snapshot(out) == out_before, "a failed build must leave the earlier output untouched"
        assert sorted(p.name for p in workspace.iterdir()) == sorted(
            ["example", "out"] + (["outside.yaml"] if "symlinked-outside" in case else []))
    assert (outside.read_bytes() if outside.is_file() else snapshot(outside)) == outside_before


def test_nul_byte_is_located_exactly(workspace):
    """The error of a NUL byte names its line and column."""
    site = workspace / "example"
    text = (site / SHOP).read_bytes()
    line_start = text.index(b"vrrp: {advert_interval_ms: 200}")
    at = line_start + len(b"vrrp: {advert_")
    (site / SHOP).write_bytes(text[:at] + b"\x00" + text[at:])
    outcome = run_bounded("validate", "example", cwd=workspace)
    m = one_error(outcome, "yaml-syntax", f"example/{SHOP}", text.count(b"\n", 0, at) + 1)
    assert int(m["col"]) == at - line_start + 1, outcome.describe()


# ---------------------------------------------------------------------------------------------
# secrets and files outside the site

SECRET_BYTES = b"\xff\xfeTOPSECRET-\xc3\x28-VALUE"


@pytest.mark.parametrize("via", ["file", "environment"])
def test_non_utf8_secret(via, workspace):
    """A secret that is not UTF-8 text is a located error that never shows the secret's bytes."""
    site, out = workspace / "example", workspace / "out"
    env = {}
    if via == "file":
        (site / "secrets" / "hq-psk").write_bytes(SECRET_BYTES)
    else:
        (site / "secrets" / "hq-psk").unlink()
        env = {"VPCGEN_SECRET_HQ_PSK": SECRET_BYTES.decode("utf-8", "surrogateescape")}
    site_before, out_before = snapshot(site), snapshot(out)
    outcome = run_bounded("build", "example", "--output", "out", cwd=workspace, env=env)
    text = (site / SHOP).read_text()
    psk_line = text[:text.index("psk: {secret: hq-psk}")].count("\n") + 1
    one_error(outcome, "bad-secret", f"example/{SHOP}", psk_line)
    assert "TOPSECRET" not in outcome.stdout + outcome.stderr + outcome.error
    assert snapshot(site) == site_before and snapshot(out) == out_before


def _outside(workspace: Path) -> Path:
    outside = workspace / "outside"
    outside.mkdir()
    (outside / "config").write_text("[core]\n\trepositoryformatversion = 0\n[credential]\n"
                                    "\thelper = store --file TOKEN-0123456789abcdef\n")
    return outside / "config"


@pytest.mark.parametrize("link", ["relative", "absolute"])
def test_known_hosts_symlinked_outside_the_site(link, tmp_path):
    """known_hosts pointing out of the site (at a CI runner's credentials): the build fails and copies nothing."""
    site = copy_site(EXAMPLE, tmp_path / "example")
    target = _outside(tmp_path)
    (site / "known_hosts").symlink_to("../outside/config" if link == "relative" else target)
    outcome = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=tmp_path)
    one_error(outcome, "unreadable", "example/known_hosts", None, file_level=True)
    assert "TOKEN" not in outcome.stdout + outcome.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written: " + str(snapshot(tmp_path / "out").keys())
    assert not any(b"TOKEN" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()
                   and p != target)


@pytest.mark.parametrize("link", ["relative", "absolute"])
def test_secret_symlinked_outside_the_site(link, tmp_path):
    site = copy_site(EXAMPLE, tmp_path / "example")
    target = _outside(tmp_path)
    (site / "secrets" / "hq-psk").unlink()
    (site / "secrets" / "hq-psk").symlink_to("../../outside/config" if link == "relative" else target)
    outcome = run_bounded("build", "example", "--output", "out", cwd=tmp_path)
    text = (site / SHOP).read_text()
    one_error(outcome, "bad-secret", f"example/{SHOP}", text[:text.index("psk: {secret: hq-psk}")].count("\n") + 1)
    assert "TOKEN" not in outcome.stdout + outcome.stderr
    assert not (tmp_path / "out").exists()


def test_secrets_folder_symlinked_outside_the_site(tmp_path):
    site = copy_site(EXAMPLE, tmp_path / "example")
    shutil.move(site / "secrets", tmp_path / "outside")
    (site / "secrets").symlink_to("../outside")
    outcome = run_bounded("build", "example", "--output", "out", cwd=tmp_path)
    found = diagnostics(outcome)
    assert {m["code"] for m in found} == {"bad-secret"} and len(found) == 7, outcome.describe()
    secrets = [p.read_text().strip() for p in (tmp_path / "outside").iterdir() if p.name != "README.md"]
    assert not any(value[:12] in outcome.stderr for value in secrets if len(value) >= 12)
    assert not (tmp_path / "out").exists()


def test_secret_symlinked_to_a_fifo_does_not_hang(tmp_path):
    site = copy_site(EXAMPLE, tmp_path / "example")
    os.mkfifo(site / "secrets" / "fifo")  # inside secrets/: anything unknown at the top is an error of its own
    (site / "secrets" / "hq-psk").unlink()
    (site / "secrets" / "hq-psk").symlink_to("fifo")
    outcome = run_bounded("build", "example", "--output", "out", cwd=tmp_path, timeout=10)
    one_error(outcome, "bad-secret", f"example/{SHOP}", None)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the output folder

@pytest.mark.parametrize("output", ["sites", "sites/", "sites/example/..", "ABS", "link-to-sites", "sites/example",
                                    "sites/example/secrets"])
def test_output_that_would_replace_the_site_is_refused(output, tmp_path):
    sites = tmp_path / "sites"
    site = copy_site(EXAMPLE, sites / "example")
    (tmp_path / "link-to-sites").symlink_to("sites")
    if output == "ABS":
        output = str(sites)
    before = snapshot(sites)
    outcome = run_bounded("build", "sites/example", "--output", output, "--placeholder-secrets", cwd=tmp_path)
    text = outcome.describe()
    assert not outcome.error and outcome.exit_code == 1, text
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in text and "internal error" not in text, text
    assert lines[0].startswith("error: ") or LOCATED.match(lines[0]) or FILE_LEVEL.match(lines[0]), text
    assert output.rstrip("/") in lines[0] or str(Path(output)) in lines[0], text
    assert snapshot(sites) == before, "the site (YAML, lock, secrets/) must stay intact"
    assert (site / "site.yaml").is_file() and (site / "secrets" / "hq-psk").is_file()


@pytest.mark.parametrize("target", ["symlink-to-site", "someones-folder", "a-file"])
def test_output_target_that_is_no_earlier_build_is_refused(target, tmp_path):
    """OUTPUT/<site> that is a symlink, a folder of other files or a file is never replaced."""
    site = copy_site(EXAMPLE, tmp_path / "example")
    (tmp_path / "out").mkdir()
    victim = tmp_path / "out" / "example"
    if target == "symlink-to-site":
        victim.symlink_to("../example")
    elif target == "someones-folder":
        victim.mkdir()
        (victim / "notes.txt").write_text("mine\n")
    else:
        victim.write_text("mine\n")
    before_site, before_out = snapshot(site), snapshot(tmp_path / "out")
    outcome = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=tmp_path)
    text = outcome.describe()
    assert not outcome.error and outcome.exit_code == 1, text
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and "out/example" in lines[0] and "internal error" not in text, text
    assert snapshot(site) == before_site and snapshot(tmp_path / "out") == before_out


MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000


def read_only_site(site: Path):
    """For run_bounded's child: a private mount namespace in which ``site`` is a read-only bind mount."""
    def prepare():
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

        def ok(result: int, what: str) -> None:
            if result != 0:
                raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")
        ok(libc.unshare(CLONE_NEWNS), "unshare")
        ok(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        path = os.fsencode(site)
        ok(libc.mount(path, path, None, MS_BIND, None), "bind")
        ok(libc.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None), "remount read-only")
        try:  # root ignores permissions, not a read-only mount: prove it
            (site / ".probe").write_text("x")
        except OSError as exc:
            assert exc.errno == errno.EROFS
        else:
            raise AssertionError("the site is still writable")
    return prepare


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == str(path) for line in handle)


def test_read_only_site_with_a_pending_lock_change_leaves_the_output_untouched(workspace):
    site, out = workspace / "example", workspace / "out"
    replace(site, SHOP, "  - {name: db, netmask: 24, acl: db}\n",
            "  - {name: db, netmask: 24, acl: db}\n  - {name: cache, netmask: 24}\n")
    site_before, out_before = snapshot(site), snapshot(out)
    outcome = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=workspace,
                          prepare=read_only_site(site))
    assert not mounted(site), "the read-only mount must end with the child"
    text = outcome.describe()
    assert not outcome.error and outcome.exit_code == 1, text
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in text and "internal error" not in text, text
    assert "read-only" in lines[0].lower() and ("example" in lines[0] or "allocations.lock.yaml" in lines[0]), text
    assert snapshot(out) == out_before, "a failed build must leave the earlier output untouched"
    assert snapshot(site) == site_before
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["example"], \
        "no staging folder may be left behind"
    # and with a writable site, the same build goes through and records the new tier
    outcome = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=workspace)
    assert outcome.exit_code == 0, outcome.describe()
    assert "cache:" in (site / LOCK).read_text()


def test_leftovers_of_a_killed_build_are_removed_by_the_next_build(workspace):
    site, out = workspace / "example", workspace / "out"
    for name in (".example.new-abc123", ".example.old-def456"):
        (out / name / "shop-r1" / "etc").mkdir(parents=True)
        (out / name / "shop-r1" / "etc" / "file").write_text("stale\n")
    (out / ".other.new-zzz").mkdir()  # another site's: not this build's business
    # a build killed for real, right after staging its tree (before the swap)
    out_before = snapshot(out / "example")

    def die_before_promote():
        import vpcgen.compiler.write
        vpcgen.compiler.write._sync_filesystem = lambda path: os.kill(os.getpid(), signal.SIGKILL)

    replace(site, SHOP, "  - {name: www}\n", "  - {name: www}\n  - {name: mail}\n")
    killed = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=workspace,
                         prepare=die_before_promote)
    assert killed.exit_code is None and "signal 9" in killed.error, killed.describe()
    assert snapshot(out / "example") == out_before, "a killed build must leave the earlier output untouched"
    assert "mail" not in (site / LOCK).read_text(), "a killed build must not record its allocations"
    assert list(out.glob(".example.new-*")), "the killed build should have left its staging folder"
    outcome = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=workspace)
    assert outcome.exit_code == 0, outcome.describe()
    assert not list(out.glob(".example.new-*")) and not list(out.glob(".example.old-*")), sorted(os.listdir(out))
    assert (out / ".other.new-zzz").is_dir()
    assert "mail" in json.dumps(json.loads((out / "example" / "site.json").read_text()))


# ---------------------------------------------------------------------------------------------
# builds that must pass, and pass `vpcgen check`

ODD_USERS = ["_", "a.", "a..b", "x-", "_" * 26 + ".....-"]


def test_vpn_user_with_a_dot_builds_and_loads(tmp_path):
    """alice.smith (and the other odd names the schema allows) build, and charon loads every secret."""
    site = copy_site(EXAMPLE, tmp_path / "example")
    replace(site, SHOP, "{name: alice, password: {secret: vpn-alice}}",
            "{name: alice.smith, password: {secret: vpn-alice}}")
    replace(site, SHOP, "      - {name: bob, password: {secret: vpn-bob}}\n",
            "".join(f"      - {{name: {json.dumps(u)}, password: {{secret: vpn-bob}}}}\n" for u in ["bob"] + ODD_USERS))
    outcome = run_bounded("build", "example", "--output", "out", cwd=tmp_path)  # real secrets
    assert outcome.exit_code == 0 and not outcome.stderr, outcome.describe()
    tree = tmp_path / "out" / "example"
    secrets = (tree / "shop-r1/etc/swanctl/vpcgen-secrets.conf").read_text()
    assert all(re.search(rf"^\s*id = {re.escape(u)}$", secrets, re.M) for u in ["alice.smith", "bob"] + ODD_USERS), \
        secrets
    code, stdout, stderr = run_cli("check", tree, "--router", "shop-r1", "--router", "shop-r2")
    assert code == 0, stdout + stderr
    assert "strongswan" in stdout


GARBAGE_CERT = "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n"
GARBAGE_KEY = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
ACCEPTED_OR_REFUSED = [
    # (id, edits, secret files, what the error must say if refused)
    ("http-path-quote", [(SHOP, "http_path: /healthz}", "http_path: \"/it's\"}")], {}, (SHOP, "http_path")),
    ("cert-not-a-certificate", [], {"ra-cert": GARBAGE_CERT}, (SHOP, "server_cert")),
    ("key-not-a-key", [], {"ra-key": GARBAGE_KEY}, (SHOP, "server_key")),
]


@pytest.mark.parametrize("case,edits,secrets,where", ACCEPTED_OR_REFUSED, ids=[c[0] for c in ACCEPTED_OR_REFUSED])
def test_a_value_the_build_accepts_is_accepted_by_the_daemons(case, edits, secrets, where, tmp_path):
    """Exit 0 means the daemons load the tree: a value they refuse must be a located error instead."""
    site = copy_site(EXAMPLE, tmp_path / "example")
    for rel, old, new in edits:
        replace(site, rel, old, new)
    for name, value in secrets.items():
        (site / "secrets" / name).write_text(value)
    outcome = run_bounded("build", "example", "--output", "out", cwd=tmp_path)  # real secrets
    if outcome.exit_code == 1:
        m = one_error(outcome, ("bad-secret", "schema-pattern", "bad-http-path"), f"example/{where[0]}", None)
        text = (site / where[0]).read_text()
        assert int(m["line"]) == text[:text.index(where[1])].count("\n") + 1, outcome.describe()
        return
    assert outcome.exit_code == 0, outcome.describe()
    code, stdout, stderr = run_cli("check", tmp_path / "out" / "example", "--router", "shop-r1")
    assert code == 0, f"built with exit 0, but the daemons refuse it:\n{stdout}{stderr}"


LONG = "x" * 31  # with a leading letter: a name of 32 characters
EDGE_BUILDS = {
    "minimums": [
        (SITE, "advert_interval_ms: 1000", "advert_interval_ms: 10"),
        (SITE, "user: root", "user: r"),
        (SITE, "port: 3922", "port: 1"),
        (SITE, "keep_releases: 5", "keep_releases: 1\n    vrrp_wait_s: 1"),
        ("zones/zone1.yaml", "hello_interval_s: 10", "hello_interval_s: 1"),
        ("zones/zone1.yaml", "dead_interval_s: 40", "dead_interval_s: 2"),
        (SHOP, "vrrp: {advert_interval_ms: 200}", "vrrp: {advert_interval_ms: 10}"),
        (SHOP, "    vlan: 1200\n", "    vlan: 1\n"),
        (SHOP, "public_port: 2222, private_ip: 10.10.0.20, private_port: 22}",
         "public_port: 65535, private_ip: 10.10.0.20, private_port: 1}"),
        (SHOP, "    public_port: 443\n", "    public_port: 1\n    private_port: 65535\n"),
        (SHOP, "health_check: {interval_ms: 2000, rise: 2, fall: 3, http_path: /healthz}",
         "health_check: {interval_ms: 100, rise: 1, fall: 1, http_path: /}"),
        (SHOP, "  - name: www-http", "  - name: h"),
        (SHOP, "    - name: hq", "    - name: h"),
        (SHOP, "ike_lifetime_s: 28800", "ike_lifetime_s: 60"),
        (SHOP, "esp_lifetime_s: 2700", "esp_lifetime_s: 60"),
        (SHOP, "dpd_delay_s: 30", "dpd_delay_s: 0"),
        (SHOP, "{name: alice, password:", "{name: a, password:"),
        (SHOP, "  - name: corp\n    vlan: 3000", "  - name: c\n    vlan: 4094"),
        (SHOP, "{name: db, netmask: 24, acl: db}", "{name: d, netmask: 24, acl: db}"),
        ("vpcs/blog.yaml", "{name: blog-r1,", "{name: b,"),
        ("vpcs/left.yaml", "vrrp: {advert_interval_ms: 100}", "vrrp: {advert_interval_ms: 10}"),
        (WEB, "protocol: tcp, ports: 80,", "protocol: tcp, ports: 1,"),
        (WEB, 'ports: "8000-8080"', 'ports: "1-65535"'),
        (WEB, "icmp_type: 8, icmp_code: 0", "icmp_type: 0, icmp_code: 0"),
        (APP, "{number: 10,", "{number: 1,"),
        (APP, "protocol: 50}", "protocol: 1}"),
    ],
    "maximums": [
        (SITE, "description: Demo site shipped with vpcgen", "description: " + "d" * 256),
        (SITE, "advert_interval_ms: 1000", "advert_interval_ms: 40950"),
        (SITE, "user: root", "user: r" + "0" * 31),
        (SITE, "port: 3922", "port: 65535"),
        (SITE, "keep_releases: 5", "keep_releases: 100\n    vrrp_wait_s: 600"),
        ("zones/zone1.yaml", '"1000-1999"', '"1-4094"'),
        ("zones/zone1.yaml", "hello_interval_s: 10", "hello_interval_s: 65534"),
        ("zones/zone1.yaml", "dead_interval_s: 40", "dead_interval_s: 65535"),
        (SHOP, "vrrp: {advert_interval_ms: 200}", "vrrp: {advert_interval_ms: 40950}"),
        (SHOP, "    vlan: 1200\n", "    vlan: 4094\n"),
        (SHOP, "public_port: 2222, private_ip: 10.10.0.20, private_port: 22}",
         "public_port: 1, private_ip: 10.10.0.20, private_port: 65535}"),
        (SHOP, "    public_port: 443\n", "    public_port: 65535\n    private_port: 1\n"),
        (SHOP, "health_check: {interval_ms: 2000, rise: 2, fall: 3, http_path: /healthz}",
         "health_check: {interval_ms: 3600000, rise: 100, fall: 100, http_path: /" + "p" * 255 + "}"),
        (SHOP, "  - name: www-http", "  - name: l" + LONG),
        (SHOP, "    - name: hq", "    - name: v" + LONG),
        (SHOP, "ike_lifetime_s: 28800", "ike_lifetime_s: 604800"),
        (SHOP, "esp_lifetime_s: 2700", "esp_lifetime_s: 604800"),
        (SHOP, "dpd_delay_s: 30", "dpd_delay_s: 3600"),
        (SHOP, "{name: alice, password:", "{name: u" + LONG + ", password:"),
        (SHOP, "  - name: corp\n    vlan: 3000", "  - name: p" + LONG + "\n    vlan: 1"),
        (SHOP, "{name: db, netmask: 24, acl: db}", "{name: t" + LONG + ", netmask: 24, acl: db}"),
        ("vpcs/blog.yaml", "{name: blog-r1,", "{name: r" + LONG + ","),
        ("vpcs/blog.yaml", "{name: web, netmask: 24, acl: web}", "{name: web, netmask: 30, acl: web, vlan: 4093}"),
        ("vpcs/blog.yaml", "private_ip: 10.20.0.10}", "private_ip: 10.20.0.2}"),
        ("vpcs/left.yaml", "vrrp: {advert_interval_ms: 100}", "vrrp: {advert_interval_ms: 40950}"),
        (WEB, "protocol: tcp, ports: 80,", "protocol: tcp, ports: 65535,"),
        (WEB, "icmp_type: 8, icmp_code: 0", "icmp_type: 255, icmp_code: 255"),
        (APP, "{number: 100,", "{number: 65535,"),
        (APP, "protocol: 50}", "protocol: 255}"),
        (LOCK, "vrid: 1\n    zone: zone1\n  right:", "vrid: 255\n    zone: zone1\n  right:"),
        (LOCK, "ospf_area: 2", "ospf_area: 65535"),
    ],
    # the uplink's VLANs (public network, OSPF transit link) share the zone's VLAN ids with the tiers
    "uplink-vlans-low-high": [
        ("zones/zone1.yaml", "ranges: [\"203.0.113.10-203.0.113.200\"]",
         "ranges: [\"203.0.113.10-203.0.113.200\"]\n  vlan: 1"),
        ("zones/zone1.yaml", "vlan: 99", "vlan: 4094"),
    ],
    "uplink-vlans-high-low": [
        ("zones/zone1.yaml", "ranges: [\"203.0.113.10-203.0.113.200\"]",
         "ranges: [\"203.0.113.10-203.0.113.200\"]\n  vlan: 4094"),
        ("zones/zone1.yaml", "vlan: 99", "vlan: 1"),
    ],
}


@pytest.mark.parametrize("build", sorted(EDGE_BUILDS))
def test_schema_edge_values_build_and_pass_check(build, tmp_path):
    site = copy_site(EXAMPLE, tmp_path / "example")
    for rel, old, new in EDGE_BUILDS[build]:
        replace(site, rel, old, new)
    outcome = run_bounded("build", "example", "--output", "out", "--placeholder-secrets", cwd=tmp_path)
    assert outcome.exit_code == 0, outcome.describe()
    tree = tmp_path / "out" / "example"
    routers = {p.name for p in tree.iterdir() if p.is_dir()}
    kinds = {str(p.relative_to(tree / r)) for r in routers for p in (tree / r).rglob("*") if p.is_file()}
    for kind in ("etc/iptables/rules.v4", "etc/keepalived/keepalived.conf", "etc/conntrackd/conntrackd.conf",
                 "etc/haproxy/haproxy.cfg", "etc/swanctl/swanctl.conf", "etc/frr/frr.conf"):
        assert kind in kinds, f"the edge build no longer generates {kind}"
    assert_checks(tree, f"edge build {build}")
