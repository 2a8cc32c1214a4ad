"""`vpcgen deploy`: ship built router trees over SSH (Fabric), atomically, one release at a time.

On the router, under its deploy root R:

    R/var/lib/vpcgen/releases/<id>/...   one complete tree per deploy (modes preserved)
    R/var/lib/vpcgen/current -> releases/<id>
    R/<path> -> R/var/lib/vpcgen/current/<path>   for every file of the tree

so switching ``current`` (a rename over the old link) switches every file of every daemon at
once. Per router: lock, compare manifests, upload into a partial directory, verify checksums,
run the daemons' checkers on the new release, switch, reload what changed in dependency
order, check health; on any failure switch back and reload the previous release.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paramiko
from fabric import Connection

from .errors import VpcgenError
from .render import SERVICE_ORDER

MANIFEST = "etc/vpcgen/manifest.json"
STATE_DIR = "var/lib/vpcgen"
COMMAND_TIMEOUT = 120.0


@dataclass
class Target:
    name: str
    vpc: str
    mgmt: str
    tree: Path
    manifest: dict
    manifest_bytes: bytes

    @property
    def settings(self) -> dict:
        return self.manifest["deploy"]

    @property
    def root(self) -> str:
        return self.settings["root"].rstrip("/")

    @property
    def base(self) -> str:
        return f"{self.root}/{STATE_DIR}"

    def files(self) -> list[str]:
        return [f["path"] for f in self.manifest["files"]] + [MANIFEST]


@dataclass
class Outcome:
    router: str
    status: str  # changed | skipped | failed | rolled back | planned | unchanged
    detail: str = ""
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)


class RemoteError(Exception):
    pass


def load_targets(tree_dir: Path, only: list[str] | None) -> list[Target]:
    tree_dir = Path(tree_dir)
    if not (tree_dir / "site.json").is_file():
        raise VpcgenError(f"{tree_dir}: not a built site (run `vpcgen build` first)")
    targets = []
    for router_dir in sorted(p for p in tree_dir.iterdir() if (p / MANIFEST).is_file()):
        data = (router_dir / MANIFEST).read_bytes()
        manifest = json.loads(data)
        targets.append(Target(router_dir.name, manifest["vpc"], manifest["mgmt"], router_dir, manifest, data))
    if only:
        unknown = sorted(set(only) - {t.name for t in targets})
        if unknown:
            raise VpcgenError(f"no router {', '.join(unknown)} in {tree_dir}")
        targets = [t for t in targets if t.name in only]
    placeholder = [t.name for t in targets if not t.manifest.get("deployable")]
    if placeholder:
        raise VpcgenError(f"{tree_dir} was built with --placeholder-secrets and cannot be deployed "
                          f"(routers: {', '.join(placeholder)}); build it with the real secrets")
    for t in targets:
        for f in t.manifest["files"]:
            data = (t.tree / f["path"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise VpcgenError(f"{t.tree / f['path']} does not match its manifest: the tree was changed "
                                  "after the build; build it again")
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
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise RemoteError(f"host key of {target.mgmt} is not in {known_hosts}: refusing (vpcgen never "
                              "adds host keys; pin it with ssh-keyscan after checking it)") from None
        raise RemoteError(f"ssh to {target.mgmt}: {exc}") from None
    except OSError as exc:
        raise RemoteError(f"cannot reach {target.mgmt}:{ssh['port']}: {exc}") from None
    return conn


class Remote:
    """Commands on one router over one SSH connection."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.lock_channel = None

    def run(self, command: str, data: bytes = b"", timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
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
        (name of the failed step or None, its exit code, its output)."""
        if not steps:
            return None, 0, ""
        script = "".join(f"echo {shlex.quote('@@step ' + name)}\n( {command}\n) 2>&1 || "
                         f"{{ rc=$?; echo {shlex.quote('@@failed ' + name)} $rc; exit 1; }}\n"
                         for name, command in steps)
        rc, out = self.run(script, data)
        failed = re.search(r"^@@failed (\S+) (\d+)$", out, re.M)
        if failed is None and rc == 0:
            return None, 0, out
        name = failed.group(1) if failed else "?"
        section = out.split(f"@@step {name}\n", 1)[-1].split(f"@@failed {name}", 1)[0].strip()
        return name, int(failed.group(2)) if failed else rc, section or out

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


def tar_of(target: Target) -> bytes:
    """The router's tree as a tar stream: fixed owner and times, modes from the manifest."""
    buf = io.BytesIO()
    modes = {f["path"]: int(f["mode"], 8) for f in target.manifest["files"]}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(target.files()):
            data = (target.tree / path).read_bytes()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), modes.get(path, 0o644), 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def substitute(command: str, target: Target, release: str) -> str:
    return command.replace("{root}", target.root or "/").replace("{release}", release).replace(
        "{router}", target.name)


