//! The pure planner: typed inputs in, the ordered list of [`Change`]s out. No I/O, so
//! `--dry-run` prints exactly what `up` would do, and unit tests check plans in microseconds.

use std::net::IpAddr;

use ipnet::IpNet;

use super::change::{
    Change, Direction, Element, Family, FwMark, NftHook, NftRuleKind, Route, Rule, SetKey, Sysctl,
    SysctlKey, TableId,
};

/// Name of vmtun's own nftables tables, one per family of the VM subnets (`ip vmtun`, `ip6
/// vmtun`). They are created exclusively, so a second instance on the same host fails with
/// `File exists` instead of sharing them.
pub const NFT_TABLE: &str = "vmtun";
/// The base chain in [`NFT_TABLE`], hooked at prerouting with mangle priority like the
/// seed's `iptables -t mangle -A PREROUTING`.
pub const NFT_CHAIN: &str = "prerouting";
/// The base chain in [`NFT_TABLE`] for routed traffic: the MSS clamp of TCP handshakes
/// crossing the tunnel.
pub const NFT_FORWARD_CHAIN: &str = "forward";
/// The cutover set: holds a subnet's network address once a packet for it arrived natively.
pub const NFT_NATIVE_SET: &str = "native";
/// The old host's set of switched subnets: holds a subnet's network address once the new
/// host has reported that the provider routes it there.
pub const NFT_SWITCHED_SET: &str = "switched";
/// The MACs of the uplink gateways, the only senders whose packets count as native: created
/// empty by the plan, filled by vmtun at start ([`gateway_elements`]).
pub const NFT_GATEWAY_SET: &str = "gateways";
/// Default priority of the `fwmark` policy rule: before `main` (32766), after `local` (0),
/// and away from the numbers `ip rule add` picks by itself (32765 downwards). vmtun's
/// other rules take the [`RULES_BEFORE_MARK`] numbers just below it.
pub const DEFAULT_RULE_PRIORITY: u32 = 10_000;

/// How many priorities below the mark rule's vmtun's other rules use, in this order:
/// - `to SUBNET lookup main suppress_prefixlength LEN`: the VMs that run here (their host
///   routes in `main`; the subnet's own route there, such as a host's `blackhole`, and the
///   default route are passed over);
/// - `iif TUN to SUBNET unreachable`: what came out of the tunnel for the subnet and has no
///   VM here is refused, never sent back in (the other host sent it here for that reason);
/// - `to SUBNET lookup TABLE`: the rest of the subnet is on the other host, through the
///   tunnel;
/// - role new, `fwmark M lookup main suppress_prefixlength 0`: marked VM traffic goes
///   where this host has a route of its own (another VM here, the new site's networks);
///   only what would take the default route goes through the tunnel, by the mark rule.
pub const RULES_BEFORE_MARK: u32 = 4;

/// The tunnel device's own settings (`[interface]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelParams {
    /// TUN device name, created by the driver before the plan is applied.
    pub tun: String,
    /// This host's address inside the tunnel; its connected route comes with it.
    pub address: IpNet,
    /// The tunnel device's MTU.
    pub mtu: u32,
}

/// The old host's side of a migration: the VM subnets go through the tunnel once the VMs
/// have left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldParams {
    /// VM subnets, IPv4 and IPv6.
    pub subnets: Vec<IpNet>,
    /// The new host's tunnel address.
    pub via: IpAddr,
    /// Routing table whose default route is the tunnel.
    pub table: TableId,
    /// Mark set on the traffic of VMs still here once their subnet is switched.
    pub fwmark: FwMark,
    /// Priority of the mark's policy rule (see [`DEFAULT_RULE_PRIORITY`]).
    pub rule_priority: u32,
    /// Name prefix of the VM interfaces.
    pub vif_prefix: String,
}

