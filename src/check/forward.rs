//! The host's own filter on the forward hook: would it drop what the move routes? Each flow
//! the move needs (per VM subnet, into the tunnel and out of it, as the first packet of a
//! connection) is walked through every base chain on the forward hook of its family, rule by
//! rule, on what each rule's expressions say: interface names, the subnets' addresses,
//! conntrack state and the mark are judged; anything else (sets, ports, limits, xtables
//! matches) "may" match. Only a drop that certainly applies is a FAIL; a drop that may apply
//! is a warning naming the rule. Pure.

use ipnet::IpNet;
use std::collections::HashMap;

use crate::config::{Migration, Role};
use crate::netcfg::Family;

use super::nft_text::{address_fields, describe, prefix};
use super::ruleset::{
    Chain, Expr, HOOK_FORWARD, NftFamily, PAYLOAD_NETWORK, Rule, Ruleset, Verdict, ct, meta,
};
use super::verdict::Line;

/// How deep jumps are followed before the walk gives up on certainty.
const MAX_JUMPS: usize = 8;
/// `NF_CT_STATE_BIT(IP_CT_NEW)`: `ct state new` as the kernel's bitmask holds it.
const CT_STATE_NEW: u32 = 1 << 3;

/// An interface a flow crosses, as far as it is known.
#[derive(Debug, Clone, Copy)]
pub enum Iface<'a> {
    /// Exactly this one (the tunnel).
    Name(&'a str),
    /// One whose name starts with this (`vif`: the VM interfaces).
    Prefix(&'a str),
    /// Some other interface (the uplink), certainly not this one.
    Not(&'a str),
}

/// One end's address.
#[derive(Debug, Clone, Copy)]
pub enum Addr<'a> {
    /// Somewhere in this VM subnet.
    In(IpNet),
    /// Somewhere outside all of these (a client on the internet).
    Outside(&'a [IpNet]),
}

/// A packet the move forwards.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// Its family.
    pub family: Family,
    /// Where it comes in.
    pub iif: Iface<'a>,
    /// Where it goes out.
    pub oif: Iface<'a>,
    /// Its source.
    pub src: Addr<'a>,
    /// Its destination.
    pub dst: Addr<'a>,
    /// Its mark when it reaches the forward hook.
    pub mark: u32,
}

/// Three-valued truth: the walk knows, or it cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Yes,
    No,
    Maybe,
}

impl Truth {
    fn of(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }

    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::No, _) | (_, Self::No) => Self::No,
            (Self::Yes, Self::Yes) => Self::Yes,
            _ => Self::Maybe,
        }
    }

    fn not_if(self, invert: bool) -> Self {
        match (self, invert) {
            (Self::Yes, true) => Self::No,
            (Self::No, true) => Self::Yes,
            (t, _) => t,
        }
    }
}

/// Where a drop was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropper {
    /// The base chain's policy.
    Policy,
    /// A rule (its handle) that drops or rejects, and what it matches as far as understood.
    Rule {
        /// `nft -a` shows it.
        handle: u64,
        /// e.g. `iifname "vmtun0" drop`.
        text: String,
    },
}

/// The fate of a flow in one base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// It passes (accepted, or no drop applies).
    Passes,
    /// It is certainly dropped there.
    Dropped(Dropper),
    /// It may be dropped there: the walk met rules it cannot judge.
    MayDrop(Dropper),
}

/// The base chains on the forward hook that see `family`'s packets, in priority order.
pub fn forward_chains(ruleset: &Ruleset, family: Family) -> Vec<&Chain> {
    let mut chains: Vec<&Chain> = ruleset
        .chains
        .iter()
        .filter(|c| c.hook.is_some_and(|h| h.num == HOOK_FORWARD))
        .filter(|c| sees(c.family, family))
        .collect();
    chains.sort_by_key(|c| c.hook.map(|h| h.priority));
    chains
}

