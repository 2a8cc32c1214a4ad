"""The built tree's contract: what `vpcgen build` writes and what check, deploy and lab may read.

A built site is ``site.json`` (+ ``known_hosts``) and one folder per router laid out like the
router's ``/``. Every router folder holds ``etc/vpcgen/manifest.json`` (world-readable: paths, modes,
services, sha256 of every file that holds no secret) and, when the router has secret-bearing files,
``etc/vpcgen/secret-sums.json`` (0600: their sha256). The hashes of secret-bearing files never sit in
a world-readable file: with the rest of such a file known (a placeholder build shows it), a hash
would let anyone test guesses of a short secret offline.

A built tree is untrusted input (it may come from a pull request's artifact, or be edited after the
build): ``read_router`` refuses any tree that its manifest does not describe exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import orjson

from .errors import VpcgenError

MANIFEST = "etc/vpcgen/manifest.json"
SECRET_SUMS = "etc/vpcgen/secret-sums.json"
SITE_JSON = "site.json"
KNOWN_HOSTS = "known_hosts"

TEXT_MODE, SECRET_MODE, SCRIPT_MODE = 0o644, 0o600, 0o755
MODES = {TEXT_MODE, SECRET_MODE, SCRIPT_MODE}

# every file a router tree may hold (manifest and secret sums aside), as vpcgen generates them
GENERATED = {
    "interfaces": "etc/network/interfaces.d/vpcgen",
    "sysctl": "etc/sysctl.d/90-vpcgen.conf",
    "iptables": "etc/iptables/rules.v4",
    "conntrackd": "etc/conntrackd/conntrackd.conf",
    "keepalived": "etc/keepalived/keepalived.conf",
    "keepalived-notify": "etc/keepalived/notify.sh",
    "haproxy": "etc/haproxy/haproxy.cfg",
    "swanctl": "etc/swanctl/swanctl.conf",
    "swanctl-secrets": "etc/swanctl/vpcgen-secrets.conf",
    "ra-cert": "etc/swanctl/x509/vpcgen-ra.pem",
    "ra-key": "etc/swanctl/private/vpcgen-ra.pem",
    "frr": "etc/frr/frr.conf",
    "frr-daemons": "etc/frr/daemons",
    "dnsmasq": "etc/dnsmasq.d/vpcgen.conf",  # Debian's dnsmasq reads every file of /etc/dnsmasq.d
    "chrony": "etc/chrony/sources.d/vpcgen.sources",  # Debian's chrony.conf has `sourcedir` for it
}
# `vpcgen check`'s checkers and the generated file each one reads
CHECKED = {"interfaces": GENERATED["interfaces"], "iptables": GENERATED["iptables"], "keepalived": GENERATED["keepalived"],
           "notify": GENERATED["keepalived-notify"], "conntrackd": GENERATED["conntrackd"],
           "haproxy": GENERATED["haproxy"], "strongswan": GENERATED["swanctl"], "frr": GENERATED["frr"],
           "dnsmasq": GENERATED["dnsmasq"], "chrony": GENERATED["chrony"]}
G = GENERATED
# the daemons' own checkers, run on the router against a new release before it is switched to
CHECK_COMMANDS = {
    "iptables": f"iptables-restore --test {{release}}/{G['iptables']}",
    # the scripts the config names are the release's own: a router that gets its first pair config
    # (a single router converted to a pair) has no notify.sh in /etc yet
    "keepalived": (f"t=$(mktemp) && sed 's|[^ \"]*/{G['keepalived-notify']}|{{release}}/{G['keepalived-notify']}|g' "
                   f"{{release}}/{G['keepalived']} > \"$t\" && keepalived --config-test -f \"$t\"; rc=$?; "
                   f"rm -f \"$t\"; [ $rc -eq 0 ] && sh -n {{release}}/{G['keepalived-notify']}"),
    "haproxy": f"haproxy -c -q -f {{release}}/{G['haproxy']}",
    "frr": f"vtysh --dryrun -f {{release}}/{G['frr']}",
    "dnsmasq": f"dnsmasq --test -C {{release}}/{G['dnsmasq']}",
    # a sources file holds chrony.conf directives: -p parses it as a whole config and exits
    "chrony": f"chronyd -p -f {{release}}/{G['chrony']} >/dev/null",
}
# after the reloads: is every service of the router running?
HEALTH_COMMANDS = {
    "conntrackd": f"conntrackd -C {{root}}/{G['conntrackd']} -s >/dev/null",
    "keepalived": "systemctl is-active --quiet keepalived",
    "haproxy": "systemctl is-active --quiet haproxy",
    "strongswan": "systemctl is-active --quiet strongswan",
    "frr": "systemctl is-active --quiet frr",
    "dnsmasq": "systemctl is-active --quiet dnsmasq",
    "chrony": "systemctl is-active --quiet chrony",
}
# `vpcgen status`: what it reads on a router, besides the files and the health commands above
HA_GUARD_TAG = "vpcgen-ha-guard"  # the comment on rules.v4's HA guard rules (lifted on a master)
HAPROXY_STATS_SOCKET = "/run/haproxy/admin.sock"
VPN_CHILD = "s2s-{name}"  # swanctl child of a site-to-site VPN peer
# deploy's state under a router's deploy root (releases, the current link, the unconfirmed mark)
DEPLOY_STATE = "var/lib/vpcgen"
RELEASES = "releases"
CURRENT = "current"

STATUS_COMMANDS = {
    "firewall": "iptables-save",
    # rules.v4 (stdin) loaded into a throwaway network namespace: the expected rules in
    # iptables-save's own spelling
    "firewall-expected": "unshare --net sh -c 'iptables-restore && iptables-save'",
    "conntrackd": f"conntrackd -C {{root}}/{G['conntrackd']} -s",
    # seconds since conntrackd (found by its control socket), keepalived and the current release
    # started: a conntrackd younger than both was restarted by hand or by the health check
    "conntrackd-age": ("c=$(ss -xlpn | sed -n 's/.*conntrackd[.]ctl .*pid=\\([0-9]*\\).*/\\1/p' | head -n1); "
                       "echo conntrackd $(ps -o etimes= -p \"${c:-0}\"); "
                       "echo keepalived $(ps -o etimes= -p \"$(cat /run/keepalived.pid 2>/dev/null || echo 0)\"); "
                       f"echo release $(( $(date +%s) - $(stat -c %Y {{root}}/{DEPLOY_STATE}/{CURRENT}) ))"),
    "haproxy": f"echo 'show stat' | socat stdio {HAPROXY_STATS_SOCKET}",
    "strongswan": "swanctl --list-sas",
    "ospf-neighbors": "vtysh -c 'show ip ospf neighbor json'",
    "ospf-announced": "vtysh -c 'show ip ospf database self-originate'",
    # a planned handover: keepalived's stop sends priority 0 (the backup takes over at once), its
    # start comes back as backup (nopreempt)
    "switchover": "systemctl restart keepalived",
}

# run-time state on a router of a pair, kept by notify.sh
STATE_DIR = "/run/vpcgen"
VRRP_STATE = f"{STATE_DIR}/vrrp.state"  # MASTER, BACKUP, FAULT or STOP
SPLIT_FILE = f"{STATE_DIR}/split"  # the second router's keepalived track file (1: cut off)
VRRP_STATE_COMMAND = f"cat {VRRP_STATE}"
# dnsmasq's leases: Debian's default, named in the generated file so that it is never in a release
# (a deploy or a rebuilt tree loses no lease)
DNSMASQ_LEASES = "/var/lib/misc/dnsmasq.leases"


PENDING = "pending"  # a release switched to but not yet confirmed: its id, the fallback, others
HISTORY = "history"  # confirmed releases, oldest first
# commit-confirm, under DEPLOY_STATE: the timer's revert script, its lock, the armed mark
# (release id, timer's process group), the record of a revert the router made by itself, a log
CONFIRM_DIR = "confirm"
CONFIRM_SCRIPT = f"{CONFIRM_DIR}/revert.sh"
CONFIRM_LOCK = f"{CONFIRM_DIR}/lock"
CONFIRM_ARMED = f"{CONFIRM_DIR}/armed"
CONFIRM_REVERTED = f"{CONFIRM_DIR}/reverted"
CONFIRM_LOG = f"{CONFIRM_DIR}/log"


def on_router(key: str, root: str = "/") -> str:
    """The absolute path of generated file ``key`` on a router (or under a deploy root)."""
    return f"{root.rstrip('/')}/{GENERATED[key]}"


# services in dependency order: deploy reloads what changed in this order
SERVICES = ("networking", "sysctl", "iptables", "conntrackd", "keepalived", "haproxy", "strongswan", "frr", "dnsmasq",
            "chrony")

_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE = 64 * 1024 * 1024  # no generated file comes near this; a bigger one is not ours


class TreeError(VpcgenError):
    """A built tree that is missing, broken, or not exactly what its manifest describes."""


@dataclass(frozen=True)
class Entry:
    path: str
    mode: int
    service: str
    sha256: str
    secret: bool


@dataclass
class RouterTree:
    name: str
    dir: Path
    manifest: dict
    manifest_bytes: bytes
    entries: list[Entry]
    secret_sums_bytes: bytes | None  # content of SECRET_SUMS, when the router has secret files

    def paths(self) -> list[str]:
        """Every file deploy ships: the generated files, the manifest and the secret sums."""
        extra = [MANIFEST] + ([SECRET_SUMS] if self.secret_sums_bytes is not None else [])
        return [e.path for e in self.entries] + extra

    def mode_of(self, path: str) -> int:
        if path == SECRET_SUMS:
            return SECRET_MODE
        return next((e.mode for e in self.entries if e.path == path), TEXT_MODE)

    def sums(self) -> dict[str, str]:
        return {e.path: e.sha256 for e in self.entries}


def manifest_entries(files: dict[str, tuple[bytes, int, str]]) -> tuple[list[dict], dict[str, str]]:
    """The manifest's file list and the secret sums for ``path -> (data, mode, service)``."""
    listed, secret = [], {}
    for path, (data, mode, service) in sorted(files.items()):
        digest = hashlib.sha256(data).hexdigest()
        entry = {"path": path, "mode": f"{mode:04o}", "service": service}
        if mode == SECRET_MODE:
            entry["secret"] = True
            secret[path] = digest
        else:
            entry["sha256"] = digest
        listed.append(entry)
    return listed, secret