/// The new host's side: VM replies go back through the tunnel (marked, policy-routed) until
/// the subnets arrive natively on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParams {
    /// VM subnets, IPv4 and IPv6.
    pub subnets: Vec<IpNet>,
    /// The old host's tunnel address.
    pub via: IpAddr,
    /// Routing table whose default route is the tunnel: VM replies until the cutover, and
    /// the subnet's addresses that have no VM here.
    pub table: TableId,
    /// Mark set on VM replies, matched by the policy rule.
    pub fwmark: FwMark,
    /// Priority of the policy rule (see [`DEFAULT_RULE_PRIORITY`]).
    pub rule_priority: u32,
    /// Name prefix of the VM interfaces (`vif` matches `vif0`..).
    pub vif_prefix: String,
    /// Where native packets for the subnets arrive after the provider's switch.
    pub bridge: String,
    /// More interfaces where native packets may arrive, besides `bridge` (a second uplink,
    /// a VLAN device or a bond outside the bridge).
    pub native_interfaces: Vec<String>,
    /// Whether the kernel flips on the first native packet (off with a cutover hold: the
    /// watcher then removes the mark rule once the hold is over).
    pub kernel_flip: bool,
}

impl NewParams {
    /// Every interface where native packets may arrive: the bridge, then the others.
    pub fn native_ifaces(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.bridge.as_str())
            .chain(self.native_interfaces.iter().map(String::as_str))
    }
}

/// The migration role (`[migration]`), absent for a plain tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The host the VMs leave.
    Old(OldParams),
    /// The host the VMs arrive on.
    New(NewParams),
}

impl Role {
    /// The VM subnets the role routes.
    pub fn subnets(&self) -> &[IpNet] {
        match self {
            Role::Old(o) => &o.subnets,
            Role::New(n) => &n.subnets,
        }
    }

    /// The role's name as the config spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Old(_) => "old",
            Role::New(_) => "new",
        }
    }
}

/// The ordered changes `vmtun up` makes: the tunnel's address, MTU and link state, then the
/// role's routes, rule, sysctls and nftables objects, IPv4's before IPv6's. The journal
/// applies them in this order and undoes them in reverse.
pub fn plan(tunnel: &TunnelParams, role: Option<&Role>) -> Vec<Change> {
    let tun = &tunnel.tun;
    let mut p = vec![Change::Address {
        dev: tun.clone(),
        addr: tunnel.address,
    }];
    p.push(Change::Mtu {
        dev: tun.clone(),
        mtu: tunnel.mtu,
        previous: None,
    });
    // Up before routes: the kernel installs the connected route (which the gateways below
    // need) only on a link that is up.
    p.push(Change::LinkUp {
        dev: tun.clone(),
        was_up: None,
    });
    match role {
        None => {}
        Some(Role::Old(o)) => {
            for family in Family::all_of(&o.subnets) {
                plan_old(&mut p, tun, o, family);
                clamp_mss(&mut p, tunnel, family);
            }
        }
        Some(Role::New(n)) => {
            for family in Family::all_of(&n.subnets) {
                plan_new(&mut p, tun, n, family);
                clamp_mss(&mut p, tunnel, family);
            }
        }
    }
    p
}

/// The routing both roles share for one family: a table whose default route is the tunnel,
/// the rules that send a subnet's addresses there unless a VM of this host has them (see
/// [`RULES_BEFORE_MARK`]), and the rules of marked VM traffic. Nothing goes into `main`; a host's own route there that
/// refuses the subnet (a `blackhole` that keeps unused addresses from looping to the
/// provider) would end the rule walk before the tunnel's rule, so it is set aside until
/// exit ([`Change::SetAside`]), and vmtun's loop guard does its job meanwhile.
struct TunnelPath<'a> {
    tun: &'a str,
    via: IpAddr,
    table: TableId,
    /// The mark that sends VM traffic to `table`.
    fwmark: FwMark,
    /// The mark rule's priority; the subnet rules take the ones just below.
    priority: u32,
}

