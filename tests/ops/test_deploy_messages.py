"""What deploy says: a rotated secret per router and file without its value, and connection
failures in words (host, port, reason) without the SSH library's noise."""

from __future__ import annotations

import hashlib
import json
import socket

from test_deploy import ROUTERS, Lab, lab, results, server  # noqa: F401 (fixtures)

from vpcgen.tree import SECRET_SUMS


def test_dry_run_names_each_changed_secret_file_without_its_value(lab, monkeypatch):
    tree = lab.build()
    assert lab.deploy()[0] == 0
    monkeypatch.setenv("VPCGEN_SECRET_HQ_PSK", "rotated in place")
    lab.build()
    code, out, err = lab.deploy("--dry-run")
    assert code == 0, out + err
    assert results(out) == {"pair-r1": "planned", "pair-r2": "planned", "solo-r1": "unchanged"}
    lines = out.splitlines()
    for router in ("pair-r1", "pair-r2"):
        at = next(i for i, line in enumerate(lines) if line.startswith(router + " "))
        block = lines[at + 1:at + 4]
        assert "    secret changed: etc/swanctl/vpcgen-secrets.conf (<redacted>)" in "\n".join(block), out
    assert out.count("secret changed:") == 2
    for router in ("pair-r1", "pair-r2"):  # no value, no sum, no part of a sum
        sums = json.loads((tree / router / SECRET_SUMS).read_text())
        data = (tree / router / "etc/swanctl/vpcgen-secrets.conf").read_bytes()
        for digest in list(sums.values()) + [hashlib.sha256(data).hexdigest()]:
            assert digest[:8] not in out + err
    assert "rotated in place" not in out + err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_router_is_said_in_words(lab):
    port = free_port()
    site = lab.site / "site.yaml"
    site.write_text(site.read_text().replace(f"port: {lab.server.port}", f"port: {port}"))
    lab.build()
    code, out, err = lab.deploy("--router", "solo-r1")
    assert code == 1
    assert f"cannot reach {ROUTERS['solo-r1']}:{port}: connection refused" in out + err, out + err
    assert "Errno" not in out + err and "Unable to connect" not in out + err
