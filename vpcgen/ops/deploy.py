"""`vpcgen deploy`: ship built router trees over SSH (Fabric), atomically, one release at a time.

On the router, under its deploy root R:

    R/var/lib/vpcgen/releases/<id>/...   one complete tree per deploy (modes preserved)
    R/var/lib/vpcgen/current -> releases/<id>
    R/<path> -> R/var/lib/vpcgen/current/<path>   for every file of the tree
    R/var/lib/vpcgen/pending              a deploy switched to but not yet confirmed healthy
    R/var/lib/vpcgen/history              confirmed releases, oldest first (what pruning keeps)

so switching ``current`` (a rename over the old link) switches every file of every daemon at
once. Per router: lock, compare, upload into a partial directory, verify checksums, run the
daemons' checkers, name the release, mark the deploy pending, switch, reload what changed in
dependency order, check health, confirm (drop the mark, prune); on any failure switch back and
reload the previous release. A mark left by a deploy that died half-way makes the next deploy
apply its release again (or undo it), never skip the router.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import io
import json
import os
import re
import shlex
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paramiko
from fabric import Connection

from ..errors import VpcgenError
from . import overrides as overrides_module
from ..tree import GENERATED, MANIFEST, SECRET_SUMS, SERVICES, RouterTree, TreeError, read_routers
from ..tree import (CONFIRM_ARMED, CONFIRM_DIR, CONFIRM_LOCK, CONFIRM_LOG, CONFIRM_REVERTED, CONFIRM_SCRIPT,
                    CURRENT, DEPLOY_STATE, HISTORY, PENDING, RELEASES)

STATE_DIR = DEPLOY_STATE
COMMAND_TIMEOUT = 120.0
CONFIRM_TIMEOUT = 60.0  # default: seconds from arming the router's timer to its own revert
REVERT_GRACE = 30.0  # after the deadline: how long a revert by the router may take before deploy gives up
SUMS = ".vpcgen-sums"  # the upload's checksum list: in the tar stream, never on a command line
SHIPPED = set(GENERATED.values()) | {MANIFEST, SECRET_SUMS}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # a release id that is safe in a path
_ROOT = re.compile(r"^/(([A-Za-z0-9._-])+/?)*$")


@dataclass
class Target:
    tree: RouterTree
    overrides: dict = field(default_factory=dict)  # the deployer's service commands (ops.overrides)

    @property
    def name(self) -> str:
        return self.tree.name

    @property
    def manifest(self) -> dict:
        return self.tree.manifest

    @property
    def vpc(self) -> str:
        return self.manifest["vpc"]

    @property
    def mgmt(self) -> str:
        return self.manifest["mgmt"]

    @property
    def settings(self) -> dict:
        return overrides_module.settings(self.manifest["deploy"], self.overrides)

    @property
    def root(self) -> str:
        return self.settings["root"].rstrip("/")

    @property
    def base(self) -> str:
        return f"{self.root}/{STATE_DIR}"

    def files(self) -> list[str]:
        return self.tree.paths()

    def sums(self) -> dict[str, str]:
        """sha256 of every file shipped: secret ones, the manifest and the secret sums included."""
        out = self.tree.sums() | {MANIFEST: _sha(self.tree.manifest_bytes)}
        if self.tree.secret_sums_bytes is not None:
            out[SECRET_SUMS] = _sha(self.tree.secret_sums_bytes)
        return out

    def state(self) -> "State":
        return State(self.manifest, {e.path: e.sha256 for e in self.tree.entries if e.secret})


@dataclass
class State:
    """What a release holds, as far as deploy compares releases: its manifest and secret sums."""
    manifest: dict
    secret_sums: dict

    def files(self) -> dict[str, tuple]:
        return {f["path"]: (f.get("sha256") or self.secret_sums.get(f["path"]), f["mode"], f["service"])
                for f in self.manifest["files"]}

    def paths(self) -> set[str]:
        return set(self.files()) | {MANIFEST} | ({SECRET_SUMS} if self.secret_sums else set())

    def key(self) -> str:
        """Equal for two releases that deploy the same (secret files included)."""
        return json.dumps([_router_part(self.manifest), self.secret_sums], sort_keys=True)

    @staticmethod
    def parse(manifest: str, secret_sums: str) -> "State | None":
        """A release's state as read on the router; None when it is missing or not one vpcgen wrote."""
        try:
            state = State(json.loads(manifest), json.loads(secret_sums) if secret_sums.strip() else {})
            ok = set(state.files()) <= SHIPPED and isinstance(state.secret_sums, dict) and all(
                isinstance(s["name"], str) and isinstance(s["reload"], str) for s in state.manifest["services"])
            return state if ok else None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass
class Outcome:
    router: str
    status: str  # changed | skipped | failed | rolled back | planned | unchanged
    detail: str = ""
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # secret-bearing files whose content differs (dry run)
    diff: list[str] = field(default_factory=list)  # dry run: deployed now against the tree, secrets redacted


class RemoteError(Exception):
    pass


class SessionLost(RemoteError):
    """The router's side of a command ended without an exit status (connection cut, sshd killed)."""


CONNECTION_ERRORS = (RemoteError, paramiko.SSHException, OSError, EOFError)


def _said(out: str, limit: int) -> str:
    """The end of a failed step's output, for a message."""
    return f": {out[-limit:]}" if out else ""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _settings_problem(m: dict) -> str | None:
    """The first malformed deploy setting of a manifest (deploy runs them as root on the router)."""
    d = m["deploy"]

    def commands(items, *keys) -> bool:
        return isinstance(items, list) and all(isinstance(i, dict) and all(isinstance(i.get(k), str) for k in keys)
                                               for i in items)

    ssh, vrrp, keep = d.get("ssh"), d.get("vrrp"), d.get("keep_releases")
    checks = {
        "deploy.root": isinstance(d.get("root"), str) and _ROOT.match(d["root"]) is not None
        and ".." not in d["root"].split("/"),
        "deploy.ssh": isinstance(ssh, dict) and isinstance(ssh.get("user"), str)
        and type(ssh.get("port")) is int and 0 < ssh["port"] < 65536,
        "deploy.keep_releases": type(keep) is int and keep >= 1,
        "deploy.checks": commands(d.get("checks"), "service", "command"),
        "deploy.health": commands(d.get("health"), "service", "command"),
        "deploy.vrrp": vrrp is None or (isinstance(vrrp, dict) and isinstance(vrrp.get("state"), str)
                                        and type(vrrp.get("priority")) is int
                                        and isinstance(vrrp.get("wait_s"), (int, float))),
        "services": commands(m["services"], "name", "reload"),
    }
    return next((name for name, ok in checks.items() if not ok), None)