/// What happens to `flow` in the base chain `chain`.
pub fn fate(ruleset: &Ruleset, chain: &Chain, flow: &Flow) -> Fate {
    let mut walk = Walk::default();
    match walk.rules(ruleset, chain, flow, true, 0) {
        Some(End::Accepted) => Fate::Passes,
        Some(End::Dropped(d)) => Fate::Dropped(d),
        Some(End::Returned) | None => match (chain.accepts, walk.may_drop) {
            (Some(false), _) if walk.uncertain => Fate::MayDrop(Dropper::Policy),
            (Some(false), _) => Fate::Dropped(Dropper::Policy),
            (_, Some(d)) => Fate::MayDrop(d),
            _ => Fate::Passes,
        },
    }
}

/// Where a certain walk ended.
enum End {
    Accepted,
    Dropped(Dropper),
    Returned,
}

#[derive(Default)]
struct Walk {
    /// An earlier rule may have ended or diverted the packet: later drops are not certain.
    uncertain: bool,
    /// The first drop that may apply.
    may_drop: Option<Dropper>,
}

impl Walk {
    /// Walks `chain`'s rules; `sure`: the packet certainly reaches this chain.
    fn rules(
        &mut self,
        ruleset: &Ruleset,
        chain: &Chain,
        flow: &Flow,
        sure: bool,
        depth: usize,
    ) -> Option<End> {
        for rule in &chain.rules {
            let (matched, action) = judge(rule, flow);
            if matched == Truth::No {
                continue;
            }
            let certain = sure && matched == Truth::Yes && !self.uncertain;
            match action {
                Action::Continue => {}
                Action::Accept if certain => return Some(End::Accepted),
                Action::Drop if certain => {
                    return Some(End::Dropped(dropper(rule, flow)));
                }
                Action::Drop => {
                    self.may_drop.get_or_insert_with(|| dropper(rule, flow));
                }
                Action::Jump(target, goto) => {
                    match ruleset.chain(chain.family, &chain.table, &target) {
                        Some(next) if depth < MAX_JUMPS => {
                            let end = self.rules(ruleset, next, flow, certain, depth + 1);
                            match end {
                                Some(End::Returned) | None if goto && certain => {
                                    return Some(End::Returned);
                                }
                                Some(End::Returned) | None => {}
                                Some(end) if certain => return Some(end),
                                Some(_) => self.uncertain = true,
                            }
                        }
                        _ => self.uncertain = true,
                    }
                }
                Action::Return if certain => return Some(End::Returned),
                Action::Accept | Action::Return | Action::Unknown => self.uncertain = true,
            }
        }
        None
    }
}

fn dropper(rule: &Rule, flow: &Flow) -> Dropper {
    Dropper::Rule {
        handle: rule.handle,
        text: describe(rule, flow.family),
    }
}

/// What a rule does once it matches.
enum Action {
    Continue,
    Accept,
    Drop,
    /// `jump` (false) or `goto` (true) to a chain.
    Jump(String, bool),
    Return,
    /// Queue, an unknown xtables target...: the walk cannot follow.
    Unknown,
}

/// What a register holds during one rule's walk.
#[derive(Debug, Clone)]
enum Reg {
    /// A value the flow certainly has.
    Known(Vec<u8>),
    /// `meta iifname` (false) or `oifname` (true).
    IfName(bool),
    /// Network-header bytes, under a mask (all ones when none).
    Payload {
        offset: u32,
        len: u32,
        mask: Vec<u8>,
    },
    Unknown,
}

