"""vpcgen: compile a YAML repository of VPCs into per-router configuration trees."""

__version__ = "0.1.0"
