"""`vpcgen diff`: what a change to the site does to every router, for pull-request previews.

The base revision is read with `git archive` (the working tree is never touched) and built in a
temporary folder; the working tree is built in memory. First comes what the change does: the
flows it newly allows or denies, computed exactly from both revisions' site.json by the one
model of the site's filtering (vpcgen.reach). Then both builds are compared per router
file, the intents are compared object by object, the lock files key by key. Secret-bearing files
are shown as rendered with every secret value as <redacted>; their real contents are only compared.
"""

from __future__ import annotations

import difflib
import gc
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath


from ..api import BuildOptions, BuildResult, build_site
from ..compiler.allocate import lock_changes
from ..errors import DiagnosticsError, VpcgenError
from ..site.intent import Site
from ..reach import boxes
from ..reach.symbolic import changes as reachability_changes
from ..site.secrets import REDACTED
from ..tree import MANIFEST, SECRET_SUMS
MARKDOWN_LIMIT = 60_000  # GitHub comments hold 65,536 characters


@dataclass
class FileChange:
    path: str
    kind: str  # added | removed | changed | secret
    diff: str = ""


@dataclass
class Report:
    site: str
    base: str
    intent: list[str] = field(default_factory=list)
    allocations: list[str] = field(default_factory=list)
    routers: dict[str, list[FileChange]] = field(default_factory=dict)  # changed routers only
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # every secret reference: where it is used, what changed
    reachability: list[dict] = field(default_factory=list)  # entries: what the change newly allows or denies

    @property
    def changed(self) -> bool:
        return bool(self.intent or self.allocations or self.routers or self.reachability)


def _git(root: Path, *args: str, binary: bool = False):
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=not binary)
    return result


