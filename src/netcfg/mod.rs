//! netcfg owns every change vmtun makes to the host's network configuration: addresses, link
//! settings, routes, policy rules, sysctls and vmtun's own nftables table. It must not touch
//! anything it did not create, and it never spawns `ip`, `sysctl` or `nft`: all of it goes
//! over netlink (and `/proc/sys`) in-process.
//!
//! A pure core and a thin OS edge:
//! - [`plan`] and [`vif_up`] turn typed inputs into an ordered `Vec<`[`Change`]`>`, which
//!   prints as the commands it stands for (`--dry-run`).
//! - [`Journal`] applies a plan through a [`NetOps`], rolls back on the first failure,
//!   records what it applied in a state file, and undoes it in reverse order. It also puts
//!   back what another program removed ([`Journal::restore`]) and remembers which subnets
//!   have cut over ([`after_cutover`]), so that neither a restore nor a restart turns the
//!   tunnel path back on.
//! - [`SystemOps`] is the real [`NetOps`] (rtnetlink, nftnl, `/proc/sys`); [`FakeOps`] is a
//!   recording fake over a simulated host for unit tests.
//! - [`EventSocket`] and [`Interest`] notice, from netlink notifications, when another
//!   program may have removed some of it (the restore monitor then calls
//!   [`Journal::restore`]).
//! - [`remove_mark_rule`] is the cutover's atomic finalization; [`MarkRemover`] is the
//!   same made ready in advance, for the watcher. [`gateway_elements`] fills the set of the
//!   uplink gateways' MACs the native rules require; `uplink` reads what the cutover needs
//!   to know of the uplink (default gateways, their MACs, reverse paths).
//!
//! Everything acts on the network namespace of the calling thread, which is how the tests
//! run it inside namespaces of their own.

mod after_cutover;
mod change;
mod error;
mod events;
mod fake;
mod journal;
mod nfsock;
mod nft;
pub(crate) mod nlattr;
mod ops;
mod plan;
mod prereq;
mod rtnl;
mod sysctl;
mod system;
mod uplink;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod ns_tests;
#[cfg(test)]
mod testns;

pub use after_cutover::after_cutover;
pub use change::{
    Action, Change, Direction, Element, Family, FwMark, Inverse, NF_IP_PRI_MANGLE, NftHook,
    NftRuleKind, Refusal, RefusingRoute, Route, Rule, Sysctl, SysctlKey, TableId,
};
pub use error::{Cause, NetError};
pub use events::{EventSocket, Interest, Source as EventSource};
pub use fake::{Call, FakeOps};
pub use journal::{
    DEFAULT_STATE_DIR, Journal, Restored, SharedJournal, State, Undone, apply_idempotent,
    memory_path, remembered_cutover, remove_routes, state_path, undo_state_file,
};
pub(crate) use nfsock::NfSock;
pub use nft::{
    MarkRemoval, MarkRemover, add_subnet_to_set, native_subnets, remove_mark_rule, switched_subnets,
};
pub use ops::NetOps;
pub use plan::{
    DEFAULT_RULE_PRIORITY, NFT_CHAIN, NFT_FORWARD_CHAIN, NFT_GATEWAY_SET, NFT_NATIVE_SET,
    NFT_SWITCHED_SET, NFT_TABLE, NewParams, OldParams, RULES_BEFORE_MARK, Role, TunnelParams,
    VM_GATEWAY6, gateway_elements, plan, vif_up,
};
pub use prereq::check_prerequisites;
pub(crate) use rtnl::route_table;
pub use system::SystemOps;
pub use uplink::{RouteLookup, default_gateways, resolve_gateway_macs};
