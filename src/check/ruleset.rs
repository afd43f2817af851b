//! The host's nftables ruleset as plain values, parsed from the netfilter netlink messages of
//! a dump (tables, chains, rules): what the checks need to judge other users of the fwmark
//! and the forward hook. Pure: bytes in, values out; [`super::netlink`] does the dumping.
//!
//! Rules keep their expressions as the kernel holds them (`meta load mark => reg 1`, `cmp eq
//! reg 1 0x1`, `immediate reg 0 drop`), so iptables-nft's tables read like any other; only
//! register numbers are normalised (a 16-byte register and its first 32-bit part are one).

use std::fmt;

use crate::netcfg::nlattr::stream;

/// `NFT_MSG_NEWTABLE`, `NEWCHAIN`, `NEWRULE`: the types of a dump's replies (low byte).
const MSG_TABLE: u16 = 0;
const MSG_CHAIN: u16 = 3;
const MSG_RULE: u16 = 6;
/// `sizeof(struct nlmsghdr)` + `sizeof(struct nfgenmsg)`.
const HEADERS: usize = 16 + 4;

/// An nftables family (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftFamily {
    /// `inet`: IPv4 and IPv6.
    Inet,
    /// `ip`.
    Ip,
    /// `ip6`.
    Ip6,
    /// Any other (`arp`, `bridge`, `netdev`), by number.
    Other(u8),
}

impl NftFamily {
    /// From `nfgenmsg.nfgen_family`.
    pub fn from_raw(raw: u8) -> Self {
        match i32::from(raw) {
            libc::NFPROTO_INET => Self::Inet,
            libc::NFPROTO_IPV4 => Self::Ip,
            libc::NFPROTO_IPV6 => Self::Ip6,
            _ => Self::Other(raw),
        }
    }
}

impl fmt::Display for NftFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet => f.write_str("inet"),
            Self::Ip => f.write_str("ip"),
            Self::Ip6 => f.write_str("ip6"),
            Self::Other(n) => match i32::from(*n) {
                libc::NFPROTO_ARP => f.write_str("arp"),
                libc::NFPROTO_BRIDGE => f.write_str("bridge"),
                libc::NFPROTO_NETDEV => f.write_str("netdev"),
                _ => write!(f, "family {n}"),
            },
        }
    }
}

/// The hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `NF_INET_*`: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting.
    pub num: u32,
    /// The chain's priority on the hook.
    pub priority: i32,
}

/// `NF_INET_FORWARD`.
pub const HOOK_FORWARD: u32 = 2;

/// One chain with its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its table's family.
    pub family: NftFamily,
    /// Its table.
    pub table: String,
    /// Its name.
    pub name: String,
    /// A base chain's hook; `None` for a regular chain (reached by jump or goto).
    pub hook: Option<Hook>,
    /// A base chain's policy: true for accept, false for drop.
    pub accepts: Option<bool>,
    /// Its rules in order.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its handle (`nft -a list ruleset` shows it).
    pub handle: u64,
    /// Its expressions in order.
    pub exprs: Vec<Expr>,
}

/// A verdict (`immediate reg 0 ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
    /// `return`.
    Return,
    /// `continue`.
    Continue,
    /// Anything else (`queue`...), by code.
    Other(i32),
}

/// `NFT_META_*` keys the checks read.
pub mod meta {
    /// `meta protocol` (the ethertype, big-endian).
    pub const PROTOCOL: u32 = 1;
    /// `meta mark`.
    pub const MARK: u32 = 3;
    /// `meta iifname`.
    pub const IIFNAME: u32 = 6;
    /// `meta oifname`.
    pub const OIFNAME: u32 = 7;
    /// `meta nfproto`.
    pub const NFPROTO: u32 = 15;
}

/// `NFT_CT_*` keys the checks read.
pub mod ct {
    /// `ct state`.
    pub const STATE: u32 = 0;
    /// `ct mark`.
    pub const MARK: u32 = 3;
}

/// `NFT_PAYLOAD_NETWORK_HEADER`.
pub const PAYLOAD_NETWORK: u32 = 1;

