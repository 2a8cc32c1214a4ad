"""Rendering: the table of daemons, the Jinja environment and one router's in-memory tree.

Adding a daemon = one template folder, one row in DAEMONS, one test folder. Templates only lay
text out; every decision (order, addresses, names) is made in the feature modules.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2
import jinja2.bccache

from .. import tree
from . import dns, firewall, ha, lb, ospf, vpn
from .topology import RouterView

from ..tree import CHECK_COMMANDS, GENERATED, HEALTH_COMMANDS, MANIFEST, SCRIPT_MODE, SECRET_MODE, SECRET_SUMS, \
    TEXT_MODE, VRRP_STATE_COMMAND, dump_json, \
    manifest_entries

# services in dependency order: deploy reloads what changed in this order
SERVICE_ORDER = tree.SERVICES

SYSCTL = (
    ("net.ipv4.ip_forward", 1),
    ("net.ipv4.conf.all.rp_filter", 1),
    ("net.ipv4.conf.default.rp_filter", 1),
    ("net.ipv4.conf.all.accept_redirects", 0),
    ("net.ipv4.conf.default.accept_redirects", 0),
    ("net.ipv4.conf.all.send_redirects", 0),
    ("net.ipv4.conf.default.send_redirects", 0),
    ("net.ipv4.conf.all.accept_source_route", 0),
    ("net.ipv4.conf.default.accept_source_route", 0),
    ("net.ipv4.conf.all.log_martians", 1),
    # answer ARP only for addresses of the interface asked, announce with the best local address
    ("net.ipv4.conf.all.arp_ignore", 1),
    ("net.ipv4.conf.all.arp_announce", 2),
    # services bind virtual addresses that only the master holds
    ("net.ipv4.ip_nonlocal_bind", 1),
    ("net.ipv4.tcp_syncookies", 1),
    # the router filters IPv4 only: IPv6 stays off on every data interface
    ("net.ipv6.conf.all.disable_ipv6", 1),
    ("net.ipv6.conf.default.disable_ipv6", 1),
    ("net.ipv6.conf.lo.disable_ipv6", 0),
)


def sysctl(view: RouterView) -> tuple:
    """The kernel settings of a router: SYSCTL, and on a router with public tiers no delay for its
    proxy ARP answers on the uplink (the kernel's default holds each back by up to 0.8 s)."""
    if not view.public or not view.public_tiers:
        return SYSCTL
    uplink = view.public.iface.replace(".", "/")  # sysctl.d writes an interface name's dots as slashes
    return SYSCTL + ((f"net.ipv4.neigh.{uplink}.proxy_delay", 0),)


@dataclass(frozen=True)
class Daemon:
    name: str  # its key in tree.GENERATED, which holds its path in the router's tree
    template: str
    mode: int | Callable[[RouterView], int]
    needed: Callable[[RouterView], bool]
    context: Callable[[RouterView, dict], dict]  # (view, secrets) -> template context
    service: str  # reloaded (deploy) when the file changes

    @property
    def path(self) -> str:
        return GENERATED[self.name]


def _always(view: RouterView) -> bool:
    return True


def _redundant(view: RouterView) -> bool:
    return view.redundant


def _interfaces_ctx(view: RouterView, secrets: dict) -> dict:
    names = {i.name for i in view.interfaces}
    default = view.public.iface if (view.public and not view.redundant) else None
    biggest = max((i.mtu for i in view.interfaces if i.mtu and i.raw_device == "eth2"), default=0)
    # a single router answers ARP for its public tiers' hosts on the uplink while the tier is up (a
    # pair's master does, from notify.sh)
    proxy = {} if view.redundant or not view.public else \
        {t.iface: t.proxied(0) for t in view.public_tiers}
    return {"parents": [p for p in ("eth1", "eth2") if p not in names], "default_route_iface": default,
            "parent_mtu": {"eth2": biggest} if biggest > 1500 else {}, "proxy": proxy,
            "proxy_iface": view.public.iface if view.public else None}


def _has_lb(view: RouterView) -> bool:
    return bool(view.vpc.load_balancers)


def _has_ra(view: RouterView) -> bool:
    return view.vpc.remote_access is not None


def _ra_secret(field: str, what: str) -> Callable[[RouterView, dict], dict]:
    # PEM readers skip text before "-----BEGIN", so even these files carry the generated-by header
    return lambda view, secrets: {"pem": secrets[getattr(view.vpc.remote_access, field)].strip(), "what": what}


DAEMONS = (
    Daemon("interfaces", "network/interfaces.j2", TEXT_MODE, _always,
           _interfaces_ctx, "networking"),
    Daemon("sysctl", "sysctl/90-vpcgen.conf.j2", TEXT_MODE, _always,
           lambda v, s: {"sysctl": sysctl(v)}, "sysctl"),
    Daemon("iptables", "iptables/rules.v4.j2", TEXT_MODE, _always,
           lambda v, s: {"tables": firewall.build_tables(v)}, "iptables"),
    Daemon("conntrackd", "conntrackd/conntrackd.conf.j2", TEXT_MODE, _redundant,
           lambda v, s: {"ct": ha.conntrackd_context(v)}, "conntrackd"),
    Daemon("keepalived", "keepalived/keepalived.conf.j2", TEXT_MODE, _redundant,
           lambda v, s: {"ka": ha.keepalived(v)}, "keepalived"),
    Daemon("keepalived-notify", "keepalived/notify.sh.j2", SCRIPT_MODE, _redundant,
           lambda v, s: ha.notify_context(v), "keepalived"),
    Daemon("haproxy", "haproxy/haproxy.cfg.j2", TEXT_MODE, _has_lb,
           lambda v, s: {"listeners": lb.listeners(v), "cookie": lb.COOKIE}, "haproxy"),
    Daemon("swanctl", "swanctl/swanctl.conf.j2", TEXT_MODE, vpn.has_vpn,
           vpn.context, "strongswan"),
    Daemon("swanctl-secrets", "swanctl/secrets.conf.j2", SECRET_MODE, vpn.has_vpn,
           vpn.context, "strongswan"),
    Daemon("ra-cert", "swanctl/pem.j2", SECRET_MODE, _has_ra,
           _ra_secret("server_cert", "remote-access VPN server certificate"), "strongswan"),
    Daemon("ra-key", "swanctl/pem.j2", SECRET_MODE, _has_ra,
           _ra_secret("server_key", "remote-access VPN server private key"), "strongswan"),
    Daemon("frr", "frr/frr.conf.j2",
           lambda v: SECRET_MODE if ospf.uses_secret(v) else TEXT_MODE, lambda v: v.routed, ospf.context, "frr"),
    Daemon("frr-daemons", "frr/daemons.j2", TEXT_MODE, lambda v: v.routed,
           lambda v, s: ospf.daemons_context(v), "frr"),
    Daemon("dnsmasq", "dnsmasq/vpcgen.conf.j2", TEXT_MODE, dns.needs_dnsmasq,
           lambda v, s: {"d": dns.dnsmasq(v)}, "dnsmasq"),
    Daemon("chrony", "chrony/vpcgen.sources.j2", TEXT_MODE, dns.needs_chrony,
           lambda v, s: dns.chrony_context(v), "chrony"),
)


def reload_commands(view: RouterView) -> dict[str, str]:
    """How each service picks up a new file on the router (deploy runs these in SERVICE_ORDER)."""
    p = router_paths(view)
    frr = "systemctl reload frr"  # the master's announcement is a kernel route: it survives a reload
    return {
        "networking": "ifup -a",
        "sysctl": f"sysctl -q -p {p['sysctl']}",
        "iptables": f"{p['notify']} apply-firewall" if view.redundant else f"iptables-restore --wait=10 {p['rules']}",
        "conntrackd": "systemctl restart conntrackd",
        "keepalived": "systemctl reload keepalived",
        "haproxy": "systemctl reload haproxy",
        # loads changed connections and secrets; established SAs of unchanged connections stay up
        "strongswan": f"SWANCTL_DIR={p['swanctl']} swanctl --load-all --noprompt",
        "frr": frr,
        # dnsmasq rereads only its hosts files on SIGHUP: a new configuration needs a restart (the
        # leases are kept in the lease file)
        "dnsmasq": "systemctl restart dnsmasq",
        "chrony": "chronyc reload sources",
    } | view.site.deploy.commands.get("reload", {})


def deploy_settings(view: RouterView, services: set[str]) -> dict:
    """What `vpcgen deploy` needs to know about this router, so that a built tree is self-contained."""
    site = view.site
    overrides = site.deploy.commands

    def pick(defaults: dict, kind: str) -> list[dict]:
        table = defaults | overrides.get(kind, {})
        return [{"service": s, "command": table[s]} for s in SERVICE_ORDER if s in services and s in table]

    peer = next((r.name for r in view.vpc.routers if r.name != view.name), None)
    return {
        "ssh": {"user": site.ssh.user, "port": site.ssh.port},
        "root": site.deploy.root_of(view.name),
        "keep_releases": site.deploy.keep_releases,
        "checks": pick(CHECK_COMMANDS, "check"),
        "health": pick(HEALTH_COMMANDS, "health"),
        "vrrp": {"peer": peer, "priority": view.priority, "state": overrides.get("vrrp_state", VRRP_STATE_COMMAND),
                 "wait_s": site.deploy.vrrp_wait_s} if view.redundant else None,
    }


def router_paths(view: RouterView) -> dict[str, str]:
    """Absolute paths on the router of files other files refer to (under the deploy root)."""
    root = view.site.deploy.root_of(view.name).rstrip("/")
    return {
        "notify": tree.on_router("keepalived-notify", root),
        "rules": tree.on_router("iptables", root),
        "conntrackd": tree.on_router("conntrackd", root),
        "sysctl": tree.on_router("sysctl", root),
        "swanctl": tree.on_router("swanctl", root).rsplit("/", 1)[0],
        "state_dir": tree.STATE_DIR,
    }


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates kept beside vpcgen's own bytecode (its ``__pycache__``), as Python keeps a
    module's: every build would compile them again (0.1 s). Jinja checks each against its template's
    source and the Python version; one that cannot be read or written is compiled, never an error."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, bucket: jinja2.bccache.Bucket) -> Path:
        return self.folder / f"jinja2-{bucket.key}.cache"

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            with open(self._path(bucket), "rb") as cached:
                bucket.load_bytecode(cached)
        except Exception:  # noqa: BLE001 - missing, unreadable, cut short: compiled from the source
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            self.folder.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".jinja2-", dir=self.folder)
        except OSError:  # a read-only installation: compiled again next time
            return
        try:
            with os.fdopen(fd, "wb") as out:
                bucket.write_bytecode(out)
            os.replace(tmp, self._path(bucket))  # whole or not at all, whoever reads it meanwhile
        except OSError:
            Path(tmp).unlink(missing_ok=True)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vpcgen.compiler", "templates"),
        bytecode_cache=_CompiledTemplates(Path(__file__).parent / "__pycache__"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        auto_reload=False,  # the templates ship with vpcgen: no stat of each one on every use
    )
    # the generated-by header every file starts with, made once (an import in each template would
    # look its module up at every render: 15,000 times for 1,000 VPCs)
    env.globals["header"] = env.get_template("common/_header.j2").module.header
    return env


