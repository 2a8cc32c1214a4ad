"""`vpcgen check`: each daemon's own checker run against a built router tree.

An exit code of 0 is not trusted alone where a checker prints errors and still exits 0: the
output is read too. Every checker runs in a scratch network namespace with a private mount
namespace. A built tree is untrusted input: it must be exactly what its manifest describes
(``tree.read_router``), only a staged copy of its listed files is ever laid over /etc, and
checkers that only parse a file (haproxy -c, vtysh --dryrun, sh -n) run as nobody.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import netns
from ..errors import VpcgenError
from ..tree import CHECKED, GENERATED, MANIFEST, RouterTree, TreeError, on_router, read_routers

AS_NOBODY = netns.UNPRIVILEGED


@dataclass(frozen=True)
class CheckResult:
    router: str
    checker: str
    file: str
    ok: bool
    output: str
    seconds: float


def _iptables(tree: Path) -> tuple[bool, str]:
    # --test misses jumps to missing chains on nf_tables: load for real, in a scratch namespace
    rules = tree / GENERATED["iptables"]
    with netns.scratch_netns() as ns:
        r = netns.run(["ip", "netns", "exec", ns, "iptables-restore", "--wait=10"], input=rules.read_text())
        out = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or out:
            return False, out or f"iptables-restore exited {r.returncode}"
        saved = netns.run(["ip", "netns", "exec", ns, "iptables-save"]).stdout
        expected = sum(1 for line in rules.read_text().splitlines() if line.startswith("-A "))
        loaded = sum(1 for line in saved.splitlines() if line.startswith("-A "))
        if loaded != expected:
            return False, f"{expected} rules in the file but {loaded} loaded"
        return True, f"{loaded} rules loaded"


# the only commands vpcgen writes as pre-up lines (VXLAN devices and their flood entries): a tree is
# untrusted, so anything else is refused rather than run as root
PRE_UP = re.compile(r"^(ip link add [\w.-]+ type vxlan( [\w.:-]+)+|bridge fdb append [0-9a-f:]+ dev [\w.-]+ dst [0-9.]+)$")


def _interfaces(tree: Path) -> tuple[bool, str]:
    """The interfaces file's own pre-up lines (the VXLAN devices ifupdown cannot make) run in a
    scratch namespace, stanza by stanza with each interface's MTU and addresses, so a wrong line
    fails here, not at the router's boot. Interfaces the file does not make are ifb devices here
    (this kernel has no 802.1Q devices; on a router they are the NICs and VLANs)."""
    made = []
    with netns.scratch_netns() as ns:
        for name, options in netns.stanzas(tree):
            pre_up = [value for option, value in options if option == "pre-up"]
            for line in pre_up:
                if not PRE_UP.match(line):
                    return False, f"{name}: pre-up {line!r} is no command vpcgen writes: refusing to run it"
                argv = line.split()
                cmd = ["ip", "-n", ns] + argv[1:] if argv[0] == "ip" else ["ip", "netns", "exec", ns] + argv
                r = netns.run(cmd)
                if r.returncode != 0:
                    return False, f"{name}: pre-up {line}: {(r.stdout + r.stderr).strip()}"
            if not pre_up:
                r = netns.run(["ip", "-n", ns, "link", "add", name, "type", "ifb"])
                if r.returncode != 0:
                    return False, f"{name}: {r.stderr.strip()}"
            for option, value in options:
                if option == "mtu":
                    step = ["link", "set", "dev", name, "mtu", value]
                elif option == "address":
                    step = ["addr", "add", value, "dev", name]
                else:
                    continue
                r = netns.run(["ip", "-n", ns] + step)
                if r.returncode != 0:
                    return False, f"{name}: {option} {value}: {(r.stdout + r.stderr).strip()}"
            netns.run(["ip", "-n", ns, "link", "set", "dev", name, "up"])
            made.append(name)
    return True, f"{len(made)} interfaces made, {sum(1 for n in made if n.startswith('vxlan'))} by their pre-up lines"


def _deploy_root(staged: Path) -> str:
    """The deploy root the staged (verified) manifest names: the tree's files refer to it."""
    return json.loads((staged / MANIFEST).read_text(encoding="utf-8"))["deploy"]["root"]


