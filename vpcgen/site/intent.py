"""The intent: what the operator asked for, as frozen dataclasses built from schema-valid documents.

Each object keeps ``src`` (its document and JSON path, excluded from equality) so that later
stages can report errors at the exact line of the YAML that caused them. A field the operator left
out takes the schema's ``default`` (``schema.default``); only defaults that depend on other values
(source NAT in a routed VPC, private ports, the site's VRRP settings) are computed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Location
from .loader import Document, SiteFiles
from .schema import default

BUILTIN_ACLS = ("default_allow", "default_deny")
SOURCE_NAT_IP = "source-nat"  # the reserved name of the VPC's source NAT public IP


class Src:
    """Where an intent object was written: a document and a JSON path into it."""

    __slots__ = ("doc", "path")

    def __init__(self, doc: Document | None, path: tuple = ()):
        self.doc, self.path = doc, tuple(path)

    def loc(self, *sub, key: bool = False) -> Location | None:
        if self.doc is None:
            return None
        return self.doc.loc(self.path + sub, key=key)

    def at(self, *sub) -> "Src":
        return Src(self.doc, self.path + sub)

    @property
    def file(self) -> str:
        return self.doc.file if self.doc else ""


def _src():
    return field(default=None, compare=False, hash=False, repr=False)


def port_range(value) -> tuple[int, int] | None:
    """80 -> (80, 80); "5000-5009" -> (5000, 5009); None -> None."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    low, high = value.split("-")
    return (int(low), int(high))


@dataclass(frozen=True)
class Rule:
    number: int
    action: str  # allow | deny
    traffic: str  # ingress | egress
    protocol: str | int  # tcp | udp | icmp | all | number
    ports: tuple[int, int] | None
    icmp_type: int | None
    icmp_code: int | None
    cidrs: tuple[str, ...]
    src: Src = _src()


@dataclass(frozen=True)
class Acl:
    name: str
    rules: tuple[Rule, ...]  # sorted by number
    builtin: bool = False
    src: Src = _src()


@dataclass(frozen=True)
class PublicNet:
    cidr: str
    gateway: str
    ranges: tuple[str, ...]
    vlan: int | None
    routed: tuple[str, ...] = ()  # blocks routed to public tiers (proxy ARP), not acquired as public IPs


@dataclass(frozen=True)
class Ospf:
    transit_cidr: str
    transit_vlan: int | None
    hello_interval_s: int
    dead_interval_s: int
    auth_key: str | None  # secret name


@dataclass(frozen=True)
class Vxlan:
    underlay_cidr: str
    underlay_vlan: int | None
    vnis: tuple[int, int]
    remotes: tuple[str, ...]  # empty: CloudStack's multicast scheme
    mtu: int  # the underlay's

    @property
    def multicast(self) -> bool:
        return not self.remotes

    @property
    def port(self) -> int:
        return VXLAN_UNICAST_PORT if self.remotes else VXLAN_MULTICAST_PORT


# CloudStack's KVM hosts (modifyvxlan.sh) take the kernel's default port and TTL 10; unicast
# head-end replication uses the IANA port
VXLAN_MULTICAST_PORT = 8472
VXLAN_UNICAST_PORT = 4789
VXLAN_TTL = 10
VXLAN_OVERHEAD = 50  # outer Ethernet, IPv4, UDP and VXLAN headers


def vxlan_group(vni: int) -> str:
    """The multicast group CloudStack's modifyvxlan.sh derives from a VNI."""
    return f"239.{(vni >> 16) & 255}.{(vni >> 8) & 255}.{vni & 255}"


@dataclass(frozen=True)
class Zone:
    name: str
    guest_vlans: tuple[int, int]
    public: PublicNet | None
    super_cidr: str | None
    ospf: Ospf | None
    dns_servers: tuple[str, ...] = ()  # upstream resolvers the routers forward to
    ntp_servers: tuple[str, ...] = ()  # the routers' time sources
    vxlan: Vxlan | None = None
    src: Src = _src()


@dataclass(frozen=True)
class Router:
    name: str
    mgmt: str
    src: Src = _src()


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    mac: str | None  # lower case; with it, a DHCP reservation on a tier with dhcp
    src: Src = _src()


