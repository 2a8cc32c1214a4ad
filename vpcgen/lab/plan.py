"""What a lab builds, from a built site's ``site.json`` alone: typed nodes and the switch segments.

Routers run on their own files (that is what the lab proves); everything around them (test hosts,
the internet side, VPN peers, the remote-access client, the OSPF core) and every expectation is
built from the resolved site, so a template bug is not copied into the routers' counterparts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..reach.model import PROBE_TCP_PORT, PROBE_UDP_PORT  # noqa: F401  (re-exported: the model names them)

PEERS_NET = "198.18.0.0/24"  # between the internet side and the VPN peers (RFC 2544 space)
PEERS_GATEWAY = "198.18.0.1"
CORE_LOOPBACK = "192.0.2.254/32"  # a network behind the core (routed VPCs reach it)
WHOAMI_PORT = 7  # answers with the address a connection came from
ECHO_PORT = 80  # the internet side's echo service (TCP survival across a failover)
# the one name the lab's upstream resolvers (at the zone's dns_servers) know: what a forwarded lookup finds
UPSTREAM_NAME = "www.example.com"
UPSTREAM_ADDRESS = "198.51.100.80"
# what CloudStack's KVM agent (modifyvxlan.sh) builds, fixed here and not read from site.json: the
# lab's hypervisors are the routers' counterparts
VXLAN_TTL = 10
VXLAN_UNICAST_PORT = 4789  # head-end replication (the multicast scheme takes the kernel's default, 8472)
HYPERVISORS = 2  # per zone with VXLAN tiers: a tier's test hosts are spread over them


@dataclass(frozen=True)
class Link:
    ifname: str  # name inside the node's namespace
    segment: str  # the bridge's key, e.g. "zone1/eth2.1200" ("" for a router's VXLAN device)
    addresses: tuple[str, ...] = ()
    over: str = ""  # a router's VXLAN device: the VTEP interface its own interfaces file builds it on


@dataclass
class Node:
    name: str
    vpc: str = ""
    links: list[Link] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)  # `ip route replace` arguments
    loopback: list[str] = field(default_factory=list)  # extra addresses on lo
    tcp: tuple[int, ...] = ()  # ports the node's test servers answer on
    udp: tuple[int, ...] = ()
    whoami: int = 0
    resolver: tuple[str, ...] = ()  # addresses an upstream DNS server answers on (the zone's dns_servers)
    kind = "node"
    forwards = False

    @property
    def address(self) -> str:
        """The node's first address (without prefix)."""
        return self.links[0].addresses[0].split("/")[0]


@dataclass
class Router(Node):
    tree: Path | None = None  # the lab's verified copy of its tree
    zone: str = ""
    role: str = ""
    kind = "router"
    forwards = True


@dataclass
class Host(Node):
    tier: str = ""
    mtu: int = 0  # the tier's MTU: set on a static host, learnt by DHCP on a DHCP host
    mac: str = ""  # the tier's reservation for the host's address, if any
    dhcp: bool = False  # takes its (reserved) address by DHCP: the tier has dhcp and a reservation for it
    kind = "host"


@dataclass
class DhcpClient(Node):
    """A guest without a reservation on a tier with a DHCP range: no address until a round asks for
    a lease (and no servers; it is not one of the tier's test hosts)."""
    tier: str = ""
    mac: str = ""
    kind = "dhcp-client"


@dataclass
class Gateway(Node):
    """The far side of a private gateway, with one address of each of its routed networks on lo."""
    gateway: str = ""
    targets: tuple[str, ...] = ()
    kind = "gateway"
    forwards = True


def cloudstack_group(vni: int) -> str:
    """The multicast group CloudStack's modifyvxlan.sh derives from a VNI."""
    return f"239.{vni >> 16 & 255}.{vni >> 8 & 255}.{vni & 255}"