def _keepalived(tree: Path) -> tuple[bool, str]:
    with netns.scratch_netns() as ns:
        netns.add_interfaces(ns, netns.interfaces_of(tree))
        # keepalived writes its findings to the --config-test log, and exits 0 on some of them. As
        # root (it runs no script when testing): its script security checks need the script user
        r = netns.run_in_tree(ns, tree, f"keepalived --config-test=/run/kt.log -f {on_router('keepalived')}; "
                                        "rc=$?; cat /run/kt.log 2>/dev/null; exit $rc", root=_deploy_root(tree))
        out = (r.stdout + r.stderr).strip()
        return r.returncode == 0 and not out, out or f"keepalived -t exited {r.returncode}"


def _conntrackd(tree: Path) -> tuple[bool, str]:
    # conntrackd has no checker: start it on the config and query it over its control socket
    with netns.scratch_netns() as ns:
        netns.add_interfaces(ns, netns.interfaces_of(tree))
        script = (
            f"conf={on_router('conntrackd')}; "
            "conntrackd -C $conf >/run/ct.log 2>&1 & pid=$!; ok=1; i=0; "
            "while [ $i -lt 50 ]; do "
            "  if conntrackd -C $conf -s >/run/ct.stats 2>&1; then ok=0; break; fi; "
            "  kill -0 $pid 2>/dev/null || break; sleep 0.1; i=$((i+1)); done; "
            # the control socket opens before the sync channel: a daemon that answered may still die
            "if [ $ok -eq 0 ]; then sleep 0.3; kill -0 $pid 2>/dev/null && conntrackd -C $conf -s >/dev/null 2>&1 "
            "  || ok=1; fi; "
            "kill $pid 2>/dev/null; wait $pid 2>/dev/null; "
            "if [ $ok -ne 0 ]; then cat /run/ct.log; fi; exit $ok"
        )
        r = netns.run_in_tree(ns, tree, script)
        out = (r.stdout + r.stderr).strip()
        return r.returncode == 0, out or "conntrackd started and answered a stats query"


def _unprivileged(tree: Path, command: str) -> subprocess.CompletedProcess:
    """``command`` as nobody in a scratch namespace, on the staged tree laid over /etc."""
    with netns.scratch_netns() as ns:
        return netns.run_in_tree(ns, tree, f"{AS_NOBODY} {command}")


def _notify(tree: Path) -> tuple[bool, str]:
    r = _unprivileged(tree, f"sh -n {on_router('keepalived-notify')}")
    return r.returncode == 0 and not r.stderr, r.stderr.strip() or "sh -n ok"


# haproxy directives vpcgen never writes that run code or read files: a config holding one is refused
# before haproxy sees it (haproxy -c itself runs lua-load'ed code, as nobody here)
HAPROXY_UNSAFE = re.compile(
    r"(?<![\w.-])(lua-load(?:-per-thread)?|lua-prepend-path|lua\.[\w.-]+|external-check|insecure-fork-wanted|"
    r"insecure-setuid-wanted|program|command|setenv|presetenv|resetenv|unsetenv|ssl-engine|crt(?:-list|-base)?|"
    r"ca-file|ca-base|crl-file|key-base|errorfile|server-state-(?:file|base)|spoe|[\w-]+-(?:data|json)-file|"
    r"h1-case-adjust-file|-f|map(?:_\w+)?(?=\())(?![\w.-])")


def refuse_unsafe_haproxy(path: Path, shown: str) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if m := HAPROXY_UNSAFE.search(line.split("#", 1)[0]):
            raise TreeError(f"{shown}:{number}: error: haproxy: {m.group(1)!r} runs code or reads files, and "
                            "vpcgen never generates it: refusing the tree")


