//! The migration scenario of DESIGN.md ("The lab"), built in namespaces: the tests of the
//! move, `vmtun demo` and the cutover benchmark all run it.
//!
//! ```text
//!                         ┌──────────────── old host ──────────────────┐
//!                         │ br0 198.18.1.2 ─ vif0 ─┐                     │
//!  client        core     │  (up0 port)            │  vmtun role old     │
//!  198.18.10.2 ─ c0 │     └─── old0 198.18.1.1 ────┼─────────────────────┘
//!                   ├── old0  (routes 203.0.113.0/29 here)   vm: eth0 203.0.113.2/32
//!                   └── new0  (drops sources in the /29)      default via 192.0.2.1 onlink
//!                         ┌──────────────── new host ──────────────────┐
//!                         │ br0 198.18.2.2 ─ vif0 (after the move)     │
//!                         │  vmtun role new: table 201, mark rule,     │
//!                         │  cutover watcher on br0                    │
//!                         └────────────────────────────────────────────┘
//!  tunnel: 100.64.0.1 (old) <-> 100.64.0.2 (new), UDP 51820 over the core
//! ```
//!
//! - [`topology`]: the namespaces, links and the provider ([`topology::MigrationLab`]): the
//!   core routes the /29 to the old host, drops sources in the /29 arriving from the new
//!   host until [`topology::MigrationLab::switch_provider`], and stamps every reply from the
//!   /29 with the link it came in on (DSCP CS1 old, CS2 new) after counting it.
//! - [`probe`]: the client's sequence-numbered UDP probes and the VM's echo responder, both
//!   threads of this process whose sockets live in the namespaces.
//! - [`stats`]: the pure analysis: per phase sent, lost, longest gap, where replies left.
//! - [`hosts`]: `vmtun up` on the hosts (configs, keys, status), and the seed's commands.
//! - [`scenario`]: the whole move, run end to end with a progress callback, and its
//!   [`scenario::Report`].
//! - [`real_vm`]: the same move with a real guest that QEMU live-migrates, reported per
//!   phase with QEMU's downtime and the guest's real pause ([`real_vm::RealVmReport`]).
//! - [`handover_trail`]: the first-frame handover's steps read from the hosts' vmtun logs,
//!   for that report's timeline.
//!
//! Everything is created inside lab namespaces (see [`crate::lab`]) and removed with them;
//! nothing here touches the root namespace.

pub mod guest;
pub mod handover_trail;
pub mod hosts;
pub mod probe;
pub mod real_vm;
pub mod scenario;
pub mod stats;
pub mod topology;

pub use crate::netcfg::Family;
pub use guest::Guest;
pub use scenario::{HostMode, Options, Report, run};
pub use topology::MigrationLab;

/// The client's address ("the internet").
pub const CLIENT: &str = "198.18.10.2";
/// The core's address towards the client.
pub const CORE_CLIENT: &str = "198.18.10.1";
/// The core's address towards the old host.
pub const CORE_OLD: &str = "198.18.1.1";
/// The old host's address (on its br0).
pub const OLD: &str = "198.18.1.2";
/// The core's address towards the new host.
pub const CORE_NEW: &str = "198.18.2.1";
/// The new host's address (on its br0).
pub const NEW: &str = "198.18.2.2";
/// Prefix length of every underlay link.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The old host's tunnel address.
pub const TUNNEL_OLD: &str = "100.64.0.1";
/// The new host's tunnel address.
pub const TUNNEL_NEW: &str = "100.64.0.2";
/// Prefix length of the tunnel subnet.
pub const TUNNEL_PREFIX: u8 = 24;
/// The VMs' routed subnet.
pub const SUBNET: &str = "203.0.113.0/29";
/// The VM's address.
pub const VM_ADDR: &str = "203.0.113.2";
/// The VM's arbitrary default gateway, answered by proxy ARP on the host's vif (the seed's
/// "default route via an arbitrary address").
pub const VM_GATEWAY: &str = "192.0.2.1";
/// A subnet that is not the VMs': traffic for it must never trigger the cutover.
pub const OTHER_SUBNET: &str = "198.51.100.0/24";
/// An address in [`OTHER_SUBNET`].
pub const OTHER_ADDR: &str = "198.51.100.5";
/// The client's IPv6 address (the lab built dual-stack: [`MigrationLab::build_dual_stack`]).
pub const CLIENT6: &str = "2001:db8:10::2";
/// The core's IPv6 address towards the client.
pub const CORE_CLIENT6: &str = "2001:db8:10::1";
/// The core's IPv6 address towards the old host.
pub const CORE_OLD6: &str = "2001:db8:11::1";
/// The old host's IPv6 address (on its br0).
pub const OLD6: &str = "2001:db8:11::2";
/// The core's IPv6 address towards the new host.
pub const CORE_NEW6: &str = "2001:db8:12::1";
/// The new host's IPv6 address (on its br0).
pub const NEW6: &str = "2001:db8:12::2";
/// Prefix length of every IPv6 underlay link.
pub const UNDERLAY6_PREFIX: u8 = 64;
/// The VMs' routed IPv6 subnet: a /64, as hosters route one per VM or per host.
pub const SUBNET6: &str = "2001:db8:1::/64";
/// The VM's IPv6 address.
pub const VM_ADDR6: &str = "2001:db8:1::2";
/// The VM's IPv6 default gateway: the link-local address `vif-up` puts on the host's vif.
pub const VM_GATEWAY6: &str = "fe80::1";

/// The VM's routed subnet of `family`.
pub fn subnet(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => SUBNET,
        Family::Ipv6 => SUBNET6,
    }
}

/// The VM's address of `family`.
pub fn vm_addr(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => VM_ADDR,
        Family::Ipv6 => VM_ADDR6,
    }
}

/// The VM's interface on the host side (libvirt's `<target dev=...>`).
pub const VIF: &str = "vif0";
/// Prefix of VM interfaces.
pub const VIF_PREFIX: &str = "vif";
/// The hosts' bridge, their uplink to the core.
pub const BRIDGE: &str = "br0";
/// The routing table for VM replies through the tunnel (role new, and the seed's `vm-out`).
pub const TABLE: u32 = 201;
/// The mark that selects [`TABLE`].
pub const FWMARK: u32 = 1;
/// The tunnel's UDP port on both hosts.
pub const TUNNEL_PORT: u16 = 51820;
/// The VM's UDP echo port.
pub const ECHO_PORT: u16 = 7777;
/// The VM's MAC address; the same before and after the move, as a guest NIC keeps it.
pub const VM_MAC: &str = "52:54:00:00:71:02";
/// The host side's MAC on both hosts: libvirt gives a tap the guest's MAC with the first
/// byte `fe`, so after a live migration the guest's ARP entry for its gateway (answered by
/// proxy ARP with the tap's MAC) is still right on the new host.
pub const VIF_MAC: &str = "fe:54:00:00:71:02";
