//! `vmtun check`: a preflight that changes nothing. It reads the host and the network and
//! prints one line per prerequisite of `up` and of the move (ok / warn / FAIL, with what to
//! do about a problem); `up --dry-run` runs it before printing its plan.
//!
//! Sans-IO in shape: [`gather`] reads the host into plain [`Facts`] (rtnetlink dumps and,
//! while vmtun runs, route lookups; the nftables ruleset over netfilter netlink; the
//! forwarding sysctls; the running instance's status; a bind of the listen port and one
//! handshake initiation through the protocol core), and [`evaluate`] turns facts into a
//! [`Checklist`] in pure, unit-tested code: `forward` walks the forward hook's chains,
//! `marks` finds the fwmark's other users, `routes` judges the move's routes.

mod evaluate;
mod facts;
mod forward;
mod gather;
mod marks;
mod netlink;
mod nft_text;
mod offload;
mod probe;
pub(crate) mod routes;
mod ruleset;
mod verdict;

use std::path::Path;

pub use evaluate::evaluate;
pub use facts::{
    Facts, Handshake, Instance, PeerFact, Port, RouteAnswer, RouteFact, RouteKind, RouteProbe,
    RuleFact,
};
pub use gather::gather;
pub use probe::PROBE_WAIT;
pub use ruleset::Ruleset;
pub use verdict::{Checklist, Line, Verdict};

use crate::config::Config;

/// Who asks: the verdict on a running instance differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `vmtun check`: a running instance is fine, and its status answers the handshake.
    Check,
    /// `vmtun up --dry-run`: a running instance means `up` would refuse.
    DryRun,
}

/// Checks the host for `config` (in the calling thread's network namespace).
pub fn check(config: &Config, mode: Mode) -> Checklist {
    evaluate(config, &gather(config), mode)
}

/// `vmtun check -c FILE`: an invalid config is the single FAIL line.
pub fn check_file(path: &Path) -> Checklist {
    match Config::load(path) {
        Ok(config) => check(&config, Mode::Check),
        Err(e) => Checklist {
            lines: vec![Line::fail(
                "config",
                e.to_string(),
                "fix that line of the file (README.md, Config reference)",
            )],
        },
    }
}

/// What `up --dry-run` does first: the checklist on stderr (stdout stays the plan), and an
/// error when a FAIL line means `up` or the move would fail, so no plan is printed.
pub fn before_dry_run(config: &Config) -> anyhow::Result<()> {
    let list = check(config, Mode::DryRun);
    eprint!("{list}");
    if !list.passed() {
        anyhow::bail!(
            "up would fail: {} FAIL line(s) above; no plan printed, nothing changed",
            list.count(Verdict::Fail)
        );
    }
    Ok(())
}