def _haproxy(tree: Path) -> tuple[bool, str]:
    r = _unprivileged(tree, f"haproxy -c -f {on_router('haproxy')}")
    out = (r.stdout + r.stderr).strip()
    # a warning is a defect of the generated file too
    problems = [line for line in out.splitlines() if "[WARNING]" in line or "[ALERT]" in line]
    return r.returncode == 0 and not problems, "\n".join(problems) or out


def _frr(tree: Path) -> tuple[bool, str]:
    # ospfd -C exits 0 on unknown commands; vtysh's dry run of the integrated config does not. As
    # nobody: root reads the (0600) file into a pipe of nobody's own, and vtysh reads an empty
    # vtysh.conf of its own instead of the machine's
    with netns.scratch_netns() as ns:
        r = netns.run_in_tree(ns, tree, "mkdir -p /run/vtysh && : > /run/vtysh/vtysh.conf && chmod -R a+rX /run/vtysh; "
                                        f"{AS_NOBODY} sh -c 'cat | vtysh --config_dir /run/vtysh --dryrun "
                                        f"-f /dev/stdin' < {on_router('frr')}")
    out = (r.stdout + r.stderr).strip()
    return r.returncode == 0 and not out, out or "vtysh --dryrun ok"


_SECTION = re.compile(r"^(\s*)([\w.-]+)\s*\{\s*$")


def swanctl_sections(*texts: str) -> dict[str, list[str]]:
    """Names of the entries of each top-level swanctl section (connections, secrets, pools)."""
    out: dict[str, list[str]] = {}
    for text in texts:
        stack: list[str] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            if m := _SECTION.match(line):
                if len(stack) == 1:
                    out.setdefault(stack[0], []).append(m.group(2))
                stack.append(m.group(2))
            elif line.strip() == "}" and stack:
                stack.pop()
    return out


def _strongswan(tree: Path) -> tuple[bool, str]:
    # swanctl exits 0 on a broken file: load into a real charon, then compare what it loaded
    etc = tree / "etc/swanctl"
    texts = [p.read_text(encoding="utf-8") for p in sorted(etc.glob("*.conf"))]
    expected = swanctl_sections(*texts)
    with netns.scratch_netns() as ns:
        script = (
            f"export STRONGSWAN_CONF=/run/strongswan.conf; printf '%s' {shlex.quote(CHECK_STRONGSWAN_CONF)} "
            "> $STRONGSWAN_CONF; "
            f"{CHARON} >/run/charon.log 2>&1 & pid=$!; i=0; "
            "while [ ! -S /run/charon.vici ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
            "swanctl --load-all --noprompt 2>&1; echo \"rc=$?\"; "
            "echo '--- loaded'; swanctl --list-conns --raw 2>&1; "
            "kill $pid 2>/dev/null; wait $pid 2>/dev/null; true"
        )
        r = netns.run_in_tree(ns, tree, script)
    out = r.stdout
    load, _, listed = out.partition("--- loaded")
    problems = [line for line in load.splitlines()
                if ("fail" in line.lower() or "error" in line.lower()) and "plugin" not in line]
    loaded = re.findall(r"loaded connection '([^']+)'", load)
    want = expected.get("connections", [])
    if sorted(loaded) != sorted(want):
        problems.append(f"connections in the file: {', '.join(want) or 'none'}; "
                        f"charon loaded: {', '.join(loaded) or 'none'}")
    for kind, section in (("pool", "pools"),):
        got = re.findall(rf"loaded {kind} '([^']+)'", load)
        if sorted(got) != sorted(expected.get(section, [])):
            problems.append(f"{section} in the file: {expected.get(section, [])}; loaded: {got}")
    secrets = len(re.findall(r"loaded (?:ike|eap) secret '", load))
    if secrets != len(expected.get("secrets", [])):
        problems.append(f"{len(expected.get('secrets', []))} secrets in the file but {secrets} loaded")
    if (etc / "x509").is_dir() and len(re.findall(r"loaded certificate from", load)) != len(list((etc / "x509").iterdir())):
        problems.append("not every certificate in x509/ was loaded")
    if (etc / "private").is_dir() and len(re.findall(r"loaded \w+ key from", load)) != len(list((etc / "private").iterdir())):
        problems.append("not every private key in private/ was loaded")
    summary = f"{len(loaded)} connections, {secrets} secrets loaded"
    return not problems, "\n".join(problems) if problems else summary