impl TunnelPath<'_> {
    /// The changes for `subnets`, all of `family`.
    fn plan(&self, p: &mut Vec<Change>, family: Family, subnets: &[IpNet]) {
        let everything = family.everything();
        p.push(Change::Route(Route {
            dest: everything,
            via: gateway(self.via, &everything),
            dev: self.tun.into(),
            table: self.table,
        }));
        let first = self.priority - RULES_BEFORE_MARK;
        for net in subnets {
            p.push(Change::SetAside {
                dest: *net,
                found: None,
            });
        }
        for net in subnets {
            p.push(Change::Rule(
                Rule::new(family, first, Some(TableId::MAIN))
                    .to(*net)
                    .suppress_prefixlength(net.prefix_len()),
            ));
        }
        for net in subnets {
            p.push(Change::Rule(
                Rule::new(family, first + 1, None).iif(self.tun).to(*net),
            ));
        }
        for net in subnets {
            p.push(Change::Rule(
                Rule::new(family, first + 2, Some(self.table)).to(*net),
            ));
        }
        // Marked traffic (a VM's, bound for the other site): what this host has a route of
        // its own for stays here (another VM, this site's networks); the rest takes the
        // tunnel table instead of the default route.
        p.push(Change::Rule(
            Rule::new(family, self.priority - 1, Some(TableId::MAIN))
                .fwmark(self.fwmark)
                .suppress_prefixlength(0),
        ));
        p.push(Change::Rule(
            Rule::new(family, self.priority, Some(self.table)).fwmark(self.fwmark),
        ));
    }
}

/// The next hop for a route to `dest` through the tunnel: the other host's tunnel address
/// when it has `dest`'s family, otherwise none (the tunnel is a point-to-point device, and
/// cryptokey routing picks the peer by the packet's destination).
fn gateway(via: IpAddr, dest: &IpNet) -> Option<IpAddr> {
    (Family::of(via) == Family::of(dest.addr())).then_some(via)
}

fn nft_table(family: Family) -> Change {
    Change::NftTable {
        family,
        name: NFT_TABLE.into(),
    }
}

/// The forward chain in vmtun's table of `family` (which must come before it in the plan)
/// and the MSS clamp of TCP handshakes routed into the tunnel and out of it: both directions
/// on both hosts, so a connection's segments fit the tunnel even when the other end is a
/// plain WireGuard peer.
fn clamp_mss(p: &mut Vec<Change>, tunnel: &TunnelParams, family: Family) {
    p.push(Change::NftChain {
        family,
        table: NFT_TABLE.into(),
        name: NFT_FORWARD_CHAIN.into(),
        hook: NftHook::Forward,
    });
    let headers = family.ip_tcp_headers();
    let mss = u16::try_from(tunnel.mtu.saturating_sub(headers)).unwrap_or(u16::MAX);
    for direction in [Direction::Into, Direction::OutOf] {
        p.push(Change::NftRule {
            family,
            table: NFT_TABLE.into(),
            chain: NFT_FORWARD_CHAIN.into(),
            rule: NftRuleKind::ClampMss {
                tun: tunnel.tun.clone(),
                direction,
                mss,
            },
        });
    }
}

/// `net.ipv4.conf.DEV.rp_filter = 2` (RFC 3704 "loose") on each of `devs`, for IPv4 only:
/// where a host expects packets on one path and sends replies by another. IPv6 has no such
/// sysctl (its reverse-path filter is a netfilter rule vmtun does not add).
fn loose_rp_filter(p: &mut Vec<Change>, family: Family, devs: &[&str]) {
    if family != Family::Ipv4 {
        return;
    }
    for dev in devs {
        p.push(Change::Sysctl(Sysctl {
            key: SysctlKey::ipv4_conf(dev, "rp_filter"),
            value: "2".into(),
            previous: None,
        }));
    }
}