@dataclass(frozen=True)
class Dhcp:
    range: tuple[str, str] | None  # (first, last) of the dynamic pool
    lease_s: int
    src: Src = _src()


@dataclass(frozen=True)
class Tier:
    name: str
    cidr: str | None
    netmask: int | None
    gateway: str | None
    vlan: int | None
    acl: str
    mtu: int = 1500
    dhcp: Dhcp | None = None
    hosts: tuple[Host, ...] = ()
    isolation: str = "vlan"  # vlan | vxlan
    vni: int | None = None
    public: bool = False  # routed from a block of the zone's public network, never NATed
    src: Src = _src()

    @property
    def vxlan(self) -> bool:
        return self.isolation == "vxlan"


@dataclass(frozen=True)
class PublicIp:
    name: str
    address: str | None
    src: Src = _src()


@dataclass(frozen=True)
class StaticNat:
    public_ip: str
    private_ip: str
    src: Src = _src()


@dataclass(frozen=True)
class PortForward:
    public_ip: str
    protocol: str
    public_port: tuple[int, int]
    private_ip: str
    private_port: tuple[int, int]
    src: Src = _src()


@dataclass(frozen=True)
class HealthCheck:
    interval_ms: int
    rise: int
    fall: int
    http_path: str | None


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    public_ip: str
    public_port: int
    private_port: int
    protocol: str  # tcp | http
    algorithm: str
    stickiness: str
    health_check: HealthCheck
    members: tuple[str, ...]
    src: Src = _src()


@dataclass(frozen=True)
class SiteToSite:
    name: str
    peer: str
    peer_cidrs: tuple[str, ...]
    local_cidrs: tuple[str, ...] | None
    psk: str
    ike_version: int
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    ike_lifetime_s: int
    esp_lifetime_s: int
    dpd_delay_s: int
    src: Src = _src()


@dataclass(frozen=True)
class VpnUser:
    name: str
    password: str  # secret name


@dataclass(frozen=True)
class RemoteAccess:
    pool: str
    server_cert: str
    server_key: str
    users: tuple[VpnUser, ...]
    src: Src = _src()


@dataclass(frozen=True)
class PrivateGateway:
    name: str
    vlan: int
    address: str  # with prefix length
    gateway: str
    routes: tuple[str, ...]
    acl: str
    src: Src = _src()


@dataclass(frozen=True)
class Vrrp:
    advert_interval_ms: int
    preempt: bool


@dataclass(frozen=True)
class Vpc:
    name: str
    zone: str
    cidr: str | None
    netmask: int | None
    redundant: bool
    routers: tuple[Router, ...]
    vrrp: Vrrp
    tiers: tuple[Tier, ...]
    public_ips: tuple[PublicIp, ...]  # includes the source NAT IP when enabled
    source_nat: bool
    static_nat: tuple[StaticNat, ...]
    port_forwarding: tuple[PortForward, ...]
    load_balancers: tuple[LoadBalancer, ...]
    site_to_site: tuple[SiteToSite, ...]
    remote_access: RemoteAccess | None
    private_gateways: tuple[PrivateGateway, ...]
    domain: str = ""
    src: Src = _src()

    @property
    def routed(self) -> bool:
        return self.netmask is not None and self.cidr is None


@dataclass(frozen=True)
class Ssh:
    user: str
    port: int
    allowed_from: tuple[str, ...] | None = None  # None: any source


@dataclass(frozen=True)
class Deploy:
    root: str  # may hold {router}
    keep_releases: int
    vrrp_wait_s: int
    commands: dict  # reload/check/health: {service: command}; vrrp_state: command (overrides)

    def root_of(self, router: str) -> str:
        return self.root.replace("{router}", router)


@dataclass(frozen=True)
class Site:
    name: str
    ssh: Ssh
    deploy: Deploy
    zones: dict  # name -> Zone, sorted by name
    vpcs: dict  # name -> Vpc
    acls: dict  # name -> Acl, built-ins included
    src: Src = _src()
    # (kind, name) of documents that failed to load or to pass their schema: they exist, so a
    # reference to one is not reported as dangling
    unchecked: frozenset = field(default=frozenset(), compare=False)

    def exists(self, kind: str, name: str) -> bool:
        table = {"zone": self.zones, "acl": self.acls, "vpc": self.vpcs}[kind]
        return name in table or (kind, name) in self.unchecked or (kind, "*") in self.unchecked