/// One expression of a rule, as far as the checks understand it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `immediate`: a constant into a data register.
    Immediate {
        /// The register.
        dreg: u32,
        /// The constant.
        value: Vec<u8>,
    },
    /// `immediate reg 0`: the rule's verdict.
    Verdict(Verdict),
    /// `meta load KEY => reg` (`dreg`) or `meta set KEY with reg` (`sreg`).
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Loads into.
        dreg: Option<u32>,
        /// Sets from.
        sreg: Option<u32>,
    },
    /// `ct load KEY => reg` or `ct set KEY with reg`.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Loads into.
        dreg: Option<u32>,
        /// Sets from.
        sreg: Option<u32>,
    },
    /// `payload load LEN @ BASE + OFFSET => reg`.
    Payload {
        /// `NFT_PAYLOAD_*_HEADER`.
        base: u32,
        /// Bytes into the header.
        offset: u32,
        /// How many bytes.
        len: u32,
        /// Loads into.
        dreg: u32,
    },
    /// `bitwise reg = (reg & mask) ^ xor`.
    Bitwise {
        /// From.
        sreg: u32,
        /// Into.
        dreg: u32,
        /// The mask.
        mask: Vec<u8>,
        /// The xor.
        xor: Vec<u8>,
    },
    /// `cmp OP reg DATA`: the rule goes on only if it holds.
    Cmp {
        /// The register compared.
        sreg: u32,
        /// Equal (true) or not equal (false); other operators are [`Expr::Other`].
        eq: bool,
        /// The constant.
        data: Vec<u8>,
    },
    /// `lookup reg set NAME`: a set membership test.
    Lookup {
        /// The register looked up.
        sreg: u32,
        /// The set.
        set: String,
    },
    /// `reject`: ends the packet like drop, with an error to its sender.
    Reject,
    /// An xtables match (iptables-nft's compatibility layer): its name and its `info` struct.
    Match {
        /// e.g. `connmark`.
        name: String,
        /// Its revision (the layout of `info`).
        rev: u32,
        /// The xtables match's info struct, in host byte order.
        info: Vec<u8>,
    },
    /// An xtables target: its name and its `info` struct.
    Target {
        /// e.g. `MARK`, `CONNMARK`, `REJECT`.
        name: String,
        /// Its revision (the layout of `info`).
        rev: u32,
        /// The xtables target's info struct, in host byte order.
        info: Vec<u8>,
    },
    /// Anything else, by name (`counter`, `log`, `limit`...).
    Other(String),
}

/// What a dump found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Every table, by family and name.
    pub tables: Vec<(NftFamily, String)>,
    /// Every chain with its rules.
    pub chains: Vec<Chain>,
}

impl Ruleset {
    /// Builds the ruleset from the messages of the table, chain and rule dumps (each a whole
    /// netlink message, header included), in any order. Malformed messages are skipped.
    pub fn from_messages<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut set = Self::default();
        let mut rules = Vec::new();
        for msg in messages {
            let (Some(ty), Some(family), Some(attrs)) = (
                msg.get(4..6)
                    .map(|b| u16::from_ne_bytes([b[0], b[1]]) & 0xff),
                msg.get(16).copied().map(NftFamily::from_raw),
                msg.get(HEADERS..),
            ) else {
                continue;
            };
            match ty {
                MSG_TABLE => set
                    .tables
                    .extend(string(attrs, 1).map(|name| (family, name))),
                MSG_CHAIN => set.chains.extend(chain(family, attrs)),
                MSG_RULE => rules.extend(rule(family, attrs)),
                _ => {}
            }
        }
        for (family, table, chain, rule) in rules {
            if let Some(c) = set
                .chains
                .iter_mut()
                .find(|c| c.family == family && c.table == table && c.name == chain)
            {
                c.rules.push(rule);
            }
        }
        set
    }

    /// The chain `name` of `family`'s `table`.
    pub fn chain(&self, family: NftFamily, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }
}

