"""The pull-request loop: diff, topology graphs, `vpcgen init`."""
