"""Time of `vpcgen diff` beyond its two builds, for a one-rule change on a large synthetic site.

    .venv/bin/python bench/diff_bench.py [--vpcs 1000] [--tiers 4] [--rules 30] [--runs 1] [--against REV]

The site (bench/generate.py) is committed to a temporary git repository; one ACL rule of one tier
is changed in the working tree. Reported: the time of each of the diff's two builds, the whole
diff, and the difference (what diff adds: extracting the base, comparing both site.json documents
for reachability, the intent, the lock and every router's files), the median of --runs runs.
Each diff runs in a process of its own; with --against, vpcgen as of that git revision is timed
too, alternating run by run with this one, on the same site.
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


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=b@example.invalid", "-c", "user.name=b", *args],
                   check=True, capture_output=True)


def measure(site: Path, env: dict) -> dict:
    """One diff of ``site`` against HEAD, with the vpcgen this process imported."""
    import vpcgen
    from vpcgen.gitops import diff
    builds: list[float] = []
    reach: list[float] = []

    def timed(real, into):
        def run(*a, **kw):
            start = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                into.append(time.perf_counter() - start)
        return run

    diff._build = timed(diff._build, builds)  # the builds, timed apart from the rest of the diff
    diff.reachability = timed(diff.reachability, reach)  # the reachability comparison alone
    start = time.perf_counter()
    report = diff.diff_site(site, "HEAD", environ=env)
    total = time.perf_counter() - start
    return {"builds_s": [round(b, 3) for b in builds], "diff_total_s": round(total, 3),
            "diff_beyond_builds_s": round(total - sum(builds), 3), "reachability_s": round(sum(reach), 3),
            "entries": report.reachability, "code": str(Path(vpcgen.__file__).parent.parent)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vpcs", type=int, default=1000)
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--against", metavar="REV", help="also time vpcgen as of this git revision, run by run")
    parser.add_argument("--measure", nargs=2, metavar=("CODE", "SITE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = {"VPCGEN_SECRET_" + s.upper(): "x" * 16 for s in ("psk", "alice", "ospf")}
    if args.measure:  # one diff, in a process of its own, with the vpcgen under CODE
        sys.path.insert(0, args.measure[0])
        print(json.dumps(measure(Path(args.measure[1]), env)))
        return
    from vpcgen.api import BuildOptions, build_site
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="vpcgen-diff-bench-") as tmp:
        repo = Path(tmp) / "repo"
        site = generate(repo, args.vpcs, args.tiers, args.rules)
        build_site(site, BuildOptions(placeholder_secrets=True, environ=env))  # writes the lock
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "base")
        # one rule of one tier (rule 10 of vpc00000-t0, the tier its port forward goes to): tcp/443 from anywhere
        acl = site / "acls" / "vpc00000-t0.yaml"
        acl.write_text(acl.read_text().replace("protocol: udp, ports: 1001, cidrs: [172.17.0.0/24]",
                                              "protocol: tcp, ports: 443, cidrs: [0.0.0.0/0]", 1))
        codes = {"this": root}
        if args.against:  # the other revision's vpcgen package, beside this one
            old = Path(tmp) / "against"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(root), "archive", args.against, "vpcgen"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            codes = {args.against: old, **codes}
        runs: dict[str, list[dict]] = {name: [] for name in codes}
        for _ in range(args.runs):  # alternating, so both see the same machine
            for name, code in codes.items():
                out = subprocess.run([sys.executable, __file__, "--measure", str(code), str(site)], check=True,
                                     capture_output=True, text=True).stdout
                runs[name].append(json.loads(out))
        result = {"vpcs": args.vpcs, "tiers": args.tiers, "rules": args.rules, "runs": args.runs}
        for name, measured in runs.items():
            median = sorted(measured, key=lambda m: m["diff_beyond_builds_s"])[len(measured) // 2]
            result[name] = {k: v for k, v in median.items() if k != "entries"} | {"entries": len(median["entries"])}
        if args.against:
            result["same_entries"] = runs[args.against][0]["entries"] == runs["this"][0]["entries"]
            result["beyond_builds_ratio"] = round(result[args.against]["diff_beyond_builds_s"]
                                                  / result["this"]["diff_beyond_builds_s"], 1)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
