//! Links between namespaces: veth pairs created directly inside their namespaces, so no
//! interface ever appears in the root namespace and names only need to be unique per
//! namespace.

use super::process::run_checked;
use super::{Netns, Result};
use std::process::Command;

/// Creates a veth pair with end `a_dev` in `a` and end `b_dev` in `b`, both up. Use it for
/// point-to-point links (an underlay between two hosts) and to attach a namespace to a
/// bridge in a third one ([`Netns::set_master`]).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    run_checked(
        &format!(
            "creating veth {a_dev}@{} <-> {b_dev}@{}",
            a.name(),
            b.name()
        ),
        Command::new("ip").args([
            "link",
            "add",
            a_dev,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "netns",
            b.name(),
        ]),
    )?;
    a.link_up(a_dev)?;
    b.link_up(b_dev)
}
