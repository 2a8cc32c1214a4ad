"""Scratch network namespaces, and running commands inside a router's tree as if it were its /.

Everything created here is removed by its own handle (namespace name, process id), also on failure.
A built tree is untrusted: only a staged copy of the files its manifest lists (``stage``) is ever
laid over /etc, and checkers that can run unprivileged do (``UNPRIVILEGED``).
"""

from __future__ import annotations

import hashlib
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

from .. import tree as tree_contract
from ..tree import RouterTree, TreeError

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
    for line in (Path(tree) / tree_contract.GENERATED["interfaces"]).read_text(encoding="utf-8").splitlines():
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


_MTU = re.compile(r"^\s*mtu\s+(\d+)\s*$")
_UP_MTU = re.compile(r"^\s*up\s+ip\s+link\s+set\s+dev\s+(\S+)\s+mtu\s+(\d+)\s*$")


def interface_mtus(tree: Path) -> dict[str, int]:
    """Interface name -> MTU of a router tree's ifupdown file (an ``mtu`` option, or an ``up ip link
    set dev NAME mtu N`` line on a parent): what the lab sets besides the addresses."""
    mtus: dict[str, int] = {}
    current = None
    for line in (Path(tree) / tree_contract.GENERATED["interfaces"]).read_text(encoding="utf-8").splitlines():
        if m := _IFACE.match(line):
            current = m.group(1)
        elif (m := _MTU.match(line)) and current:
            mtus[current] = int(m.group(1))
        elif m := _UP_MTU.match(line):
            mtus[m.group(1)] = int(m.group(2))
    return mtus


def stanzas(tree: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """The ``iface`` stanzas of a router tree's ifupdown file in order: (name, [(option, value)])."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for line in (Path(tree) / tree_contract.GENERATED["interfaces"]).read_text(encoding="utf-8").splitlines():
        if m := _IFACE.match(line):
            out.append((m.group(1), []))
        elif out and line[:1].isspace() and line.strip() and not line.strip().startswith("#"):
            option, _, value = line.strip().partition(" ")
            out[-1][1].append((option, value.strip()))
    return out


def interfaces_of(tree: Path) -> dict[str, list[str]]:
    """Interfaces and addresses declared in a router tree's ifupdown file, plus eth0."""
    return {"eth0": [], **parse_interfaces(tree)[0]}


# prefix of a command that must not run as root: what a hostile file makes it do, it does as nobody
UNPRIVILEGED = ("setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all "
                "--no-new-privs")


def stage(router: RouterTree, dest: Path) -> Path:
    """Copy exactly the files a verified router tree lists (and its manifest) into ``dest`` and
    return it: all of a tree that a checker or a lab router ever sees. Each copy's sha256 is checked
    again, so a tree changed after ``read_router`` verified it cannot slip anything in."""
    dest = Path(dest)
    dest.mkdir(mode=0o700, parents=True)
    for e in router.entries:
        source = router.dir / e.path
        data = tree_contract._read_regular(source, str(source))  # never through a symlink
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise TreeError(f"{source} does not match its manifest: the tree changed while it was read")
        _write(dest / e.path, data, e.mode)
    _write(dest / tree_contract.MANIFEST, router.manifest_bytes, tree_contract.TEXT_MODE)
    if router.secret_sums_bytes is not None:
        _write(dest / tree_contract.SECRET_SUMS, router.secret_sums_bytes, tree_contract.SECRET_MODE)
    return dest


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # whatever the umask


_ROOT = re.compile(r"^(/[A-Za-z0-9._-]+)+/?$")


def _at_root(root: str, scratch: str) -> str:
    """Shell lines that make ROOT/etc show the overlaid /etc: the deepest existing folder above it
    becomes a writable overlay of itself (its content stays visible) to hold the missing folders."""
    if root.rstrip("/") in ("", "/"):
        return ""
    if not _ROOT.match(root) or "/../" in root + "/" or "/./" in root + "/":
        raise OSError(f"deploy root {root!r} is not a plain absolute path")
    r = shlex.quote(root.rstrip("/"))
    return (f"a={r}; while [ ! -d \"$a\" ]; do a=$(dirname \"$a\"); done; "
            f"if [ \"$a\" != {r} ] || [ ! -d {r}/etc ]; then "
            f"  [ \"$a\" != / ] || {{ echo 'cannot lay the tree at its deploy root {root}' >&2; exit 1; }}; "
            f"  mkdir -p {scratch}/ru {scratch}/rw; "
            f"  mount -t overlay overlay -o lowerdir=\"$a\",upperdir={scratch}/ru,workdir={scratch}/rw \"$a\"; "
            f"  mkdir -p {r}/etc; fi; "
            f"mount --bind /etc {r}/etc; ")


def run_in_tree(ns: str, staged: Path, script: str, timeout: float = 30, root: str = "/") -> subprocess.CompletedProcess:
    """Run ``script`` (sh) in ``ns`` with a staged tree's etc/ laid over /etc, a private /run and
    private, empty /tmp, /var/tmp and /dev/shm (the only places an unprivileged checker could write).
    With a deploy ``root`` other than /, the same /etc also appears at ROOT/etc, where the tree's
    files refer to each other (a keepalived script path, say).

    A private mount namespace holds the mounts, so nothing of the machine's /etc or /run changes.
    """
    scratch = Path(tempfile.mkdtemp(prefix="vpcgen-root-"))
    etc = shlex.quote(str(Path(staged).resolve() / "etc"))
    s = shlex.quote(str(scratch))
    setup = (
        "set -e; "
        f"mount -t tmpfs vpcgen {s}; mkdir -p {s}/upper {s}/work; "
        f"mount -t overlay overlay -o lowerdir={etc}:/etc,upperdir={s}/upper,workdir={s}/work /etc; "
        "mount -t tmpfs vpcgen-run /run; mkdir -p /run/lock; "
        "for d in /tmp /var/tmp /dev/shm; do mount -t tmpfs vpcgen-tmp $d; done; "
        "cd /; "  # the caller's folder may lie under a folder just hidden (haproxy returns to it)
        + _at_root(root, s) +
        "set +e; "
    )
    try:
        return run(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                    "sh", "-c", setup + script], timeout=timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