# how Debian's dnsmasq unit tests its configuration before a start (systemd-helper checkconfig): every
# file of /etc/dnsmasq.d besides /etc/dnsmasq.conf
DNSMASQ_TEST = "dnsmasq --test -7 /etc/dnsmasq.d,.dpkg-dist,.dpkg-old,.dpkg-new --local-service"


def _dnsmasq(tree: Path) -> tuple[bool, str]:
    r = _unprivileged(tree, DNSMASQ_TEST)
    out = (r.stdout + r.stderr).strip()
    return r.returncode == 0 and "syntax check OK" in out, out or f"dnsmasq --test exited {r.returncode}"


def _chrony(tree: Path) -> tuple[bool, str]:
    # a sources file holds chrony.conf directives (server lines): chronyd -p parses it as a whole
    # configuration, prints it and exits; sourcedir would take only server, pool and peer lines
    r = _unprivileged(tree, f"chronyd -p -f {on_router('chrony')}")
    out = (r.stdout + r.stderr).strip()
    foreign = [line for line in r.stdout.splitlines() if line.split()[:1] not in (["server"], ["pool"], ["peer"])]
    if r.returncode != 0 or foreign:
        return False, "\n".join([r.stderr.strip()] + [f"not a source directive: {line}" for line in foreign]).strip()
    return True, out


CHARON = "/usr/lib/ipsec/charon"
# charon and swanctl of the check read no configuration of the machine's own
CHECK_STRONGSWAN_CONF = """charon {
    load_modular = yes
    install_routes = no
    plugins {
        include /etc/strongswan.d/charon/*.conf
    }
}
"""

CHECKERS = {"interfaces": _interfaces, "iptables": _iptables, "keepalived": _keepalived, "conntrackd": _conntrackd, "notify": _notify,
            "haproxy": _haproxy, "frr": _frr, "strongswan": _strongswan, "dnsmasq": _dnsmasq, "chrony": _chrony}




def stage_routers(routers: dict[str, RouterTree], dest: Path) -> dict[str, Path]:
    """Each verified router's listed files copied to ``dest/<router>``; what was verified is what
    is used from then on, never the tree itself. A haproxy config that runs code is refused."""
    staged = {}
    for name, router in routers.items():
        staged[name] = netns.stage(router, Path(dest) / name)
        if (staged[name] / GENERATED["haproxy"]).is_file():
            refuse_unsafe_haproxy(staged[name] / GENERATED["haproxy"], str(router.dir / GENERATED["haproxy"]))
    return staged


def check_tree(tree_dir, only: list[str] | None = None, workers: int = 4) -> list[CheckResult]:
    if os.geteuid() != 0:
        raise VpcgenError("vpcgen check needs root: its checkers run in network namespaces")
    routers = read_routers(tree_dir, only)  # each verified against its manifest before anything runs
    with tempfile.TemporaryDirectory(prefix="vpcgen-check-") as staging:
        staged = stage_routers(routers, Path(staging))
        jobs = [(name, checker, staged[name], router.dir / rel)
                for name, router in routers.items() for checker, rel in sorted(CHECKED.items())
                if (staged[name] / rel).is_file()]

        def one(job) -> CheckResult:
            name, checker, tree, shown = job
            start = time.monotonic()
            try:
                ok, output = CHECKERS[checker](tree)
            except (OSError, subprocess.SubprocessError) as exc:
                ok, output = False, str(exc)
            return CheckResult(name, checker, str(shown), ok, output, time.monotonic() - start)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, jobs))
