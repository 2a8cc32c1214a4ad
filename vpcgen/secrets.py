"""Secret references ({secret: NAME}) resolved from the environment or the site's secrets/ folder."""

from __future__ import annotations

from pathlib import Path

from .errors import Diagnostic
from .intent import Site, Src

PLACEHOLDER = "vpcgen-placeholder-not-a-secret"


def env_name(name: str) -> str:
    return "VPCGEN_SECRET_" + name.upper().replace("-", "_")


def secret_refs(site: Site) -> list[tuple[str, Src]]:
    """Every secret reference of the site with the location of its `{secret: ...}` mapping."""
    refs: list[tuple[str, Src]] = []
    for zone in site.zones.values():
        if zone.ospf is not None and zone.ospf.auth_key:
            refs.append((zone.ospf.auth_key, zone.src.at("ospf", "auth_key")))
    for vpc in site.vpcs.values():
        for v in vpc.site_to_site:
            refs.append((v.psk, v.src.at("psk")))
        ra = vpc.remote_access
        if ra is not None:
            refs.append((ra.server_cert, ra.src.at("server_cert")))
            refs.append((ra.server_key, ra.src.at("server_key")))
            refs += [(u.password, ra.src.at("users", i, "password")) for i, u in enumerate(ra.users)]
    return refs


def resolve(site: Site, site_root: Path, environ: dict, placeholder: bool) -> tuple[dict[str, str], list[Diagnostic]]:
    """name -> value for every referenced secret; every missing one is reported at once."""
    values: dict[str, str] = {}
    problems: list[Diagnostic] = []
    for name, src in secret_refs(site):
        if name in values:
            continue
        if placeholder:
            values[name] = PLACEHOLDER
            continue
        if env_name(name) in environ:
            values[name] = environ[env_name(name)]
            continue
        path = site_root / "secrets" / name
        if path.is_file():
            values[name] = path.read_text(encoding="utf-8").rstrip("\n")
            continue
        problems.append(Diagnostic(src.loc(), f"secret '{name}' is missing: set {env_name(name)} or create "
                                   f"secrets/{name} (or build with --placeholder-secrets)", "missing-secret"))
    return values, problems