/// Role old's changes for the subnets of one family: the tunnel path for the subnets'
/// addresses that have no VM here, and, for VMs still here once the new host reports the
/// provider's switch, their traffic through the tunnel (the set of switched subnets, a
/// mark rule per subnet, and the same policy rules as role new). Clients' packets for those
/// VMs then arrive through the tunnel while replies to others may leave natively, hence
/// loose reverse-path filtering on the tunnel.
fn plan_old(p: &mut Vec<Change>, tun: &str, o: &OldParams, family: Family) {
    let subnets = of_family(&o.subnets, family);
    TunnelPath {
        tun,
        via: o.via,
        table: o.table,
        fwmark: o.fwmark,
        priority: o.rule_priority,
    }
    .plan(p, family, &subnets);
    loose_rp_filter(p, family, &[tun]);
    let (table, chain) = (NFT_TABLE.to_string(), NFT_CHAIN.to_string());
    p.push(nft_table(family));
    p.push(Change::NftChain {
        family,
        table: table.clone(),
        name: chain.clone(),
        hook: NftHook::Prerouting,
    });
    p.push(Change::NftSet {
        family,
        table: table.clone(),
        name: NFT_SWITCHED_SET.into(),
        key: SetKey::DynamicAddress,
    });
    for &subnet in &subnets {
        p.push(Change::NftRule {
            family,
            table: table.clone(),
            chain: chain.clone(),
            rule: NftRuleKind::SwitchedMark {
                vif_prefix: o.vif_prefix.clone(),
                subnet,
                fwmark: o.fwmark,
                set: NFT_SWITCHED_SET.into(),
            },
        });
    }
}

/// The subnets of `family`, host bits dropped.
fn of_family(subnets: &[IpNet], family: Family) -> Vec<IpNet> {
    (subnets.iter())
        .filter(|net| Family::of(net.addr()) == family)
        .map(IpNet::trunc)
        .collect()
}

/// Role new's changes for the subnets of one family.
fn plan_new(p: &mut Vec<Change>, tun: &str, n: &NewParams, family: Family) {
    let subnets = of_family(&n.subnets, family);
    TunnelPath {
        tun,
        via: n.via,
        table: n.table,
        fwmark: n.fwmark,
        priority: n.rule_priority,
    }
    .plan(p, family, &subnets);
    // Client packets arrive through the tunnel, replies may leave natively.
    let devs: Vec<&str> = std::iter::once(tun).chain(n.native_ifaces()).collect();
    loose_rp_filter(p, family, &devs);
    let table = NFT_TABLE.to_string();
    let chain = NFT_CHAIN.to_string();
    p.push(nft_table(family));
    p.push(Change::NftChain {
        family,
        table: table.clone(),
        name: chain.clone(),
        hook: NftHook::Prerouting,
    });
    for (name, key) in [
        (NFT_NATIVE_SET, SetKey::DynamicAddress),
        (NFT_GATEWAY_SET, SetKey::EtherAddr),
    ] {
        p.push(Change::NftSet {
            family,
            table: table.clone(),
            name: name.into(),
            key,
        });
    }
    let native = n.native_ifaces().flat_map(|iface| {
        subnets.iter().map(move |&subnet| NftRuleKind::Native {
            iface: iface.into(),
            subnet,
            set: n.kernel_flip.then(|| NFT_NATIVE_SET.into()),
            gateways: Some(NFT_GATEWAY_SET.into()),
        })
    });
    let mark = subnets.iter().map(|&subnet| NftRuleKind::Mark {
        vif_prefix: n.vif_prefix.clone(),
        subnet,
        fwmark: n.fwmark,
        skip_set: Some(NFT_NATIVE_SET.into()),
    });
    for rule in native.chain(mark) {
        p.push(Change::NftRule {
            family,
            table: table.clone(),
            chain: chain.clone(),
            rule,
        });
    }
}

/// The uplink gateways' MACs as elements of the gateways set of vmtun's table of each of
/// `families`: learnt at start, added (and journaled, so a restore puts them back) after
/// the plan.
pub fn gateway_elements(families: &[Family], macs: &[[u8; 6]]) -> Vec<Change> {
    families
        .iter()
        .flat_map(|&family| {
            macs.iter().map(move |mac| Change::NftSetElement {
                family,
                table: NFT_TABLE.into(),
                set: NFT_GATEWAY_SET.into(),
                element: Element::Mac(*mac),
            })
        })
        .collect()
}