@dataclass
class Hypervisor(Node):
    """A KVM host as CloudStack's agent sets it up: on the zone's VXLAN underlay, per VXLAN tier a
    device vxlan<vni> built with modifyvxlan.sh's command line (or unicast to ``flood``) in a
    bridge brvx-<vni>, into which the tier's test hosts are plugged."""
    zone: str = ""
    vnis: tuple[int, ...] = ()
    flood: tuple[str, ...] = ()  # unicast scheme: the VTEPs it replicates to; empty: multicast
    mtu: int = 1500  # the underlay's
    kind = "hypervisor"

    def commands(self) -> list[list[str]]:
        pif = self.links[0].ifname
        out = []
        for vni in self.vnis:
            dev, bridge = f"vxlan{vni}", f"brvx-{vni}"
            if self.flood:
                out.append(["ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "dstport",
                            str(VXLAN_UNICAST_PORT), "local", self.address, "ttl", str(VXLAN_TTL), "dev", pif])
                out += [["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", d] for d in self.flood]
            else:  # modifyvxlan.sh, word for word
                out.append(["ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "group", cloudstack_group(vni),
                            "ttl", str(VXLAN_TTL), "dev", pif])
            out += [["ip", "link", "set", dev, "up"], ["ip", "link", "add", "name", bridge, "type", "bridge"],
                    ["ip", "link", "set", bridge, "up"], ["ip", "link", "set", dev, "master", bridge]]
        return out

    def segment(self, vni: int) -> str:
        return f"{self.name}/brvx-{vni}"


@dataclass(frozen=True)
class Ospf:
    transit: str
    hello_s: int
    dead_s: int
    authentication: bool


@dataclass
class Core(Node):
    """The zone's OSPF core router: DR of the transit link, default originator, BFD."""
    zone: str = ""
    ospf: Ospf | None = None
    kind = "core"
    forwards = True


@dataclass(frozen=True)
class Tunnel:
    """A site-to-site VPN as site.json describes it, seen from the router."""
    name: str
    version: int
    router_address: str  # the VPC's source NAT address
    peer_address: str
    local_cidrs: tuple[str, ...]
    peer_cidrs: tuple[str, ...]
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    ike_lifetime_s: int
    esp_lifetime_s: int


@dataclass
class Peer(Node):
    tunnel: Tunnel | None = None
    kind = "peer"


@dataclass
class Client(Node):
    """A remote-access VPN user out on the internet."""
    server: str = ""
    user: str = ""
    pool: str = ""
    local_cidrs: tuple[str, ...] = ()
    kind = "client"


@dataclass
class Inet(Node):
    zone: str = ""
    kind = "inet"
    forwards = True


@dataclass
class Plan:
    name: str
    tree_dir: Path
    site: dict
    nodes: list[Node]
    segments: list[str]
    hosted: dict[str, tuple[str, str]] = field(default_factory=dict)  # segment -> (hypervisor, its bridge)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def of(self, cls, vpc: str | None = None) -> list:
        return [n for n in self.nodes if isinstance(n, cls) and vpc in (None, n.vpc)]

    def hosts(self, vpc: str, tier: str | None = None) -> list[Host]:
        return [n for n in self.of(Host, vpc) if tier in (None, n.tier)]

    def host_at(self, vpc: str, address: str) -> Host | None:
        return next((h for h in self.hosts(vpc) if h.address == address), None)

    def vpcs(self) -> dict[str, dict]:
        """The VPCs this lab runs (all, or the one `up --vpc` named)."""
        names = {n.vpc for n in self.of(Router)}
        return {k: v for k, v in sorted(self.site["vpcs"].items()) if k in names}


def internet_sources(site: dict, zone: str) -> list[str]:
    """An address on the internet side for every public source network an ACL rule names, so that
    ACL probes can come from each of them."""
    private = [ipaddress.ip_network(v["cidr"]) for v in site["vpcs"].values() if v["zone"] == zone and v["cidr"]]
    out = []
    for rules in site["acls"].values():
        for rule in rules:
            for cidr in rule["cidrs"]:
                net = ipaddress.ip_network(cidr)
                if net.prefixlen == 0 or any(net.overlaps(p) for p in private) or net.is_private:
                    continue
                out.append(f"{net.network_address + min(7, net.num_addresses - 1)}/32")
    return sorted(set(out))


def transit_ifname(site: dict, vpc: dict, router: str) -> str | None:
    """The router's interface on its zone's OSPF transit network (site.json's addresses say which)."""
    ospf = site["zones"][vpc["zone"]]["ospf"]
    if not ospf or vpc["kind"] != "routed":
        return None
    transit = ipaddress.ip_network(ospf["transit"])
    for ifname, addresses in vpc["routers"][router]["interfaces"].items():
        if any(ipaddress.ip_interface(a).ip in transit for a in addresses):
            return ifname
    return None


def tier_ifname(vpc: dict, router: str, tier: str) -> str:
    """The router's interface into a tier: the one holding an address of the tier's network."""
    net = ipaddress.ip_network(vpc["tiers"][tier]["cidr"])
    for ifname, addresses in vpc["routers"][router]["interfaces"].items():
        if any(ipaddress.ip_interface(a).ip in net for a in addresses):
            return ifname
    raise ValueError(f"{router} has no interface in tier {tier}")


