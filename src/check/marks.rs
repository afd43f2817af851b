//! Other users of vmtun's fwmark in the host's nftables ruleset (iptables-nft's tables
//! included): rules that set the mark or test it (`meta mark set 0x1`, `meta mark 0x1`,
//! `ct mark 0x1`, `-j MARK --set-mark 1`, `-m mark --mark 1`), and conntrack-mark save and
//! restore rules (`ct mark set meta mark`, `meta mark set ct mark`, `-j CONNMARK
//! --save-mark/--restore-mark`), which together carry the mark a VM reply gets onto the
//! client's next packet. Masks are followed (`meta mark & 0xff00 == 0x100`); a rule whose
//! mask leaves out vmtun's bits is no user. Pure.

use std::collections::HashMap;

use crate::config::Migration;
use crate::netcfg::Family;

use super::nft_text::describe;
use super::ruleset::{Chain, Expr, NftFamily, Rule, Ruleset, ct, meta};
use super::verdict::Line;

/// `XT_CONNMARK_SET`, `SAVE`, `RESTORE` (`xt_connmark.h`).
const CONNMARK_SET: u8 = 0;
const CONNMARK_SAVE: u8 = 1;
const CONNMARK_RESTORE: u8 = 2;

/// A rule found, for the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `ip mangle PREROUTING`.
    pub chain: String,
    /// Its handle.
    pub handle: u64,
    /// In nft's words.
    pub text: String,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nft rule '{}' in {} (handle {})",
            self.text, self.chain, self.handle
        )
    }
}

/// What the ruleset does with one mark.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MarkUsers {
    /// Rules that set the mark or test it.
    pub users: Vec<Found>,
    /// Rules that copy a packet mark holding it into the connection's mark (or set the
    /// connection's mark to it).
    pub saves: Vec<Found>,
    /// Rules that copy the connection's mark (its bits included) onto packets.
    pub restores: Vec<Found>,
}

/// What a register holds, for the mark.
#[derive(Debug, Clone, Copy)]
enum Reg {
    /// `(meta mark & mask) ^ xor`.
    Mark(u32, u32),
    /// `(ct mark & mask) ^ xor`.
    CtMark(u32, u32),
    /// A constant.
    Value(u32),
    Other,
}

