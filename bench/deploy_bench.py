"""Wall time of `vpcgen deploy` to many routers (run on demand, not in CI).

    .venv/bin/python bench/deploy_bench.py --routers 50 --parallel 1 10

Real sshd instances (Debian's /usr/sbin/sshd, 16 loopback addresses each, one per router) share
one port and host key; every router is a folder under a temporary deploy root. The site is the deploy-test fixture's shape: redundant
pairs with a load balancer and a VPN, service commands that only log. Each figure is a first
deploy (every file uploaded, every service reloaded) followed by a changed-ACL deploy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from sshd import Sshd  # noqa: E402

FIXTURE = ROOT / "tests/fixtures/sites/deploy"


def make_site(tmp: Path, server: Sshd, addresses: list[str], pairs: int, routers_dir: Path) -> Path:
    site = tmp / "site"
    shutil.copytree(FIXTURE, site)
    (site / "vpcs/pair.yaml").unlink()
    (site / "vpcs/solo.yaml").unlink()
    text = (site / "site.yaml.in").read_text().replace("@PORT@", str(server.port)).replace("@ROUTERS@", str(routers_dir))
    (site / "site.yaml").write_text(text)
    for i in range(pairs):
        a, b = addresses[2 * i], addresses[2 * i + 1]
        (site / "vpcs" / f"p{i:03d}.yaml").write_text(
            f"name: p{i:03d}\nzone: z\ncidr: 10.{i}.0.0/16\nrouters:\n  - {{name: p{i:03d}-a, mgmt: {a}}}\n"
            f"  - {{name: p{i:03d}-b, mgmt: {b}}}\ntiers:\n  - {{name: web, netmask: 24, acl: web}}\n"
            f"public_ips:\n  - {{name: www}}\nload_balancers:\n  - {{name: www, public_ip: www, public_port: 80, "
            f"protocol: tcp, members: [10.{i}.0.10]}}\nvpn:\n  site_to_site:\n    - {{name: hq, peer: 192.0.2.{i + 1}, "
            f"peer_cidrs: [172.16.{i}.0/24], psk: {{secret: hq-psk}}}}\n")
        for name, state in ((f"p{i:03d}-a", "MASTER"), (f"p{i:03d}-b", "BACKUP")):
            (routers_dir / name).mkdir(parents=True, exist_ok=True)
            (routers_dir / name / "vrrp.state").write_text(state + "\n")
    (site / "known_hosts").write_text(server.known_hosts(addresses))
    return site


def vpcgen(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, VPCGEN_SECRET_HQ_PSK="bench")
    return subprocess.run([sys.executable, "-m", "vpcgen.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


def timed(*args) -> float:
    start = time.perf_counter()
    result = vpcgen(*args)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routers", type=int, default=50)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    pairs = args.routers // 2
    addresses = [f"127.0.{100 + i // 250}.{i % 250 + 1}" for i in range(2 * pairs)]
    with tempfile.TemporaryDirectory() as tmp:
        chunks = [addresses[i:i + 16] for i in range(0, len(addresses), 16)]
        server = Sshd(Path(tmp) / "sshd0", chunks[0]).start()
        others = [Sshd(Path(tmp) / f"sshd{i}", chunk, like=server).start() for i, chunk in enumerate(chunks[1:], 1)]
        try:
            for parallel in args.parallel:
                run = Path(tmp) / f"p{parallel}"
                routers = run / "routers"
                site = make_site(run, server, addresses, pairs, routers)
                tree = run / "out/deploy"
                if vpcgen("build", site, "--output", run / "out").returncode != 0:
                    raise SystemExit("build failed")
                first = timed("deploy", tree, "-i", server.user_key, "--parallel", parallel)
                acl = site / "acls/web.yaml"
                acl.write_text(acl.read_text().replace("ports: 80", "ports: 8080"))
                vpcgen("build", site, "--output", run / "out")
                change = timed("deploy", tree, "-i", server.user_key, "--parallel", parallel)
                same = timed("deploy", tree, "-i", server.user_key, "--parallel", parallel)
                print(f"{2 * pairs} routers  --parallel {parallel:>3}   first deploy {first:6.2f} s   "
                      f"one ACL changed {change:6.2f} s   unchanged (all skipped) {same:6.2f} s")
        finally:
            for s in [server, *others]:
                s.stop()


if __name__ == "__main__":
    main()
