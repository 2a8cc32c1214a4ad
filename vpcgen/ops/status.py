"""`vpcgen status`: the live state of every router, over the deploy transport, against the tree.

One SSH connection and one command per router: a script that prints every section the checks need
(release, file hashes, iptables-save, the expected rules in iptables-save's spelling, VRRP state,
health commands, conntrackd counters, haproxy's stats, swanctl's SAs, OSPF). The comparison happens
here; the router only reports. A finding is one line a person can act on; none means the router
runs exactly what the tree describes.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VpcgenError
from ..tree import (CURRENT, GENERATED, HA_GUARD_TAG, MANIFEST, PENDING, RELEASES, SECRET_SUMS, STATUS_COMMANDS,
                    VPN_CHILD, read_routers, read_site_json)
from .deploy import CONNECTION_ERRORS, Remote, State, Target, _settings_problem, connect, substitute

# a conntrackd that started this much later than keepalived and the release, within the window, was
# restarted outside a deploy (the health check brings a dead one back within a second)
RESTART_SLACK_S = 10
RESTART_WINDOW_S = 600
MAX_AGE = 3600  # OSPF's MaxAge (RFC 2328): an LSA this old is being flushed
_SECTION = re.compile(r"^@@section (\S+)\n(.*?)^@@rc (\d+)$", re.M | re.S)


@dataclass
class Finding:
    router: str
    check: str  # ssh, release, file, firewall, vrrp, pair, service, conntrackd, haproxy, vpn, ospf
    message: str

    def as_json(self) -> dict:
        return {"router": self.router, "check": self.check, "message": self.message}


@dataclass
class RouterStatus:
    router: str
    vpc: str
    redundant: bool = False
    reached: bool = False
    release: str | None = None
    pending: list[str] = field(default_factory=list)
    vrrp: str | None = None
    services: dict[str, bool] = field(default_factory=dict)
    conntrackd: dict = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)  # backend/server -> status
    tunnels: dict[str, str] = field(default_factory=dict)  # child -> state
    ospf_neighbors: dict[str, str] = field(default_factory=dict)  # neighbor id -> state
    announces: bool | None = None
    findings: list[Finding] = field(default_factory=list)

    def find(self, check: str, message: str) -> None:
        self.findings.append(Finding(self.router, check, message))

    def as_json(self) -> dict:
        return {"router": self.router, "vpc": self.vpc, "reached": self.reached, "release": self.release,
                "pending": self.pending, "vrrp": self.vrrp, "services": self.services,
                "conntrackd": self.conntrackd, "haproxy_backends": self.backends, "vpn_tunnels": self.tunnels,
                "ospf_neighbors": self.ospf_neighbors, "announces_vpc": self.announces,
                "findings": [f.as_json() for f in self.findings]}


@dataclass
class Report:
    routers: list[RouterStatus]
    pairs: list[Finding]

    @property
    def findings(self) -> list[Finding]:
        return sorted([f for r in self.routers for f in r.findings] + self.pairs,
                      key=lambda f: (f.router, f.check, f.message))

    def as_json(self) -> dict:
        return {"ok": not self.findings, "routers": [r.as_json() for r in self.routers],
                "findings": [f.as_json() for f in self.findings]}


@dataclass
class StatusOptions:
    known_hosts: Path
    identity: list[str] = field(default_factory=list)
    parallel: int = 8
    commands: dict = field(default_factory=dict)  # overrides (see ops.overrides)


def _script(t: Target, commands: dict, health: list[tuple[str, str]], vrrp: str | None,
            paths: list[str]) -> str:
    """The one command run on the router. The expected firewall comes first: it alone reads stdin."""
    q = shlex.quote
    b = q(t.base)
    sections: list[tuple[str, str]] = []
    state = f"$({vrrp} 2>/dev/null </dev/null)" if vrrp else ""
    # on a master the HA guard is lifted: its rules are not expected there
    sections.append(("firewall-expected", f"if [ \"{state}\" = MASTER ]; then grep -v -e {q(HA_GUARD_TAG)}; "
                     f"else cat; fi | {commands['firewall-expected']}"))
    # the running release's own rules, for a router that runs another release than the tree's
    rules = f"{b}/{CURRENT}/{GENERATED['iptables']}"
    sections.append(("firewall-release", f"if [ \"{state}\" = MASTER ]; then grep -v -e {q(HA_GUARD_TAG)} {rules}; "
                     f"else cat {rules}; fi | {commands['firewall-expected']}"))
    sections.append(("current", f"readlink {b}/{CURRENT}"))
    sections.append(("pending", f"cat {b}/{PENDING} 2>/dev/null || true"))
    sections.append(("manifest", f"cat {b}/{CURRENT}/{MANIFEST}"))
    sections.append(("sums", f"cat {b}/{CURRENT}/{SECRET_SUMS} 2>/dev/null || true"))
    files = "; ".join(f"f={q(t.root + '/' + p)}; h=$(sha256sum < \"$f\" 2>/dev/null | cut -c1-64); "
                      f"l=$(readlink \"$f\" || true); echo {q(p)} \"${{h:--}}\" \"${{l:--}}\"" for p in paths)
    sections.append(("files", files or "true"))
    if vrrp:
        sections.append(("vrrp", vrrp))
    sections.append(("firewall", commands["firewall"]))
    sections += [(f"health:{name}", command) for name, command in health]
    services = {s["name"] for s in t.manifest["services"]}
    for name, service in (("conntrackd", "conntrackd"), ("conntrackd-age", "conntrackd"), ("haproxy", "haproxy"), ("strongswan", "strongswan"),
                          ("ospf-neighbors", "frr"), ("ospf-announced", "frr")):
        if service in services:
            sections.append((name, substitute(commands[name], t, "")))
    return "\n".join(f"echo '@@section {name}'; ( {command}\n) 2>&1 {'' if i == 0 else '</dev/null'}; "
                     f"echo \"@@rc $?\"" for i, (name, command) in enumerate(sections)) + "\n"


def _parse(out: str) -> dict[str, tuple[int, str]]:
    return {m.group(1): (int(m.group(3)), m.group(2).rstrip("\n")) for m in _SECTION.finditer(out + "\n")}


def normalise_rules(text: str) -> dict[str, list[str]]:
    """iptables-save text as table -> lines (chain policies and rules), without comments and counters."""
    tables: dict[str, list[str]] = {}
    table = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            tables.setdefault(table, [])
        elif table is not None:
            tables[table].append(re.sub(r"\s*\[\d+:\d+\]$", "", line))
    return tables


def _empty(lines: list[str]) -> bool:
    """A table the kernel shows only because something listed it: built-in chains, ACCEPT, no rule."""
    return all(re.match(r"^:[A-Z]+ ACCEPT$", line) for line in lines)


def firewall_findings(expected: str, live: str) -> list[str]:
    exp, got = normalise_rules(expected), normalise_rules(live)
    out = []
    for table in sorted(set(exp) | set(got)):
        want, have = exp.get(table, []), got.get(table, [])
        if _empty(want) and _empty(have):  # a table with nothing in it is as good as one not loaded
            continue
        missing, extra = list(want), []
        for line in have:
            if line in missing:
                missing.remove(line)
            else:
                extra.append(line)
        out += [f"{table}: missing {line}" for line in missing]
        out += [f"{table}: not in rules.v4: {line}" for line in extra]
        if not missing and not extra and want != have:
            out.append(f"{table}: rules in another order than rules.v4")
    return out


def _counters(text: str) -> dict:
    """conntrackd -s: section -> counter -> number."""
    out: dict[str, dict[str, int]] = {}
    section = "general"
    for line in text.splitlines():
        if re.match(r"^\S.*:\s*$", line):
            section = line.strip().rstrip(":")
            continue
        for key, value in re.findall(r"([a-z][a-z /_-]*?):\s+(\d+)", line):
            out.setdefault(section, {})[key.strip()] = int(value)
    return out


def _backends(text: str) -> dict[str, str]:
    """haproxy `show stat` CSV: backend/server -> status (servers only)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    head = lines[0][2:].split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("svname") not in (None, "", "FRONTEND", "BACKEND"):
            out[f"{row['pxname']}/{row['svname']}"] = row.get("status", "")
    return out


