//! The pure planner: typed inputs in, the ordered list of [`Change`]s out. No I/O, so
//! `--dry-run` prints exactly what `up` would do, and unit tests check plans in microseconds.

use std::net::IpAddr;

use ipnet::IpNet;

use super::change::{
    Change, Direction, Family, FwMark, NftHook, NftRuleKind, Route, Rule, SetKey, Sysctl,
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
/// The MACs of the uplink gateways, the only senders whose packets count as native: created
/// empty by the plan, filled by vmtun at start (`add_gateway_macs`).
pub const NFT_GATEWAY_SET: &str = "gateways";
/// Default priority of the `fwmark` policy rule: before `main` (32766), after `local` (0),
/// and away from the numbers `ip rule add` picks by itself (32765 downwards).
pub const DEFAULT_RULE_PRIORITY: u32 = 10_000;

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
}

/// The new host's side: VM replies go back through the tunnel (marked, policy-routed) until
/// the subnets arrive natively on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParams {
    /// VM subnets, IPv4 and IPv6.
    pub subnets: Vec<IpNet>,
    /// The old host's tunnel address.
    pub via: IpAddr,
    /// Routing table for VM replies through the tunnel.
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
            for net in &o.subnets {
                p.push(Change::Route(Route {
                    dest: net.trunc(),
                    via: gateway(o.via, net),
                    dev: tun.clone(),
                    table: TableId::MAIN,
                }));
            }
            for family in Family::all_of(&o.subnets) {
                p.push(nft_table(family));
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

/// Role new's changes for the subnets of one family.
fn plan_new(p: &mut Vec<Change>, tun: &str, n: &NewParams, family: Family) {
    let subnets: Vec<IpNet> = (n.subnets.iter())
        .filter(|net| Family::of(net.addr()) == family)
        .map(IpNet::trunc)
        .collect();
    let everything = family.everything();
    p.push(Change::Route(Route {
        dest: everything,
        via: gateway(n.via, &everything),
        dev: tun.into(),
        table: n.table,
    }));
    p.push(Change::Rule(Rule {
        family,
        fwmark: n.fwmark,
        table: n.table,
        priority: n.rule_priority,
    }));
    // Loose reverse-path filtering only where asymmetric paths are expected: client packets
    // arrive through the tunnel, replies may leave natively (RFC 3704 "loose" = 2). IPv6
    // has no such sysctl (its reverse-path filter is a netfilter rule vmtun does not add).
    if family == Family::Ipv4 {
        for dev in std::iter::once(tun).chain(n.native_ifaces()) {
            p.push(Change::Sysctl(Sysctl {
                key: SysctlKey::ipv4_conf(dev, "rp_filter"),
                value: "2".into(),
                previous: None,
            }));
        }
    }
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

/// The IPv6 default gateway a VM is given (`ip -6 route add default via fe80::1 dev eth0`),
/// the usual choice of routed IPv6 hosting: a link-local address the host holds on every VM
/// interface, so it is the same wherever the VM runs.
pub const VM_GATEWAY6: &str = "fe80::1/64";

/// What `vmtun vif-up IFACE` sets: a host route per VM address onto its interface (/32,
/// /128), and proxy ARP there (the VM's IPv4 default gateway is an arbitrary address the
/// host answers for). With IPv6 addresses, the host holds the VM's IPv6 gateway
/// [`VM_GATEWAY6`] on the interface, without duplicate address detection (which would keep
/// it unusable for a second after each VM start or arrival). These belong to the VM
/// interface's life: they are not journaled, stay when vmtun exits and go with the
/// interface. Apply them with [`super::apply_idempotent`].
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
    }
    if families.contains(&Family::Ipv6) {
        p.push(sysctl(SysctlKey::ipv6_conf(iface, "accept_dad"), "0"));
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
    use crate::netcfg::fixtures::{new_role, tunnel};

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
    fn old_role_routes_each_subnet_through_the_tunnel() {
        let role = Role::Old(OldParams {
            subnets: vec![
                "203.0.113.0/29".parse().unwrap(),
                // Host bits are dropped, as `ip route` would insist.
                "198.51.100.9/29".parse().unwrap(),
            ],
            via: "100.64.0.2".parse().unwrap(),
        });
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
                "ip route add 203.0.113.0/29 via 100.64.0.2 dev vmtun0",
                "ip route add 198.51.100.8/29 via 100.64.0.2 dev vmtun0",
                "nft add table ip vmtun",
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
        assert_eq!(p[..16], lines(&plan(&tunnel(), Some(&new_role())))[..]);
        assert_eq!(
            p[16..],
            [
                "ip -6 route add default dev vmtun0 table 201",
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
    fn old_role_routes_an_ipv6_subnet_onto_the_tunnel() {
        let role = Role::Old(OldParams {
            subnets: vec!["2001:db8:1::/64".parse().unwrap()],
            via: "100.64.0.2".parse().unwrap(),
        });
        let p = lines(&plan(&tunnel(), Some(&role)));
        assert_eq!(p[3], "ip -6 route add 2001:db8:1::/64 dev vmtun0");
        // Only the family that has subnets gets a table.
        assert_eq!(p[4], "nft add table ip6 vmtun");
        assert_eq!(p.len(), 8);
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
                "sysctl -w net.ipv6.conf.vif0.accept_dad=0",
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
            ]
        );
    }
}