/// The IPv6 default gateway a VM is given (`ip -6 route add default via fe80::1 dev eth0`),
/// the usual choice of routed IPv6 hosting: a link-local address the host holds on every VM
/// interface, so it is the same wherever the VM runs.
pub const VM_GATEWAY6: &str = "fe80::1/64";

/// How much the host queues for a VM (per address) while it resolves the VM's link-layer
/// address on its interface: 4 MiB. A migrated guest answers no ARP or neighbour
/// solicitation until it resumes, and with the handover at the pause what it is sent
/// meanwhile waits in that queue (before it reaches the tap). The kernel's default, 212,992
/// bytes, held about 220 ms of the lab's 1 kHz pings: pauses longer than that lost the rest
/// (runs 1 and 9 of `benches/results/real-vm-20261203T131640Z`).
pub const VIF_UNRESOLVED_QUEUE_BYTES: &str = "4194304";

/// What `vmtun vif-up IFACE` sets: a host route per VM address onto its interface (/32,
/// /128), a queue for what waits on the VM's address resolution that outlasts a migration's
/// pause (`VIF_UNRESOLVED_QUEUE_BYTES`), and proxy ARP there without delay (the VM's IPv4
/// default gateway is an arbitrary address the host answers for). With IPv6 addresses, the
/// host holds the VM's IPv6 gateway [`VM_GATEWAY6`] on the interface, without duplicate
/// address detection (which would keep it unusable for a second after each VM start or
/// arrival). These belong to the VM interface's life: they are not journaled, stay when
/// vmtun exits and go with the interface. Apply them with [`super::apply_idempotent`].
pub fn vif_up(iface: &str, addresses: &[IpAddr]) -> Vec<Change> {
    let mut p: Vec<Change> = addresses
        .iter()
        .map(|a| {
            Change::Route(Route {
                dest: IpNet::from(*a),
                via: None,
                dev: iface.into(),
                table: TableId::MAIN,
            })
        })
        .collect();
    let families: Vec<Family> = {
        let nets: Vec<IpNet> = addresses.iter().map(|a| IpNet::from(*a)).collect();
        Family::all_of(&nets)
    };
    let sysctl = |key, value: &str| {
        Change::Sysctl(Sysctl {
            key,
            value: value.into(),
            previous: None,
        })
    };
    if families.contains(&Family::Ipv4) {
        p.push(sysctl(SysctlKey::ipv4_conf(iface, "proxy_arp"), "1"));
        // Answer at once, not after a random delay of up to 0.8 s (the default).
        p.push(sysctl(SysctlKey::ipv4_neigh(iface, "proxy_delay"), "0"));
        p.push(sysctl(
            SysctlKey::ipv4_neigh(iface, "unres_qlen_bytes"),
            VIF_UNRESOLVED_QUEUE_BYTES,
        ));
    }
    if families.contains(&Family::Ipv6) {
        p.push(sysctl(SysctlKey::ipv6_conf(iface, "accept_dad"), "0"));
        p.push(sysctl(
            SysctlKey::ipv6_neigh(iface, "unres_qlen_bytes"),
            VIF_UNRESOLVED_QUEUE_BYTES,
        ));
        p.push(Change::Address {
            dev: iface.into(),
            addr: VM_GATEWAY6.parse().expect("constant prefix"),
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::fixtures::{new_role, old_role, tunnel};

    fn lines(p: &[Change]) -> Vec<String> {
        p.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn plain_tunnel_plan() {
        assert_eq!(
            lines(&plan(&tunnel(), None)),
            [
                "ip addr add 100.64.0.1/24 dev vmtun0",
                "ip link set dev vmtun0 mtu 1420",
                "ip link set dev vmtun0 up",
            ]
        );
    }

    #[test]
    fn old_role_sends_each_subnet_into_the_tunnel_and_vms_left_behind_once_switched() {
        // Host bits are dropped, as `ip route` would insist.
        let role = old_role(&["203.0.113.0/29", "198.51.100.9/29"]);
        let t = TunnelParams {
            mtu: 1400,
            ..tunnel()
        };
        assert_eq!(
            lines(&plan(&t, Some(&role))),
            [
                "ip addr add 100.64.0.1/24 dev vmtun0",
                "ip link set dev vmtun0 mtu 1400",
                "ip link set dev vmtun0 up",
                "ip route add default via 100.64.0.2 dev vmtun0 table 201",
                "# the host's blackhole/unreachable/prohibit route for 203.0.113.0/29, if any, is set aside until exit",
                "# the host's blackhole/unreachable/prohibit route for 198.51.100.8/29, if any, is set aside until exit",
                "ip rule add to 203.0.113.0/29 lookup main suppress_prefixlength 29 priority 9996",
                "ip rule add to 198.51.100.8/29 lookup main suppress_prefixlength 29 priority 9996",
                "ip rule add iif vmtun0 to 203.0.113.0/29 unreachable priority 9997",
                "ip rule add iif vmtun0 to 198.51.100.8/29 unreachable priority 9997",
                "ip rule add to 203.0.113.0/29 lookup 201 priority 9998",
                "ip rule add to 198.51.100.8/29 lookup 201 priority 9998",
                "ip rule add fwmark 0x1 lookup main suppress_prefixlength 0 priority 9999",
                "ip rule add fwmark 0x1 lookup 201 priority 10000",
                "sysctl -w net.ipv4.conf.vmtun0.rp_filter=2",
                "nft add table ip vmtun",
                "nft add chain ip vmtun prerouting '{ type filter hook prerouting priority mangle; policy accept; }'",
                "nft add set ip vmtun switched '{ type ipv4_addr; flags dynamic; }'",
                "nft add rule ip vmtun prerouting iifname \"vif*\" ip saddr 203.0.113.0/29 ip saddr & 255.255.255.248 == @switched counter meta mark set 0x1 comment \"vmtun switched 203.0.113.0/29\"",
                "nft add rule ip vmtun prerouting iifname \"vif*\" ip saddr 198.51.100.8/29 ip saddr & 255.255.255.248 == @switched counter meta mark set 0x1 comment \"vmtun switched 198.51.100.8/29\"",
                "nft add chain ip vmtun forward '{ type filter hook forward priority mangle; policy accept; }'",
                "nft add rule ip vmtun forward oifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1360 counter tcp option maxseg size set 1360 comment \"vmtun mss into tunnel\"",
                "nft add rule ip vmtun forward iifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1360 counter tcp option maxseg size set 1360 comment \"vmtun mss out of tunnel\"",
            ]
        );
    }

    #[test]
    fn new_role_plan() {
        assert_eq!(
            lines(&plan(&tunnel(), Some(&new_role()))),
            [
                "ip addr add 100.64.0.1/24 dev vmtun0",
                "ip link set dev vmtun0 mtu 1420",
                "ip link set dev vmtun0 up",
                "ip route add default via 100.64.0.2 dev vmtun0 table 201",
                "# the host's blackhole/unreachable/prohibit route for 203.0.113.0/29, if any, is set aside until exit",
                "ip rule add to 203.0.113.0/29 lookup main suppress_prefixlength 29 priority 9996",
                "ip rule add iif vmtun0 to 203.0.113.0/29 unreachable priority 9997",
                "ip rule add to 203.0.113.0/29 lookup 201 priority 9998",
                "ip rule add fwmark 0x1 lookup main suppress_prefixlength 0 priority 9999",
                "ip rule add fwmark 0x1 lookup 201 priority 10000",
                "sysctl -w net.ipv4.conf.vmtun0.rp_filter=2",
                "sysctl -w net.ipv4.conf.br0.rp_filter=2",
                "nft add table ip vmtun",
                "nft add chain ip vmtun prerouting '{ type filter hook prerouting priority mangle; policy accept; }'",
                "nft add set ip vmtun native '{ type ipv4_addr; flags dynamic; }'",
                "nft add set ip vmtun gateways '{ type ether_addr; }'",
                "nft add rule ip vmtun prerouting meta pkttype host iifname \"br0\" ether saddr @gateways ip daddr 203.0.113.0/29 fib saddr . iif oif exists counter add @native { ip daddr & 255.255.255.248 } comment \"vmtun native 203.0.113.0/29 on br0\"",
                "nft add rule ip vmtun prerouting iifname \"vif*\" ip saddr 203.0.113.0/29 ip saddr & 255.255.255.248 != @native counter meta mark set 0x1 comment \"vmtun mark 203.0.113.0/29\"",
                "nft add chain ip vmtun forward '{ type filter hook forward priority mangle; policy accept; }'",
                "nft add rule ip vmtun forward oifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter tcp option maxseg size set 1380 comment \"vmtun mss into tunnel\"",
                "nft add rule ip vmtun forward iifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter tcp option maxseg size set 1380 comment \"vmtun mss out of tunnel\"",
            ]
        );
    }

    #[test]
    fn ipv6_subnets_get_their_own_route_rule_and_table() {
        let Role::New(mut n) = new_role() else {
            unreachable!()
        };
        n.subnets.push("2001:db8:1::/64".parse().unwrap());
        let p = lines(&plan(&tunnel(), Some(&Role::New(n))));
        // IPv4's changes come first and are as without IPv6.
        assert_eq!(p[..21], lines(&plan(&tunnel(), Some(&new_role())))[..]);
        assert_eq!(
            p[21..],
            [
                "ip -6 route add default dev vmtun0 table 201",
                "# the host's blackhole/unreachable/prohibit route for 2001:db8:1::/64, if any, is set aside until exit",
                "ip -6 rule add to 2001:db8:1::/64 lookup main suppress_prefixlength 64 priority 9996",
                "ip -6 rule add iif vmtun0 to 2001:db8:1::/64 unreachable priority 9997",
                "ip -6 rule add to 2001:db8:1::/64 lookup 201 priority 9998",
                "ip -6 rule add fwmark 0x1 lookup main suppress_prefixlength 0 priority 9999",
                "ip -6 rule add fwmark 0x1 lookup 201 priority 10000",
                "nft add table ip6 vmtun",
                "nft add chain ip6 vmtun prerouting '{ type filter hook prerouting priority mangle; policy accept; }'",
                "nft add set ip6 vmtun native '{ type ipv6_addr; flags dynamic; }'",
                "nft add set ip6 vmtun gateways '{ type ether_addr; }'",
                "nft add rule ip6 vmtun prerouting meta pkttype host iifname \"br0\" ether saddr @gateways ip6 daddr 2001:db8:1::/64 fib saddr . iif oif exists counter add @native { ip6 daddr & ffff:ffff:ffff:ffff:: } comment \"vmtun native 2001:db8:1::/64 on br0\"",
                "nft add rule ip6 vmtun prerouting iifname \"vif*\" ip6 saddr 2001:db8:1::/64 ip6 saddr & ffff:ffff:ffff:ffff:: != @native counter meta mark set 0x1 comment \"vmtun mark 2001:db8:1::/64\"",
                "nft add chain ip6 vmtun forward '{ type filter hook forward priority mangle; policy accept; }'",
                "nft add rule ip6 vmtun forward oifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1360 counter tcp option maxseg size set 1360 comment \"vmtun mss into tunnel\"",
                "nft add rule ip6 vmtun forward iifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1360 counter tcp option maxseg size set 1360 comment \"vmtun mss out of tunnel\"",
            ]
        );
    }

    #[test]
    fn each_native_interface_gets_its_native_rules_and_loose_rp_filter() {
        let Role::New(mut n) = new_role() else {
            unreachable!()
        };
        n.subnets.push("198.51.100.0/24".parse().unwrap());
        n.native_interfaces = vec!["eth1.100".into()];
        let p = lines(&plan(&tunnel(), Some(&Role::New(n))));
        let rp: Vec<&String> = p.iter().filter(|l| l.contains("rp_filter")).collect();
        assert_eq!(
            rp,
            [
                "sysctl -w net.ipv4.conf.vmtun0.rp_filter=2",
                "sysctl -w net.ipv4.conf.br0.rp_filter=2",
                "sysctl -w net.ipv4.conf.eth1/100.rp_filter=2",
            ]
        );
        let native: Vec<&str> = p
            .iter()
            .filter_map(|l| l.split("comment \"vmtun native ").nth(1))
            .collect();
        assert_eq!(
            native,
            [
                "203.0.113.0/29 on br0\"",
                "198.51.100.0/24 on br0\"",
                "203.0.113.0/29 on eth1.100\"",
                "198.51.100.0/24 on eth1.100\"",
            ]
        );
    }

    #[test]
    fn without_the_kernel_flip_the_native_rule_only_counts() {
        let Role::New(mut n) = new_role() else {
            unreachable!()
        };
        n.kernel_flip = false;
        let p = lines(&plan(&tunnel(), Some(&Role::New(n))));
        let native: Vec<&String> = p
            .iter()
            .filter(|l| l.contains("comment \"vmtun native"))
            .collect();
        assert_eq!(
            native,
            [
                "nft add rule ip vmtun prerouting meta pkttype host iifname \"br0\" ether saddr @gateways ip daddr 203.0.113.0/29 fib saddr . iif oif exists counter comment \"vmtun native 203.0.113.0/29 on br0\""
            ]
        );
    }

    #[test]
    fn old_role_sends_an_ipv6_subnet_into_the_tunnel() {
        let role = old_role(&["2001:db8:1::/64"]);
        let p = lines(&plan(&tunnel(), Some(&role)));
        assert_eq!(p[3], "ip -6 route add default dev vmtun0 table 201");
        assert_eq!(
            p[7],
            "ip -6 rule add to 2001:db8:1::/64 lookup 201 priority 9998"
        );
        // No rp_filter for IPv6; only the family that has subnets gets a table.
        assert_eq!(p[10], "nft add table ip6 vmtun");
        assert_eq!(
            p[13],
            "nft add rule ip6 vmtun prerouting iifname \"vif*\" ip6 saddr 2001:db8:1::/64 ip6 saddr & ffff:ffff:ffff:ffff:: == @switched counter meta mark set 0x1 comment \"vmtun switched 2001:db8:1::/64\""
        );
        assert_eq!(p.len(), 17);
    }

    #[test]
    fn vif_up_with_ipv6_holds_the_gateway_without_dad() {
        let p = vif_up(
            "vif0",
            &[
                "203.0.113.2".parse().unwrap(),
                "2001:db8:1::2".parse().unwrap(),
            ],
        );
        assert_eq!(
            lines(&p),
            [
                "ip route add 203.0.113.2/32 dev vif0",
                "ip -6 route add 2001:db8:1::2/128 dev vif0",
                "sysctl -w net.ipv4.conf.vif0.proxy_arp=1",
                "sysctl -w net.ipv4.neigh.vif0.proxy_delay=0",
                "sysctl -w net.ipv4.neigh.vif0.unres_qlen_bytes=4194304",
                "sysctl -w net.ipv6.conf.vif0.accept_dad=0",
                "sysctl -w net.ipv6.neigh.vif0.unres_qlen_bytes=4194304",
                "ip addr add fe80::1/64 dev vif0",
            ]
        );
    }

    #[test]
    fn vif_up_plan() {
        let p = vif_up("vif0", &["203.0.113.2".parse().unwrap()]);
        assert_eq!(
            lines(&p),
            [
                "ip route add 203.0.113.2/32 dev vif0",
                "sysctl -w net.ipv4.conf.vif0.proxy_arp=1",
                "sysctl -w net.ipv4.neigh.vif0.proxy_delay=0",
                "sysctl -w net.ipv4.neigh.vif0.unres_qlen_bytes=4194304",
            ]
        );
    }
}