fn find(data: &[u8], ty: u16) -> Option<&[u8]> {
    stream(data).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

fn string(data: &[u8], ty: u16) -> Option<String> {
    let value = find(data, ty)?;
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    Some(String::from_utf8_lossy(&value[..end]).into_owned())
}

fn be32(data: &[u8], ty: u16) -> Option<u32> {
    let v = find(data, ty)?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(data: &[u8], ty: u16) -> Option<u64> {
    let v = find(data, ty)?;
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// One register numbering: `NFT_REG_1..4` (16 bytes) become their first 32-bit register
/// (`NFT_REG32_00` + 4 × (n − 1)), counted from 0; `NFT_REG32_xx` are 8 and up.
fn register(raw: u32) -> u32 {
    match raw {
        1..=4 => (raw - 1) * 4,
        8.. => raw - 8,
        _ => raw,
    }
}

fn reg(data: &[u8], ty: u16) -> Option<u32> {
    be32(data, ty).map(register)
}

/// `NFTA_CHAIN_*`.
fn chain(family: NftFamily, a: &[u8]) -> Option<Chain> {
    let hook = find(a, 4).and_then(|h| {
        Some(Hook {
            num: be32(h, 1)?,
            priority: be32(h, 2)? as i32,
        })
    });
    Some(Chain {
        family,
        table: string(a, 1)?,
        name: string(a, 3)?,
        hook,
        accepts: be32(a, 5).map(|p| p == libc::NF_ACCEPT as u32),
        rules: Vec::new(),
    })
}

/// `NFTA_RULE_*`: the rule with the table and chain it belongs to.
fn rule(family: NftFamily, a: &[u8]) -> Option<(NftFamily, String, String, Rule)> {
    let exprs = find(a, 4)
        .map(|list| stream(list).filter_map(|(_, e)| expr(e)).collect())
        .unwrap_or_default();
    Some((
        family,
        string(a, 1)?,
        string(a, 2)?,
        Rule {
            handle: be64(a, 3).unwrap_or(0),
            exprs,
        },
    ))
}

/// `NFTA_DATA_VALUE` of an `nft_data` attribute.
fn data_value(a: &[u8], ty: u16) -> Option<Vec<u8>> {
    find(find(a, ty)?, 1).map(<[u8]>::to_vec)
}

/// One `NFTA_LIST_ELEM`: `NFTA_EXPR_NAME` and `NFTA_EXPR_DATA`.
fn expr(e: &[u8]) -> Option<Expr> {
    let name = string(e, 1)?;
    let d = find(e, 2).unwrap_or(&[]);
    let other = || Expr::Other(name.clone());
    Some(match name.as_str() {
        "immediate" => match (be32(d, 1)?, find(d, 2)?) {
            (0, data) => Expr::Verdict(verdict(find(data, 2)?)),
            (dreg, data) => Expr::Immediate {
                dreg: register(dreg),
                value: find(data, 1)?.to_vec(),
            },
        },
        "meta" => Expr::Meta {
            key: be32(d, 2)?,
            dreg: reg(d, 1),
            sreg: reg(d, 3),
        },
        "ct" => Expr::Ct {
            key: be32(d, 2)?,
            dreg: reg(d, 1),
            sreg: reg(d, 4),
        },
        "payload" if find(d, 5).is_none() => Expr::Payload {
            dreg: reg(d, 1)?,
            base: be32(d, 2)?,
            offset: be32(d, 3)?,
            len: be32(d, 4)?,
        },
        // Only the mask-and-xor form (`NFTA_BITWISE_OP` absent or `NFT_BITWISE_BOOL`).
        "bitwise" if be32(d, 6).unwrap_or(0) == 0 => Expr::Bitwise {
            sreg: reg(d, 1)?,
            dreg: reg(d, 2)?,
            mask: data_value(d, 4)?,
            xor: data_value(d, 5)?,
        },
        "cmp" => match be32(d, 2)? {
            op @ (0 | 1) => Expr::Cmp {
                sreg: reg(d, 1)?,
                eq: op == 0,
                data: data_value(d, 3)?,
            },
            _ => other(),
        },
        "lookup" => Expr::Lookup {
            sreg: reg(d, 2)?,
            set: string(d, 1).unwrap_or_default(),
        },
        "reject" => Expr::Reject,
        "match" | "target" => {
            let xt = string(d, 1)?;
            let rev = be32(d, 2).unwrap_or(0);
            let info = find(d, 3).unwrap_or(&[]).to_vec();
            if name == "match" {
                Expr::Match {
                    name: xt,
                    rev,
                    info,
                }
            } else {
                Expr::Target {
                    name: xt,
                    rev,
                    info,
                }
            }
        }
        _ => other(),
    })
}

/// `NFTA_VERDICT_CODE` and `NFTA_VERDICT_CHAIN`.
fn verdict(v: &[u8]) -> Verdict {
    let chain = || string(v, 2).unwrap_or_default();
    match be32(v, 1).map(|c| c as i32) {
        Some(libc::NF_ACCEPT) => Verdict::Accept,
        Some(libc::NF_DROP) => Verdict::Drop,
        Some(-1) => Verdict::Continue,
        Some(-3) => Verdict::Jump(chain()),
        Some(-4) => Verdict::Goto(chain()),
        Some(-5) => Verdict::Return,
        code => Verdict::Other(code.unwrap_or(i32::MIN)),
    }
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
