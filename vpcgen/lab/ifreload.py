"""The lab's `networking` reload, run on a lab router by deploy (the lab's service command): what
ifupdown does with a changed interfaces file, on the links the lab made. Addresses and routes the
file applied last gave and the new one does not are removed, the new ones added; the links
themselves are the lab's (a link the new file addresses but the lab lacks is an error). The file
applied last is kept in the router's private /run.

    python3 -m vpcgen.lab.ifreload
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..ops.netns import parse_interfaces
from ..tree import GENERATED

APPLIED = Path("/run/vpcgen-lab-applied")  # a root holding the interfaces file applied last


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def main() -> int:
    new, new_routes = parse_interfaces(Path("/"))
    old, old_routes = parse_interfaces(APPLIED) if (APPLIED / GENERATED["interfaces"]).exists() else ({}, [])
    links = {line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link", "show").stdout.splitlines()}
    problems = []
    for ifname in sorted(set(old) | set(new)):
        gone, added = sorted(set(old.get(ifname, [])) - set(new.get(ifname, []))), \
            sorted(set(new.get(ifname, [])) - set(old.get(ifname, [])))
        if ifname not in links:
            if added:
                problems.append(f"{ifname}: the lab has no such link")
            continue
        for address in gone:
            _ip("addr", "del", address, "dev", ifname)  # gone already with its link: nothing to do
        for address in added:
            if (r := _ip("addr", "replace", address, "dev", ifname)).returncode != 0:
                problems.append(f"{ifname} {address}: {r.stderr.strip()}")
    for route in sorted(set(old_routes) - set(new_routes)):
        _ip("route", "del", *route.split())  # a route whose address went has gone with it
    for route in new_routes:
        if (r := _ip("route", "replace", *route.split())).returncode != 0:
            problems.append(f"route {route}: {r.stderr.strip()}")
    (APPLIED / GENERATED["interfaces"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(f"/{GENERATED['interfaces']}", APPLIED / GENERATED["interfaces"])
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
