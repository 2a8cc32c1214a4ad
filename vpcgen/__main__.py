"""`python -m vpcgen`: the same command line as `vpcgen`."""

from .cli import app

app(prog_name="vpcgen")