def load_targets(tree_dir: Path, only: list[str] | None) -> list[Target]:
    """The routers of a built site, each checked against its manifest (tree.read_router: generated
    paths only, no symlinks or unlisted files, every checksum right) and its deploy settings."""
    targets = [Target(router) for router in read_routers(Path(tree_dir), only).values()]
    for t in targets:
        problem = _settings_problem(t.manifest)
        if problem:
            raise TreeError(f"{t.tree.dir / MANIFEST}: '{problem}' is missing or malformed")
    placeholder = [t.name for t in targets if not t.manifest["deployable"]]
    if placeholder:
        raise VpcgenError(f"{tree_dir} was built with --placeholder-secrets and cannot be deployed "
                          f"(routers: {', '.join(placeholder)}); build it with the real secrets")
    return targets


def connect(target: Target, known_hosts: Path, identity: list[str], timeout: float = 10.0) -> Connection:
    """A Fabric connection that accepts only host keys pinned in the site's known_hosts."""
    ssh = target.settings["ssh"]
    kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
    if identity:
        kwargs["key_filename"] = identity
    conn = Connection(target.mgmt, user=ssh["user"], port=ssh["port"], connect_timeout=timeout,
                      connect_kwargs=kwargs)
    # Fabric installs paramiko's AutoAddPolicy: an unknown key would be accepted silently
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.get_host_keys().clear()
    conn.client.load_host_keys(str(known_hosts))
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise RemoteError(f"host key of {target.mgmt} has CHANGED (got {exc.key.get_name()} "
                          f"{exc.key.get_base64()[:16]}...): refusing; if the router was rebuilt, update "
                          f"{known_hosts}") from None
    except paramiko.AuthenticationException:
        raise RemoteError(f"ssh to {ssh['user']}@{target.mgmt}:{ssh['port']}: authentication failed (no key was "
                          "accepted: give one with -i KEY or load it into the SSH agent)") from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise RemoteError(f"host key of {target.mgmt} is not in {known_hosts}: refusing (vpcgen never "
                              "adds host keys; pin it with ssh-keyscan after checking it)") from None
        raise RemoteError(f"ssh to {target.mgmt}:{ssh['port']}: {exc}") from None
    except OSError as exc:
        raise RemoteError(f"cannot reach {target.mgmt}:{ssh['port']}: {connect_reason(exc, timeout)}") from None
    return conn


def connect_reason(exc: OSError, timeout: float) -> str:
    """Why a TCP connection failed, in words (paramiko's NoValidConnectionsError says "[Errno None]
    Unable to connect to port 22 on ..." and hides the reason in .errors)."""
    causes = list(getattr(exc, "errors", {}).values()) or [exc]
    reasons = []
    for cause in causes:
        if isinstance(cause, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout:.0f} s"
        elif isinstance(cause, socket.gaierror):
            reason = f"cannot resolve the address ({cause.strerror or cause})"
        elif getattr(cause, "errno", None):
            reason = os.strerror(cause.errno).lower()
        else:
            reason = str(cause) or type(cause).__name__
        if reason not in reasons:
            reasons.append(reason)
    return ", ".join(reasons)


class Remote:
    """Commands on one router over one SSH connection."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.lock_channel = None

    def active(self) -> bool:
        transport = self.conn.client.get_transport()
        return transport is not None and transport.is_active()

    def run(self, command: str, data: bytes = b"", timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """(exit status, output); the status is -1 when the session ended without one."""
        channel = self.conn.client.get_transport().open_session(timeout=10)
        channel.settimeout(timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        if data:
            channel.sendall(data)
        channel.shutdown_write()
        out = b""
        try:
            while chunk := channel.recv(65536):
                out += chunk
            return channel.recv_exit_status(), out.decode("utf-8", "replace").strip()
        except TimeoutError:
            raise RemoteError(f"timed out after {timeout:.0f} s: {command}") from None
        finally:
            channel.close()

    def steps(self, steps: list[tuple[str, str]], data: bytes = b"") -> tuple[str | None, int, str]:
        """Run named commands in order in one session (one round trip), stopping at the first failure:
        (name of the failed step or None, its exit code, its output). Each step runs in its own
        `sh -e`: on the left of `||` a shell ignores `set -e`, so a step's failing command would
        go unnoticed."""
        if not steps:
            return None, 0, ""
        q = shlex.quote
        script = "".join(f"echo {q('@@step ' + name)}\nsh -ec {q(command)} 2>&1 || "
                         f"{{ echo {q('@@failed ' + name)} $?; exit 1; }}\n" for name, command in steps)
        rc, out = self.run(script, data)
        failed = re.search(r"^@@failed (\S+) (\d+)$", out, re.M)
        if failed is None and rc == 0:
            return None, 0, out
        if failed is None:
            started = re.findall(r"^@@step (\S+)$", out, re.M)
            raise SessionLost(f"the session on the router was cut during {started[-1] if started else steps[0][0]}"
                              f"{'' if self.active() else ' (connection lost)'}")
        name = failed.group(1)
        section = out.split(f"@@step {name}\n", 1)[-1].split(f"@@failed {name}", 1)[0].strip()
        return name, int(failed.group(2)), section

    def lock(self, path: str) -> None:
        """Hold an flock on the router while this connection lives (released by the router's kernel
        when the session ends, even if vpcgen is killed)."""
        channel = self.conn.client.get_transport().open_session(timeout=10)
        channel.settimeout(15)
        q = shlex.quote(path)
        channel.exec_command(f"mkdir -p $(dirname {q}) && exec flock -n {q} sh -c 'echo locked; exec cat >/dev/null'")
        line = b""
        try:
            while not line.endswith(b"\n"):
                chunk = channel.recv(64)
                if not chunk:
                    break
                line += chunk
        except TimeoutError:
            pass
        if line.strip() != b"locked":
            channel.close()
            raise RemoteError(f"another deploy holds the lock {path}: try again when it has finished")
        self.lock_channel = channel

    def close(self) -> None:
        if self.lock_channel is not None:
            self.lock_channel.shutdown_write()
            self.lock_channel.close()
        self.conn.close()


def _read_shipped(path: Path) -> bytes:
    """A file of a checked tree, never through a symlink swapped in after the check."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def tar_of(target: Target) -> bytes:
    """The router's tree as a tar stream: fixed owner and times, modes from the tree, and first the
    checksum list of every file (the router verifies them all, secret ones included)."""
    buf = io.BytesIO()
    known = {MANIFEST: target.tree.manifest_bytes, SECRET_SUMS: target.tree.secret_sums_bytes}
    sums = "".join(f"{digest}  {path}\n" for path, digest in sorted(target.sums().items())).encode()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = [(SUMS, sums, 0o600)] + [(path, known.get(path) or _read_shipped(target.tree.dir / path),
                                            target.tree.mode_of(path)) for path in sorted(target.files())]
        for path, data, mode in members:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def substitute(command: str, target: Target, release: str) -> str:
    return command.replace("{root}", target.root or "/").replace("{release}", release).replace(
        "{router}", target.name)


