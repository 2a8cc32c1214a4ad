"""Scratch network namespaces, and running commands inside a router's tree as if it were its /.

Everything created here is removed by its own handle (namespace name, process id), also on failure.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

_counter = itertools.count(1)


def run(cmd: list[str], timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on timeout the whole group is killed, so a daemon
    a check script started in the background can never outlive the check."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise
    _kill_group(proc.pid)  # whatever the command left running in the background
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def scratch_netns(prefix: str = "vpcgen-chk"):
    """A fresh network namespace with lo up; deleted afterwards whatever happens."""
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    result = run(["ip", "netns", "add", name])
    if result.returncode != 0:
        raise OSError(f"cannot create network namespace {name}: {result.stderr.strip()}")
    try:
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        run(["ip", "netns", "del", name])


def add_interfaces(ns: str, interfaces: dict[str, list[str]]) -> None:
    """Create the named interfaces (ifb stands in for VLAN and dummy devices here) with addresses."""
    for name, addresses in sorted(interfaces.items()):
        result = run(["ip", "-n", ns, "link", "add", name, "type", "ifb"])
        if result.returncode != 0:
            raise OSError(f"cannot create interface {name}: {result.stderr.strip()}")
        run(["ip", "-n", ns, "link", "set", name, "up"])
        for address in addresses:
            run(["ip", "-n", ns, "addr", "add", address, "dev", name])


_IFACE = re.compile(r"^\s*iface\s+(\S+)\s+inet\s+\S+")
_ADDRESS = re.compile(r"^\s*address\s+(\S+)")
_UP_ADDR = re.compile(r"^\s*up\s+ip\s+addr\s+add\s+(\S+)\s+dev\s+(\S+)")


_UP_ROUTE = re.compile(r"^\s*up\s+ip\s+route\s+replace\s+(.+)$")


def parse_interfaces(tree: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Interfaces (name -> addresses) and `ip route replace` arguments of a router tree's
    ifupdown file: what check and lab build a router's namespace from."""
    ifaces: dict[str, list[str]] = {}
    routes: list[str] = []
    current = None
    for line in (Path(tree) / "etc/network/interfaces.d/vpcgen").read_text(encoding="utf-8").splitlines():
        if m := _IFACE.match(line):
            current = m.group(1)
            ifaces.setdefault(current, [])
        elif (m := _ADDRESS.match(line)) and current:
            ifaces[current].append(m.group(1))
        elif m := _UP_ADDR.match(line):
            ifaces.setdefault(m.group(2), []).append(m.group(1))
        elif m := _UP_ROUTE.match(line):
            routes.append(m.group(1))
    return ifaces, routes


def interfaces_of(tree: Path) -> dict[str, list[str]]:
    """Interfaces and addresses declared in a router tree's ifupdown file, plus eth0."""
    return {"eth0": [], **parse_interfaces(tree)[0]}


def run_in_tree(ns: str, tree: Path, script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) in ``ns`` with the tree's etc/ laid over /etc and a private /run.

    A private mount namespace holds the overlay, so nothing of the machine's /etc or /run changes.
    """
    scratch = Path(tempfile.mkdtemp(prefix="vpcgen-root-"))
    etc = shlex.quote(str(Path(tree).resolve() / "etc"))
    s = shlex.quote(str(scratch))
    setup = (
        "set -e; "
        f"mount -t tmpfs vpcgen {s}; mkdir -p {s}/upper {s}/work; "
        f"mount -t overlay overlay -o lowerdir={etc}:/etc,upperdir={s}/upper,workdir={s}/work /etc; "
        "mount -t tmpfs vpcgen-run /run; mkdir -p /run/lock; "
        "set +e; "
    )
    try:
        return run(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                    "sh", "-c", setup + script], timeout=timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
