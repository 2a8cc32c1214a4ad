"""`vpcgen lab test`: the scenario rounds against a running lab, one module per round.

Every expectation comes from the oracle (built from the tree's site.json), never from the routers'
files: the routers' files are what is being proved.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from . import acl, deploy, failover, guest, ha, redundancy, services
from .context import Check, Lab

# the rounds in the order `lab test` runs them: deploy first (a restarted router has no sshd and no
# releases; the round deploys the lab's own tree again at its end); redundancy, guest, failover and
# ha kill routers
ROUNDS = {
    "deploy": deploy.run,
    "redundancy": redundancy.run,
    "acl": acl.run,
    "services": services.run,
    "guest": guest.run,
    "failover": failover.run,
    "ha": ha.run,
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