def affected_services(olds: list[State | None], new: State) -> list[str]:
    """Services of ``new`` whose files differ from any release the router may be running (None: not
    known, so every service), in dependency order."""
    after, touched = new.files(), set()
    for old in olds:
        if old is None:
            touched |= {s["name"] for s in new.manifest["services"]}
            continue
        before = old.files()
        touched |= {v[2] for p, v in after.items() if before.get(p) != v}
        touched |= {v[2] for p, v in before.items() if p not in after}
    return [s for s in SERVICES if s in touched]


def reload_commands(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["reload"] for s in manifest["services"]}


@dataclass
class Probe:
    vrrp: str | None  # MASTER, BACKUP, ... on a pair
    current: str | None  # id of the current release
    states: dict[str, State | None]  # release id -> what it holds
    pending: list[str] | None  # mark of an unconfirmed deploy: its release, the fallback, others
    releases: list[str]
    history: list[str]  # confirmed releases, oldest first

    def state(self, release_id: str | None) -> State | None:
        return self.states.get(release_id) if release_id else None

    def running(self) -> list[State | None]:
        """What the router's services may be running now: the current release or, with a deploy
        pending, any release that mark names."""
        return [self.state(i) for i in self.pending] if self.pending else [self.state(self.current)]

    def fallback(self) -> str | None:
        """The last release known to be applied: what a failed deploy goes back to."""
        release = (self.pending[1] if len(self.pending) > 1 else None) if self.pending else self.current
        return release if self.state(release) is not None else None


