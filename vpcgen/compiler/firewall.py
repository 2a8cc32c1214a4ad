"""iptables-restore tables for one router: hardened filter, tier ACLs, NAT, HA guard.

Every chain is built whole, rules in ACL number order (CloudStack's ACL bugs came from inserting
rules one at a time). Chain names derive from interface names, which are bounded
(``ACL_INBOUND_eth2.4094`` is 21 characters), never from user names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import dns, lb, vpn
from ..site.intent import Acl, Rule
from .topology import CONNTRACKD_PORT, RouterView

HA_GUARD_CHAIN = "VPCGEN_HA_GUARD"
HA_GUARD_TAG = "vpcgen-ha-guard"  # comment on guard rules, so notify.sh can strip them on a master
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
NAMED_PROTOCOLS = frozenset({"tcp", "udp", "icmp"})
OSPF_PROTO = 89
BFD_PORT = 3784  # single-hop BFD control (RFC 5881)


@dataclass
class Table:
    name: str
    policies: dict  # builtin chain -> policy
    chains: list = field(default_factory=list)  # user chains, in order of creation
    by_chain: dict = field(default_factory=dict)  # chain -> its rules, in order

    def chain(self, name: str) -> str:
        assert len(name) <= 28, name  # iptables' limit; names are built from bounded parts
        if name not in self.chains:
            self.chains.append(name)
        return name

    def add(self, chain: str, rule: str, comment: str | None = None) -> None:
        if comment:
            rule += f' -m comment --comment "{comment}"'
        self.by_chain.setdefault(chain, []).append(f"-A {chain} {rule}")

    @property
    def rules(self) -> list[str]:
        """Builtin chains first, then user chains in creation order, each chain's rules together."""
        order = list(self.policies) + self.chains
        return [rule for chain in order for rule in self.by_chain.get(chain, [])]


def _table(name: str, policy: dict | None = None) -> Table:
    policy = policy or {}
    return Table(name, {c: policy.get(c, "ACCEPT") for c in BUILTIN_CHAINS[name]})


def acl_chains(iface: str) -> tuple[str, str]:
    return f"ACL_INBOUND_{iface}", f"ACL_OUTBOUND_{iface}"


def gateway_chains(iface: str) -> tuple[str, str]:
    return f"PG_INBOUND_{iface}", f"PG_OUTBOUND_{iface}"


def rule_matches(rule: Rule) -> list[str]:
    """One match string per CIDR of an ACL rule (source for ingress, destination for egress)."""
    parts = []
    proto = rule.protocol
    if proto in NAMED_PROTOCOLS:
        parts.append(f"-p {proto}")
        if rule.ports is not None:
            low, high = rule.ports
            parts.append(f"-m {proto} --dport {low}" + (f":{high}" if high != low else ""))
        if proto == "icmp" and rule.icmp_type is not None:
            code = f"/{rule.icmp_code}" if rule.icmp_code is not None else ""
            parts.append(f"-m icmp --icmp-type {rule.icmp_type}{code}")
    elif isinstance(proto, int) and proto != 0:  # protocol 0 matches everything in iptables, like "all"
        parts.append(f"-p {proto}")
    flag = "-s" if rule.traffic == "ingress" else "-d"
    out = []
    for cidr in rule.cidrs:
        where = [] if cidr == "0.0.0.0/0" else [f"{flag} {cidr}"]
        out.append(" ".join(where + parts))
    return out


# The rules of the ACL chains rendered last: the second router of a pair renders the same ones
# right after the first. Keyed by the Acl object's identity, which the entry holds on to.
_RECENT_ACL_CHAINS: dict[tuple, tuple[Acl, list[str]]] = {}
_RECENT_MAX = 64


def _acl_rules(table: Table, chain: str, acl: Acl, traffic: str, on_allow: str, label: str) -> None:
    key = (id(acl), chain, traffic, on_allow, label)
    recent = _RECENT_ACL_CHAINS.get(key)
    if recent is None or recent[0] is not acl:
        before = len(table.by_chain.get(chain, ()))
        for rule in acl.rules:
            if rule.traffic != traffic:
                continue
            target = on_allow if rule.action == "allow" else "DROP"
            for match in rule_matches(rule):
                table.add(chain, f"{match} -j {target}".strip(), f"{label} acl {acl.name} rule {rule.number}")
        table.add(chain, "-j DROP", f"{label} acl {acl.name} default deny")
        if len(_RECENT_ACL_CHAINS) >= _RECENT_MAX:
            del _RECENT_ACL_CHAINS[next(iter(_RECENT_ACL_CHAINS))]
        _RECENT_ACL_CHAINS[key] = (acl, table.by_chain[chain][before:])
        return
    table.by_chain.setdefault(chain, []).extend(recent[1])