/// Whether `rule`'s conditions hold for `flow`, and what it does then.
fn judge(rule: &Rule, flow: &Flow) -> (Truth, Action) {
    let mut regs: HashMap<u32, Reg> = HashMap::new();
    let mut truth = Truth::Yes;
    let mut action = Action::Continue;
    for e in &rule.exprs {
        match e {
            Expr::Immediate { dreg, value } => {
                regs.insert(*dreg, Reg::Known(value.clone()));
            }
            Expr::Meta {
                key, dreg: Some(d), ..
            } => {
                let family = match flow.family {
                    Family::Ipv4 => libc::NFPROTO_IPV4 as u8,
                    Family::Ipv6 => libc::NFPROTO_IPV6 as u8,
                };
                let ethertype: u16 = match flow.family {
                    Family::Ipv4 => 0x0800,
                    Family::Ipv6 => 0x86dd,
                };
                let value = match *key {
                    meta::MARK => Reg::Known(flow.mark.to_ne_bytes().to_vec()),
                    meta::IIFNAME => Reg::IfName(false),
                    meta::OIFNAME => Reg::IfName(true),
                    meta::NFPROTO => Reg::Known(vec![family]),
                    meta::PROTOCOL => Reg::Known(ethertype.to_be_bytes().to_vec()),
                    _ => Reg::Unknown,
                };
                regs.insert(*d, value);
            }
            Expr::Ct {
                key, dreg: Some(d), ..
            } => {
                // The first packet of a connection: state new, no conntrack mark yet.
                let value = match *key {
                    ct::STATE => Reg::Known(CT_STATE_NEW.to_ne_bytes().to_vec()),
                    ct::MARK => Reg::Known(0u32.to_ne_bytes().to_vec()),
                    _ => Reg::Unknown,
                };
                regs.insert(*d, value);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let value = if *base == PAYLOAD_NETWORK {
                    Reg::Payload {
                        offset: *offset,
                        len: *len,
                        mask: vec![0xff; *len as usize],
                    }
                } else {
                    Reg::Unknown
                };
                regs.insert(*dreg, value);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let value = match regs.get(sreg) {
                    Some(Reg::Known(v)) => Reg::Known(
                        (v.iter().zip(mask).zip(xor))
                            .map(|((v, m), x)| (v & m) ^ x)
                            .collect(),
                    ),
                    Some(Reg::Payload { offset, len, .. }) if xor.iter().all(|x| *x == 0) => {
                        Reg::Payload {
                            offset: *offset,
                            len: *len,
                            mask: mask.clone(),
                        }
                    }
                    _ => Reg::Unknown,
                };
                regs.insert(*dreg, value);
            }
            Expr::Cmp { sreg, eq, data } => {
                let t = match regs.get(sreg) {
                    Some(Reg::Known(v)) => {
                        Truth::of(v.len() >= data.len() && v[..data.len()] == data[..])
                    }
                    Some(Reg::IfName(out)) => ifname(if *out { flow.oif } else { flow.iif }, data),
                    Some(Reg::Payload { offset, len, mask }) => {
                        address(flow, *offset, *len, mask, data)
                    }
                    _ => Truth::Maybe,
                };
                truth = truth.and(t.not_if(!eq));
            }
            Expr::Verdict(v) => {
                action = match v {
                    Verdict::Accept => Action::Accept,
                    Verdict::Drop => Action::Drop,
                    Verdict::Jump(c) => Action::Jump(c.clone(), false),
                    Verdict::Goto(c) => Action::Jump(c.clone(), true),
                    Verdict::Return => Action::Return,
                    Verdict::Continue => Action::Continue,
                    Verdict::Other(_) => Action::Unknown,
                }
            }
            Expr::Reject => action = Action::Drop,
            Expr::Target { name, .. } => {
                action = match name.as_str() {
                    "REJECT" | "DROP" => Action::Drop,
                    "ACCEPT" => Action::Accept,
                    // Targets that change the packet and let it go on.
                    "MARK" | "CONNMARK" | "LOG" | "TCPMSS" | "CLASSIFY" | "DSCP" => {
                        Action::Continue
                    }
                    _ => Action::Unknown,
                }
            }
            // Statements that change nothing about where the packet goes.
            Expr::Meta { .. } | Expr::Ct { .. } => {}
            Expr::Other(name) if matches!(name.as_str(), "counter" | "log" | "notrack") => {}
            Expr::Lookup { .. } | Expr::Match { .. } | Expr::Other(_) => {
                truth = truth.and(Truth::Maybe);
            }
        }
    }
    (truth, action)
}

/// `meta iifname`/`oifname` compared with `data`: a name and its NUL padding, or a prefix
/// (`"vif*"` is the three bytes `vif`).
fn ifname(iface: Iface, data: &[u8]) -> Truth {
    let nul = data.iter().position(|b| *b == 0);
    let name = String::from_utf8_lossy(&data[..nul.unwrap_or(data.len())]);
    let exact = nul.is_some();
    match (iface, exact) {
        (Iface::Name(n), true) => Truth::of(n == name),
        (Iface::Name(n), false) => Truth::of(n.starts_with(&*name)),
        (Iface::Prefix(p), false) if p.starts_with(&*name) => Truth::Yes,
        (Iface::Prefix(p), _) if name.starts_with(p) => Truth::Maybe,
        (Iface::Prefix(_), _) => Truth::No,
        (Iface::Not(n), true) if n == name => Truth::No,
        (Iface::Not(_), _) => Truth::Maybe,
    }
}