class RouterDeploy:
    """The steps for one router, batched into few SSH sessions (each costs a fork and a shell on
    the router); every remote path is under the router's deploy root."""

    def __init__(self, target: Target, remote: Remote, progress: Callable[[str, str], None]):
        self.t, self.r, self.say = target, remote, progress
        self.q = shlex.quote

    def release_path(self, release_id: str) -> str:
        return f"{self.t.base}/releases/{release_id}"

    def vrrp_command(self) -> str:
        vrrp = self.t.settings.get("vrrp")
        return substitute(vrrp["state"], self.t, "") if vrrp else "true"

    def probe(self) -> Probe:
        b = self.q(self.t.base)
        # secret-sums.json is read as root: a changed secret file is a change too
        script = (f"set -f; b={b}; echo \"@@vrrp $({self.vrrp_command()} 2>/dev/null)\"; "
                  f"cur=$(readlink $b/current 2>/dev/null); cur=${{cur#releases/}}; echo \"@@current $cur\"; "
                  f"echo @@releases; ls -1 $b/releases 2>/dev/null; echo @@history; cat $b/history 2>/dev/null; "
                  f"echo @@pending; cat $b/pending 2>/dev/null; "
                  f"for id in $cur $(cat $b/pending 2>/dev/null); do echo \"@@manifest $id\"; "
                  f"cat \"$b/releases/$id/{MANIFEST}\" 2>/dev/null; echo; echo \"@@sums $id\"; "
                  f"cat \"$b/releases/$id/{SECRET_SUMS}\" 2>/dev/null; echo; done; true")
        _, out = self.r.run(script)
        parts = re.split(r"^@@(\w+) ?(.*)$", out, flags=re.M)
        sections = [(parts[i], parts[i + 1].strip(), parts[i + 2].strip("\n")) for i in range(1, len(parts), 3)]
        single = {name: arg for name, arg, _ in sections}
        lists = {name: body.split() for name, _, body in sections}
        texts = {(name, arg): body for name, arg, body in sections if name in ("manifest", "sums")}
        ids = [i for i in [single.get("current")] + lists.get("pending", []) if i and _ID.match(i)]
        states = {i: State.parse(texts.get(("manifest", i), ""), texts.get(("sums", i), "")) for i in ids}
        pending = lists.get("pending") or None
        return Probe(single.get("vrrp", "").upper() or None if self.t.settings.get("vrrp") else None,
                     single.get("current") if _ID.match(single.get("current", "")) else None, states, pending,
                     [r for r in lists.get("releases", []) if _ID.match(r)], lists.get("history", []))

    def vrrp_state(self) -> str | None:
        _, out = self.r.run(f"{self.vrrp_command()} 2>/dev/null; true")
        return out.strip().upper() or None

    def upload_and_check(self, release_id: str) -> str:
        """Upload into a partial directory, verify every checksum, run the checkers on it, and only
        then give it its final name: a named release is always complete, verified and on disk."""
        base, q = self.t.base, self.q
        partial = f"{base}/releases/.partial-{release_id}"
        data = tar_of(self.t)
        checks = [(f"check:{e['service']}", substitute(e["command"], self.t, partial))
                  for e in self.t.settings["checks"]]
        self.say(self.t.name, f"uploading {len(self.t.files())} files ({len(data) // 1024} KiB), checking "
                 f"{', '.join(name[6:] for name, _ in checks) or 'nothing'}")
        # leftovers of an interrupted upload are never activated; they are removed first
        upload = (f"umask 077; mkdir -p {q(base)}/releases; rm -rf {q(base)}/releases/.partial-*; "
                  f"mkdir {q(partial)}; tar -x -p -f - -C {q(partial)}; cd {q(partial)}; "
                  f"sha256sum --quiet --strict -c {SUMS}; rm {SUMS}; "
                  "find . -exec sync -- {} +")  # every file and folder on disk before it is named
        name = (f"mv -T {q(partial)} {q(self.release_path(release_id))}; sync {q(base)}/releases")
        try:
            failed, rc, out = self.r.steps([("upload", upload)] + checks + [("name", name)], data)
        except SessionLost as exc:
            raise RemoteError(f"{exc}: nothing was switched") from None
        if failed:
            try:  # a failed upload may have filled the disk: free it now, not at the next deploy
                self.r.run(f"rm -rf {q(partial)}")
            except CONNECTION_ERRORS:
                pass
        if failed in ("upload", "name"):
            raise RemoteError(f"upload failed (exit {rc}){_said(out, 500)}")
        if failed:
            raise RemoteError(f"{failed[6:]} checker rejected the new release (exit {rc}){_said(out, 500)}")
        return release_id

    def mark_script(self, ids: list[str]) -> str:
        """The pending mark: the release being activated, the one to fall back to ('-': none), and any
        other release whose config services may still run; on disk before anything is switched."""
        p, q = f"{self.t.base}/pending", self.q
        return (f"printf '%s\\n' {' '.join(q(i) for i in ids)} > {q(p)}.new; sync {q(p)}.new; "
                f"mv -f {q(p)}.new {q(p)}; sync {q(self.t.base)}")

    def switch_script(self, release_id: str, files: set[str], stale: set[str]) -> str:
        """Point every file's link at current, then swap current in one rename."""
        base, root, q = self.t.base, self.t.root, self.q
        lines = []
        for path in sorted(files):
            link, dest = f"{root}/{path}", f"{base}/current/{path}"
            aside = f"{base}/displaced/{path}.{release_id}"
            # a file vpcgen did not put there is kept aside, every version of it, never overwritten
            lines.append(f"mkdir -p {q(os.path.dirname(link))}; if [ -e {q(link)} ] && [ ! -L {q(link)} ]; then "
                         f"mkdir -p {q(os.path.dirname(aside))}; mv --backup=numbered {q(link)} {q(aside)}; fi; "
                         f"[ \"$(readlink {q(link)})\" = {q(dest)} ] || ln -sfn {q(dest)} {q(link)}")
        lines.append("sync -- " + " ".join(sorted({q(os.path.dirname(f"{root}/{p}")) for p in files})))
        lines.append(f"ln -sfn releases/{q(release_id)} {q(base)}/current.new; "
                     f"mv -T {q(base)}/current.new {q(base)}/current; sync {q(base)}")
        for path in sorted(stale - files):
            link = q(f"{root}/{path}")
            lines.append(f"if [ -L {link} ]; then rm -f {link}; fi")
        return "\n".join(lines)

    def reload_steps(self, release_id: str, state: State, services: list[str]) -> list[tuple[str, str]]:
        commands = overrides_module.reloads(reload_commands(state.manifest), self.t.overrides)
        return [(f"reload:{s}", substitute(commands[s], self.t, self.release_path(release_id)))
                for s in services if s in commands]

    def activate(self, release_id: str, state: State, stale: set[str], services: list[str], mark: list[str],
                 first: list[tuple[str, str]] = ()) -> None:
        """Mark the deploy pending, switch to the release, reload ``services`` in order, check health."""
        reloads = self.reload_steps(release_id, state, services)
        self.say(self.t.name, f"switching to {release_id}, reloading "
                 f"{', '.join(name[7:] for name, _ in reloads) or 'nothing'}")
        health = [(f"health:{e['service']}", substitute(e["command"], self.t, self.release_path(release_id)))
                  for e in self.t.settings["health"]]
        steps = [("mark", self.mark_script(mark)), ("switch", self.switch_script(release_id, state.paths(), stale))]
        failed, rc, out = self.r.steps(list(first) + steps + reloads + health)
        if failed in ("arm", "mark", "switch"):
            raise RemoteError(f"switching releases failed (exit {rc}){_said(out, 500)}")
        if failed and failed.startswith("reload:"):
            raise RemoteError(f"reloading {failed[7:]} failed (exit {rc}){_said(out, 500)}")
        if failed:
            raise RemoteError(f"{failed[7:]} is not healthy after the reload (exit {rc}){_said(out, 300)}")

    def restore(self, release_id: str, state: State, others: list[State | None], stale: set[str]) -> None:
        """Switch back to a release known to be applied, reload what may differ from it, drop the mark."""
        reloads = self.reload_steps(release_id, state, affected_services(others, state))
        self.say(self.t.name, f"restoring {release_id}, reloading {', '.join(n[7:] for n, _ in reloads) or 'nothing'}")
        unmark = f"rm -f {self.q(self.t.base)}/pending; sync {self.q(self.t.base)}"
        failed, rc, out = self.r.steps([("switch", self.switch_script(release_id, state.paths(), stale))] + reloads
                                       + [("unmark", unmark)])
        if failed:
            raise RemoteError(f"{failed} failed (exit {rc}){_said(out, 300)}")

    def confirm(self, history: list[str], prune: list[str]) -> str:
        """The release is applied and healthy: record it, drop the mark, remove releases not kept."""
        base, q = self.q(self.t.base), self.q
        record = (f"printf '%s\\n' {' '.join(q(i) for i in history)} > {base}/history.new; "
                  f"mv -f {base}/history.new {base}/history; rm -f {base}/pending; sync {base}")
        steps = [("confirm", record)]
        if prune:
            steps.append(("prune", f"cd {base}/releases; rm -rf -- {' '.join(q(i) for i in prune)}"))
        failed, rc, out = self.r.steps(steps)
        if failed == "confirm":
            raise RemoteError(f"recording the release failed (exit {rc}){_said(out, 300)}")
        return f"; pruning old releases failed (exit {rc}){_said(out, 200)}" if failed else ""

    def whereabouts(self) -> str:
        """Which release the router is on now, for a report after a failure."""
        try:
            _, out = self.r.run(f"readlink {self.q(self.t.base)}/current; true", timeout=15)
        except CONNECTION_ERRORS:
            return "the router's current release is unknown (no connection)"
        return f"the router's current release is {out.removeprefix('releases/') or 'none'}"

    def wait_vrrp(self, want: tuple[str, ...] = ("MASTER", "BACKUP")) -> None:
        """A pair's router must be back in VRRP (MASTER or BACKUP, or the states ``want`` names)
        before its peer is touched."""
        vrrp = self.t.settings.get("vrrp")
        if not vrrp:
            return
        deadline = time.monotonic() + vrrp["wait_s"]
        while (state := self.vrrp_state()) not in want:
            if time.monotonic() > deadline:
                raise RemoteError(f"VRRP state is {state or 'unknown'} {vrrp['wait_s']} s after the reload "
                                  f"(expected {' or '.join(want)})")
            time.sleep(0.2)

    # --- commit-confirm: a timer on the router undoes a switch nobody confirmed ---

    def health_steps(self, release_id: str) -> list[tuple[str, str]]:
        return [(f"health:{e['service']}", substitute(e["command"], self.t, self.release_path(release_id)))
                for e in self.t.settings["health"]]

    def disarm_script(self, expect: str | None = None) -> str:
        """Cancel the armed timer under its lock (so a revert it is running finishes first). Prints
        '@@disarmed RELEASE' or '@@reverted RELEASE FALLBACK RESULT' (what the router did by itself).
        With ``expect``, fails unless the timer armed for that release was still armed."""
        q = self.q
        script = (f"cd {q(self.t.base)}; mkdir -p {CONFIRM_DIR}; exec 9>>{CONFIRM_LOCK}; flock -w 600 9; token=; "
                  f"if [ -s {CONFIRM_ARMED} ]; then read token pid < {CONFIRM_ARMED}; "
                  f"kill -TERM -- -\"$pid\" 2>/dev/null || true; rm -f {CONFIRM_ARMED}; echo \"@@disarmed $token\"; "
                  f"elif [ -s {CONFIRM_REVERTED} ]; then echo \"@@reverted $(cat {CONFIRM_REVERTED})\"; fi; "
                  f"rm -f {CONFIRM_REVERTED}; sync {CONFIRM_DIR}")
        return script + (f"; [ \"$token\" = {q(expect)} ]" if expect else "")

    def revert_script(self, release_id: str, fallback: str, steps: list[tuple[str, str]]) -> str:
        """What the router runs by itself when the timer fires: unless the deploy was confirmed (the
        armed mark is gone), switch back to ``fallback``, reload, drop the pending mark, and record it."""
        q = self.q
        switch, reloads, unmark = steps[0][1], steps[1:-1], steps[-1][1]
        # a timer that outlived its disarm (its kill missed) is given its own release: it never acts
        # on a later deploy's script. Nothing it starts holds the lock (9>&-): a daemon would keep it
        lines = [f"exec 9>>{CONFIRM_LOCK}", "flock 9",
                 f"[ -s {CONFIRM_ARMED} ] || exit 0", f"read token pid < {CONFIRM_ARMED}",
                 f"[ \"$token\" = {q(release_id)} ] && [ \"${{1:-}}\" = {q(release_id)} ] || exit 0",
                 f"echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) {release_id} was not confirmed in time: restoring {fallback}\"",
                 "result=restored",
                 f"if sh -ec {q(switch)} 9>&-; then"]
        lines += [f"  sh -ec {q(command)} 9>&- || result=\"restored, {name[7:]} reload failed\"" for name, command in reloads]
        lines += [f"  sh -ec {q(unmark)} 9>&-", "else", "  result=\"switch failed\"", "fi",
                  f"rm -f {CONFIRM_ARMED}",
                  f"echo {q(release_id)} {q(fallback)} \"$result\" > {CONFIRM_REVERTED}.new",
                  f"mv -f {CONFIRM_REVERTED}.new {CONFIRM_REVERTED}", f"sync {CONFIRM_DIR}",
                  "echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) $result\""]
        return "\n".join(lines) + "\n"

    def arm_script(self, release_id: str, fallback: str, fallback_state: State, others: list[State | None],
                   stale: set[str], timeout: float) -> str:
        """Write the revert script and start the timer: a process in its own session (it outlives the
        deployer's SSH session) that sleeps, then runs the script. Its process group is recorded with
        the release it guards, so the confirm can kill it."""
        q = self.q
        reloads = self.reload_steps(fallback, fallback_state, affected_services(others, fallback_state))
        unmark = f"rm -f {q(self.t.base)}/{PENDING}; sync {q(self.t.base)}"
        script = self.revert_script(release_id, fallback, [("switch", self.switch_script(fallback, fallback_state.paths(),
                                                                                          stale))] + reloads
                                    + [("unmark", unmark)])
        timer = f"sleep {timeout:g}; exec sh {CONFIRM_SCRIPT} {q(release_id)} >>{CONFIRM_LOG} 2>&1"
        return (f"cd {q(self.t.base)}; mkdir -p {CONFIRM_DIR}; exec 9>>{CONFIRM_LOCK}; flock -w 600 9; "
                f"printf '%s' {q(script)} > {CONFIRM_SCRIPT}.new; mv -f {CONFIRM_SCRIPT}.new {CONFIRM_SCRIPT}; "
                f"rm -f {CONFIRM_REVERTED}; "
                f"setsid sh -c {q(timer)} vpcgen-confirm-timer </dev/null >/dev/null 2>&1 9>&- & "
                f"echo {q(release_id)} $! > {CONFIRM_ARMED}.new; mv -f {CONFIRM_ARMED}.new {CONFIRM_ARMED}; "
                f"sync {CONFIRM_DIR}")

    def settle(self) -> None:
        """Before a deploy looks at the router: take over a timer a dead deployer left armed (this
        deploy finishes or undoes its release), or learn that the router reverted one by itself."""
        _, out = self.r.run(self.disarm_script())
        m = re.search(r"^@@(disarmed|reverted) (.*)$", out, re.M)
        if m and m.group(1) == "disarmed":
            self.say(self.t.name, f"took over the confirm timer of the unconfirmed release {m.group(2)}")
        elif m:
            release, fallback, *result = m.group(2).split()
            self.say(self.t.name, f"the router undid the unconfirmed release {release} by itself "
                     f"({' '.join(result)} {fallback})")

    def disarm(self) -> str | None:
        """Cancel the timer before deploy restores by itself; what the router did already, if it fired."""
        _, out = self.r.run(self.disarm_script())
        m = re.search(r"^@@reverted (.*)$", out, re.M)
        return m.group(1) if m else None

    def confirm_armed(self, release_id: str, history: list[str], prune: list[str]) -> tuple[str | None, str]:
        """Cancel the timer and record the release, in one session; (what the router did by itself
        when the timer fired first, or None; a note on pruning)."""
        base, q = self.q(self.t.base), self.q
        record = (f"printf '%s\\n' {' '.join(q(i) for i in history)} > {base}/{HISTORY}.new; "
                  f"mv -f {base}/{HISTORY}.new {base}/{HISTORY}; rm -f {base}/{PENDING}; sync {base}")
        steps = [("disarm", self.disarm_script(expect=release_id)), ("confirm", record)]
        if prune:
            steps.append(("prune", f"cd {base}/{RELEASES}; rm -rf -- {' '.join(q(i) for i in prune)}"))
        failed, rc, out = self.r.steps(steps)
        if failed == "disarm":
            m = re.search(r"^@@reverted (.*)$", out, re.M)
            return (m.group(1) if m else "the timer was gone"), ""
        if failed == "confirm":
            raise RemoteError(f"recording the release failed (exit {rc}){_said(out, 300)}")
        return None, f"; pruning old releases failed (exit {rc}){_said(out, 200)}" if failed else ""

    def where(self) -> tuple[str | None, bool]:
        """(current release, whether a deploy is pending) as the router sees it now."""
        b = self.q(self.t.base)
        _, out = self.r.run(f"readlink {b}/{CURRENT}; echo; [ -e {b}/{PENDING} ] && echo @@pending; true", timeout=15)
        lines = out.splitlines()
        return ((lines[0].removeprefix(f"{RELEASES}/") or None) if lines else None), "@@pending" in out

    def new_session(self, release_id: str, confirm: "Confirm", deadline: float) -> Remote:
        """A new SSH session to the router (the switch may have cut new ones while this one lives on),
        with every health check passing in it: what the confirm requires."""
        try:
            second = confirm.reconnect(max(3.0, min(10.0, deadline - time.monotonic())))
        except CONNECTION_ERRORS as exc:
            raise NoNewSession(f"no new SSH session reaches the router after the switch ({exc})") from None
        try:
            failed, rc, out = second.steps(self.health_steps(release_id))
        except CONNECTION_ERRORS:
            second.close()
            raise
        if failed:
            second.close()
            raise RemoteError(f"{failed[7:]} is not healthy in a new session (exit {rc}){_said(out, 300)}")
        return second

    def await_revert(self, release_id: str, fallback: str, confirm: "Confirm", deadline: float, reason: str,
                     done: dict) -> Outcome:
        """The deployer lost the router after the switch: wait for the confirm timeout, then check from a
        new session that the router restored ``fallback`` by itself."""
        self.say(self.t.name, f"{reason}; the router restores {fallback} by itself at the confirm timeout, "
                 "waiting for it")
        time.sleep(max(0.0, deadline - time.monotonic()))
        end, last = deadline + REVERT_GRACE, "no answer"
        while True:
            try:
                remote = confirm.reconnect(5.0)
                try:
                    current, pending = RouterDeploy(self.t, remote, self.say).where()
                finally:
                    remote.close()
                if current == fallback and not pending:
                    return Outcome(self.t.name, "rolled back", f"{reason}; the router restored {fallback} by itself "
                                   f"at the confirm timeout ({confirm.timeout:g} s) and answers SSH again", **done)
                last = f"its current release is {current or 'none'}{' (unconfirmed)' if pending else ''}"
            except CONNECTION_ERRORS as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() > end:
                return Outcome(self.t.name, "failed", f"{reason}; the router did not restore {fallback} within "
                               f"{confirm.timeout + REVERT_GRACE:g} s: {last}")
            time.sleep(1.0)

    # --- dry run: what is deployed now against the tree ---

    def deployed(self, paths: list[str], secret: list[str]) -> dict[str, bytes | str | None]:
        """The live files under the deploy root (through vpcgen's links, hand edits included), in one
        session: path -> content, or for secret files only their sha256 (their content never leaves
        the router); None for a missing file."""
        q, root = self.q, self.t.root
        parts = [f"f={q(f'{root}/{p}')}; echo {q('@@file ' + p)}; [ ! -f \"$f\" ] || base64 -w0 < \"$f\"; echo"
                 for p in paths]
        parts += [f"f={q(f'{root}/{p}')}; echo {q('@@secret ' + p)}; [ ! -f \"$f\" ] || sha256sum < \"$f\" | cut -c1-64"
                  for p in secret]
        _, out = self.r.run("\n".join(parts + ["true"]))
        found: dict[str, bytes | str | None] = {}
        for kind, path, body in re.findall(r"^@@(file|secret) (\S+)\n(.*?)$", out, re.M):
            body = body.strip()
            found[path] = (base64.b64decode(body) if kind == "file" else body) if body else None
        return found

    def plan_diff(self, current: State | None) -> list[str]:
        """Unified diff of every file as deployed on the router now against the tree (like `terraform
        plan`); secret files only say whether they differ."""
        tree, name = self.t.tree, self.t.name
        secret = {e.path for e in tree.entries if e.secret} | {
            f["path"] for f in (current.manifest["files"] if current else []) if f.get("secret") or f["mode"] == "0600"}
        paths = sorted({e.path for e in tree.entries} | (set(current.files()) if current else set()))
        live = self.deployed([p for p in paths if p not in secret], [p for p in paths if p in secret])
        sums, lines = tree.sums(), []
        for path in paths:
            shown = f"{self.t.root}/{path}"
            wanted = tree.dir / path if path in sums else None
            if path in secret:
                if live.get(path) != sums.get(path):
                    state = ("absent on the router" if live.get(path) is None else "removed by the tree"
                             if wanted is None else "differs")
                    lines += [f"--- {name}:{shown}", f"+++ {wanted or '/dev/null'}",
                              f"@@ secret file {state}: content not shown @@"]
                continue
            old = live.get(path) or b""
            new = _read_shipped(wanted) if wanted else b""
            if old == new and (live.get(path) is None) == (wanted is None):
                continue
            lines += [line.rstrip("\n") for line in difflib.unified_diff(
                old.decode("utf-8", "replace").splitlines(keepends=True),
                new.decode("utf-8", "replace").splitlines(keepends=True),
                fromfile=f"{name}:{shown}" if live.get(path) is not None else "/dev/null",
                tofile=str(wanted) if wanted else "/dev/null", n=3)]
        return lines