fn u32_of(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// How the rules of `ruleset` use `mark`, leaving out the chains `skip` says are vmtun's.
pub fn mark_users(ruleset: &Ruleset, mark: u32, skip: impl Fn(&Chain) -> bool) -> MarkUsers {
    let mut out = MarkUsers::default();
    for chain in ruleset.chains.iter().filter(|c| !skip(c)) {
        for rule in &chain.rules {
            let uses = uses(rule, mark);
            let found = || Found {
                chain: format!("{} {} {}", chain.family, chain.table, chain.name),
                handle: rule.handle,
                text: describe(rule, text_family(chain.family)),
            };
            if uses.user {
                out.users.push(found());
            }
            if uses.save {
                out.saves.push(found());
            }
            if uses.restore {
                out.restores.push(found());
            }
        }
    }
    out
}

fn text_family(family: NftFamily) -> Family {
    match family {
        NftFamily::Ip6 => Family::Ipv6,
        _ => Family::Ipv4,
    }
}

#[derive(Default)]
struct Uses {
    user: bool,
    save: bool,
    restore: bool,
}

/// Whether `rule` sets or tests `mark`, saves it to the connection, or restores it.
fn uses(rule: &Rule, mark: u32) -> Uses {
    let mut regs: HashMap<u32, Reg> = HashMap::new();
    let mut u = Uses::default();
    // A test `(m & mask) ^ xor == value` that vmtun's mark satisfies, on bits it has.
    let tests = |mask: u32, xor: u32, value: u32| mask & mark != 0 && (mark & mask) ^ xor == value;
    for e in &rule.exprs {
        match e {
            Expr::Immediate { dreg, value } => {
                let v = u32_of(value, 0).filter(|_| value.len() == 4);
                regs.insert(*dreg, v.map_or(Reg::Other, Reg::Value));
            }
            Expr::Meta {
                key, dreg: Some(d), ..
            } => {
                let r = if *key == meta::MARK {
                    Reg::Mark(u32::MAX, 0)
                } else {
                    Reg::Other
                };
                regs.insert(*d, r);
            }
            Expr::Ct {
                key, dreg: Some(d), ..
            } => {
                let r = if *key == ct::MARK {
                    Reg::CtMark(u32::MAX, 0)
                } else {
                    Reg::Other
                };
                regs.insert(*d, r);
            }
            Expr::Payload { dreg, .. } => {
                regs.insert(*dreg, Reg::Other);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let r = match (regs.get(sreg), u32_of(mask, 0), u32_of(xor, 0)) {
                    (Some(Reg::Mark(m, x)), Some(mask), Some(xor)) => {
                        Reg::Mark(m & mask, (x & mask) ^ xor)
                    }
                    (Some(Reg::CtMark(m, x)), Some(mask), Some(xor)) => {
                        Reg::CtMark(m & mask, (x & mask) ^ xor)
                    }
                    (Some(Reg::Value(v)), Some(mask), Some(xor)) => Reg::Value((v & mask) ^ xor),
                    _ => Reg::Other,
                };
                regs.insert(*dreg, r);
            }
            Expr::Cmp {
                sreg,
                eq: true,
                data,
            } => match (regs.get(sreg), u32_of(data, 0)) {
                (Some(Reg::Mark(m, x) | Reg::CtMark(m, x)), Some(v)) if tests(*m, *x, v) => {
                    u.user = true;
                }
                _ => {}
            },
            Expr::Meta {
                key: meta::MARK,
                sreg: Some(s),
                ..
            } => match regs.get(s) {
                Some(Reg::Value(v)) if *v == mark => u.user = true,
                Some(Reg::CtMark(m, _)) if m & mark != 0 => u.restore = true,
                _ => {}
            },
            Expr::Ct {
                key: ct::MARK,
                sreg: Some(s),
                ..
            } => match regs.get(s) {
                Some(Reg::Value(v)) if *v == mark => u.save = true,
                Some(Reg::Mark(m, _)) if m & mark != 0 => u.save = true,
                _ => {}
            },
            Expr::Target { name, rev, info } => match (name.as_str(), rev) {
                // xt_mark_tginfo2 { mark, mask }.
                ("MARK", 2) if u32_of(info, 0) == Some(mark) => u.user = true,
                // xt_connmark_tginfo1 { ctmark, ctmask, nfmask, mode } and tginfo2, which
                // puts shift_dir and shift_bits before the mode.
                ("CONNMARK", 1 | 2) => {
                    let at = if *rev == 1 { 12 } else { 14 };
                    let (ctmark, ctmask, nfmask) =
                        (u32_of(info, 0), u32_of(info, 4), u32_of(info, 8));
                    let masks = ctmask.zip(nfmask).is_some_and(|(c, n)| c & n & mark != 0);
                    match info.get(at).copied() {
                        Some(CONNMARK_SET) if ctmark == Some(mark) => u.save = true,
                        Some(CONNMARK_SAVE) if masks => u.save = true,
                        Some(CONNMARK_RESTORE) if masks => u.restore = true,
                        _ => {}
                    }
                }
                _ => {}
            },
            // xt_mark_mtinfo1 and xt_connmark_mtinfo1: { mark, mask, invert }.
            Expr::Match { name, rev: 1, info } if name == "mark" || name == "connmark" => {
                let (value, mask) = (u32_of(info, 0), u32_of(info, 4));
                let inverted = info.get(8).is_some_and(|i| *i != 0);
                if let (Some(v), Some(m), false) = (value, mask, inverted) {
                    u.user |= tests(m, 0, v);
                }
            }
            _ => {}
        }
    }
    u
}

/// Role new: a warning when rules both save the mark to connections and restore it.
pub fn conntrack_line(m: &Migration, users: &MarkUsers) -> Option<Line> {
    let (save, restore) = (users.saves.first()?, users.restores.first()?);
    Some(Line::warn(
        "conntrack mark",
        format!(
            "{save} saves the packet mark to the connection and {restore} restores it: vmtun's fwmark {:#x} on a VM's reply comes back on the client's next packet to the VM, which then follows table {} into the tunnel instead of reaching the VM",
            m.fwmark, m.table
        ),
        format!(
            "leave bit(s) {:#x} out of the save and restore masks (ct mark set meta mark and MASK; CONNMARK --mask), or set migration.fwmark to a bit they do not carry",
            m.fwmark
        ),
    ))
}