def child_sas(text: str) -> dict[str, str]:
    """swanctl --list-sas: child SA name -> state (INSTALLED, ...)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s+([\w.-]+): #\d+, reqid \d+, (\w+)", text, re.M)}


def _neighbors(text: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    out = {}
    for nid, entries in (data.get("neighbors") or {}).items():
        for e in entries if isinstance(entries, list) else [entries]:
            out[nid] = str(e.get("nbrState") or e.get("state") or "")
    return out


def check_router(t: Target, site: dict, options: StatusOptions) -> RouterStatus:
    st = RouterStatus(t.name, t.vpc, redundant=bool(t.settings.get("vrrp")))
    ov = options.commands
    settings = t.settings
    commands = STATUS_COMMANDS | ov.get("status", {})
    health = [(e["service"], substitute(e["command"], t, "")) for e in settings["health"]]
    vrrp = substitute(settings["vrrp"]["state"], t, "") if settings.get("vrrp") else None
    paths = sorted(e.path for e in t.tree.entries)
    rules_path = GENERATED["iptables"]
    rules = (t.tree.dir / rules_path).read_bytes() if rules_path in paths else b""
    try:
        remote = Remote(connect(t, options.known_hosts, options.identity))
    except CONNECTION_ERRORS as exc:
        st.find("ssh", str(exc) or type(exc).__name__)
        return st
    try:
        _, out = remote.run(_script(t, commands, health, vrrp, paths), rules)
    except CONNECTION_ERRORS as exc:
        st.find("ssh", f"the status command failed: {exc}")
        return st
    finally:
        remote.close()
    st.reached = True
    s = _parse(out)
    own = _files(st, t, s, _release(st, t, s))
    if rules_path in paths:
        # a router on another release is compared with that release's rules (drift on top of it shows)
        rc, expected = s.get("firewall-expected" if own else "firewall-release", (1, "no answer"))
        lrc, live = s.get("firewall", (1, "no answer"))
        if rc != 0:
            st.find("firewall", f"cannot load rules.v4 into a scratch namespace to compare (exit {rc}): "
                    f"{expected[-200:]}")
        elif lrc != 0:
            st.find("firewall", f"iptables-save failed (exit {lrc}): {live[-200:]}")
        else:
            for line in firewall_findings(expected, live):
                st.find("firewall", line)
    if vrrp:
        rc, text = s.get("vrrp", (1, ""))
        st.vrrp = text.strip().upper() or None
        if st.vrrp not in ("MASTER", "BACKUP"):
            st.find("vrrp", f"VRRP state is {st.vrrp or 'unknown'} (expected MASTER or BACKUP)")
    for name, _ in health:
        rc, text = s.get(f"health:{name}", (1, ""))
        st.services[name] = rc == 0
        if rc != 0:
            st.find("service", f"{name} is not healthy (exit {rc}){': ' + text[-200:] if text else ''}")
    _daemons(st, t, site, s)
    return st


def _release(st: RouterStatus, t: Target, s: dict) -> State | None:
    rc, current = s.get("current", (1, ""))
    st.release = current.strip().removeprefix(f"{RELEASES}/") or None if rc == 0 else None
    st.pending = s.get("pending", (0, ""))[1].split()
    if st.release is None:
        st.find("release", "no release is deployed")
        return None
    state = State.parse(s.get("manifest", (1, ""))[1], s.get("sums", (0, ""))[1])
    if state is None:
        st.find("release", f"release {st.release} has no readable manifest")
    if st.pending:
        st.find("release", f"release {st.pending[0]} was switched to but never confirmed")
    return state


def _files(st: RouterStatus, t: Target, s: dict, running: State | None) -> bool:
    """File findings; one release finding for a router on another release than the tree's, naming the
    files that are that release's. True when the router runs the tree's release."""
    sums = t.tree.sums()
    release = {p: v[0] for p, v in running.files().items()} if running else {}
    other = running is not None and running.key() != t.state().key()
    theirs = []
    for line in s.get("files", (0, ""))[1].splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] not in sums:
            continue
        path, digest, link = parts
        shown = f"{t.root}/{path}"
        if digest == "-":
            st.find("file", f"{shown} is missing")
        elif digest != sums[path]:
            if link != "-" and release.get(path) == digest:
                theirs.append(path)
            else:
                why = "not vpcgen's link: replaced by hand" if link == "-" else "edited on the router"
                st.find("file", f"{shown} differs from the tree ({why})")
    if other:
        st.find("release", f"runs release {st.release}, which is not the tree's (deploy the tree, or it was rolled "
                f"back){'; its own files: ' + ', '.join(theirs) if theirs else ''}")
    return not other


def _daemons(st: RouterStatus, t: Target, site: dict, s: dict) -> None:
    vpc = site.get("vpcs", {}).get(t.vpc, {})
    serving = st.vrrp in (None, "MASTER")  # a single router always serves
    if "conntrackd" in s:
        rc, text = s["conntrackd"]
        st.conntrackd = _counters(text)
        if rc != 0:
            st.find("conntrackd", f"conntrackd does not answer (exit {rc})")
        ages = dict(re.findall(r"^(\w+) (\d+)$", s.get("conntrackd-age", (1, ""))[1], re.M))
        if rc == 0 and {"conntrackd", "keepalived", "release"} <= ages.keys():
            age = int(ages["conntrackd"])
            if age < RESTART_WINDOW_S and age + RESTART_SLACK_S < min(int(ages["keepalived"]), int(ages["release"])):
                st.find("conntrackd", f"conntrackd restarted {age} s ago, not by a deploy (it died or was "
                        "restarted by hand): the connection states it held were lost")
    if "haproxy" in s:
        rc, text = s["haproxy"]
        st.backends = _backends(text)
        if rc != 0 or not st.backends:
            st.find("haproxy", f"haproxy's stats do not answer (exit {rc})")
        for name, state in sorted(st.backends.items()):
            if not state.startswith("UP") and state not in ("no check",):
                st.find("haproxy", f"member {name} is {state or 'unknown'}")
    if "strongswan" in s:
        rc, text = s["strongswan"]
        st.tunnels = child_sas(text)
        if rc != 0:
            st.find("vpn", f"swanctl does not answer (exit {rc})")
        elif serving:
            for peer in sorted(vpc.get("vpn_peers") or {}):
                child = VPN_CHILD.format(name=peer)
                if st.tunnels.get(child) != "INSTALLED":
                    st.find("vpn", f"tunnel {child} is {st.tunnels.get(child, 'down')} (expected INSTALLED)")
    if "ospf-neighbors" in s:
        rc, text = s["ospf-neighbors"]
        st.ospf_neighbors = _neighbors(text)
        if rc != 0:
            st.find("ospf", f"ospfd does not answer (exit {rc})")
        elif not any(v.startswith("Full") for v in st.ospf_neighbors.values()):
            st.find("ospf", "no full OSPF adjacency")
    if "ospf-announced" in s and vpc.get("cidr"):
        rc, text = s["ospf-announced"]
        st.announces = rc == 0 and announced(text, str(ipaddress.ip_network(vpc["cidr"]).network_address))
        if rc == 0 and serving and not st.announces:
            st.find("ospf", f"does not announce the VPC {vpc['cidr']}")
        if rc == 0 and not serving and st.announces and vpc.get("redundant"):
            st.find("ospf", f"announces the VPC {vpc['cidr']} while not master")


def announced(text: str, network: str) -> bool:
    """Whether `show ip ospf database self-originate` holds a live LSA for ``network``: one at
    MaxAge is being flushed (a former master withdrawing the VPC), not announced."""
    return any(m.group(1) == network and int(m.group(2)) < MAX_AGE
               for m in re.finditer(r"^(\S+)\s+\S+\s+(\d+)\s+0x[0-9a-f]+", text, re.M))


def pair_findings(routers: list[RouterStatus]) -> list[Finding]:
    """Per redundant VPC whose routers were all reached: exactly one master."""
    out = []
    by_vpc: dict[str, list[RouterStatus]] = {}
    for r in routers:
        if r.redundant:
            by_vpc.setdefault(r.vpc, []).append(r)
    for vpc, members in sorted(by_vpc.items()):
        if len(members) < 2 or not all(m.reached for m in members):
            continue
        masters = [m.router for m in members if m.vrrp == "MASTER"]
        if len(masters) > 1:
            out.append(Finding(vpc, "pair", f"two masters: {', '.join(masters)} (split brain)"))
        elif not masters:
            out.append(Finding(vpc, "pair", "no master: " + ", ".join(f"{m.router} {m.vrrp or 'unknown'}"
                                                                      for m in members)))
    return out


def status_tree(tree_dir: Path, only: list[str] | None, options: StatusOptions) -> Report:
    targets = [Target(r, options.commands) for r in read_routers(Path(tree_dir), only).values()]
    for t in targets:
        problem = _settings_problem(t.manifest)
        if problem:
            raise VpcgenError(f"{t.tree.dir / MANIFEST}: '{problem}' is missing or malformed")
    if not Path(options.known_hosts).is_file():
        raise VpcgenError(f"{options.known_hosts}: no known_hosts file: give --known-hosts")
    site = read_site_json(Path(tree_dir))
    with ThreadPoolExecutor(max_workers=max(1, options.parallel)) as pool:
        routers = list(pool.map(lambda t: check_router(t, site, options), targets))
    routers.sort(key=lambda r: r.router)
    return Report(routers, pair_findings(routers))


def render_text(report: Report) -> str:
    """A table: one line per router, then one line per finding."""
    rows = [("router", "vpc", "vrrp", "release", "findings")]
    for r in report.routers:
        rows.append((r.router, r.vpc, r.vrrp or "-", r.release or "-", str(len(r.findings))))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    findings = report.findings
    if findings:
        lines.append("")
        width = max(len(f.router) for f in findings)
        check = max(len(f.check) for f in findings)
        lines += [f"{f.router:<{width}}  {f.check:<{check}}  {f.message}" for f in findings]
    lines.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}" if findings
                 else "all routers as built")
    return "\n".join(lines) + "\n"