def release_name(target: Target, taken: list[str]) -> str:
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{_sha(target.tree.manifest_bytes)[:12]}"
    n = 1
    while (unique := name if n == 1 else f"{name}-{n}") in taken:  # the same tree again within a second
        n += 1
    return unique


def deploy_one(target: Target, remote: Remote, probe: Probe, dry_run: bool, progress,
               confirm: "Confirm | None" = None) -> Outcome:
    d = RouterDeploy(target, remote, progress)
    new, current = target.state(), probe.state(probe.current)
    if not probe.pending and current is not None and current.key() == new.key():
        return Outcome(target.name, "unchanged" if dry_run else "skipped", "same manifest as deployed")
    running = probe.running()
    services = affected_services(running, new)
    changed_files = _changed_files(current, new)
    note = (f"finishing the interrupted deploy of {probe.pending[0]}" if probe.pending
            else "first deploy" if current is None else "")
    if dry_run:
        return Outcome(target.name, "planned", note, files=changed_files, services=services,
                       secrets=_changed_secrets(current, new), diff=d.plan_diff(current))
    if current is not None and current.key() == new.key():
        release = probe.current  # switched to by a deploy that died before confirming it: apply it again
    else:
        release = d.upload_and_check(release_name(target, probe.releases))
    return apply_release(d, probe, release, new, services, changed_files, note if probe.pending else "", confirm)


