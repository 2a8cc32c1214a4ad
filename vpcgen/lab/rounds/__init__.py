"""`vpcgen lab test`: the scenario rounds against a running lab, one module per round.

Every expectation comes from the oracle (built from the tree's site.json), never from the routers'
files: the routers' files are what is being proved.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from . import acl, convert, daytwo, deploy, failover, guest, ha, reach, redundancy, services, vxlan
from .context import Check, Lab

# the rounds in the order `lab test` runs them: the site as built first (vxlan, guest, failover and
# ha kill routers: they come after the others; vxlan starts the one it stops again, as its last
# check), then the rounds that deploy changed copies of it through the management network (convert
# last: the lab then runs the rebuilt site)
ROUNDS = {
    "redundancy": redundancy.run,
    "acl": acl.run,
    "services": services.run,
    "reach": reach.run,
    "vxlan": vxlan.run,
    "guest": guest.run,
    "failover": failover.run,
    "ha": ha.run,
    "daytwo": daytwo.run,
    "deploy": deploy.run,
    "convert": convert.run,
}

__all__ = ["Check", "Lab", "ROUNDS", "run", "results_json"]


def run(tree_dir, rounds=tuple(ROUNDS), progress=lambda m: None, site_dir=None) -> Lab:
    lab = Lab(tree_dir, progress, site_dir)
    for name in rounds:
        ROUNDS[name](lab)
    return lab


def results_json(lab: Lab) -> str:
    return json.dumps({"checks": [asdict(c) for c in lab.checks], "failover": lab.figures,
                       "passed": sum(c.ok for c in lab.checks), "failed": sum(not c.ok for c in lab.checks)},
                      indent=2, sort_keys=True) + "\n"