def affected_services(old: dict | None, new: dict) -> list[str]:
    """Services whose files changed, were added or removed, in dependency order."""
    if old is None:
        return [s["name"] for s in new["services"]]
    before = {f["path"]: (f["sha256"], f["mode"], f["service"]) for f in old.get("files", [])}
    after = {f["path"]: (f["sha256"], f["mode"], f["service"]) for f in new["files"]}
    touched = {v[2] for p, v in after.items() if before.get(p) != v} | \
              {v[2] for p, v in before.items() if p not in after}
    return [s for s in SERVICE_ORDER if s in touched]


def reload_commands(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["reload"] for s in manifest["services"]}


@dataclass
class Probe:
    manifest: dict | None  # deployed now
    release: str | None  # path of the current release
    vrrp: str | None  # MASTER, BACKUP, ... on a pair


class RouterDeploy:
    """The steps for one router, batched into few SSH sessions (each costs a fork and a shell on
    the router); every remote path is under the router's deploy root."""

    def __init__(self, target: Target, remote: Remote, progress: Callable[[str, str], None]):
        self.t, self.r, self.say = target, remote, progress
        self.q = shlex.quote

    def probe(self) -> Probe:
        base, q = self.t.base, self.q
        vrrp = self.t.settings.get("vrrp")
        state = substitute(vrrp["state"], self.t, "") if vrrp else "true"
        rc, out = self.r.run(f"echo \"@@vrrp $({state} 2>/dev/null)\"; echo \"@@current $(readlink -f {q(base)}/current)\"; "
                             f"cat {q(base)}/current/{MANIFEST} 2>/dev/null; true")
        fields = dict(re.findall(r"^@@(vrrp|current) ?(.*)$", out, re.M))
        text = out.split("\n", 2)[2] if out.count("\n") >= 2 else ""
        try:
            manifest = json.loads(text) if text.strip() else None
        except ValueError:
            manifest = None
        current = fields.get("current", "").strip()
        return Probe(manifest, current if manifest and current else None,
                     fields.get("vrrp", "").strip().upper() or None if vrrp else None)

    def upload_and_check(self, release_id: str) -> str:
        """Upload into a partial directory, verify every checksum, name the release, run the checkers."""
        base, q = self.t.base, self.q
        partial = f"{base}/releases/.partial-{release_id}"
        release = f"{base}/releases/{release_id}"
        data = tar_of(self.t)
        checks = [(f"check:{e['service']}", substitute(e["command"], self.t, release))
                  for e in self.t.settings["checks"]]
        self.say(self.t.name, f"uploading {len(self.t.files())} files ({len(data) // 1024} KiB), checking "
                 f"{', '.join(name[6:] for name, _ in checks) or 'nothing'}")
        sums = "".join(f"{f['sha256']}  {f['path']}\n" for f in self.t.manifest["files"])
        # leftovers of an interrupted upload are never activated; they are removed first. The
        # release appears under its final name only once every file is in and verified.
        upload = (f"set -e; umask 077; mkdir -p {q(base)}/releases; rm -rf {q(base)}/releases/.partial-*; "
                  f"mkdir {q(partial)}; tar -x -p -f - -C {q(partial)}; cd {q(partial)}; "
                  f"printf %s {q(sums)} | sha256sum --quiet --strict -c -; mv -T {q(partial)} {q(release)}")
        failed, rc, out = self.r.steps([("upload", upload)] + checks, data)
        if failed == "upload":
            raise RemoteError(f"upload failed (exit {rc}): {out[-500:]}")
        if failed:
            raise RemoteError(f"{failed[6:]} checker rejected the new release (exit {rc}): {out[-500:]}")
        return release

    def switch_script(self, release: str, files: list[str], old_files: list[str]) -> str:
        """Point every file's link at current, then swap current in one rename."""
        base, root, q = self.t.base, self.t.root, self.q
        lines = ["set -e"]
        for path in sorted(files):
            link, dest, aside = f"{root}/{path}", f"{base}/current/{path}", f"{base}/displaced/{path}"
            # a file vpcgen did not put there is kept aside once, never overwritten
            lines.append(f"mkdir -p $(dirname {q(link)}); if [ -e {q(link)} ] && [ ! -L {q(link)} ]; then "
                         f"mkdir -p $(dirname {q(aside)}); mv {q(link)} {q(aside)}; fi; "
                         f"[ \"$(readlink {q(link)})\" = {q(dest)} ] || ln -sfn {q(dest)} {q(link)}")
        lines.append(f"ln -sfn releases/$(basename {q(release)}) {q(base)}/current.new && "
                     f"mv -T {q(base)}/current.new {q(base)}/current")
        for path in sorted(set(old_files) - set(files)):
            lines.append(f"rm -f {q(root + '/' + path)}")
        return "\n".join(lines)

    def activate(self, release: str, manifest: dict, files: list[str], old_files: list[str], services: list[str],
                 health: bool = True) -> None:
        """Switch to ``release``, reload ``services`` in order, check health, prune old releases."""
        commands = reload_commands(manifest)
        reloads = [(f"reload:{s}", substitute(commands[s], self.t, release)) for s in services if s in commands]
        self.say(self.t.name, f"switching to {Path(release).name}, reloading "
                 f"{', '.join(name[7:] for name, _ in reloads) or 'nothing'}")
        steps = [("switch", self.switch_script(release, files, old_files))] + reloads
        if health:
            steps += [(f"health:{e['service']}", substitute(e["command"], self.t, release))
                      for e in self.t.settings["health"]]
            keep, q = self.t.settings["keep_releases"], self.q
            steps.append(("prune", f"cd {q(self.t.base)}/releases && ls -1 | sort -r | tail -n +{keep + 1} | "
                          f"grep -vx {q(Path(release).name)} | xargs -r rm -rf -- ; true"))
        failed, rc, out = self.r.steps(steps)
        if failed == "switch":
            raise RemoteError(f"switching releases failed (exit {rc}): {out[-500:]}")
        if failed and failed.startswith("reload:"):
            raise RemoteError(f"reloading {failed[7:]} failed (exit {rc}): {out[-500:]}")
        if failed:
            raise RemoteError(f"{failed[7:]} is not healthy after the reload (exit {rc}): {out[-300:]}")

    def wait_vrrp(self) -> None:
        """A pair's router must be back in VRRP (MASTER or BACKUP) before its peer is touched."""
        vrrp = self.t.settings.get("vrrp")
        if not vrrp:
            return
        deadline = time.monotonic() + vrrp["wait_s"]
        while (state := self.probe().vrrp) not in ("MASTER", "BACKUP"):
            if time.monotonic() > deadline:
                raise RemoteError(f"VRRP state is {state or 'unknown'} {vrrp['wait_s']} s after the reload "
                                  "(expected MASTER or BACKUP)")
            time.sleep(0.5)


