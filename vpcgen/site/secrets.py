"""Secret references ({secret: NAME}) resolved from the environment or the site's secrets/ folder.

Each reference has a kind, because a certificate, a private key and an OSPF key each need a
value of their own shape: the placeholder of a kind is a fake value of that shape (so `check`
still loads the daemons' configs), and a real value of the wrong shape is a located error.
No message ever contains a secret value.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

from ..errors import Diagnostic
from .intent import Site, Src
from .loader import read_inside

PLACEHOLDER = "vpcgen-placeholder-not-a-secret"
REDACTED = "<redacted>"  # what a view for people (diff) shows in place of every secret value

# kind -> (placeholder value, check of a real value, what the value must be)
_OSPF_KEY = re.compile(r"[!-~]{1,16}")  # FRR message-digest keys: one word of at most 16 characters


@functools.cache
def _placeholder_file(name: str) -> str:
    return resources.files("vpcgen.site").joinpath("placeholder", name).read_text(encoding="ascii")


@functools.lru_cache(maxsize=32)
def _certificate(value: str):
    """The parsed certificate, or None: charon must be able to load what the build accepts."""
    from cryptography import x509  # imported when a site has certificates (50 ms of every start-up)
    from cryptography.exceptions import UnsupportedAlgorithm
    try:
        return x509.load_pem_x509_certificate(value.encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


@functools.lru_cache(maxsize=32)  # one key serves many VPCs: checking an RSA key takes ~0.1 s
def _private_key(value: str):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    try:  # an encrypted key is refused too: charon would wait for a passphrase nobody types
        return serialization.load_pem_private_key(value.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


KINDS = {
    "psk": (lambda: PLACEHOLDER, lambda v: len(v) > 0, "a non-empty pre-shared key"),
    "password": (lambda: PLACEHOLDER, lambda v: len(v) > 0, "a non-empty password"),
    "ospf-key": (lambda: "vpcgen-fake-key", lambda v: _OSPF_KEY.fullmatch(v) is not None,
                 "1 to 16 printable ASCII characters without spaces (FRR message-digest key)"),
    "cert": (lambda: _placeholder_file("ra-cert.pem"), lambda v: _certificate(v) is not None,
             "a PEM X.509 certificate that parses (-----BEGIN CERTIFICATE-----)"),
    "key": (lambda: _placeholder_file("ra-key.pem"), lambda v: _private_key(v) is not None,
            "an unencrypted PEM private key that parses (-----BEGIN PRIVATE KEY-----)"),
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
        if placeholder and value == KINDS[kind][0]():
            continue  # shipped with vpcgen and tested once (parsing the key again took 0.1 s a build)
        if not _is_text(value):
            problems.append(Diagnostic(src.loc(), f"secret '{name}' must be UTF-8 text (value not shown)",
                                       "bad-secret"))
        elif not valid(value):
            problems.append(Diagnostic(src.loc(), f"secret '{name}' must be {shape} (value not shown)",
                                       "bad-secret"))
    if not placeholder:  # the shipped certificate and key are a pair (tested once)
        problems += _pairs_match(site, values)
    return values, problems


def _pairs_match(site: Site, values: dict[str, str]) -> list[Diagnostic]:
    """A remote-access server key must belong to its certificate (charon would load both and then
    fail every client's authentication)."""
    out = []
    for vpc in site.vpcs.values():
        ra = vpc.remote_access
        if ra is None or ra.server_cert not in values or ra.server_key not in values:
            continue
        cert, key = _certificate(values[ra.server_cert]), _private_key(values[ra.server_key])
        if cert is not None and key is not None and _public(cert.public_key()) != _public(key.public_key()):
            out.append(Diagnostic(ra.src.at("server_key").loc(), f"secret '{ra.server_key}' is not the private key "
                                  f"of certificate '{ra.server_cert}' (values not shown)", "bad-secret"))
    return out