# the final newline written by orjson too: appending it afterwards would copy the whole output
# (site.json of a 10,000-VPC site is about 370 MB)
_ORJSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def dump_json(data) -> bytes:
    """Two-space indented, keys sorted, UTF-8 kept, one final newline. orjson writes the same bytes as
    ``json.dumps(indent=2, sort_keys=True, ensure_ascii=False)`` (whose indenting encoder is pure
    Python, ~40x slower) for everything a tree holds (never a float: orjson writes 1e-7 where json
    writes 1e-07); what orjson refuses (an integer beyond 64 bits, a non-string key) takes the
    standard library's path, so the output never depends on which one wrote it."""
    try:
        return orjson.dumps(data, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def dump_json_sections(top: dict, sections: dict) -> bytearray:
    """``dump_json`` of ``top`` with each of ``sections`` (key -> (names, the value of a name)) in
    its place as an object of those names, each value made and dumped in turn and then dropped:
    the same bytes, without holding a large document whole. They grow in one buffer (grown in place
    by mremap): a list of pieces joined at the end would hold the output twice (740 MB at 10,000 VPCs)."""
    def shifted(value, indent: bytes) -> bytes:  # a value dumped alone, indented to its depth
        return dump_json(value)[:-1].replace(b"\n", b"\n" + indent)

    out = bytearray(b"{")
    for i, key in enumerate(sorted([*top, *sections])):
        out += b"\n  " if i == 0 else b",\n  "
        out += shifted(key, b"")
        out += b": "
        if key not in sections:
            out += shifted(top[key], b"  ")
            continue
        names, value = sections[key]
        for k, name in enumerate(sorted(names)):
            out += b"{\n    " if k == 0 else b",\n    "
            out += shifted(name, b"")
            out += b": "
            out += shifted(value(name), b"    ")
        out += b"\n  }" if names else b"{}"
    out += b"\n}\n" if len(out) > 1 else b"}\n"
    return out


def _read_json(path: Path, shown: str) -> tuple[object, bytes]:
    raw = _read_regular(path, shown)
    try:
        return json.loads(raw.decode("utf-8")), raw
    except UnicodeDecodeError:
        raise TreeError(f"{shown}: not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise TreeError(f"{shown}:{exc.lineno}:{exc.colno}: error: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise TreeError(f"{shown}: nested too deeply") from None


def _read_regular(path: Path, shown: str) -> bytes:
    """A regular file's bytes, never through a symlink and never more than MAX_FILE."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        reason = "is a symlink" if exc.errno == 40 else (exc.strerror or str(exc))
        raise TreeError(f"{shown}: cannot read: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TreeError(f"{shown}: not a regular file")
        if info.st_size > MAX_FILE:
            raise TreeError(f"{shown}: larger than {MAX_FILE // (1024 * 1024)} MiB: not a generated file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_FILE + 1)
    finally:
        os.close(fd)


def _require(ok: bool, shown: str, what: str) -> None:
    if not ok:
        raise TreeError(f"{shown}: {what}")


def _entries(manifest, secret_sums: dict, shown: str) -> list[Entry]:
    _require(isinstance(manifest, dict), shown, "the manifest must be a JSON object")
    files = manifest.get("files")
    _require(isinstance(files, list), shown, "'files' must be a list")
    allowed = set(GENERATED.values())
    out, seen = [], set()
    for i, f in enumerate(files):
        where = f"files[{i}]"
        _require(isinstance(f, dict), shown, f"{where} must be an object")
        path, mode, service = f.get("path"), f.get("mode"), f.get("service")
        _require(isinstance(path, str) and path in allowed, shown,
                 f"{where}: {path!r} is not a file vpcgen generates")
        _require(path not in seen, shown, f"{where}: {path} is listed twice")
        seen.add(path)
        _require(isinstance(mode, str) and mode in {f"{m:04o}" for m in MODES}, shown,
                 f"{where}: mode {mode!r} is not one vpcgen writes")
        _require(isinstance(service, str) and service in SERVICES, shown, f"{where}: unknown service {service!r}")
        secret = f.get("secret", False) is True
        digest = secret_sums.get(path) if secret else f.get("sha256")
        _require(isinstance(digest, str) and _HEX64.match(digest) is not None, shown,
                 f"{where}: no valid sha256 for {path}")
        _require(secret == (int(mode, 8) == SECRET_MODE), shown, f"{where}: secret files are exactly the 0600 ones")
        out.append(Entry(path, int(mode, 8), service, digest, secret))
    for key, kind in (("router", str), ("vpc", str), ("mgmt", str), ("deployable", bool), ("services", list),
                      ("deploy", dict)):
        _require(isinstance(manifest.get(key), kind), shown, f"'{key}' is missing or of the wrong type")
    return out


def read_router(router_dir: Path, verify: bool = True) -> RouterTree:
    """A router's tree, checked against its manifest: only generated paths, only regular files, no
    symlinks, no file the manifest does not list, and (with ``verify``) every checksum right."""
    router_dir = Path(router_dir)
    name = router_dir.name
    shown = str(router_dir / MANIFEST)
    if not _NAME.match(name):
        raise TreeError(f"{router_dir}: not a router name")
    manifest, raw = _read_json(router_dir / MANIFEST, shown)
    secret_sums: dict = {}
    sums_bytes = None
    if (router_dir / SECRET_SUMS).exists() or os.path.islink(router_dir / SECRET_SUMS):
        secret_sums, sums_bytes = _read_json(router_dir / SECRET_SUMS, str(router_dir / SECRET_SUMS))
        _require(isinstance(secret_sums, dict), str(router_dir / SECRET_SUMS), "must be a JSON object")
    entries = _entries(manifest, secret_sums, shown)
    _require(manifest.get("router") == name, shown, f"describes router {manifest.get('router')!r}, not {name}")
    listed = {e.path for e in entries} | {MANIFEST} | ({SECRET_SUMS} if sums_bytes is not None else set())
    _require(set(secret_sums) == {e.path for e in entries if e.secret}, str(router_dir / SECRET_SUMS),
             "does not list exactly the manifest's secret files")
    for dirpath, dirnames, filenames in os.walk(router_dir):
        for entry in sorted(dirnames + filenames):
            full = os.path.join(dirpath, entry)
            rel = os.path.relpath(full, router_dir)
            if os.path.islink(full):
                raise TreeError(f"{full}: a symlink in a built tree: refusing it")
            if entry in filenames and rel not in listed:
                raise TreeError(f"{full}: not listed in {shown}: refusing a tree its manifest does not describe")
            if entry in dirnames and not any(p.startswith(rel + "/") for p in listed):
                raise TreeError(f"{full}: not part of a built router tree: refusing it")
    if verify:
        for e in entries:
            data = _read_regular(router_dir / e.path, str(router_dir / e.path))
            if hashlib.sha256(data).hexdigest() != e.sha256:
                raise TreeError(f"{router_dir / e.path} does not match its manifest: the tree was changed after "
                                "the build; build it again")
    return RouterTree(name, router_dir, manifest, raw, entries, sums_bytes)


def router_dirs(tree_dir: Path) -> dict[str, Path]:
    """Router name -> folder of a built site (every folder holding a manifest)."""
    tree_dir = Path(tree_dir)
    if not (tree_dir / SITE_JSON).is_file():
        raise TreeError(f"{tree_dir}: not a built site (run `vpcgen build` first)")
    found = {p.name: p for p in sorted(tree_dir.iterdir())
             if p.is_dir() and not p.is_symlink() and (p / MANIFEST).exists()}
    if not found:
        raise TreeError(f"{tree_dir}: no router trees found (expected <router>/{MANIFEST})")
    return found


def read_routers(tree_dir: Path, only: list[str] | None = None) -> dict[str, RouterTree]:
    """The routers of a built site (or only the named ones), each verified against its manifest
    before anything runs."""
    dirs = router_dirs(Path(tree_dir))
    if only:
        unknown = sorted(set(only) - set(dirs))
        if unknown:
            raise TreeError(f"no router {', '.join(unknown)} in {tree_dir} (routers: {', '.join(dirs)})")
        dirs = {name: path for name, path in dirs.items() if name in only}
    return {name: read_router(path) for name, path in dirs.items()}


def read_site_json(tree_dir: Path) -> dict:
    data, _ = _read_json(Path(tree_dir) / SITE_JSON, str(Path(tree_dir) / SITE_JSON))
    _require(isinstance(data, dict), str(Path(tree_dir) / SITE_JSON), "must be a JSON object")
    return data
