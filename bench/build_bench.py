"""Wall time and peak memory of `vpcgen build` on synthetic sites (run on demand, not in CI).

    python3 bench/build_bench.py --vpcs 1000 2000 [--tiers 4] [--rules 30] [--runs 3]

Each build runs in a fresh process; peak memory is that process's maximum resident set size.
The first build of a site writes its lock file; the timed runs are the median of --runs builds
with the lock present, as in everyday use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate import generate  # noqa: E402


def timed_build(site: Path, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vpcgen.cli", "build", str(site), "--output", str(out),
                             "--placeholder-secrets"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"build failed for {site}:\n{proc.stderr.read().decode()[:2000]}")
    return wall, rusage.ru_maxrss / 1024  # MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vpcs", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-services", dest="services", action="store_false")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.vpcs:
            site = generate(Path(tmp) / f"n{n}", n, args.tiers, args.rules, args.services)
            timed_build(site, Path(tmp) / "out")  # writes the lock
            runs = [timed_build(site, Path(tmp) / "out") for _ in range(args.runs)]
            wall = statistics.median(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            results[n] = wall
            print(f"{n:>6} VPCs  {2 * n:>6} routers  {n * args.tiers:>6} tiers  "
                  f"{n * args.tiers * args.rules:>7} rules   wall {wall:6.2f} s   peak RSS {peak:7.1f} MiB")
    if len(results) > 1:
        low, high = min(results), max(results)
        print(f"scaling {low} -> {high} VPCs: x{results[high] / results[low]:.2f} time for x{high / low:.1f} input")


if __name__ == "__main__":
    main()
