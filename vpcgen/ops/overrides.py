"""Service commands given on the deployer's side, over the ones a tree was built with: for routers
whose service manager differs from the site's (the lab's namespaces have no systemd). The tree is
never changed for them; its manifest and release keys stay what the build made.

The file (``--commands FILE`` or ``VPCGEN_COMMANDS``) is YAML or JSON shaped like the site's
``defaults.deploy.commands``: ``check``, ``reload``, ``health`` and ``status`` map a service (or
status check) to a shell command; ``vrrp_state`` is one command. ``{root}``, ``{release}`` and
``{router}`` are filled in as in the site's commands.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..errors import VpcgenError

KINDS = ("check", "reload", "health", "status")
ENV = "VPCGEN_COMMANDS"


def load(path: Path | str | None = None) -> dict:
    """The overrides of ``path`` (or of the file ``VPCGEN_COMMANDS`` names); {} when there is none."""
    path = path or os.environ.get(ENV) or None
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise VpcgenError(f"{path}: cannot read the command overrides: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise VpcgenError(f"{where}: error: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise VpcgenError(f"{path}: the command overrides must be a mapping")
    for key, value in data.items():
        if key == "vrrp_state":
            ok = isinstance(value, str)
        elif key in KINDS:
            ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        else:
            raise VpcgenError(f"{path}: unknown key {key!r} (known: {', '.join(KINDS + ('vrrp_state',))})")
        if not ok:
            raise VpcgenError(f"{path}: '{key}' must map names to command strings")
    return data


def settings(deploy: dict, overrides: dict) -> dict:
    """A manifest's deploy settings with the overrides' check, health and vrrp_state commands."""
    if not overrides:
        return deploy
    out = dict(deploy)
    for kind, key in (("check", "checks"), ("health", "health")):
        table = overrides.get(kind, {})
        out[key] = [{"service": e["service"], "command": table.get(e["service"], e["command"])} for e in deploy[key]]
    if deploy.get("vrrp") and "vrrp_state" in overrides:
        out["vrrp"] = dict(deploy["vrrp"], state=overrides["vrrp_state"])
    return out


def reloads(commands: dict[str, str], overrides: dict) -> dict[str, str]:
    """A manifest's reload commands (service -> command) with the overrides' ones."""
    table = overrides.get("reload", {})
    return {name: table.get(name, command) for name, command in commands.items()}