/// A network-header comparison: an address prefix test on the source or destination, judged
/// against where the flow's addresses are; other header fields may match.
fn address(flow: &Flow, offset: u32, len: u32, mask: &[u8], data: &[u8]) -> Truth {
    let ([src_at, dst_at], size) = address_fields(flow.family);
    let side = match offset {
        o if o == src_at => flow.src,
        o if o == dst_at => flow.dst,
        _ => return Truth::Maybe,
    };
    if len > size {
        return Truth::Maybe;
    }
    let Some(net) = prefix(flow.family, mask, data) else {
        return Truth::Maybe;
    };
    match side {
        Addr::In(subnet) if net.contains(&subnet) => Truth::Yes,
        Addr::In(subnet) if !subnet.contains(&net) => Truth::No,
        Addr::In(_) => Truth::Maybe,
        Addr::Outside(subnets) if subnets.iter().any(|s| s.contains(&net)) => Truth::No,
        Addr::Outside(_) => Truth::Maybe,
    }
}

/// One flow the move needs, with its words for the checklist.
struct Needed<'a> {
    flow: Flow<'a>,
    /// e.g. `from vmtun0 to vif*`.
    path: String,
}

/// The flows `m` needs through `tun`: for each subnet, both ways, as first packets.
fn needed<'a>(m: &'a Migration, tun: &'a str) -> Vec<Needed<'a>> {
    let vif = m.vif_prefix.as_str();
    let mut out = Vec::new();
    for &subnet in &m.subnets {
        let family = Family::of(subnet.addr());
        let outside = Addr::Outside(&m.subnets);
        let (into, out_of, mark_out, into_path, out_path) = match m.role {
            Role::New => (
                (Iface::Name(tun), Iface::Prefix(vif)),
                (Iface::Prefix(vif), Iface::Name(tun)),
                m.fwmark,
                format!("from {tun} to {vif}*"),
                format!("from {vif}* to {tun}"),
            ),
            Role::Old => (
                (Iface::Not(tun), Iface::Name(tun)),
                (Iface::Name(tun), Iface::Not(tun)),
                0,
                format!("into {tun}"),
                format!("out of {tun}"),
            ),
        };
        out.push(Needed {
            flow: Flow {
                family,
                iif: into.0,
                oif: into.1,
                src: outside,
                dst: Addr::In(subnet),
                mark: 0,
            },
            path: format!("{into_path} for {subnet}"),
        });
        out.push(Needed {
            flow: Flow {
                family,
                iif: out_of.0,
                oif: out_of.1,
                src: Addr::In(subnet),
                dst: outside,
                mark: mark_out,
            },
            path: format!("{out_path} from {subnet}"),
        });
    }
    out
}

