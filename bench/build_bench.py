"""Build time, libyaml load time and peak memory of `vpcgen build` on synthetic sites (run on
demand, not in CI), side by side in one run.

    .venv/bin/python bench/build_bench.py --vpcs 1000 2000 10000 [--runs 3] [--aerleon PATH/TO/aclgen]

For each size: the site (bench/generate.py's shape: redundant NAT VPCs x 4 tiers x 30-rule ACLs),
then, alternating, --runs builds, --runs loads of the same files by PyYAML's CSafeLoader (libyaml)
and --runs fresh builds, each in a process of its own; peak memory is the build process's maximum
resident set size (its worker processes included). The first build writes the lock file; the timed
builds find it, as in everyday use, and replace the previous output (recycling the tree it replaced
before). A fresh build writes into an empty output folder (as CI does on a clean checkout); those
folders are removed once the size is done. Figures are min and median; the ratio is build / load,
pair by pair.

With --aerleon (an `aclgen` of aerleon 1.18, installed in a venv of its own), the ACLs of the
--aerleon-vpcs site are converted to aerleon policies (bench/aerleon_policies.py) and aclgen renders
them to iptables, alternating with vpcgen building that site: the ratio is aclgen / vpcgen.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from aerleon_policies import convert  # noqa: E402
from generate import generate  # noqa: E402

import vpcgen  # noqa: E402

# what "just loading the files" means: every YAML file of the site through CSafeLoader
LOAD = """
import sys, yaml
from pathlib import Path
for path in sorted(Path(sys.argv[1]).rglob("*.yaml")):
    yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
"""


def timed(args: list[str], **kwargs) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process. Its stderr goes to a file: a pipe nobody
    reads until the end fills up and blocks a chatty process (aclgen's workers log every file)."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors, **kwargs)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            errors.seek(0)
            raise SystemExit(f"{args[:4]} failed:\n{errors.read().decode(errors='replace')[-2000:]}")
    return wall, rusage.ru_maxrss / 1024


def build(site: Path, out: Path) -> tuple[float, float]:
    return timed([sys.executable, "-m", "vpcgen.cli", "build", str(site), "--output", str(out),
                  "--placeholder-secrets"])


def load(site: Path) -> tuple[float, float]:
    return timed([sys.executable, "-c", LOAD, str(site)])


def spread(values: list[float]) -> str:
    return f"{min(values):7.2f} {statistics.median(values):7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vpcs", type=int, nargs="+", default=[1000, 2000, 10000])
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--rules", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-services", dest="services", action="store_false", help="NAT VPCs only")
    parser.add_argument("--aerleon", help="aerleon's aclgen executable: also compare against it")
    parser.add_argument("--aerleon-vpcs", type=int, default=250)
    parser.add_argument("--work", help="keep sites and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    # vpcgen's modules compiled, as a wheel's install leaves them (aclgen's are): an editable install
    # where PYTHONDONTWRITEBYTECODE is set would compile them again in every timed build
    compileall.compile_dir(Path(vpcgen.__file__).parent, quiet=1)
    tmp = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vpcgen-bench-"))
    medians = {}
    print(f"{'VPCs':>6} {'routers':>7} {'files':>6} {'rules':>8} | build s (min, median) | CSafeLoader load s "
          f"(min, median) | build/load (min, median) | build peak RSS MiB")
    try:
        for n in args.vpcs:
            site = generate(tmp / f"n{n}", n, args.tiers, args.rules, args.services)
            out = tmp / f"out{n}"
            build(site, out)  # writes the lock, warms the caches
            build(site, out)  # the tree it replaces is kept for the next build to recycle
            builds, loads, fresh = [], [], []
            for k in range(args.runs):
                builds.append(build(site, out))
                loads.append(load(site))
                fresh.append(build(site, tmp / f"fresh{n}-{k}"))
            files = sum(1 for _ in site.rglob("*.yaml"))
            ratios = [b[0] / l[0] for b, l in zip(builds, loads)]
            fresh_ratios = [f[0] / l[0] for f, l in zip(fresh, loads)]
            medians[n] = statistics.median(b[0] for b in builds)
            print(f"{n:>6} {2 * n:>7} {files:>6} {n * args.tiers * args.rules:>8} | {spread([b[0] for b in builds])}"
                  f"       | {spread([l[0] for l in loads])}            | {spread(ratios)}          | "
                  f"{max(b[1] for b in builds):8.0f}", flush=True)
            print(f"{'':>30} fresh | {spread([f[0] for f in fresh])}       |{'':>28}| {spread(fresh_ratios)}"
                  f"          | {max(f[1] for f in fresh):8.0f}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            for k in range(args.runs):
                shutil.rmtree(tmp / f"fresh{n}-{k}", ignore_errors=True)
        for low in medians:
            for high in medians:
                if high > low:
                    print(f"scaling {low} -> {high} VPCs: x{medians[high] / medians[low]:.2f} build time "
                          f"for x{high / low:.0f} input")
        if args.aerleon:
            n = args.aerleon_vpcs
            site = generate(tmp / f"a{n}", n, args.tiers, args.rules, args.services)
            policies = tmp / f"aerleon{n}"
            rules = convert(site, policies)
            acls = policies / "acls"
            acls.mkdir(exist_ok=True)
            aclgen = [args.aerleon, "--base_directory", str(policies / "policies"), "--definitions_directory",
                      str(policies / "def"), "--output_directory", str(acls)]
            build(site, tmp / f"outa{n}")
            pairs = [(timed(aclgen)[0], build(site, tmp / f"outa{n}")[0]) for _ in range(args.runs)]
            print(f"aerleon aclgen on the same {rules} rules ({n} VPCs): {spread([a for a, _ in pairs])} s; "
                  f"vpcgen build {spread([v for _, v in pairs])} s; aclgen/vpcgen {spread([a / v for a, v in pairs])}")
    finally:
        if not args.work:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
