"""`python -m vpcgen`: the same command line as `vpcgen`."""

from .cli import run

run()
