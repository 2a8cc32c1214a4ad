"""`vpcgen check`: each daemon's own checker run against a built router tree.

An exit code of 0 is not trusted alone where a checker prints errors and still exits 0: the
output is read too. Checks needing interfaces or kernel state run in scratch namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import netns
from .errors import VpcgenError
from .render import DAEMONS

MANIFEST = "etc/vpcgen/manifest.json"


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
    rules = tree / "etc/iptables/rules.v4"
    with netns.scratch_netns() as ns:
        r = netns.run(["ip", "netns", "exec", ns, "iptables-restore", "--wait=10", str(rules)])
        out = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or out:
            return False, out or f"iptables-restore exited {r.returncode}"
        saved = netns.run(["ip", "netns", "exec", ns, "iptables-save"]).stdout
        expected = sum(1 for line in rules.read_text().splitlines() if line.startswith("-A "))
        loaded = sum(1 for line in saved.splitlines() if line.startswith("-A "))
        if loaded != expected:
            return False, f"{expected} rules in the file but {loaded} loaded"
        return True, f"{loaded} rules loaded"


def _keepalived(tree: Path) -> tuple[bool, str]:
    with netns.scratch_netns() as ns:
        netns.add_interfaces(ns, netns.interfaces_of(tree))
        # keepalived writes its findings to the --config-test log, and exits 0 on some of them
        r = netns.run_in_tree(ns, tree, "keepalived --config-test=/run/kt.log -f /etc/keepalived/keepalived.conf; "
                                        "rc=$?; cat /run/kt.log 2>/dev/null; exit $rc")
        out = (r.stdout + r.stderr).strip()
        return r.returncode == 0 and not out, out or f"keepalived -t exited {r.returncode}"


def _conntrackd(tree: Path) -> tuple[bool, str]:
    # conntrackd has no checker: start it on the config and query it over its control socket
    with netns.scratch_netns() as ns:
        netns.add_interfaces(ns, netns.interfaces_of(tree))
        script = (
            "conf=/etc/conntrackd/conntrackd.conf; "
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


def _notify(tree: Path) -> tuple[bool, str]:
    r = netns.run(["sh", "-n", str(tree / "etc/keepalived/notify.sh")])
    return r.returncode == 0 and not r.stderr, r.stderr.strip() or "sh -n ok"


CHECKERS = {"iptables": _iptables, "keepalived": _keepalived, "conntrackd": _conntrackd, "notify": _notify}
CHECK_FILES = {d.check: d.path for d in DAEMONS if d.check} | {"notify": "etc/keepalived/notify.sh"}


def routers_in(tree_dir: Path) -> dict[str, Path]:
    tree_dir = Path(tree_dir)
    if not tree_dir.is_dir():
        raise VpcgenError(f"{tree_dir}: not a built site (run `vpcgen build` first)")
    found = {p.name: p for p in sorted(tree_dir.iterdir()) if (p / MANIFEST).is_file()}
    if not found:
        raise VpcgenError(f"{tree_dir}: no router trees found (expected <router>/{MANIFEST})")
    return found


def check_tree(tree_dir, only: list[str] | None = None, workers: int = 4) -> list[CheckResult]:
    if os.geteuid() != 0:
        raise VpcgenError("vpcgen check needs root: its checkers run in network namespaces")
    routers = routers_in(Path(tree_dir))
    if only:
        unknown = sorted(set(only) - set(routers))
        if unknown:
            raise VpcgenError(f"no router {', '.join(unknown)} in {tree_dir} (routers: {', '.join(routers)})")
        routers = {k: v for k, v in routers.items() if k in only}
    jobs = []
    for name, tree in routers.items():
        json.loads((tree / MANIFEST).read_text(encoding="utf-8"))  # a broken manifest fails loudly
        for checker, rel in sorted(CHECK_FILES.items()):
            if (tree / rel).is_file():
                jobs.append((name, checker, tree, rel))

    def one(job) -> CheckResult:
        name, checker, tree, rel = job
        start = time.monotonic()
        try:
            ok, output = CHECKERS[checker](tree)
        except (OSError, subprocess.SubprocessError) as exc:
            ok, output = False, str(exc)
        return CheckResult(name, checker, str(tree / rel), ok, output, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs))
