//! Flow offload: a rule with `flow add @FT` (nft's `flow_offload` expression) or
//! iptables-nft's `FLOWOFFLOAD` target moves an established connection into a flowtable,
//! where its packets skip the forward path and keep the route they had when it was
//! offloaded. A VM's connection offloaded before the cutover would keep leaving through the
//! tunnel (or, on the old host, keep its native path after the switch). Pure: judged on the
//! ruleset [`super::netlink`] dumped.

use super::ruleset::{Chain, Expr, Ruleset};
use super::verdict::Line;

/// Whether `e` offloads the packet's connection.
fn offloads(e: &Expr) -> bool {
    match e {
        Expr::Other(name) => name == "flow_offload",
        Expr::Target { name, .. } => name == "FLOWOFFLOAD",
        _ => false,
    }
}

/// A warning naming every chain (other than vmtun's, `own`) with an offloading rule; none
/// when there is none.
pub fn line(ruleset: &Ruleset, own: impl Fn(&Chain) -> bool) -> Option<Line> {
    let found: Vec<String> = (ruleset.chains.iter())
        .filter(|c| !own(c))
        .filter(|c| c.rules.iter().any(|r| r.exprs.iter().any(offloads)))
        .map(|c| format!("{} {} {}", c.family, c.table, c.name))
        .collect();
    (!found.is_empty()).then(|| {
        Line::warn(
            "flow offload",
            format!(
                "chain {} offloads connections to a flowtable: an offloaded connection keeps the path it had, through the tunnel or around it, whatever the cutover changes",
                found.join(", ")
            ),
            "exclude the VM subnets from the rule that adds flows (e.g. `ip saddr != 203.0.113.0/29 ip daddr != 203.0.113.0/29 flow add @ft`) for the night of the move",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::ruleset::{NftFamily, Rule};
    use crate::check::verdict::Verdict;

    fn chain(name: &str, exprs: Vec<Expr>) -> Chain {
        Chain {
            family: NftFamily::from_raw(libc::NFPROTO_INET as u8),
            table: "filter".into(),
            name: name.into(),
            hook: None,
            accepts: None,
            rules: vec![Rule { handle: 1, exprs }],
        }
    }

    #[test]
    fn an_offloading_rule_warns_naming_its_chain_and_nothing_else_does() {
        let mut ruleset = Ruleset::default();
        ruleset
            .chains
            .push(chain("plain", vec![Expr::Other("counter".into())]));
        assert!(line(&ruleset, |_| false).is_none());
        ruleset.chains.push(chain(
            "forward",
            vec![
                Expr::Other("counter".into()),
                Expr::Other("flow_offload".into()),
            ],
        ));
        ruleset.chains.push(chain(
            "FORWARD",
            vec![Expr::Target {
                name: "FLOWOFFLOAD".into(),
                rev: 0,
                info: Vec::new(),
            }],
        ));
        let l = line(&ruleset, |_| false).unwrap();
        assert_eq!(l.verdict, Verdict::Warn);
        assert!(
            l.detail
                .contains("inet filter forward, inet filter FORWARD"),
            "{l:?}"
        );
        assert!(line(&ruleset, |c| c.name != "plain").is_none());
    }
}