def release_name(target: Target) -> str:
    digest = hashlib.sha256(target.manifest_bytes).hexdigest()[:12]
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{digest}"


def deploy_one(target: Target, remote: Remote, probe: Probe, dry_run: bool, progress) -> Outcome:
    d = RouterDeploy(target, remote, progress)
    old, old_release = probe.manifest, probe.release
    services = affected_services(old, target.manifest)
    changed_files = _changed_files(old, target.manifest)
    if old is not None and _router_part(old) == _router_part(target.manifest):
        return Outcome(target.name, "unchanged" if dry_run else "skipped", "same manifest as deployed")
    if dry_run:
        return Outcome(target.name, "planned", "first deploy" if old is None else "", files=changed_files,
                       services=services)
    release = d.upload_and_check(release_name(target))
    old_files = [f["path"] for f in old["files"]] + [MANIFEST] if old else []
    try:
        d.activate(release, target.manifest, target.files(), old_files, services)
        d.wait_vrrp()
    except RemoteError as exc:
        if old is None or old_release is None:
            return Outcome(target.name, "failed", f"{exc}; no previous release to restore: the new one stays active")
        progress(target.name, f"failed: {exc}; restoring {Path(old_release).name}")
        try:
            d.activate(old_release, old, old_files, target.files(), services, health=False)
        except RemoteError as again:
            return Outcome(target.name, "failed", f"{exc}; restoring the previous release failed too: {again}")
        return Outcome(target.name, "rolled back", str(exc), files=changed_files, services=services)
    return Outcome(target.name, "changed", f"release {Path(release).name}", files=changed_files,
                   services=services)