@dataclass
class Confirm:
    """Commit-confirm for one router: how long its timer waits, and how to open a new session to it."""
    timeout: float
    reconnect: Callable[[float], "Remote"]


class NoNewSession(RemoteError):
    """No new SSH session reached the router after the switch (the change may have cut management)."""


def apply_release(d: RouterDeploy, probe: Probe, release: str, new: State, services: list[str],
                  changed_files: list[str], note: str, confirm: Confirm | None, prune: bool = True) -> Outcome:
    """Arm the router's timer, switch to ``release`` (already on the router), reload, check health,
    check health again from a new session, and only then cancel the timer and record the release;
    on a failure restore the previous release (or let the router restore it by itself)."""
    target, remote, progress = d.t, d.r, d.say
    running = probe.running()
    fallback = probe.fallback()
    stale = set().union(*(s.paths() for s in running if s is not None))
    others = [i for i in (probe.pending or [probe.current]) if i and _ID.match(i) and i not in (release, fallback)]
    armed = confirm is not None and fallback is not None  # a first deploy has nothing to go back to
    first = [("arm", d.arm_script(release, fallback, probe.state(fallback), running + [new], stale | new.paths(),
                                  confirm.timeout))] if armed else []
    deadline = time.monotonic() + (confirm.timeout if armed else 0)
    second = None
    done = dict(files=changed_files, services=services)
    try:
        try:
            if armed:
                progress(target.name, f"arming the confirm timer: the router restores {fallback} by itself "
                         f"unless a new session confirms {release} within {confirm.timeout:g} s")
            d.activate(release, new, stale, services, [release, fallback or "-"] + others, first)
            d.wait_vrrp()
            if armed:
                second = d.new_session(release, confirm, deadline)
        except CONNECTION_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            if fallback is None:
                return Outcome(target.name, "failed", f"{reason}; no previous release to restore: {d.whereabouts()}, "
                               "not confirmed (the next deploy applies it again)")
            if not remote.active():
                if armed:
                    return d.await_revert(release, fallback, confirm, deadline, reason, done)
                return Outcome(target.name, "failed", f"{reason}; {fallback} could not be restored: the router may "
                               f"run {release} or {fallback}; the next deploy finishes or undoes this one")
            progress(target.name, f"failed: {reason}; restoring {fallback}")
            try:
                by_router = d.disarm() if armed else None
                if by_router:
                    return Outcome(target.name, "rolled back", f"{reason}; the router restored {fallback} by itself "
                                   f"after the confirm timeout ({by_router.split(' ', 2)[-1]})", **done)
                d.restore(fallback, probe.state(fallback), running + [new], stale | new.paths())
            except CONNECTION_ERRORS as again:
                if armed and not remote.active():
                    return d.await_revert(release, fallback, confirm, deadline, reason, done)
                return Outcome(target.name, "failed", f"{reason}; restoring {fallback} failed too: "
                               f"{str(again) or type(again).__name__}; {d.whereabouts()}, its services may run "
                               f"{release} or {fallback}; the next deploy finishes or undoes this one")
            return Outcome(target.name, "rolled back", f"{reason}; {fallback} restored", **done)
        # pruning keeps what was applied last (the release and the one before it), never by the names'
        # times: a deployer's clock may be wrong
        order = [i for i in probe.history if _ID.match(i) and i not in (fallback, release)]
        kept = order + [i for i in (fallback, release) if i]
        if prune:
            kept = kept[-target.settings["keep_releases"]:]
        dropped = [r for r in probe.releases if r not in kept and r != release] if prune else []
        try:
            if armed:
                by_router, pruned = RouterDeploy(target, second, progress).confirm_armed(release, kept, dropped)
                if by_router:
                    return Outcome(target.name, "rolled back", f"release {release} was not confirmed within "
                                   f"{confirm.timeout:g} s: the router restored {fallback} by itself "
                                   f"({by_router.split(' ', 2)[-1]})", **done)
            else:
                pruned = d.confirm(kept, dropped)
        except CONNECTION_ERRORS as exc:
            return Outcome(target.name, "failed", f"release {release} is active and healthy but was not confirmed "
                           f"({exc}); the next deploy applies it again")
    finally:
        if second is not None:
            second.close()
    return Outcome(target.name, "changed", f"release {release}" + (f" ({note})" if note else "") + pruned, **done)


