//! What vmtun keeps on the host once a subnet has cut over, as a pure edit of a list of
//! changes: the subnet's mark rule is gone (the watcher or `vmtun cutover` removed it) and
//! its network address is in the cutover set (the kernel put it there on the first native
//! packet).
//!
//! The journal applies this edit to what it records when a subnet cuts over, and `up` to its
//! plan when it starts after a remembered cutover: so neither putting back what another
//! program removed nor a restart turns the tunnel path back on for that subnet.

use ipnet::IpNet;

use super::change::{Change, Element, NftRuleKind};

/// Whether the cutover of one of `subnets` ends `c`: the subnet's mark rule.
pub fn ended_by_cutover(c: &Change, subnets: &[IpNet]) -> bool {
    match c {
        Change::NftRule {
            rule: NftRuleKind::Mark { subnet, .. },
            ..
        } => subnets.iter().any(|s| s.trunc() == *subnet),
        _ => false,
    }
}

/// `changes` as they stand once `subnets` have cut over: without the subnets' mark rules,
/// and with each subnet's element in the set its native rule fills, right after that rule
/// (its set exists by then; after the first, with several native interfaces). Subnets without
/// a native rule in `changes` add nothing, and an element already there is not added twice, so the edit may be applied again.
pub fn after_cutover(changes: &[Change], subnets: &[IpNet]) -> Vec<Change> {
    let mut out = Vec::with_capacity(changes.len() + subnets.len());
    for c in changes {
        if ended_by_cutover(c, subnets) {
            continue;
        }
        out.push(c.clone());
        if let Some(element) = element_of(c, subnets)
            && !changes.contains(&element)
            && !out.contains(&element)
        {
            out.push(element);
        }
    }
    out
}

/// The cutover set element that a native rule for one of `subnets` adds (none when the
/// rule only counts: `cutover_hold_ms`).
fn element_of(c: &Change, subnets: &[IpNet]) -> Option<Change> {
    let Change::NftRule {
        family,
        table,
        rule:
            NftRuleKind::Native {
                subnet,
                set: Some(set),
                ..
            },
        ..
    } = c
    else {
        return None;
    };
    subnets
        .iter()
        .any(|s| s.trunc() == *subnet)
        .then(|| Change::NftSetElement {
            family: *family,
            table: table.clone(),
            set: set.clone(),
            element: Element::Addr(subnet.network()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::fixtures::{new_role, tunnel};
    use crate::netcfg::plan::{Role, plan};

    fn lines(p: &[Change]) -> Vec<String> {
        p.iter().map(ToString::to_string).collect()
    }

    fn two_subnets() -> Vec<Change> {
        let Role::New(mut n) = new_role() else {
            unreachable!()
        };
        n.subnets.push("198.51.100.0/29".parse().unwrap());
        plan(&tunnel(), Some(&Role::New(n)))
    }

    #[test]
    fn a_cut_over_subnet_loses_its_mark_rule_and_gains_its_set_element() {
        let p = two_subnets();
        let after = after_cutover(&p, &["203.0.113.0/29".parse().unwrap()]);
        let (before, now) = (lines(&p), lines(&after));
        let mark = "comment \"vmtun mark 203.0.113.0/29\"";
        assert!(before.iter().any(|l| l.ends_with(mark)));
        assert!(!now.iter().any(|l| l.ends_with(mark)), "{now:#?}");
        // The other subnet's mark rule stays: it has not cut over.
        assert!(
            now.iter()
                .any(|l| l.ends_with("comment \"vmtun mark 198.51.100.0/29\""))
        );
        let native = now
            .iter()
            .position(|l| l.ends_with("comment \"vmtun native 203.0.113.0/29 on br0\""))
            .unwrap();
        assert_eq!(
            now[native + 1],
            "nft add element ip vmtun native { 203.0.113.0 }"
        );
        assert_eq!(now.len(), before.len());
        // Applying the edit again changes nothing.
        assert_eq!(
            after_cutover(&after, &["203.0.113.0/29".parse().unwrap()]),
            after
        );
    }

    #[test]
    fn subnets_the_plan_does_not_route_change_nothing() {
        let p = two_subnets();
        assert_eq!(after_cutover(&p, &["192.0.2.0/29".parse().unwrap()]), p);
        assert_eq!(after_cutover(&p, &[]), p);
        // Host bits in a remembered subnet do not matter.
        let a = after_cutover(&p, &["203.0.113.0/29".parse().unwrap()]);
        let b = after_cutover(&p, &["203.0.113.1/29".parse().unwrap()]);
        assert_eq!(a, b);
    }

    #[test]
    fn an_ipv6_subnet_gets_its_element_in_the_ip6_set() {
        let Role::New(mut n) = new_role() else {
            unreachable!()
        };
        n.subnets.push("2001:db8:1::/64".parse().unwrap());
        let p = plan(&tunnel(), Some(&Role::New(n)));
        let after = after_cutover(&p, &["2001:db8:1::/64".parse().unwrap()]);
        let now = lines(&after);
        assert!(now.contains(&"nft add element ip6 vmtun native { 2001:db8:1:: }".to_string()));
        assert!(
            !now.iter()
                .any(|l| l.ends_with("comment \"vmtun mark 2001:db8:1::/64\""))
        );
        assert!(
            now.iter()
                .any(|l| l.ends_with("comment \"vmtun mark 203.0.113.0/29\""))
        );
    }
}
