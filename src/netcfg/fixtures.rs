//! Test fixtures shared by netcfg's unit and namespace tests: the example host of
//! DESIGN.md's contract (TUN `vmtun0` at 100.64.0.1/24, role new for 203.0.113.0/29).

use super::change::{FwMark, TableId};
use ipnet::IpNet;

use super::plan::{DEFAULT_RULE_PRIORITY, NewParams, OldParams, Role, TunnelParams};

/// The tunnel device's settings.
pub(crate) fn tunnel() -> TunnelParams {
    TunnelParams {
        tun: "vmtun0".into(),
        address: "100.64.0.1/24".parse().unwrap(),
        mtu: 1420,
    }
}

/// Role new for 203.0.113.0/29 via 100.64.0.2, the config's defaults otherwise.
pub(crate) fn new_role() -> Role {
    Role::New(NewParams {
        subnets: vec!["203.0.113.0/29".parse().unwrap()],
        via: "100.64.0.2".parse().unwrap(),
        table: TableId(201),
        fwmark: FwMark(1),
        rule_priority: DEFAULT_RULE_PRIORITY,
        vif_prefix: "vif".into(),
        bridge: "br0".into(),
        native_interfaces: Vec::new(),
        kernel_flip: true,
    })
}

/// Role old for `subnets` via 100.64.0.2, the config's defaults otherwise.
pub(crate) fn old_role(subnets: &[&str]) -> Role {
    Role::Old(OldParams {
        subnets: subnets
            .iter()
            .map(|s| s.parse::<IpNet>().unwrap())
            .collect(),
        via: "100.64.0.2".parse().unwrap(),
        table: TableId(201),
        fwmark: FwMark(1),
        rule_priority: DEFAULT_RULE_PRIORITY,
        vif_prefix: "vif".into(),
    })
}