def _router_part(manifest: dict) -> str:
    """What makes two deploys of a router the same: its files, services and deploy settings (not the
    site digest, which changes whenever any router of the site changes)."""
    return json.dumps({k: manifest.get(k) for k in ("files", "services", "deploy", "router", "mgmt")}, sort_keys=True)


def _changed_secrets(old: State | None, new: State) -> list[str]:
    """Secret-bearing files whose content differs from the router's. Compared by the sums in the
    0600 secret-sums.json files of the tree and of the router's release (readable only by whoever
    can read the secret files beside them); only the changed/unchanged bit per file ever leaves
    this function, never a sum or any part of one."""
    before = old.secret_sums if old is not None else {}
    return sorted(p for p, digest in new.secret_sums.items() if before.get(p) != digest)


def _changed_files(old: State | None, new: State) -> list[str]:
    before, after = (old.files() if old else {}), new.files()
    return sorted({p for p in after if before.get(p) != after[p]} | {f"-{p}" for p in before if p not in after})


@dataclass
class DeployOptions:
    known_hosts: Path
    identity: list[str] = field(default_factory=list)
    dry_run: bool = False
    parallel: int = 1
    confirm_timeout: float = CONFIRM_TIMEOUT
    commands: dict = field(default_factory=dict)  # service command overrides (ops.overrides)

    def confirm(self, target: Target) -> Confirm:
        return Confirm(self.confirm_timeout,
                       lambda timeout: Remote(connect(target, self.known_hosts, self.identity, timeout)))


def deploy_tree(tree_dir: Path, only: list[str] | None, options: DeployOptions,
                progress: Callable[[str, str], None]) -> list[Outcome]:
    targets = load_targets(tree_dir, only)
    for t in targets:
        t.overrides = options.commands
    if not Path(options.known_hosts).is_file():
        raise VpcgenError(f"{options.known_hosts}: no known_hosts file: pin the routers' host keys in the site's "
                          "known_hosts (OpenSSH format) and build again, or give --known-hosts")
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.vpc, []).append(t)
    lock = threading.Lock()

    def say(router: str, message: str) -> None:
        with lock:
            progress(router, message)

    def run_group(group: list[Target]) -> list[Outcome]:
        return _deploy_group(group, options, say)

    with ThreadPoolExecutor(max_workers=max(1, options.parallel)) as pool:
        results = [o for outcomes in pool.map(run_group, groups.values()) for o in outcomes]
    return sorted(results, key=lambda o: o.router)


def _deploy_group(group: list[Target], options: DeployOptions, say) -> list[Outcome]:
    """Routers of one VPC, one at a time: the backup before the master, never both at once."""
    remotes: dict[str, Remote] = {}
    outcomes: list[Outcome] = []
    try:
        for t in group:
            remote = None
            try:
                remote = Remote(connect(t, options.known_hosts, options.identity))
                if not options.dry_run:
                    remote.lock(f"{t.base}/lock")
                remotes[t.name] = remote
            except CONNECTION_ERRORS as exc:
                if remote is not None:
                    remote.close()
                say(t.name, f"failed: {exc}")
                outcomes.append(Outcome(t.name, "failed", str(exc)))
        order = [t for t in group if t.name in remotes]
        probes = {}
        for t in list(order):
            try:
                if not options.dry_run:
                    RouterDeploy(t, remotes[t.name], say).settle()
                probes[t.name] = RouterDeploy(t, remotes[t.name], say).probe()
            except CONNECTION_ERRORS as exc:
                outcomes.append(Outcome(t.name, "failed", f"{exc}" or type(exc).__name__))
                order.remove(t)
        if len(order) == 2:
            # the master last, and so a router that serves the VPC alone (a single router made a
            # pair); with neither, the lower-priority (second) router first
            order.sort(key=lambda t: (probes[t.name].vrrp == "MASTER" or runs_single(probes[t.name]),
                                      t.settings["vrrp"]["priority"]))
            for t in order:
                say(t.name, f"VRRP state {probes[t.name].vrrp or 'unknown'}")
        for i, t in enumerate(order):
            start = time.monotonic()
            try:
                outcome = deploy_one(t, remotes[t.name], probes[t.name], options.dry_run, say,
                                     options.confirm(t))
            except CONNECTION_ERRORS as exc:
                outcome = Outcome(t.name, "failed", f"{exc}" or type(exc).__name__)
            if (outcome.status in ("changed", "skipped") and not options.dry_run and i + 1 < len(order)
                    and outside_vrrp(probes[order[i + 1].name])):
                outcome = _take_over(t, remotes[t.name], order[i + 1].name, outcome, say)
            outcome.seconds = time.monotonic() - start
            say(t.name, f"{outcome.status}{': ' + outcome.detail if outcome.detail else ''}")
            outcomes.append(outcome)
            if outcome.status in ("failed", "rolled back") and i + 1 < len(order):
                for rest in order[i + 1:]:  # never touch the master after its backup failed
                    outcomes.append(Outcome(rest.name, "failed", f"not deployed: {t.name} of the same pair "
                                            f"{outcome.status}"))
                break
    finally:
        for remote in remotes.values():
            remote.close()
    return outcomes