/// The lines about the forward hook: one per base chain that drops (FAIL) or may drop
/// (warn) what the move routes, or one ok line. Chains that `own` says are vmtun's are left
/// out.
pub fn lines(
    m: &Migration,
    tun: &str,
    ruleset: &Result<Ruleset, String>,
    own: impl Fn(&Chain) -> bool,
) -> Vec<Line> {
    let ruleset = match ruleset {
        Ok(r) => r,
        Err(_) => {
            return vec![Line::warn(
                "forward hook",
                "not checked: the nftables ruleset could not be read",
                "see the nftables line",
            )];
        }
    };
    let needed = needed(m, tun);
    let mut chains: Vec<&Chain> = Vec::new();
    for family in Family::all_of(&m.subnets) {
        for c in forward_chains(ruleset, family) {
            if !own(c) && !chains.contains(&c) {
                chains.push(c);
            }
        }
    }
    let mut lines = Vec::new();
    for chain in &chains {
        let fates: Vec<(&Needed, Fate)> = needed
            .iter()
            .filter(|n| sees(chain.family, n.flow.family))
            .map(|n| (n, fate(ruleset, chain, &n.flow)))
            .collect();
        let dropped: Vec<String> = fates
            .iter()
            .filter_map(|(n, f)| match f {
                Fate::Dropped(d) => Some(format!("{} ({})", n.path, by(d))),
                _ => None,
            })
            .collect();
        let maybe: Vec<String> = fates
            .iter()
            .filter_map(|(n, f)| match f {
                Fate::MayDrop(d) => Some(format!("{} ({})", n.path, by(d))),
                _ => None,
            })
            .collect();
        let what = format!(
            "forward chain {} {} {}",
            chain.family, chain.table, chain.name
        );
        let policy = match chain.accepts {
            Some(false) => "policy drop",
            _ => "policy accept",
        };
        if !dropped.is_empty() {
            lines.push(Line::fail(
                what,
                format!(
                    "({policy}) drops the first packet of a connection {}",
                    dropped.join("; ")
                ),
                fix(m, tun, chain),
            ));
        } else if !maybe.is_empty() {
            lines.push(Line::warn(
                what,
                format!(
                    "({policy}) may drop the first packet of a connection {}: it depends on what the check cannot judge (sets, ports, jumps, xtables matches)",
                    maybe.join("; ")
                ),
                format!("check with nft -a list chain {} {} {}; if it drops them: {}", chain.family, chain.table, chain.name, fix(m, tun, chain)),
            ));
        }
    }
    if lines.is_empty() {
        lines.push(Line::ok(
            "forward hook",
            match chains.len() {
                0 => "no nftables chain filters forwarded packets".to_string(),
                n => {
                    format!("{n} base chain(s) on the forward hook let the move's traffic through")
                }
            },
        ));
    }
    lines
}

/// Whether a chain of `table` family sees packets of `family`.
fn sees(table: NftFamily, family: Family) -> bool {
    matches!(
        (table, family),
        (NftFamily::Inet, _) | (NftFamily::Ip, Family::Ipv4) | (NftFamily::Ip6, Family::Ipv6)
    )
}

fn by(d: &Dropper) -> String {
    match d {
        Dropper::Policy => "its policy drop".into(),
        Dropper::Rule { handle, text } => format!("rule '{text}', handle {handle}"),
    }
}

/// What to do: accept the move's traffic at the top of the chain, in the words of the tool
/// that manages it (iptables-nft's chains are upper case).
fn fix(m: &Migration, tun: &str, chain: &Chain) -> String {
    let vif = &m.vif_prefix;
    let (fam, table, name) = (chain.family, &chain.table, &chain.name);
    let iptables = match fam {
        NftFamily::Ip => Some("iptables"),
        NftFamily::Ip6 => Some("ip6tables"),
        _ => None,
    }
    .filter(|_| name.chars().all(|c| c.is_ascii_uppercase()));
    let (a, b) = match (m.role, iptables) {
        (Role::New, Some(ipt)) => (
            format!("{ipt} -t {table} -I {name} -i {tun} -o {vif}+ -j ACCEPT"),
            format!("{ipt} -t {table} -I {name} -i {vif}+ -o {tun} -j ACCEPT"),
        ),
        (Role::Old, Some(ipt)) => (
            format!("{ipt} -t {table} -I {name} -i {tun} -j ACCEPT"),
            format!("{ipt} -t {table} -I {name} -o {tun} -j ACCEPT"),
        ),
        (Role::New, None) => (
            format!(
                "nft insert rule {fam} {table} {name} iifname \"{tun}\" oifname \"{vif}*\" accept"
            ),
            format!(
                "nft insert rule {fam} {table} {name} iifname \"{vif}*\" oifname \"{tun}\" accept"
            ),
        ),
        (Role::Old, None) => (
            format!("nft insert rule {fam} {table} {name} iifname \"{tun}\" accept"),
            format!("nft insert rule {fam} {table} {name} oifname \"{tun}\" accept"),
        ),
    };
    let between = match m.role {
        Role::New => format!("between {tun} and {vif}*"),
        Role::Old => format!("into and out of {tun}"),
    };
    format!("accept traffic {between} in table {fam} {table} chain {name}: {a}; {b}")
}