def render_router(env: jinja2.Environment, view: RouterView, secrets: dict[str, str], deployable: bool,
                  site_digest: str) -> dict:
    """path -> (bytes, mode) for one router, manifest included."""
    files: dict[str, tuple[bytes, int, str]] = {}
    services = set()
    paths = router_paths(view)
    for daemon in DAEMONS:
        if not daemon.needed(view):
            continue
        context = {"view": view, "paths": paths, **daemon.context(view, secrets)}
        text = env.get_template(daemon.template).render(context)
        mode = daemon.mode(view) if callable(daemon.mode) else daemon.mode
        files[daemon.path] = (text.encode("utf-8"), mode, daemon.service)
        services.add(daemon.service)
    commands = reload_commands(view)
    listed, secret_sums = manifest_entries(files)
    manifest = {
        "_generated": "by vpcgen; do not edit",
        "site": view.site.name,
        "vpc": view.vpc.name,
        "router": view.name,
        "mgmt": view.mgmt,
        "deployable": deployable,
        "site_digest": site_digest,
        "files": listed,
        "services": [{"name": s, "reload": commands[s]} for s in SERVICE_ORDER if s in services],
        "deploy": deploy_settings(view, services),
    }
    out = {path: (data, mode) for path, (data, mode, _) in files.items()}
    out[MANIFEST] = (dump_json(manifest), TEXT_MODE)
    if secret_sums:
        out[SECRET_SUMS] = (dump_json(secret_sums), SECRET_MODE)
    return out

