"""A throwaway OpenSSH server (Debian's /usr/sbin/sshd) on loopback addresses, for deploy tests
and the deploy benchmark. It is stopped by its own PID; nothing of the machine's sshd changes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vpcgen-test", "-f", str(path)],
                   check=True)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """One sshd; ``like`` makes another instance with the same port and keys (sshd listens on at
    most 16 addresses, so many routers need several instances)."""

    def __init__(self, workdir: Path, addresses: list[str], like: "Sshd | None" = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.addresses = addresses
        self.proc: subprocess.Popen | None = None
        if like is not None:
            self.port, self.host_key_pub, self.user_key = like.port, like.host_key_pub, like.user_key
            for name in ("host_key", "authorized_keys"):
                (self.dir / name).write_bytes((like.dir / name).read_bytes())
            (self.dir / "host_key").chmod(0o600)
            return
        self.port = free_port()
        self.host_key_pub = keygen(self.dir / "host_key")
        self.user_key = self.dir / "user_key"
        (self.dir / "authorized_keys").write_text(keygen(self.user_key) + "\n")

    def known_hosts(self, addresses: list[str] | None = None, key: str | None = None) -> str:
        key_type, key_data = (key or self.host_key_pub).split()[:2]
        return "".join(f"[{a}]:{self.port} {key_type} {key_data}\n" for a in (addresses or self.addresses))

    def start(self) -> "Sshd":
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            *[f"ListenAddress {a}" for a in self.addresses],
            f"HostKey {self.dir / 'host_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "LogLevel ERROR", "MaxSessions 100", "MaxStartups 200",
            "ClientAliveInterval 0", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(self.dir / "sshd.log", "w"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.addresses[0], self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("sshd exited: " + (self.dir / "sshd.log").read_text())
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def session_pids(self) -> list[int]:
        """PIDs of this server's per-connection children (to cut a connection from the server side)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_sessions(self) -> None:
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