def _secret(ref) -> str | None:
    return ref["secret"] if ref else None


def _rule(doc: Document, path: tuple, r: dict) -> Rule:
    # every field set at once, without the frozen dataclass's __init__ (one object.__setattr__ per
    # field): 4x faster, and a large site has hundreds of thousands of rules
    rule = object.__new__(Rule)
    rule.__dict__.update(
        number=r["number"], action=r["action"], traffic=r["traffic"], protocol=r["protocol"],
        ports=port_range(r.get("ports")), icmp_type=r.get("icmp_type"), icmp_code=r.get("icmp_code"),
        cidrs=tuple(r["cidrs"] if "cidrs" in r else default("acl", "rules", "cidrs")), src=Src(doc, path))
    return rule


def _acl(doc: Document) -> Acl:
    rules = [_rule(doc, ("rules", i), r) for i, r in enumerate(doc.data["rules"])]
    return Acl(name=doc.data["name"], rules=tuple(sorted(rules, key=lambda r: r.number)), src=Src(doc))


def _zone(doc: Document) -> Zone:
    d = doc.data
    low, high = (int(x) for x in d["guest_vlans"].split("-"))
    public = None
    if "public" in d:
        p = d["public"]
        public = PublicNet(cidr=p["cidr"], gateway=p["gateway"], ranges=tuple(p["ranges"]), vlan=p.get("vlan"),
                           routed=tuple(p.get("routed", ())))
    ospf = None
    if "ospf" in d:
        o = d["ospf"]
        ospf = Ospf(transit_cidr=o["transit"]["cidr"], transit_vlan=o["transit"].get("vlan"),
                    hello_interval_s=o.get("hello_interval_s", default("zone", "ospf", "hello_interval_s")),
                    dead_interval_s=o.get("dead_interval_s", default("zone", "ospf", "dead_interval_s")),
                    auth_key=_secret(o.get("auth_key")))
    vxlan = None
    if "vxlan" in d:
        x = d["vxlan"]
        vxlan = Vxlan(underlay_cidr=x["underlay"]["cidr"], underlay_vlan=x["underlay"].get("vlan"),
                      vnis=tuple(int(v) for v in x["vnis"].split("-")), remotes=tuple(x.get("remotes", ())),
                      mtu=x.get("mtu", default("zone", "vxlan", "mtu")))
    return Zone(name=d["name"], guest_vlans=(low, high), public=public, super_cidr=d.get("super_cidr"),
                ospf=ospf, dns_servers=tuple(d.get("dns_servers", ())), ntp_servers=tuple(d.get("ntp_servers", ())),
                vxlan=vxlan, src=Src(doc))


def _tier(doc: Document, i: int, t: dict, vxlan: Vxlan | None) -> Tier:
    at = ("tiers", i)
    dhcp = None
    if "dhcp" in t:
        rng = t["dhcp"].get("range")
        dhcp = Dhcp(range=tuple(rng.split("-", 1)) if rng else None,
                     lease_s=t["dhcp"].get("lease_s", default("vpc", "tiers", "dhcp", "lease_s")),
                     src=Src(doc, at + ("dhcp",)))
    hosts = tuple(Host(name=h["name"], address=h["address"], mac=h["mac"].lower() if "mac" in h else None,
                       src=Src(doc, at + ("hosts", j)))
                  for j, h in enumerate(t.get("hosts", default("vpc", "tiers", "hosts"))))
    isolation = t.get("isolation", default("vpc", "tiers", "isolation"))
    # a VXLAN tier's default leaves room for the encapsulation on the zone's underlay
    mtu = vxlan.mtu - VXLAN_OVERHEAD if isolation == "vxlan" and vxlan else default("vpc", "tiers", "mtu")
    return Tier(name=t["name"], cidr=t.get("cidr"), netmask=t.get("netmask"), gateway=t.get("gateway"),
                vlan=t.get("vlan"), acl=t.get("acl", default("vpc", "tiers", "acl")),
                mtu=t.get("mtu", mtu), dhcp=dhcp, hosts=hosts, isolation=isolation, vni=t.get("vni"),
                public=t.get("public", default("vpc", "tiers", "public")), src=Src(doc, at))