def runs_single(probe: Probe) -> bool:
    """Whether a router runs a single router's release (no VRRP): it holds its VPC's addresses alone."""
    running = probe.running()
    return bool(running) and all(s is not None and not s.manifest["deploy"].get("vrrp") for s in running)


def outside_vrrp(probe: Probe) -> bool:
    """Whether a pair's router is neither MASTER nor BACKUP: its VPC had a single router and this
    deploy makes it a pair (it holds the addresses by itself until its own deploy hands them to
    keepalived), or it was never deployed, or its keepalived is not running."""
    return probe.vrrp not in ("MASTER", "BACKUP")


def _take_over(t: Target, remote: Remote, other: str, outcome: Outcome, say) -> Outcome:
    """Before a router outside VRRP is touched, the router deployed before it must be master: the
    other one's reload gives up whatever addresses it holds (a single router made a pair holds
    them all), and a backup would only take them over after keepalived's master-down interval
    (three adverts) with nobody serving meanwhile. A new master announces the addresses
    (gratuitous ARP), so traffic moves to it before they go."""
    say(t.name, f"waiting to be master: {other} is not in VRRP (it serves the VPC alone, or nobody does)")
    try:
        RouterDeploy(t, remote, say).wait_vrrp(("MASTER",))
    except CONNECTION_ERRORS as exc:
        return Outcome(t.name, "failed", f"{outcome.detail + '; ' if outcome.detail else ''}did not take over "
                       f"from {other}: {exc or type(exc).__name__}", files=outcome.files, services=outcome.services)
    return outcome


# --- vpcgen rollback: make an earlier release current again, with deploy's checks and confirm ---

def _release_state(d: RouterDeploy, release_id: str) -> State | None:
    path = d.q(d.release_path(release_id))
    _, out = d.r.run(f"cat {path}/{MANIFEST} 2>/dev/null; echo; echo @@sums; cat {path}/{SECRET_SUMS} 2>/dev/null; true")
    manifest, _, sums = out.partition("\n@@sums")
    return State.parse(manifest, sums)


def _check_release(d: RouterDeploy, release_id: str, state: State) -> None:
    """Every file of the release as its manifest says (nothing rotted or edited there), then the
    daemons' checkers on it."""
    sums = "".join(f"{digest}  {path}\n" for path, (digest, _, _) in sorted(state.files().items())).encode()
    verify = f"cd {d.q(d.release_path(release_id))}; sha256sum --quiet --strict -c -"
    checks = [(f"check:{e['service']}", substitute(e["command"], d.t, d.release_path(release_id)))
              for e in d.t.settings["checks"]]
    d.say(d.t.name, f"verifying {release_id}, checking {', '.join(n[6:] for n, _ in checks) or 'nothing'}")
    failed, rc, out = d.r.steps([("verify", verify)] + checks, sums)
    if failed == "verify":
        raise RemoteError(f"release {release_id} does not match its manifest on the router{_said(out, 300)}")
    if failed:
        raise RemoteError(f"{failed[6:]} checker rejected release {release_id} (exit {rc}){_said(out, 500)}")


def rollback_router(tree_dir: Path, router: str, to: str | None, options: DeployOptions,
                    progress: Callable[[str, str], None]) -> Outcome:
    """Make the previous release (the confirmed one before the current) or release ``to`` current
    again on ``router``: lock, verify and check it, switch under commit-confirm, reload, health."""
    target = Target(read_routers(Path(tree_dir), [router])[router], options.commands)
    problem = _settings_problem(target.manifest)
    if problem:
        raise TreeError(f"{target.tree.dir / MANIFEST}: '{problem}' is missing or malformed")
    if not Path(options.known_hosts).is_file():
        raise VpcgenError(f"{options.known_hosts}: no known_hosts file: give --known-hosts")
    if to is not None and not _ID.match(to):
        raise VpcgenError(f"{to!r} is not a release name")
    start = time.monotonic()
    remote = None
    try:
        remote = Remote(connect(target, options.known_hosts, options.identity))
        remote.lock(f"{target.base}/lock")
        d = RouterDeploy(target, remote, progress)
        d.settle()
        probe = d.probe()
        if to is None:
            earlier = [i for i in probe.history if i != probe.current and i in probe.releases]
            if not earlier:
                return Outcome(router, "failed", f"no previous release on the router to go back to (current: "
                               f"{probe.current or 'none'}, releases: {', '.join(probe.releases) or 'none'})")
            to = earlier[-1]
        if to not in probe.releases:
            return Outcome(router, "failed", f"no release {to} on the router (releases: "
                           f"{', '.join(probe.releases) or 'none'})")
        if to == probe.current and not probe.pending:
            return Outcome(router, "skipped", f"{to} is already the current release")
        state = _release_state(d, to)
        if state is None or _settings_problem(state.manifest) or \
                state.manifest["deploy"]["root"].rstrip("/") != target.root:
            return Outcome(router, "failed", f"release {to} on the router is incomplete or not one vpcgen wrote "
                           "for this deploy root")
        probe.states[to] = state
        # the release's own checks, reloads and health checks, as it was built
        old = RouterDeploy(Target(RouterTree(router, target.tree.dir, state.manifest, b"", [], None), options.commands),
                           remote, progress)
        _check_release(old, to, state)
        outcome = apply_release(old, probe, to, state, affected_services(probe.running(), state),
                                _changed_files(probe.state(probe.current), state), "rollback",
                                options.confirm(target), prune=False)
    except CONNECTION_ERRORS as exc:
        outcome = Outcome(router, "failed", str(exc) or type(exc).__name__)
    finally:
        if remote is not None:
            remote.close()
    outcome.seconds = time.monotonic() - start
    return outcome