def _router_part(manifest: dict) -> str:
    """What makes two deploys of a router the same: its files, services and deploy settings (not the
    site digest, which changes whenever any router of the site changes)."""
    return json.dumps({k: manifest.get(k) for k in ("files", "services", "deploy", "router", "mgmt")}, sort_keys=True)


def _changed_files(old: dict | None, new: dict) -> list[str]:
    before = {f["path"]: f["sha256"] for f in (old or {}).get("files", [])}
    after = {f["path"]: f["sha256"] for f in new["files"]}
    return sorted({p for p in after if before.get(p) != after[p]} | {f"-{p}" for p in before if p not in after})


@dataclass
class DeployOptions:
    known_hosts: Path
    identity: list[str] = field(default_factory=list)
    dry_run: bool = False
    parallel: int = 1


def deploy_tree(tree_dir: Path, only: list[str] | None, options: DeployOptions,
                progress: Callable[[str, str], None]) -> list[Outcome]:
    targets = load_targets(tree_dir, only)
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
            except (RemoteError, paramiko.SSHException, OSError, EOFError) as exc:
                if remote is not None:
                    remote.close()
                say(t.name, f"failed: {exc}")
                outcomes.append(Outcome(t.name, "failed", str(exc)))
        order = [t for t in group if t.name in remotes]
        probes = {}
        for t in list(order):
            try:
                probes[t.name] = RouterDeploy(t, remotes[t.name], say).probe()
            except (RemoteError, paramiko.SSHException, OSError, EOFError) as exc:
                outcomes.append(Outcome(t.name, "failed", f"{exc}" or type(exc).__name__))
                order.remove(t)
        if len(order) == 2:
            # the master last; with no master known, the lower-priority (second) router first
            order.sort(key=lambda t: (probes[t.name].vrrp == "MASTER", t.settings["vrrp"]["priority"]))
            for t in order:
                say(t.name, f"VRRP state {probes[t.name].vrrp or 'unknown'}")
        for i, t in enumerate(order):
            start = time.monotonic()
            try:
                outcome = deploy_one(t, remotes[t.name], probes[t.name], options.dry_run, say)
            except (RemoteError, paramiko.SSHException, OSError, EOFError) as exc:
                outcome = Outcome(t.name, "failed", f"{exc}" or type(exc).__name__)
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
