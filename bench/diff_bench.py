"""Time of `vpcgen diff` beyond its two builds, for a one-rule change on a large synthetic site.

    python3 bench/diff_bench.py [--vpcs 1000] [--tiers 4] [--rules 30] [--runs 1]

The site (bench/generate.py) is committed to a temporary git repository; one ACL rule of one tier
is changed in the working tree. Reported: the time of each of the diff's two builds, the whole
diff, and the difference (what diff adds: extracting the base, comparing both site.json documents
for reachability, the intent, the lock and every router's files), the median of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from generate import generate  # noqa: E402

from vpcgen.api import BuildOptions, build_site  # noqa: E402
from vpcgen.gitops import diff  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=b@example.invalid", "-c", "user.name=b", *args],
                   check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vpcs", type=int, default=1000)
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    builds: list[float] = []
    real_build = diff._build

    def timed_build(*a, **kw):  # the two builds, timed apart from the rest of the diff
        start = time.perf_counter()
        try:
            return real_build(*a, **kw)
        finally:
            builds.append(time.perf_counter() - start)

    diff._build = timed_build
    reach: list[float] = []
    real_reach = diff.reachability

    def timed_reach(*a, **kw):  # the reachability comparison alone
        start = time.perf_counter()
        try:
            return real_reach(*a, **kw)
        finally:
            reach.append(time.perf_counter() - start)

    diff.reachability = timed_reach
    with tempfile.TemporaryDirectory(prefix="vpcgen-diff-bench-") as tmp:
        repo = Path(tmp) / "repo"
        site = generate(repo, args.vpcs, args.tiers, args.rules)
        env = {"VPCGEN_SECRET_" + s.upper(): "x" * 16 for s in ("psk", "alice", "ospf")}
        build_site(site, BuildOptions(placeholder_secrets=True, environ=env))  # writes the lock
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "base")
        # one rule of one tier (rule 10 of vpc00000-t0, the tier its port forward goes to): tcp/443 from anywhere
        acl = site / "acls" / "vpc00000-t0.yaml"
        acl.write_text(acl.read_text().replace("protocol: udp, ports: 1001, cidrs: [172.17.0.0/24]",
                                              "protocol: tcp, ports: 443, cidrs: [0.0.0.0/0]", 1))
        runs = []
        for _ in range(args.runs):
            builds.clear()
            reach.clear()
            start = time.perf_counter()
            report = diff.diff_site(site, "HEAD", environ=env)
            total = time.perf_counter() - start
            runs.append((total - sum(builds), total, list(builds), sum(reach)))
        beyond, total, both, reachability_s = sorted(runs)[len(runs) // 2]
        print(json.dumps({
            "vpcs": args.vpcs, "tiers": args.tiers, "rules": args.rules, "runs": args.runs,
            "builds_s": [round(b, 3) for b in both], "diff_total_s": round(total, 3),
            "diff_beyond_builds_s": round(beyond, 3), "reachability_s": round(reachability_s, 3),
            "entries": len(report.reachability),
            "entries_list": report.reachability}, indent=2))


if __name__ == "__main__":
    main()
