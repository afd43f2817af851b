//! Rules in nft's words, for the checklist's lines (`iifname "vmtun0" drop`, `meta mark set
//! 0x1`), and the address prefixes that rules' network-header comparisons test. Only what
//! the checks understand is spelled out; the rest shows as `…`. Pure.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::netcfg::Family;

use super::ruleset::{Expr, PAYLOAD_NETWORK, Rule, Verdict, ct, meta};

/// Where the source and destination addresses sit in `family`'s network header, and their
/// size in bytes.
pub fn address_fields(family: Family) -> ([u32; 2], u32) {
    match family {
        Family::Ipv4 => ([12, 16], 4),
        Family::Ipv6 => ([8, 24], 16),
    }
}

/// The prefix that a comparison of the first `data.len()` bytes of an address under `mask`
/// tests, when the mask is a prefix mask (`ip saddr 203.0.113.0/29`).
pub fn prefix(family: Family, mask: &[u8], data: &[u8]) -> Option<IpNet> {
    let (_, size) = address_fields(family);
    if data.len() > size as usize || mask.len() != data.len() {
        return None;
    }
    let full = mask.iter().take_while(|b| **b == 0xff).count();
    let bits = 8 * full as u32 + mask.get(full).map_or(0, |b| b.leading_ones());
    let contiguous = mask
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
        .skip(bits as usize)
        .all(|bit| bit == 0);
    if !contiguous {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..data.len()].copy_from_slice(data);
    let addr = match family {
        Family::Ipv4 => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        Family::Ipv6 => IpAddr::from(bytes),
    };
    IpNet::new(addr, bits as u8).ok().map(|n| n.trunc())
}

/// What a register holds, in words.
#[derive(Clone)]
enum Held {
    /// A field: `iifname`, `meta mark`, `ip saddr`... (empty: one the text does not name).
    Field(String, Vec<u8>),
    /// A constant, as it will print.
    Value(String),
}

fn name_of(held: Option<&Held>) -> &str {
    match held {
        Some(Held::Field(name, _)) => name,
        _ => "",
    }
}

/// A 4-byte value in host order as nft prints marks: `0x1`.
fn hex(data: &[u8]) -> Option<String> {
    let b: [u8; 4] = data.try_into().ok()?;
    Some(format!("{:#x}", u32::from_ne_bytes(b)))
}

/// The conntrack states a `ct state` mask tests (`NF_CT_STATE_*` bits).
fn ct_states(mask: &[u8]) -> Option<String> {
    let bits = u32::from_ne_bytes(mask.try_into().ok()?);
    let names = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ];
    let set: Vec<&str> = (names.iter())
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    (!set.is_empty()).then(|| set.join(","))
}

/// `rule` in nft's words, as far as understood; `family` names its address fields (an inet
/// table's rule tests the family it is judged for).
pub fn describe(rule: &Rule, family: Family) -> String {
    let mut regs: HashMap<u32, Held> = HashMap::new();
    let mut parts: Vec<String> = Vec::new();
    let ip = match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    };
    let ([src_at, dst_at], _) = address_fields(family);
    let field = |name: &str| Held::Field(name.into(), Vec::new());
    let shown = |held: Option<&Held>| match held {
        Some(Held::Field(name, _)) if !name.is_empty() => name.clone(),
        Some(Held::Value(v)) => v.clone(),
        _ => "…".into(),
    };
    for e in &rule.exprs {
        match e {
            Expr::Immediate { dreg, value } => {
                let text = hex(value).unwrap_or_else(|| "…".into());
                regs.insert(*dreg, Held::Value(text));
            }
            Expr::Meta {
                key, dreg: Some(d), ..
            } => {
                let name = match *key {
                    meta::IIFNAME => "iifname",
                    meta::OIFNAME => "oifname",
                    meta::MARK => "meta mark",
                    meta::NFPROTO => "meta nfproto",
                    _ => "",
                };
                regs.insert(*d, field(name));
            }
            Expr::Ct {
                key, dreg: Some(d), ..
            } => {
                let name = match *key {
                    ct::STATE => "ct state",
                    ct::MARK => "ct mark",
                    _ => "",
                };
                regs.insert(*d, field(name));
            }
            Expr::Meta {
                key: meta::MARK,
                sreg: Some(s),
                ..
            } => parts.push(format!("meta mark set {}", shown(regs.get(s)))),
            Expr::Ct {
                key: ct::MARK,
                sreg: Some(s),
                ..
            } => parts.push(format!("ct mark set {}", shown(regs.get(s)))),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let name = match (*base, *offset) {
                    (PAYLOAD_NETWORK, o) if o == src_at => format!("{ip} saddr"),
                    (PAYLOAD_NETWORK, o) if o == dst_at => format!("{ip} daddr"),
                    _ => String::new(),
                };
                regs.insert(*dreg, Held::Field(name, vec![0xff; *len as usize]));
            }
            Expr::Bitwise {
                sreg, dreg, mask, ..
            } => {
                let held = match regs.get(sreg) {
                    Some(Held::Field(name, _)) => Held::Field(name.clone(), mask.clone()),
                    _ => Held::Value("…".into()),
                };
                regs.insert(*dreg, held);
            }
            Expr::Cmp { sreg, eq, data } => {
                let op = if *eq || name_of(regs.get(sreg)) == "ct state" {
                    ""
                } else {
                    "!= "
                };
                let Some(Held::Field(name, mask)) = regs.get(sreg) else {
                    parts.push("…".into());
                    continue;
                };
                let value = match name.as_str() {
                    "iifname" | "oifname" => {
                        let nul = data.iter().position(|b| *b == 0);
                        let text = String::from_utf8_lossy(&data[..nul.unwrap_or(data.len())]);
                        let star = if nul.is_some() { "" } else { "*" };
                        Some(format!("\"{text}{star}\""))
                    }
                    "meta mark" | "ct mark" => hex(data),
                    "meta nfproto" => match data.first().map(|f| i32::from(*f)) {
                        Some(libc::NFPROTO_IPV4) => Some("ipv4".into()),
                        Some(libc::NFPROTO_IPV6) => Some("ipv6".into()),
                        _ => None,
                    },
                    "ct state" if !eq && data.iter().all(|b| *b == 0) => ct_states(mask),
                    n if n.starts_with(ip) => prefix(family, mask, data).map(|n| n.to_string()),
                    _ => None,
                };
                match value {
                    Some(v) => parts.push(format!("{name} {op}{v}")),
                    None => parts.push("…".into()),
                }
            }
            Expr::Lookup { sreg, set } => {
                parts.push(format!("{} @{set}", shown(regs.get(sreg))));
            }
            Expr::Verdict(v) => parts.push(match v {
                Verdict::Accept => "accept".into(),
                Verdict::Drop => "drop".into(),
                Verdict::Jump(c) => format!("jump {c}"),
                Verdict::Goto(c) => format!("goto {c}"),
                Verdict::Return => "return".into(),
                Verdict::Continue => "continue".into(),
                Verdict::Other(code) => format!("verdict {code}"),
            }),
            Expr::Reject => parts.push("reject".into()),
            Expr::Target { name, .. } => parts.push(format!("-j {name}")),
            Expr::Match { name, .. } => parts.push(format!("-m {name}")),
            Expr::Meta { .. } | Expr::Ct { .. } | Expr::Other(_) => {}
        }
    }
    parts.dedup_by(|a, b| a == "…" && b == "…");
    parts.join(" ")
}