def build_tables(view: RouterView) -> list[Table]:
    filt = _table("filter", {"INPUT": "DROP", "FORWARD": "DROP"})
    nat = _table("nat")
    mangle = _table("mangle")
    raw = _table("raw")
    _input(view, filt)
    _forward(view, filt)
    if view.public:
        _nat(view, nat)
        mangle.add("FORWARD", f"-o {view.public.iface} -p tcp -m tcp --tcp-flags SYN,RST SYN "
                   "-j TCPMSS --clamp-mss-to-pmtu", "clamp mss on the uplink")
    # HA guard: until the synced connection state is committed, a router answers no data traffic
    # (keepalived #2254). Loaded on; notify.sh lifts it on master after `conntrackd -c`.
    if view.redundant:
        raw.chain(HA_GUARD_CHAIN)
        raw.add("PREROUTING", f"-j {HA_GUARD_CHAIN}")
        for rule in guard_rules(view):
            raw.add(HA_GUARD_CHAIN, rule, HA_GUARD_TAG)
    return [raw, mangle, nat, filt]


def uplink(view: RouterView) -> str | None:
    """The public interface of a NAT VPC, the transit interface of a routed one."""
    if view.public:
        return view.public.iface
    return view.transit.iface if view.transit else None


def _input(view: RouterView, filt: Table) -> None:
    """INPUT: the router itself. Every service is admitted on its own interface only."""
    site = view.site
    filt.add("INPUT", "-i lo -j ACCEPT")
    filt.add("INPUT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    filt.add("INPUT", "-m conntrack --ctstate INVALID -j DROP")
    if site.ssh.allowed_from is None:
        filt.add("INPUT", f"-i eth0 -p tcp -m tcp --dport {site.ssh.port} -j ACCEPT", "ssh on management only")
    for cidr in site.ssh.allowed_from or ():
        filt.add("INPUT", f"-i eth0 -s {cidr} -p tcp -m tcp --dport {site.ssh.port} -j ACCEPT",
                 "ssh on management only, from allowed_from")
    filt.add("INPUT", "-i eth0 -p icmp -m icmp --icmp-type 8 -j ACCEPT", "ping on management")
    if view.redundant:
        filt.add("INPUT", f"-i {view.sync_iface} -s {view.sync_peer}/32 -d {view.sync_own}/32 -p vrrp -j ACCEPT",
                 "vrrp from the peer on the sync link")
        filt.add("INPUT", f"-i {view.sync_iface} -s {view.sync_peer}/32 -d {view.sync_own}/32 -p udp -m udp "
                 f"--dport {CONNTRACKD_PORT} -j ACCEPT", "conntrackd from the peer on the sync link")
    if view.transit:
        filt.add("INPUT", f"-i {view.transit.iface} -p {OSPF_PROTO} -j ACCEPT", "ospf on the transit link")
        filt.add("INPUT", f"-i {view.transit.iface} -p udp -m udp --dport {BFD_PORT} -m ttl --ttl-eq 255 -j ACCEPT",
                 "bfd on the transit link (single hop: ttl 255)")
    if view.public and vpn.has_vpn(view):
        pub, local = view.public.iface, view.vpn_address
        for conn in vpn.site_to_site(view):
            peer = f"-s {conn.peer}/32 -d {local}/32"
            filt.add("INPUT", f"-i {pub} {peer} -p udp -m multiport --dports 500,4500 -j ACCEPT", f"ike {conn.name}")
            filt.add("INPUT", f"-i {pub} {peer} -p esp -j ACCEPT", f"esp {conn.name}")
        if vpn.remote_access(view):
            filt.add("INPUT", f"-i {pub} -d {local}/32 -p udp -m multiport --dports 500,4500 -j ACCEPT",
                     "ike remote-access vpn")
            filt.add("INPUT", f"-i {pub} -d {local}/32 -p esp -j ACCEPT", "esp remote-access vpn")
            server = dns.dns_address(view)
            if server:
                ra = vpn.remote_access(view)
                for proto in ("udp", "tcp"):
                    filt.add("INPUT", f"-i {pub} -s {ra.pool} -d {server}/32 -p {proto} -m {proto} --dport 53 "
                             "-m policy --dir in --pol ipsec -j ACCEPT", "dns for remote-access vpn clients")
    for listener in lb.listeners(view):
        chain = filt.chain(listener.chain)
        filt.add("INPUT", f"-d {listener.address}/32 -p tcp -m tcp --dport {listener.port} -j {chain}",
                 f"load balancer {listener.name}")
        acl = view.site.acls[listener.tier.acl]
        label = f"load balancer {listener.name} via tier {listener.tier.name} ingress acl {acl.name}"
        for rule in lb.ingress_rules(acl, listener.members[0].port):
            target = "ACCEPT" if rule.action == "allow" else "DROP"
            for cidr in rule.cidrs:
                source = "" if cidr == "0.0.0.0/0" else f"-s {cidr} "
                filt.add(chain, f"{source}-j {target}", f"{label} rule {rule.number}")
        filt.add(chain, "-j DROP", f"{label} default deny")
    if view.vtep:
        _vxlan_input(view, filt)
    for t in view.tiers:
        filt.add("INPUT", f"-i {t.iface} -d {t.gateway}/32 -p icmp -m icmp --icmp-type 8 -j ACCEPT",
                 f"ping the gateway of tier {t.name}")
    # the router's own services, from a tier to its own gateway only, whatever the tier's ACL says
    # (the lists filter FORWARD); never from the uplink or another tier
    if dns.needs_dnsmasq(view):
        for t in view.tiers:
            for proto in ("udp", "tcp"):
                filt.add("INPUT", f"-i {t.iface} -s {t.cidr} -d {t.gateway}/32 -p {proto} -m {proto} --dport 53 "
                         "-j ACCEPT", f"dns to the gateway of tier {t.name}")
            if t.dhcp is not None:
                # a client without an address broadcasts; a renewal goes to the server identifier
                for to in ("255.255.255.255", t.gateway):
                    filt.add("INPUT", f"-i {t.iface} -d {to}/32 -p udp -m udp --sport 68 --dport 67 -j ACCEPT",
                             f"dhcp on tier {t.name}")


def _vxlan_input(view: RouterView, filt: Table) -> None:
    """VXLAN only on the VTEP interface, from the underlay network (UDP 8472 or 4789)."""
    v = view.vtep
    filt.add("INPUT", f"-i {v.iface} -s {v.cidr} -p udp -m udp --dport {v.port} -j ACCEPT",
             "vxlan from the underlay on the vtep interface")
    if v.multicast:
        # queries of the underlay's IGMP querier: answered, so snooping switches keep sending the groups
        filt.add("INPUT", f"-i {v.iface} -p igmp -j ACCEPT", "igmp on the vtep interface (vxlan multicast groups)")


def _forward(view: RouterView, filt: Table) -> None:
    """FORWARD: the source's egress list, then the destination's ingress list (CloudStack semantics)."""
    acls = view.site.acls
    up = uplink(view)
    filt.add("FORWARD", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    filt.add("FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    for t in view.public_tiers:
        # a public tier's hosts may use their own addresses only (its addresses are routed, not NATed)
        filt.add("FORWARD", f"-i {t.iface} ! -s {t.cidr} -j DROP", f"public tier {t.name}: no spoofed sources")
    if view.public:
        # a public tier is routed: the internet reaches it subject to the tier's ingress list
        for t in view.public_tiers:
            inbound, _ = acl_chains(t.iface)
            filt.add("FORWARD", f"-i {up} -o {t.iface} -d {t.cidr} -j {filt.chain(inbound)}",
                     f"internet to public tier {t.name}")
        # from the uplink only what NAT sent to a tier (or a VPN decrypted) may enter: nobody routes
        # to the private addresses directly
        if vpn.has_vpn(view):
            filt.add("FORWARD", f"-i {up} -m conntrack ! --ctstate DNAT -m policy --dir in --pol none -j DROP",
                     "uplink: only NATed or VPN traffic")
        else:
            filt.add("FORWARD", f"-i {up} -m conntrack ! --ctstate DNAT -j DROP", "uplink: only NATed traffic")
    for t in view.tiers:
        _, outbound = acl_chains(t.iface)
        filt.chain(outbound)
        filt.add("FORWARD", f"-i {t.iface} -s {t.cidr} -j {outbound}", f"egress of tier {t.name}")
        _acl_rules(filt, outbound, acls[t.acl], "egress", "RETURN", f"tier {t.name} egress")
    # a private gateway's list: ingress = into the VPC from the gateway, egress = out through it
    for g in view.private_gateways:
        inbound, _ = gateway_chains(g.iface)
        filt.chain(inbound)
        filt.add("FORWARD", f"-i {g.iface} -j {inbound}", f"from private gateway {g.name}")
        _acl_rules(filt, inbound, acls[g.acl], "ingress", "RETURN", f"private gateway {g.name} ingress")
    for t in view.tiers:
        inbound, _ = acl_chains(t.iface)
        filt.chain(inbound)
        filt.add("FORWARD", f"-o {t.iface} -d {t.cidr} -j {inbound}", f"ingress of tier {t.name}")
        _acl_rules(filt, inbound, acls[t.acl], "ingress", "ACCEPT", f"tier {t.name} ingress")
    for g in view.private_gateways:
        _, outbound = gateway_chains(g.iface)
        filt.chain(outbound)
        filt.add("FORWARD", f"-o {g.iface} -j {outbound}", f"to private gateway {g.name}")
        _acl_rules(filt, outbound, acls[g.acl], "egress", "ACCEPT", f"private gateway {g.name} egress")
    # leaving through the uplink is the last rule and names the uplink: it can never let traffic
    # to a private gateway bypass that gateway's list (apache/cloudstack#9838)
    if up:
        what = "the internet" if view.public else "the OSPF core"
        for t in view.tiers:
            filt.add("FORWARD", f"-i {t.iface} -s {t.cidr} -o {up} -j ACCEPT", f"tier {t.name} to {what}")


def _nat(view: RouterView, nat: Table) -> None:
    """NAT: public tiers exempt first, VPN exemptions, static NAT both ways, port forwarding, hairpin, source
    NAT last."""
    vpc, ips, pub = view.vpc, view.public_ips, view.public.iface
    for t in view.public_tiers:
        # routed, never NATed, in either direction (its addresses are its hosts' own)
        nat.add("PREROUTING", f"-d {t.cidr} -j ACCEPT", f"public tier {t.name}: no destination nat")
        nat.add("POSTROUTING", f"-s {t.cidr} -j ACCEPT", f"public tier {t.name}: no source nat")
    for source, destination, why in vpn.exempt_from_nat(view):
        match = (f"-s {source} " if source else "") + f"-d {destination}"
        nat.add("POSTROUTING", f"{match} -o {pub} -j ACCEPT", f"no source nat: {why}")
    for s in sorted(vpc.static_nat, key=lambda s: s.public_ip):
        nat.add("PREROUTING", f"-d {ips[s.public_ip]}/32 -j DNAT --to-destination {s.private_ip}",
                f"static nat {s.public_ip}")
    for pf in sorted(vpc.port_forwarding, key=lambda p: (p.public_ip, p.protocol, p.public_port)):
        nat.add("PREROUTING", _port_forward(ips[pf.public_ip], pf), f"port forwarding {pf.public_ip}")
    for t in view.tiers:
        if t.public:
            continue  # nothing is NATed to a public tier
        # a host reaching a NATed address of its own tier must see replies come back through us
        nat.add("POSTROUTING", f"-s {t.cidr} -d {t.cidr} -o {t.iface} -m conntrack --ctstate DNAT "
                f"-j SNAT --to-source {t.gateway}", f"hairpin nat in tier {t.name}")
    for s in sorted(vpc.static_nat, key=lambda s: s.public_ip):
        nat.add("POSTROUTING", f"-s {s.private_ip}/32 -o {pub} -j SNAT --to-source {ips[s.public_ip]}",
                f"static nat {s.public_ip}")
    if vpc.source_nat:
        nat.add("POSTROUTING", f"-s {view.vpc_cidr} -o {pub} -j SNAT --to-source {ips['source-nat']}",
                "source nat")


def guard_rules(view: RouterView) -> list[str]:
    """Rules of the HA guard chain: drop data traffic. Traffic to the router's own addresses and OSPF
    on the transit link always pass, so a backup keeps its adjacencies and health checks warm."""
    # the router's own traffic passes: a backup's haproxy health checks must see their answers
    # (found by the lab: otherwise a new master serves 503s until its checks rise again)
    out = ["-m addrtype --dst-type LOCAL -j RETURN"]
    if view.transit:
        out.append(f"-i {view.transit.iface} -p {OSPF_PROTO} -j RETURN")
    ifaces = ([view.public.iface] if view.public else []) + ([view.transit.iface] if view.transit else []) \
        + [t.iface for t in view.tiers] + [g.iface for g in view.private_gateways]
    return out + [f"-i {i} -j DROP" for i in ifaces]


def _port_forward(public: str, pf) -> str:
    (plow, phigh), (qlow, qhigh) = pf.public_port, pf.private_port
    dport = f"{plow}" if plow == phigh else f"{plow}:{phigh}"
    if (plow, phigh) == (qlow, qhigh):
        to = pf.private_ip if plow != phigh else f"{pf.private_ip}:{qlow}"
    elif plow == phigh:
        to = f"{pf.private_ip}:{qlow}"
    else:  # shifted range: public port p goes to private port p - plow + qlow
        to = f"{pf.private_ip}:{qlow}-{qhigh}/{plow}"
    return f"-d {public}/32 -p {pf.protocol} -m {pf.protocol} --dport {dport} -j DNAT --to-destination {to}"
