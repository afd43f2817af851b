//! The pure planner: typed inputs in, the ordered list of [`Change`]s out. No I/O, so
//! `--dry-run` prints exactly what `up` would do, and unit tests check plans in microseconds.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::change::{
    Change, Direction, FwMark, NftHook, NftRuleKind, Route, Rule, Sysctl, SysctlKey, TableId,
};

/// Name of vmtun's own nftables table (family `ip`). It is created exclusively, so a second
/// instance on the same host fails with `File exists` instead of sharing it.
pub const NFT_TABLE: &str = "vmtun";
/// The base chain in [`NFT_TABLE`], hooked at prerouting with mangle priority like the
/// seed's `iptables -t mangle -A PREROUTING`.
pub const NFT_CHAIN: &str = "prerouting";
/// The base chain in [`NFT_TABLE`] for routed traffic: the MSS clamp of TCP handshakes
/// crossing the tunnel.
pub const NFT_FORWARD_CHAIN: &str = "forward";
/// An IPv4 header and a TCP header without options: the MTU less this is the MSS.
const IPV4_TCP_HEADERS: u32 = 40;
/// The cutover set: holds a subnet's network address once a packet for it arrived natively.
pub const NFT_NATIVE_SET: &str = "native";
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
    /// VM subnets.
    pub subnets: Vec<Ipv4Net>,
    /// The new host's tunnel address.
    pub via: IpAddr,
}

/// The new host's side: VM replies go back through the tunnel (marked, policy-routed) until
/// the subnets arrive natively on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParams {
    /// VM subnets.
    pub subnets: Vec<Ipv4Net>,
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
    /// The role's name as the config spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Old(_) => "old",
            Role::New(_) => "new",
        }
    }
}

/// The ordered changes `vmtun up` makes: the tunnel's address, MTU and link state, then the
/// role's routes, rule, sysctls and nftables objects. The journal applies them in this order
/// and undoes them in reverse.
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
                    dest: IpNet::V4(net.trunc()),
                    via: Some(o.via),
                    dev: tun.clone(),
                    table: TableId::MAIN,
                }));
            }
            p.push(Change::NftTable {
                name: NFT_TABLE.into(),
            });
            clamp_mss(&mut p, tunnel);
        }
        Some(Role::New(n)) => {
            plan_new(&mut p, tun, n);
            clamp_mss(&mut p, tunnel);
        }
    }
    p
}

/// The forward chain in vmtun's table (which must come before it in the plan) and the
/// MSS clamp of TCP handshakes routed into the tunnel and out of it: both directions on
/// both hosts, so a connection's segments fit the tunnel even when the other end is a
/// plain WireGuard peer.
fn clamp_mss(p: &mut Vec<Change>, tunnel: &TunnelParams) {
    p.push(Change::NftChain {
        table: NFT_TABLE.into(),
        name: NFT_FORWARD_CHAIN.into(),
        hook: NftHook::Forward,
    });
    let mss = u16::try_from(tunnel.mtu.saturating_sub(IPV4_TCP_HEADERS)).unwrap_or(u16::MAX);
    for direction in [Direction::Into, Direction::OutOf] {
        p.push(Change::NftRule {
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

fn plan_new(p: &mut Vec<Change>, tun: &str, n: &NewParams) {
    let default = match n.via {
        IpAddr::V4(_) => IpNet::V4(Ipv4Net::default()),
        IpAddr::V6(_) => IpNet::V6(Default::default()),
    };
    p.push(Change::Route(Route {
        dest: default,
        via: Some(n.via),
        dev: tun.into(),
        table: n.table,
    }));
    p.push(Change::Rule(Rule {
        fwmark: n.fwmark,
        table: n.table,
        priority: n.rule_priority,
    }));
    // Loose reverse-path filtering only where asymmetric paths are expected: client packets
    // arrive through the tunnel, replies may leave natively (RFC 3704 "loose" = 2).
    for dev in [tun, n.bridge.as_str()] {
        p.push(Change::Sysctl(Sysctl {
            key: SysctlKey::ipv4_conf(dev, "rp_filter"),
            value: "2".into(),
            previous: None,
        }));
    }
    let table = NFT_TABLE.to_string();
    let chain = NFT_CHAIN.to_string();
    p.push(Change::NftTable {
        name: table.clone(),
    });
    p.push(Change::NftChain {
        table: table.clone(),
        name: chain.clone(),
        hook: NftHook::Prerouting,
    });
    p.push(Change::NftSet {
        table: table.clone(),
        name: NFT_NATIVE_SET.into(),
    });
    for net in &n.subnets {
        p.push(Change::NftRule {
            table: table.clone(),
            chain: chain.clone(),
            rule: NftRuleKind::Native {
                bridge: n.bridge.clone(),
                subnet: net.trunc(),
                set: NFT_NATIVE_SET.into(),
            },
        });
    }
    for net in &n.subnets {
        p.push(Change::NftRule {
            table: table.clone(),
            chain: chain.clone(),
            rule: NftRuleKind::Mark {
                vif_prefix: n.vif_prefix.clone(),
                subnet: net.trunc(),
                fwmark: n.fwmark,
                skip_set: Some(NFT_NATIVE_SET.into()),
            },
        });
    }
}

/// What `vmtun vif-up IFACE` sets: a host route per VM address onto its interface, and
/// proxy ARP there (the VM's default gateway is an arbitrary address the host answers for).
/// These belong to the VM interface's life: they are not journaled, stay when vmtun exits
/// and go with the interface. Apply them with [`super::apply_idempotent`].
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
    p.push(Change::Sysctl(Sysctl {
        key: SysctlKey::ipv4_conf(iface, "proxy_arp"),
        value: "1".into(),
        previous: None,
    }));
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
                "nft add rule ip vmtun prerouting meta pkttype host iifname \"br0\" ip daddr 203.0.113.0/29 counter add @native { ip daddr & 255.255.255.248 } comment \"vmtun native 203.0.113.0/29\"",
                "nft add rule ip vmtun prerouting iifname \"vif*\" ip saddr 203.0.113.0/29 ip saddr & 255.255.255.248 != @native counter meta mark set 0x1 comment \"vmtun mark 203.0.113.0/29\"",
                "nft add chain ip vmtun forward '{ type filter hook forward priority mangle; policy accept; }'",
                "nft add rule ip vmtun forward oifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter tcp option maxseg size set 1380 comment \"vmtun mss into tunnel\"",
                "nft add rule ip vmtun forward iifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter tcp option maxseg size set 1380 comment \"vmtun mss out of tunnel\"",
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
