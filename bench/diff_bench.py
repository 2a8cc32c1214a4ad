"""Time of `vpcgen diff` beyond its two builds, for a one-rule change on a large synthetic site.

    python3 bench/diff_bench.py [--vpcs 1000] [--tiers 4] [--rules 30] [--runs 3]

The site (bench/generate.py) is committed to a temporary git repository; one ACL rule of one tier
is changed in the working tree. Reported: the two builds (base and working tree), the whole diff,
and the reachability comparison alone (what diff adds: both site.json documents compared), each
the median of --runs runs in this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from generate import generate  # noqa: E402

from vpcgen.api import BuildOptions, build_site  # noqa: E402
from vpcgen.gitops.diff import diff_site, extract_base, reachability  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=b@example.invalid", "-c", "user.name=b", *args],
                   check=True, capture_output=True)


def median(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vpcs", type=int, default=1000)
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vpcgen-diff-bench-") as tmp:
        repo = Path(tmp) / "repo"
        site = generate(repo, args.vpcs, args.tiers, args.rules)
        env = {"VPCGEN_SECRET_" + s.upper(): "x" * 16 for s in ("psk", "alice", "ospf")}
        opts = BuildOptions(placeholder_secrets=True, environ=env, redacted_view=True)
        build_site(site, BuildOptions(placeholder_secrets=True, environ=env))  # writes the lock
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "base")
        # one rule of one tier: an ingress port moved (rule 10 of vpc00000-t0)
        acl = site / "acls" / "vpc00000-t0.yaml"
        acl.write_text(acl.read_text().replace("ports: 1001,", "ports: 1101,", 1))
        base_dir = extract_base(site, "HEAD", Path(tmp) / "base")
        t_head, head = median(lambda: build_site(site, opts), args.runs)
        t_base, base = median(lambda: build_site(base_dir, opts), args.runs)
        t_reach, entries = median(lambda: reachability(base.tree, head.tree), args.runs)
        t_diff, report = median(lambda: diff_site(site, "HEAD", environ=env), args.runs)
        print(json.dumps({
            "vpcs": args.vpcs, "tiers": args.tiers, "rules": args.rules, "runs": args.runs,
            "build_head_s": round(t_head, 3), "build_base_s": round(t_base, 3),
            "diff_total_s": round(t_diff, 3), "diff_beyond_builds_s": round(t_diff - t_head - t_base, 3),
            "reachability_s": round(t_reach, 3), "entries": len(entries),
            "first_entry": entries[0] if entries else None}, indent=2))
        assert report.reachability == entries


if __name__ == "__main__":
    main()