def _vpc(doc: Document, vrrp_defaults: Vrrp, zones: dict) -> Vpc:
    d = doc.data
    at = lambda *p: Src(doc, p)  # noqa: E731
    routed = "netmask" in d and "cidr" not in d
    vrrp = d.get("vrrp", {})
    public_ips = [PublicIp(name=p["name"], address=p.get("address"), src=at("public_ips", i))
                  for i, p in enumerate(d.get("public_ips", default("vpc", "public_ips")))]
    # the schema's default is a NAT VPC's; a routed VPC has no NAT (and may not set source_nat)
    source_nat = d.get("source_nat", default("vpc", "source_nat") and not routed)
    if source_nat and not routed:
        public_ips.append(PublicIp(name=SOURCE_NAT_IP, address=None, src=at("source_nat")))
    lbs = []
    for i, lb in enumerate(d.get("load_balancers", default("vpc", "load_balancers"))):
        hc = lb.get("health_check", {})
        lbs.append(LoadBalancer(
            name=lb["name"], public_ip=lb["public_ip"], public_port=lb["public_port"],
            private_port=lb.get("private_port", lb["public_port"]),  # absent: the public port
            protocol=lb["protocol"],
            algorithm=lb.get("algorithm", default("vpc", "load_balancers", "algorithm")),
            stickiness=lb.get("stickiness", default("vpc", "load_balancers", "stickiness")),
            health_check=HealthCheck(
                interval_ms=hc.get("interval_ms", default("vpc", "load_balancers", "health_check", "interval_ms")),
                rise=hc.get("rise", default("vpc", "load_balancers", "health_check", "rise")),
                fall=hc.get("fall", default("vpc", "load_balancers", "health_check", "fall")),
                http_path=hc.get("http_path")),
            members=tuple(lb["members"]), src=at("load_balancers", i)))
    vpn = d.get("vpn", {})
    s2s_default = lambda key: default("vpc", "vpn", "site_to_site", key)  # noqa: E731
    s2s = [SiteToSite(
        name=v["name"], peer=v["peer"], peer_cidrs=tuple(v["peer_cidrs"]),
        # absent: None, read as every tier of the VPC once the tiers' CIDRs are allocated
        local_cidrs=tuple(v["local_cidrs"]) if "local_cidrs" in v else None, psk=v["psk"]["secret"],
        ike_version=v.get("ike_version", s2s_default("ike_version")),
        ike_proposals=tuple(v.get("ike_proposals", s2s_default("ike_proposals"))),
        esp_proposals=tuple(v.get("esp_proposals", s2s_default("esp_proposals"))),
        ike_lifetime_s=v.get("ike_lifetime_s", s2s_default("ike_lifetime_s")),
        esp_lifetime_s=v.get("esp_lifetime_s", s2s_default("esp_lifetime_s")),
        dpd_delay_s=v.get("dpd_delay_s", s2s_default("dpd_delay_s")), src=at("vpn", "site_to_site", i))
        for i, v in enumerate(vpn.get("site_to_site", default("vpc", "vpn", "site_to_site")))]
    ra = None
    if "remote_access" in vpn:
        r = vpn["remote_access"]
        ra = RemoteAccess(pool=r["pool"], server_cert=r["server_cert"]["secret"],
                          server_key=r["server_key"]["secret"],
                          users=tuple(VpnUser(u["name"], u["password"]["secret"]) for u in r["users"]),
                          src=at("vpn", "remote_access"))
    return Vpc(
        name=d["name"], zone=d["zone"], cidr=d.get("cidr"), netmask=d.get("netmask"),
        redundant=d.get("redundant", default("vpc", "redundant")),
        routers=tuple(Router(r["name"], r["mgmt"], src=at("routers", i)) for i, r in enumerate(d["routers"])),
        vrrp=Vrrp(advert_interval_ms=vrrp.get("advert_interval_ms", vrrp_defaults.advert_interval_ms),  # the site's
                  preempt=vrrp.get("preempt", vrrp_defaults.preempt)),
        tiers=tuple(_tier(doc, i, t, zones[d["zone"]].vxlan if d["zone"] in zones else None)
                    for i, t in enumerate(d["tiers"])),
        domain=d.get("domain", f"{d['name']}.internal"),  # the default depends on the VPC's name
        public_ips=tuple(public_ips), source_nat=source_nat and not routed,
        static_nat=tuple(StaticNat(s["public_ip"], s["private_ip"], src=at("static_nat", i))
                         for i, s in enumerate(d.get("static_nat", default("vpc", "static_nat")))),
        port_forwarding=tuple(PortForward(
            public_ip=p["public_ip"], protocol=p["protocol"], public_port=port_range(p["public_port"]),
            private_ip=p["private_ip"],
            private_port=port_range(p.get("private_port", p["public_port"])),  # absent: the public port(s)
            src=at("port_forwarding", i))
            for i, p in enumerate(d.get("port_forwarding", default("vpc", "port_forwarding")))),
        load_balancers=tuple(lbs), site_to_site=tuple(s2s), remote_access=ra,
        private_gateways=tuple(PrivateGateway(
            name=g["name"], vlan=g["vlan"], address=g["address"], gateway=g["gateway"],
            routes=tuple(g.get("routes", default("vpc", "private_gateways", "routes"))),
            acl=g.get("acl", default("vpc", "private_gateways", "acl")), src=at("private_gateways", i))
            for i, g in enumerate(d.get("private_gateways", default("vpc", "private_gateways")))),
        src=Src(doc))