def _host_addresses(cidr: str, wanted: list[str], count: int = 2) -> list[str]:
    net = ipaddress.ip_network(cidr)
    out = sorted(set(wanted), key=ipaddress.ip_address)
    candidate = net.network_address + 10
    while len(out) < count:
        if str(candidate) not in out:
            out.append(str(candidate))
        candidate += 1
    return out


def _ports(vpc: dict, acls: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Every TCP and UDP port a test host of the VPC should answer on: NAT and LB targets, both ends
    of every ACL rule's range and the ports just outside them (the reach round probes box edges),
    and the probe port no rule names."""
    tcp = {22, 80, 443, 5432, 8080, PROBE_TCP_PORT}
    udp = {PROBE_UDP_PORT}
    for pf in vpc["port_forwarding"]:
        low, high = pf["private_port"]
        (tcp if pf["protocol"] == "tcp" else udp).update(range(low, high + 1) if pf["protocol"] == "udp" else {low})
    tcp |= {lb["private_port"] for lb in vpc["load_balancers"].values()}
    for tier in vpc["tiers"].values():
        for rule in acls[tier["acl"]]:
            if rule["ports"] and rule["protocol"] in ("tcp", "udp"):
                low, high = rule["ports"]
                (tcp if rule["protocol"] == "tcp" else udp).update({low - 1, low, high, high + 1})
    return tuple(sorted(p for p in tcp if 0 < p < 65536 and p != WHOAMI_PORT)), \
        tuple(sorted(p for p in udp if 0 < p < 65536))


def build(site: dict, name: str, tree_dir: Path, routers_root: Path, only_vpc: str | None = None) -> Plan:
    """The lab for ``site`` (a site.json document); ``routers_root`` holds the routers' trees."""
    vpcs = {k: v for k, v in sorted(site["vpcs"].items()) if only_vpc in (None, k)}
    hypervisors = _hypervisors(site, vpcs)
    nodes: list[Node] = [hv for _, hvs in sorted(hypervisors.items()) for hv in hvs]  # before their hosts
    segments: set[str] = set()
    hosted: dict[str, tuple[str, str]] = {}
    uplinks: dict[str, set[str]] = {}  # zone -> segments of the routers' eth1 side
    for vpc_name, vpc in vpcs.items():
        zone = vpc["zone"]
        for router, info in vpc["routers"].items():
            node = Router(router, vpc_name, tree=Path(routers_root) / router, zone=zone, role=info["role"])
            overlays = {tier_ifname(vpc, router, t) for t in vxlan_tiers(vpc)}
            for ifname, addresses in sorted(info["interfaces"].items()):
                if ifname in overlays:  # built by the router's own file on its VTEP interface
                    node.links.append(Link(ifname, "", tuple(addresses), over=vtep_ifname(site, vpc, router)))
                    continue
                segment = f"{zone}/{ifname}"
                segments.add(segment)
                node.links.append(Link(ifname, segment, tuple(addresses)))
                if ifname.split(".")[0] == "eth1":
                    uplinks.setdefault(zone, set()).add(segment)
            nodes.append(node)
        # test hosts: the private addresses NAT and load balancers use, two per tier at least
        used = set(vpc["static_nat"].values()) | {p["private_ip"] for p in vpc["port_forwarding"]}
        used |= {m for lb in vpc["load_balancers"].values() for m in lb["members"]}
        tcp, udp = _ports(vpc, site["acls"])
        for tier_name, tier in sorted(vpc["tiers"].items()):
            net = ipaddress.ip_network(tier["cidr"])
            # the tier's named hosts too: their names resolve to a test host, a reserved one leases
            reserved = {h["address"]: (h["mac"] or "").lower() for h in tier.get("hosts", {}).values()}
            mine = [a for a in used | set(reserved) if ipaddress.ip_address(a) in net]
            hvs = hypervisors.get(zone, []) if tier.get("isolation") == "vxlan" else []
            # a VXLAN tier's hosts are spread over the hypervisors' bridges, a VLAN tier's share its bridge
            segment = lambda i: f"{zone}/eth2.{tier['vlan']}" if not hvs else hvs[i % len(hvs)].segment(tier["vni"])  # noqa: E731
            for hv in hvs:
                hosted[hv.segment(tier["vni"])] = (hv.name, f"brvx-{tier['vni']}")
            for i, address in enumerate(_host_addresses(tier["cidr"], mine)):
                mac = reserved.get(address, "")
                nodes.append(Host(f"{vpc_name}-{tier_name}-{i + 1}", vpc_name, tier=tier_name, tcp=tcp, udp=udp,
                                  whoami=WHOAMI_PORT, routes=[f"default via {tier['gateway']}"],
                                  mtu=tier.get("mtu") or 1500, mac=mac, dhcp=bool(mac and tier.get("dhcp")),
                                  links=[Link("eth0", segment(i), (f"{address}/{net.prefixlen}",))]))
            if (tier.get("dhcp") or {}).get("range"):
                nodes.append(DhcpClient(f"{vpc_name}-{tier_name}-dhcp", vpc_name, tier=tier_name,
                                        mac=_guest_mac(tier.get("vlan") or tier["vni"], set(reserved.values())),
                                        links=[Link("eth0", segment(0))]))
        for gw_name, gw in sorted(vpc["private_gateways"].items()):
            prefix = gw["address"].split("/")[1]
            targets = tuple(str(ipaddress.ip_network(r).network_address + 5) for r in gw["routes"])
            nodes.append(Gateway(f"{vpc_name}-pg-{gw_name}", vpc_name, gateway=gw_name, targets=targets,
                                 tcp=(22, 25, 80, PROBE_TCP_PORT), whoami=WHOAMI_PORT,
                                 links=[Link("eth0", f"{zone}/eth2.{gw['vlan']}", (f"{gw['gateway']}/{prefix}",))],
                                 routes=[f"default via {gw['address'].split('/')[0]}"],
                                 loopback=[f"{t}/32" for t in targets]))
    # site-to-site peers: beyond the internet side, on a link of their own, their networks on lo
    hop = 10
    for vpc_name, vpc in vpcs.items():
        for peer_name, peer in sorted(vpc["vpn_peers"].items()):
            segments.add(f"{vpc['zone']}/peers")
            tunnel = Tunnel(peer_name, peer["ike_version"], vpc["public_ips"]["source-nat"], peer["peer"],
                            tuple(peer["local_cidrs"]), tuple(peer["peer_cidrs"]), tuple(peer["ike_proposals"]),
                            tuple(peer["esp_proposals"]), peer["ike_lifetime_s"], peer["esp_lifetime_s"])
            nodes.append(Peer(f"{vpc_name}-peer-{peer_name}", vpc_name, tunnel=tunnel, whoami=WHOAMI_PORT,
                              tcp=(22, 80, PROBE_TCP_PORT),
                              links=[Link("eth0", f"{vpc['zone']}/peers",
                                          (f"{_in(PEERS_NET, hop)}/24", f"{peer['peer']}/32"))],
                              routes=[f"default via {PEERS_GATEWAY} src {peer['peer']}"],
                              loopback=[f"{ipaddress.ip_network(c).network_address + 1}/32"
                                        for c in peer["peer_cidrs"]]))
            hop += 1
    hop = 100
    for vpc_name, vpc in vpcs.items():
        ra = vpc.get("remote_access")
        if ra:
            segments.add(f"{vpc['zone']}/peers")
            nodes.append(Client(f"{vpc_name}-ra-client", vpc_name, server=vpc["public_ips"]["source-nat"],
                                user=ra["users"][0], pool=ra["pool"],
                                local_cidrs=tuple(t["cidr"] for _, t in sorted(vpc["tiers"].items())),
                                links=[Link("eth0", f"{vpc['zone']}/peers", (f"{_in(PEERS_NET, hop)}/24",))],
                                routes=[f"default via {PEERS_GATEWAY}"]))
            hop += 1
    # the internet side of each zone (its public gateway, the VPN peers beyond), and its OSPF core
    for zone_name in sorted(uplinks):
        zone = site["zones"][zone_name]
        public, ospf = zone.get("public"), zone.get("ospf")
        resolvers = tuple(zone.get("dns_servers") or ())  # NAT VPCs reach them through the internet side
        public_segment = f"{zone_name}/eth1.{public['vlan']}" if public and public["vlan"] else f"{zone_name}/eth1"
        if public and public_segment in uplinks[zone_name]:
            prefix = public["cidr"].split("/")[1]
            inet = Inet(f"inet-{zone_name}", zone=zone_name, tcp=(ECHO_PORT,), whoami=WHOAMI_PORT,
                        links=[Link("eth0", public_segment, (f"{public['gateway']}/{prefix}",))],
                        loopback=internet_sources(site, zone_name) + [f"{a}/32" for a in resolvers],
                        resolver=resolvers)
            beyond = [n for n in nodes if isinstance(n, (Peer, Client)) and vpcs[n.vpc]["zone"] == zone_name]
            if beyond:
                inet.links.append(Link("eth1", f"{zone_name}/peers", (f"{PEERS_GATEWAY}/24",)))
                inet.routes += [f"{n.tunnel.peer_address}/32 via {n.address}" for n in beyond if isinstance(n, Peer)]
            nodes.append(inet)
        transit_segments = {f"{zone_name}/{transit_ifname(site, v, r)}" for v in vpcs.values()
                            if v["zone"] == zone_name for r in v["routers"] if transit_ifname(site, v, r)}
        if ospf and transit_segments:
            net = ipaddress.ip_network(ospf["transit"])
            nodes.append(Core(f"core-{zone_name}", zone=zone_name, tcp=(22, 80),
                              ospf=Ospf(ospf["transit"], ospf["hello_interval_s"], ospf["dead_interval_s"],
                                        ospf["authentication"]),
                              links=[Link("eth0", sorted(transit_segments)[0],
                                          (f"{net.network_address + 1}/{net.prefixlen}",))],
                              loopback=[CORE_LOOPBACK] + [f"{a}/32" for a in resolvers],
                              resolver=resolvers))  # routed VPCs reach them through the core
    return Plan(name, Path(tree_dir), site, nodes, sorted(segments), hosted)


def vxlan_tiers(vpc: dict) -> list[str]:
    return sorted(n for n, t in vpc["tiers"].items() if t.get("isolation") == "vxlan")


def vtep_ifname(site: dict, vpc: dict, router: str) -> str:
    """The router's VTEP interface: the one holding its address in the zone's ``vxlan.vteps``."""
    address = site["zones"][vpc["zone"]]["vxlan"]["vteps"][router]
    for ifname, addresses in sorted(vpc["routers"][router]["interfaces"].items()):
        if any(a.split("/")[0] == address for a in addresses):
            return ifname
    raise ValueError(f"{router} has no interface with its VTEP address {address}")


def _hypervisors(site: dict, vpcs: dict) -> dict[str, list[Hypervisor]]:
    """Per zone whose VXLAN tiers the lab runs: hypervisors on the routers' underlay segment, at the
    zone's ``remotes`` (unicast: they replicate to every VTEP of site.json and to each other), or at
    the underlay's highest free addresses (multicast)."""
    out = {}
    for zone_name in sorted({v["zone"] for v in vpcs.values()}):
        mine = {n: v for n, v in vpcs.items() if v["zone"] == zone_name and vxlan_tiers(v)}
        if not mine:
            continue
        x = site["zones"][zone_name]["vxlan"]
        vteps, remotes = x["vteps"], list(x.get("remotes") or [])
        vpc = next(iter(mine.values()))
        router = sorted(vpc["routers"])[0]
        ifname = vtep_ifname(site, vpc, router)
        net = next(ipaddress.ip_interface(a).network for a in vpc["routers"][router]["interfaces"][ifname]
                   if a.split("/")[0] == vteps[router])
        if remotes:
            addresses = remotes[:HYPERVISORS]
        else:
            taken = set(vteps.values())
            addresses = [str(a) for a in reversed(list(net.hosts())) if str(a) not in taken][:HYPERVISORS]
        vnis = tuple(sorted(v["tiers"][t]["vni"] for v in mine.values() for t in vxlan_tiers(v)))
        everyone = sorted(set(vteps.values()) | set(remotes), key=ipaddress.ip_address)
        out[zone_name] = [
            Hypervisor(f"hv-{zone_name}-{i + 1}", zone=zone_name, vnis=vnis, mtu=x.get("mtu") or 1500,
                       flood=tuple(a for a in everyone if a != address) if remotes else (),
                       links=[Link("eth0", f"{zone_name}/{ifname}", (f"{address}/{net.prefixlen}",))])
            for i, address in enumerate(addresses)]
    return out


def _guest_mac(vlan: int, taken: set[str]) -> str:
    """A locally administered MAC for a tier's range client, unique per VLAN, never a reservation's."""
    last = 1
    while (mac := f"02:ff:{vlan >> 8 & 255:02x}:{vlan & 255:02x}:00:{last:02x}") in taken:
        last += 1
    return mac


def _in(cidr: str, index: int) -> str:
    return str(ipaddress.ip_network(cidr).network_address + index)
