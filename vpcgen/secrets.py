"""Secret references ({secret: NAME}) resolved from the environment or the site's secrets/ folder.

Each reference has a kind, because a certificate, a private key and an OSPF key each need a
value of their own shape: the placeholder of a kind is a fake value of that shape (so `check`
still loads the daemons' configs), and a real value of the wrong shape is a located error.
No message ever contains a secret value.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from .errors import Diagnostic
from .intent import Site, Src
from .loader import read_inside

PLACEHOLDER = "vpcgen-placeholder-not-a-secret"
REDACTED = "<redacted>"  # what a view for people (diff) shows in place of every secret value

# kind -> (placeholder value, check of a real value, what the value must be)
_OSPF_KEY = re.compile(r"[!-~]{1,16}")  # FRR message-digest keys: one word of at most 16 characters


def _placeholder_file(name: str) -> str:
    return resources.files("vpcgen").joinpath("placeholder", name).read_text(encoding="ascii")


def _is_pem(value: str, label: str) -> bool:
    return f"-----BEGIN {label}-----" in value and f"-----END {label}-----" in value


KINDS = {
    "psk": (lambda: PLACEHOLDER, lambda v: len(v) > 0, "a non-empty pre-shared key"),
    "password": (lambda: PLACEHOLDER, lambda v: len(v) > 0, "a non-empty password"),
    "ospf-key": (lambda: "vpcgen-fake-key", lambda v: _OSPF_KEY.fullmatch(v) is not None,
                 "1 to 16 printable ASCII characters without spaces (FRR message-digest key)"),
    "cert": (lambda: _placeholder_file("ra-cert.pem"), lambda v: _is_pem(v, "CERTIFICATE"),
             "a PEM certificate (-----BEGIN CERTIFICATE-----)"),
    "key": (lambda: _placeholder_file("ra-key.pem"),
            lambda v: any(_is_pem(v, f"{k}PRIVATE KEY") for k in ("", "RSA ", "EC ")),
            "a PEM private key (-----BEGIN PRIVATE KEY-----)"),
}


MAX_SECRET = 1024 * 1024


def _is_text(value: str) -> bool:
    """UTF-8 text (a file's undecodable bytes and the environment's arrive as surrogates)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def env_name(name: str) -> str:
    return "VPCGEN_SECRET_" + name.upper().replace("-", "_")


def secret_refs(site: Site) -> list[tuple[str, Src, str]]:
    """Every secret reference of the site: (name, location of its `{secret: ...}`, kind)."""
    refs: list[tuple[str, Src, str]] = []
    for zone in site.zones.values():
        if zone.ospf is not None and zone.ospf.auth_key:
            refs.append((zone.ospf.auth_key, zone.src.at("ospf", "auth_key"), "ospf-key"))
    for vpc in site.vpcs.values():
        for v in vpc.site_to_site:
            refs.append((v.psk, v.src.at("psk"), "psk"))
        ra = vpc.remote_access
        if ra is not None:
            refs.append((ra.server_cert, ra.src.at("server_cert"), "cert"))
            refs.append((ra.server_key, ra.src.at("server_key"), "key"))
            refs += [(u.password, ra.src.at("users", i, "password"), "password") for i, u in enumerate(ra.users)]
    return refs


def resolve(site: Site, site_root: Path, environ: dict, placeholder: bool) -> tuple[dict[str, str], list[Diagnostic]]:
    """name -> value for every referenced secret; every missing or malformed one is reported at once."""
    values: dict[str, str] = {}
    problems: list[Diagnostic] = []
    for name, src, kind in secret_refs(site):
        make_placeholder, valid, shape = KINDS[kind]
        if name in values:
            value = values[name]
        elif placeholder:
            value = values[name] = make_placeholder()
        elif env_name(name) in environ:
            value = values[name] = environ[env_name(name)]
        elif (site_root / "secrets" / name).is_file() or (site_root / "secrets" / name).is_symlink():
            try:
                raw = read_inside(site_root, site_root / "secrets" / name, MAX_SECRET)
            except OSError as exc:
                problems.append(Diagnostic(src.loc(), f"secret '{name}': cannot read secrets/{name}: "
                                           f"{exc.strerror or exc}", "bad-secret"))
                continue
            value = values[name] = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        else:
            problems.append(Diagnostic(src.loc(), f"secret '{name}' is missing: set {env_name(name)} or create "
                                       f"secrets/{name} (or build with --placeholder-secrets)", "missing-secret"))
            continue
        if not _is_text(value):
            problems.append(Diagnostic(src.loc(), f"secret '{name}' must be UTF-8 text (value not shown)",
                                       "bad-secret"))
        elif not valid(value):
            problems.append(Diagnostic(src.loc(), f"secret '{name}' must be {shape} (value not shown)",
                                       "bad-secret"))
    return values, problems