def builtin_acls() -> dict[str, Acl]:
    everything = ("0.0.0.0/0",)
    return {
        "default_allow": Acl("default_allow", (
            Rule(1, "allow", "ingress", "all", None, None, None, everything),
            Rule(2, "allow", "egress", "all", None, None, None, everything)), builtin=True),
        "default_deny": Acl("default_deny", (), builtin=True),
    }


def build_intent(files: SiteFiles, unchecked: frozenset = frozenset()) -> Site:
    """Schema-valid documents -> intent. Cross-references are checked later (verify).

    ``files.site`` may be None (site.yaml failed its checks): the schema's defaults stand in, so
    that the other documents are still checked."""
    d = files.site.data if files.site is not None else {"name": files.root.name}
    defaults = d.get("defaults", {})
    vrrp = {**default("site", "defaults", "vrrp"), **defaults.get("vrrp", {})}
    vrrp_defaults = Vrrp(advert_interval_ms=vrrp["advert_interval_ms"], preempt=vrrp["preempt"])
    ssh = defaults.get("ssh", {})
    deploy = defaults.get("deploy", {})
    zones = {doc.data["name"]: _zone(doc) for doc in sorted(files.zones, key=lambda x: x.data["name"])}
    acls = builtin_acls()
    for doc in files.acls:
        if doc.data["name"] not in acls:
            acls[doc.data["name"]] = _acl(doc)
            # nothing reads an ACL's values once its rules exist (they locate themselves through
            # the document's text); a large site's ACLs weigh as much as those rules, whose next
            # ones now reuse that memory instead of adding to it
            doc.data = None
    return Site(
        name=d["name"], ssh=Ssh(user=ssh.get("user", default("site", "defaults", "ssh", "user")),
                                port=ssh.get("port", default("site", "defaults", "ssh", "port")),
                                allowed_from=tuple(ssh["allowed_from"]) if "allowed_from" in ssh else None),
        deploy=Deploy(root=deploy.get("root", default("site", "defaults", "deploy", "root")),
                      keep_releases=deploy.get("keep_releases", default("site", "defaults", "deploy", "keep_releases")),
                      vrrp_wait_s=deploy.get("vrrp_wait_s", default("site", "defaults", "deploy", "vrrp_wait_s")),
                      commands=deploy.get("commands", default("site", "defaults", "deploy", "commands"))),
        zones=zones,
        vpcs={doc.data["name"]: _vpc(doc, vrrp_defaults, zones)
              for doc in sorted(files.vpcs, key=lambda x: x.data["name"])},
        acls=dict(sorted(acls.items())), src=Src(files.site), unchecked=frozenset(unchecked))