def extract_base(site_dir: Path, ref: str, into: Path) -> Path | None:
    """The site folder as of ``ref`` under ``into`` (None when the site did not exist then)."""
    top = _git(site_dir, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise VpcgenError(f"{site_dir}: not inside a git repository (vpcgen diff compares against a git revision)")
    root = Path(top.stdout.strip())
    rel = site_dir.resolve().relative_to(root.resolve()).as_posix()
    if _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise VpcgenError(f"unknown git revision '{ref}'")
    listing = _git(root, "ls-tree", "-d", "--name-only", ref, "--", rel)
    if not listing.stdout.strip():
        return None
    if not _extract_blobs(root, ref, rel, into):
        archive = _git(root, "archive", "--format=tar", ref, "--", rel, binary=True)
        if archive.returncode != 0:
            raise VpcgenError(f"git archive {ref} -- {rel} failed: {archive.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(into, filter="data")
    return into / rel


def _extract_blobs(root: Path, ref: str, rel: str, into: Path) -> bool:
    """The folder's files written straight from git's objects (one `git cat-file --batch`; reading
    and extracting an archive took seconds for a 1,000-VPC site). False, writing nothing, when the
    folder holds anything but regular files (links, submodules): those go through the archive."""
    listing = _git(root, "ls-tree", "-r", "-z", ref, "--", rel, binary=True)
    if listing.returncode != 0:
        return False
    entries = []  # (mode, object, path)
    for line in filter(None, listing.stdout.split(b"\0")):
        meta, _, path = line.partition(b"\t")
        mode, kind, obj = meta.split()
        parts = PurePosixPath(path.decode("utf-8", "surrogateescape")).parts
        if kind != b"blob" or mode not in (b"100644", b"100755") or any(p in ("", ".", "..") for p in parts):
            return False
        entries.append((mode, obj, parts))
    batch = subprocess.run(["git", "-C", str(root), "cat-file", "--batch"], input=b"".join(
        obj + b"\n" for _, obj, _ in entries), capture_output=True)
    if batch.returncode != 0:
        return False
    out, at, made = batch.stdout, 0, set()
    for mode, obj, parts in entries:
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        target = into.joinpath(*parts)
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(out[header_end + 1:header_end + 1 + size])
        if mode == b"100755":
            target.chmod(0o755)
        at = header_end + 1 + size + 1
    return True


SHM = Path("/dev/shm")


def _scratch(site_dir: Path) -> str | None:
    """Where to extract the base: a memory filesystem when there is one with ample room (writing and
    removing thousands of small files on a busy disk took seconds), else the usual temporary folder.
    An explicit TMPDIR is always honoured."""
    if os.environ.get("TMPDIR") or not SHM.is_dir() or not os.access(SHM, os.W_OK):
        return None
    need = 0  # the working tree's size is the base's, give or take the change
    for folder, _, names in os.walk(site_dir):
        need += sum(os.lstat(os.path.join(folder, n)).st_size + 4096 for n in names)
    room = os.statvfs(SHM)
    return str(SHM) if room.f_bavail * room.f_frsize > 4 * need else None


def _build(site_dir: Path, environ: dict, placeholder: bool) -> BuildResult:
    return build_site(site_dir, BuildOptions(placeholder_secrets=placeholder, environ=environ, redacted_view=True))


def diff_site(site_dir, base_ref: str, environ: dict | None = None) -> Report:
    # millions of long-lived objects (two builds, two parsed sites) and no garbage cycles worth
    # collecting: the cyclic collector would only rescan them (measured: seconds on 1,000 VPCs)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _diff_site(site_dir, base_ref, environ)
    finally:
        if enabled:
            gc.enable()


def _diff_site(site_dir, base_ref: str, environ: dict | None = None) -> Report:
    site_dir = Path(site_dir)
    environ = dict(os.environ) if environ is None else environ
    with tempfile.TemporaryDirectory(prefix="vpcgen-diff-", dir=_scratch(site_dir)) as tmp:
        base_dir = extract_base(site_dir, base_ref, Path(tmp))
        if base_dir is not None and (site_dir / "secrets").is_dir() and not (base_dir / "secrets").exists():
            # secrets are not committed: the base is built with today's values, so only what the
            # change itself does to a secret shows up
            shutil.copytree(site_dir / "secrets", base_dir / "secrets", symlinks=True)
        placeholder = False
        try:
            head = _build(site_dir, environ, False)
        except DiagnosticsError as exc:
            if not all(d.code == "missing-secret" for d in exc.diagnostics):
                raise
            placeholder, head = True, _build(site_dir, environ, True)
        base = None
        if base_dir is not None:
            try:
                base = _build(base_dir, environ, placeholder)
            except DiagnosticsError as exc:
                if placeholder or not all(d.code == "missing-secret" for d in exc.diagnostics):
                    raise VpcgenError(f"the base revision '{base_ref}' does not build: "
                                      f"{str(exc.diagnostics[0]).replace(tmp + '/', '')}") from None
                placeholder = True
                head, base = _build(site_dir, environ, True), _build(base_dir, environ, True)
    report = Report(head.site, base_ref)
    if placeholder:
        report.notes.append("some secrets are not available here: both revisions were built with placeholder "
                            "secrets, so changes of secret values cannot show")
    elif base is not None and (secret_uses(base.intent) or secret_uses(head.intent)):
        report.notes.append("secret values are not in git, so this diff cannot compare them: both revisions were "
                            "built with today's secrets, and a secret rotated in place (secrets/<name> or "
                            "VPCGEN_SECRET_<NAME>) does not show here; `vpcgen deploy --dry-run` compares with "
                            "what the routers run and names each changed secret file per router")
    if base is None:
        report.notes.append(f"the site does not exist at '{base_ref}': everything is new")
    report.secrets = secret_changes(base.intent if base else None, head.intent)
    report.reachability = reachability(base.document if base else None, head.document)
    report.intent = intent_changes(base.intent if base else None, head.intent)
    report.allocations = lock_changes(base.lock_text if base else "", head.lock_text)
    _router_changes(report, base.tree if base else {}, head.tree, base.redacted if base else {}, head.redacted)
    return report


# --- reachability ----------------------------------------------------------------------------

def reachability(base_document: dict | None, head_document: dict) -> list[dict]:
    """What the change newly allows and denies, from both revisions' resolved sites (site.json)."""
    return reachability_changes(base_document, head_document)


def _ports(entry: dict) -> str:
    if "ports" in entry:
        return entry["ports"]
    if "icmp_type" in entry or "icmp_code" in entry:
        return f"type {entry.get('icmp_type', 'any')}" + (f" code {entry['icmp_code']}" if "icmp_code" in entry
                                                          else "")
    return "any" if entry["protocol"] in ("tcp", "udp") else ""


def _exposed(entry: dict) -> bool:
    return entry["change"] == "allowed" and entry["from"] == "internet"


def _addresses(cidrs: list[str], limit: int = 4) -> str:
    """A short form for a table: the CIDRs, or what they leave out when that is shorter."""
    if len(cidrs) > limit:
        rest = boxes.cidrs(boxes.complement(boxes.cidr(c) for c in cidrs))
        if len(rest) < len(cidrs):
            cidrs, prefix = rest, "any except "
            if len(cidrs) <= limit:
                return prefix + ", ".join(cidrs)
            return prefix + ", ".join(cidrs[:limit]) + f" (+{len(cidrs) - limit} more)"
    shown = ", ".join(cidrs[:limit])
    return shown + (f" (+{len(cidrs) - limit} more)" if len(cidrs) > limit else "")


REACH_COLUMNS = ("change", "from", "sources", "to", "destinations", "protocol", "ports", "via")


def _reach_rows(report: Report) -> list[list[str]]:
    return [[("! " if _exposed(e) else "") + e["change"], e["from"], _addresses(e["sources"]), e["to"],
             _addresses(e["destinations"]), str(e["protocol"]), _ports(e), e.get("via", "")] for e in report.reachability]


def _reach_text(report: Report) -> list[str]:
    if not report.reachability:
        return ["Reachability: unchanged (no flow is newly allowed or denied)", ""]
    rows = [list(REACH_COLUMNS)] + _reach_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(REACH_COLUMNS))]
    lines = ["Reachability changes (! = newly allowed from the internet):"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return lines + [""]


def _reach_markdown(report: Report, budget: int = MARKDOWN_LIMIT // 2) -> list[str]:
    if not report.reachability:
        return ["**Reachability:** unchanged (no flow is newly allowed or denied)", ""]
    exposed = sum(1 for e in report.reachability if _exposed(e))
    lines = [f"**Reachability changes**" + (f" — :warning: {exposed} newly allowed from the internet"
                                             if exposed else ""), "",
             "| " + " | ".join(REACH_COLUMNS) + " |", "|" + "---|" * len(REACH_COLUMNS)]
    used = sum(len(line) + 1 for line in lines)
    for n, (e, row) in enumerate(zip(report.reachability, _reach_rows(report))):
        row[0] = (":warning: " if _exposed(e) else "") + e["change"]
        line = "| " + " | ".join(c.replace("|", "\\|") if i in (0, 7) else f"`{c}`" if c else ""
                                 for i, c in enumerate(row)) + " |"
        used += len(line) + 1
        if used > budget:
            rest = len(report.reachability) - n
            lines += ["", f"_Truncated: {rest} more entr{'ies' if rest != 1 else 'y'} do not fit in one comment; "
                          "run `vpcgen diff --format json` locally for all of them._"]
            break
        lines.append(line)
    return lines + [""]


def render_json(report: Report) -> str:
    """One object: the reachability entries first, then what changes in the intent, the lock and per router."""
    data = {"site": report.site, "base": report.base, "reachability": report.reachability,
            "intent": report.intent, "allocations": report.allocations,
            "routers": {r: [{"path": c.path, "change": c.kind, "diff": c.diff} for c in changes]
                        for r, changes in sorted(report.routers.items())},
            "unchanged_routers": sorted(report.unchanged), "notes": report.notes}
    return json.dumps(data, indent=2) + "\n"


# --- secrets ---------------------------------------------------------------------------------

def _text(path: str, data: bytes, redacted: dict) -> str:
    """What a reviewer may see of a file: a secret-bearing one as rendered with every secret value
    as <redacted> (no search-and-replace of values, which could hide config text equal to a secret
    or reveal a short one by its context); any other file holds no secret and is shown as is."""
    return redacted.get(path, data).decode("utf-8", "replace")


def secret_uses(site: Site | None) -> dict[str, list[str]]:
    """Secret name -> where the site refers to it (never its value)."""
    out: dict[str, list[str]] = {}
    if site is None:
        return out
    for zone in site.zones.values():
        if zone.ospf is not None and zone.ospf.auth_key:
            out.setdefault(zone.ospf.auth_key, []).append(f"zone `{zone.name}` OSPF auth_key")
    for vpc in site.vpcs.values():
        for v in vpc.site_to_site:
            out.setdefault(v.psk, []).append(f"VPC `{vpc.name}` site-to-site VPN `{v.name}` psk")
        ra = vpc.remote_access
        if ra is not None:
            out.setdefault(ra.server_cert, []).append(f"VPC `{vpc.name}` remote-access server_cert")
            out.setdefault(ra.server_key, []).append(f"VPC `{vpc.name}` remote-access server_key")
            for u in ra.users:
                out.setdefault(u.password, []).append(f"VPC `{vpc.name}` remote-access user `{u.name}` password")
    return {name: sorted(uses) for name, uses in sorted(out.items())}


def secret_changes(base: Site | None, head: Site) -> list[str]:
    """One line per secret reference of either revision: where it is used and whether that changed.
    Values are not in git: whether a value changed is never known here."""
    before, after = secret_uses(base), secret_uses(head)
    out = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out.append(f"`{name}`: reference added ({'; '.join(after[name])})")
        elif name not in after:
            out.append(f"`{name}`: reference removed (was {'; '.join(before[name])})")
        elif before[name] != after[name]:
            out.append(f"`{name}`: used by {'; '.join(after[name])} (was {'; '.join(before[name])})")
        else:
            out.append(f"`{name}`: reference unchanged ({'; '.join(after[name])}), value not compared")
    return out


# --- routers ---------------------------------------------------------------------------------

def _router_changes(report: Report, base: dict, head: dict, base_redacted: dict, head_redacted: dict) -> None:
    def by_router(tree: dict) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for path, (data, _mode) in tree.items():
            router, _, rel = path.partition("/")
            if rel:
                out.setdefault(router, {})[rel] = data
        return out

    before, after = by_router(base), by_router(head)
    for router in sorted(set(before) | set(after)):
        old, new = before.get(router, {}), after.get(router, {})
        changes = []
        for rel in sorted(set(old) | set(new)):
            if rel in (MANIFEST, SECRET_SUMS):
                continue  # hashes of the other files: their own diffs say it better
            a, b = old.get(rel), new.get(rel)
            if a == b:
                continue
            ta = _text(f"{router}/{rel}", a, base_redacted) if a is not None else ""
            tb = _text(f"{router}/{rel}", b, head_redacted) if b is not None else ""
            kind = "added" if a is None else "removed" if b is None else "changed"
            if kind == "changed" and ta == tb:
                changes.append(FileChange(rel, "secret", f"a secret value changed ({REDACTED})"))
                continue
            lines = difflib.unified_diff(ta.splitlines(keepends=True), tb.splitlines(keepends=True),
                                         fromfile=f"a/{router}/{rel}" if a is not None else "/dev/null",
                                         tofile=f"b/{router}/{rel}" if b is not None else "/dev/null")
            changes.append(FileChange(rel, kind, "".join(line if line.endswith("\n") else line + "\n"
                                                         for line in lines)))
        if changes:
            report.routers[router] = changes
        else:
            report.unchanged.append(router)


# --- intent ----------------------------------------------------------------------------------

def _keyed(items, key) -> dict:
    return {key(x): x for x in items}


def _compare(out: list[str], where: str, what: str, before: dict, after: dict) -> None:
    for k in sorted(set(before) | set(after), key=str):
        if k not in before:
            out.append(f"{where}{what} `{k}` added")
        elif k not in after:
            out.append(f"{where}{what} `{k}` removed")
        elif before[k] != after[k]:
            out.append(f"{where}{what} `{k}` changed")


def intent_changes(base: Site | None, head: Site) -> list[str]:
    out: list[str] = []
    zones_a = base.zones if base else {}
    _compare(out, "", "zone", zones_a, head.zones)
    for name in sorted(set(zones_a) & set(head.zones)):
        a, b = zones_a[name], head.zones[name]
        if a.vxlan != b.vxlan:
            state = "added" if a.vxlan is None else "removed" if b.vxlan is None else "changed"
            out.append(f"zone `{name}`: vxlan {state}")
        if (a.public.routed if a.public else ()) != (b.public.routed if b.public else ()):
            out.append(f"zone `{name}`: public routed blocks "
                       f"{', '.join(a.public.routed if a.public else ()) or 'none'} -> "
                       f"{', '.join(b.public.routed if b.public else ()) or 'none'}")
    vpcs_a = base.vpcs if base else {}
    for name in sorted(set(vpcs_a) | set(head.vpcs)):
        if name not in vpcs_a:
            out.append(f"VPC `{name}` added")
            continue
        if name not in head.vpcs:
            out.append(f"VPC `{name}` removed")
            continue
        a, b = vpcs_a[name], head.vpcs[name]
        if a == b:
            continue
        where = f"VPC `{name}`: "
        before = len(out)
        _compare(out, where, "tier", _keyed(a.tiers, lambda t: t.name), _keyed(b.tiers, lambda t: t.name))
        _tier_services(out, where, a, b)
        _compare(out, where, "router", _keyed(a.routers, lambda r: r.name), _keyed(b.routers, lambda r: r.name))
        _compare(out, where, "public IP", _keyed(a.public_ips, lambda p: p.name),
                 _keyed(b.public_ips, lambda p: p.name))
        _compare(out, where, "static NAT", _keyed(a.static_nat, lambda s: s.public_ip),
                 _keyed(b.static_nat, lambda s: s.public_ip))
        _compare(out, where, "port forwarding", _keyed(a.port_forwarding, _pf_key),
                 _keyed(b.port_forwarding, _pf_key))
        _compare(out, where, "load balancer", _keyed(a.load_balancers, lambda x: x.name),
                 _keyed(b.load_balancers, lambda x: x.name))
        _compare(out, where, "site-to-site VPN", _keyed(a.site_to_site, lambda x: x.name),
                 _keyed(b.site_to_site, lambda x: x.name))
        _compare(out, where, "private gateway", _keyed(a.private_gateways, lambda x: x.name),
                 _keyed(b.private_gateways, lambda x: x.name))
        if a.remote_access != b.remote_access:
            out.append(f"{where}remote-access VPN {'added' if a.remote_access is None else 'removed' if b.remote_access is None else 'changed'}")
        scalars = [f.name for f in fields(a)
                   if f.name in ("cidr", "netmask", "redundant", "vrrp", "source_nat", "zone", "domain")]
        changed = [f for f in scalars if getattr(a, f) != getattr(b, f)]
        if changed:
            out.append(f"{where}{', '.join(changed)} changed")
        if len(out) == before:
            out.append(f"{where}changed")
    acls_a = {k: v for k, v in (base.acls if base else {}).items() if not v.builtin}
    acls_b = {k: v for k, v in head.acls.items() if not v.builtin}
    for name in sorted(set(acls_a) | set(acls_b)):
        if name not in acls_a:
            out.append(f"ACL `{name}` added")
        elif name not in acls_b:
            out.append(f"ACL `{name}` removed")
        elif acls_a[name] != acls_b[name]:
            _compare(out, f"ACL `{name}`: ", "rule", _keyed(acls_a[name].rules, lambda r: r.number),
                     _keyed(acls_b[name].rules, lambda r: r.number))
    if base is not None and (base.ssh, base.deploy) != (head.ssh, head.deploy):
        out.append("site defaults (ssh or deploy) changed")
    return out


def _tier_services(out: list[str], where: str, a, b) -> None:
    """What changed in the guest services of a tier both revisions have: MTU, DHCP, hosts."""
    before = {t.name: t for t in a.tiers}
    for t in b.tiers:
        old = before.get(t.name)
        if old is None:
            continue
        if old.mtu != t.mtu:
            out.append(f"{where}tier `{t.name}`: MTU {old.mtu} -> {t.mtu}")
        if old.isolation != t.isolation:
            out.append(f"{where}tier `{t.name}`: isolation {old.isolation} -> {t.isolation}")
        elif old.vni != t.vni:
            out.append(f"{where}tier `{t.name}`: VNI {old.vni or 'allocated'} -> {t.vni or 'allocated'}")
        if old.public != t.public:
            out.append(f"{where}tier `{t.name}`: " + ("now a public tier (routed, no NAT)" if t.public
                                                      else "no longer a public tier (NATed)"))
        if old.dhcp != t.dhcp:
            state = "added" if old.dhcp is None else "removed" if t.dhcp is None else "changed"
            out.append(f"{where}tier `{t.name}`: DHCP {state}")
        _compare(out, f"{where}tier `{t.name}`: ", "host", _keyed(old.hosts, lambda h: h.name),
                 _keyed(t.hosts, lambda h: h.name))


def _pf_key(pf) -> str:
    low, high = pf.public_port
    return f"{pf.public_ip} {pf.protocol}/{low}" + (f"-{high}" if high != low else "")


# --- allocations -----------------------------------------------------------------------------

# --- output ----------------------------------------------------------------------------------

def _summary(report: Report, markdown: bool, limit: int = MARKDOWN_LIMIT) -> list[str]:
    """Notes, intent and allocation changes, and the router count, in either format."""
    def fmt(line: str) -> str:
        return line if markdown else line.replace("`", "'")

    def section(title: str, what: str, items: list[str]) -> list[str]:
        if not items:
            return [f"**{title}:** no changes" if markdown else f"{title}: no changes", ""]
        head = f"**{title}**{what}" if markdown else f"{title}{what}:"
        return [head] + [f"- {fmt(i)}" for i in items] + [""]

    lines = [""] + (_reach_markdown(report, limit // 2) if markdown else _reach_text(report))
    lines += [(f"> **Note:** {n}" if markdown else f"note: {n}") for n in report.notes] + [""]
    lines += section("Intent", "", report.intent)
    lines += section("Allocations", " (`allocations.lock.yaml`)" if markdown else " (allocations.lock.yaml)",
                     report.allocations)
    if report.secrets:
        lines += section("Secrets", " (references only: values are not in git and cannot be compared here)",
                         report.secrets)
    changed = sorted(report.routers)
    if markdown:
        lines.append(f"**Routers:** {len(changed)} changed, {len(report.unchanged)} unchanged")
    else:
        lines.append(f"Routers: {len(changed)} changed" + (f" ({', '.join(changed)})" if changed else "")
                     + f", {len(report.unchanged)} unchanged")
    return lines


def render_text(report: Report) -> str:
    lines = [f"vpcgen diff: site {report.site} against {report.base}"] + _summary(report, markdown=False)
    for router, changes in sorted(report.routers.items()):
        lines += ["", f"== {router}: " + ", ".join(f"{c.path} ({c.kind})" for c in changes)]
        for c in changes:
            lines.append(c.diff.rstrip("\n") if c.kind != "secret" else f"{c.path}: {c.diff}")
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, limit: int = MARKDOWN_LIMIT) -> str:
    head = [f"### vpcgen diff: site `{report.site}` against `{report.base}`"]
    summary = _summary(report, markdown=True, limit=limit)
    changed = sorted(report.routers)
    text = "\n".join(head + summary) + "\n"
    shown = 0
    for router in changed:
        changes = report.routers[router]
        body = "\n".join(f"{c.path}: {c.diff}" if c.kind == "secret" else c.diff.rstrip("\n") for c in changes)
        fence = "````" if "```" in body else "```"
        block = (f"\n<details><summary><code>{router}</code>: {len(changes)} file"
                 f"{'s' if len(changes) != 1 else ''} changed</summary>\n\n{fence}diff\n{body}\n{fence}\n</details>\n")
        if len(text) + len(block) > limit - 300:
            rest = changed[shown:]
            text += (f"\n_Truncated: the diffs of {len(rest)} more router{'s' if len(rest) != 1 else ''} "
                     f"({', '.join(rest)}) do not fit in one comment; run `vpcgen diff` locally for all of it._\n")
            break
        text += block
        shown += 1
    return text
