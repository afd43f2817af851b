//! The parser on a kernel's own dump: messages captured in a namespace holding
//!
//! ```text
//! table inet filter {
//!   chain forward { type filter hook forward priority 0; policy drop;
//!     iifname "vmtun0" oifname "vif*" ip daddr 203.0.113.0/29 accept
//!     meta mark set 0x1 } }
//! iptables-nft -t mangle -A PREROUTING -j CONNMARK --save-mark
//! ```
//!
//! (tables, chains, rules, as `NFT_MSG_GET*` dumps answered them on a little-endian host).

use super::*;

const DUMP: [&str; 7] = [
    "3c000000000a0200010000000b590000010000030b00010066696c746572000008000300000000010c00040000000000000000010800020000000000",
    "3c000000000a0200010000000b590000020000030b0001006d616e676c65000008000300000000010c00040000000000000000020800020000000000",
    "70000000030a0200020000000b590000010000030b00010066696c74657200000c000300666f7277617264000c0002000000000000000001140004000800010000000002080002000000000008000500000000000b00070066696c746572000008000a00000000010800060000000002",
    "74000000030a0200020000000b590000020000030b0001006d616e676c6500000f000300505245524f5554494e4700000c000200000000000000000114000400080001000000000008000200ffffff6a08000500000000010b00070066696c746572000008000a00000000010800060000000001",
    "14020000060a0208030000000b590000010000030b00010066696c74657200000c000200666f7277617264000c0003000000000000000002dc01040024000100090001006d6574610000000014000200080002000000000608000100000000013800010008000100636d70002c000200080001000000000108000200000000001800030014000100766d74756e300000000000000000000024000100090001006d6574610000000014000200080002000000000708000100000000012c00010008000100636d700020000200080001000000000108000200000000000c000300070001007669660024000100090001006d6574610000000014000200080002000000000f08000100000000012c00010008000100636d700020000200080001000000000108000200000000000c0003000500010002000000340001000c0001007061796c6f6164002400020008000100000000010800020000000001080003000000001008000400000000044c0001000c00010062697477697365003c00020008000100000000010800020000000001080003000000000408000600000000000c00040008000100fffffff80c00050008000100000000002c00010008000100636d700020000200080001000000000108000200000000000c00030008000100cb007100300001000e000100696d6d6564696174650000001c0002000800010000000000100002000c0002000800010000000001",
    "98000000060a0208030000000b590000010000030b00010066696c74657200000c000200666f7277617264000c00030000000000000000030c0006000000000000000002540004002c0001000e000100696d6d6564696174650000001800020008000100000000010c000200080001000100000024000100090001006d657461000000001400020008000200000000030800030000000001",
    "ac000000060a0208030000000b590000020000030b0001006d616e676c6500000f000200505245524f5554494e4700000c0003000000000000000002700004002c0001000c000100636f756e746572001c0002000c00010000000000000000000c0002000000000000000000400001000b0001007461726765740000300002000d000100434f4e4e4d41524b0000000008000200000000021400030000000000ffffffffffffffff00000100",
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub(crate) fn captured() -> Ruleset {
    let bytes: Vec<Vec<u8>> = DUMP.iter().map(|h| unhex(h)).collect();
    Ruleset::from_messages(bytes.iter().map(Vec::as_slice))
}

#[test]
fn tables_chains_and_their_hooks_and_policies() {
    let set = captured();
    assert_eq!(
        set.tables,
        vec![
            (NftFamily::Inet, "filter".to_string()),
            (NftFamily::Ip, "mangle".to_string())
        ]
    );
    let forward = set.chain(NftFamily::Inet, "filter", "forward").unwrap();
    assert_eq!(
        forward.hook,
        Some(Hook {
            num: HOOK_FORWARD,
            priority: 0
        })
    );
    assert_eq!(forward.accepts, Some(false));
    let pre = set.chain(NftFamily::Ip, "mangle", "PREROUTING").unwrap();
    assert_eq!(
        pre.hook,
        Some(Hook {
            num: 0,
            priority: -150
        })
    );
    assert_eq!(pre.accepts, Some(true));
}

#[test]
fn rules_keep_their_expressions_with_one_register_numbering() {
    let set = captured();
    let forward = set.chain(NftFamily::Inet, "filter", "forward").unwrap();
    assert_eq!(forward.rules.len(), 2);
    let accept = &forward.rules[0];
    assert_eq!(accept.handle, 2);
    assert_eq!(
        accept.exprs[..2],
        [
            Expr::Meta {
                key: meta::IIFNAME,
                dreg: Some(0),
                sreg: None
            },
            Expr::Cmp {
                sreg: 0,
                eq: true,
                data: b"vmtun0\0\0\0\0\0\0\0\0\0\0".to_vec()
            },
        ]
    );
    // `oifname "vif*"` compares a prefix: three bytes, no NUL.
    assert_eq!(
        accept.exprs[3],
        Expr::Cmp {
            sreg: 0,
            eq: true,
            data: b"vif".to_vec()
        }
    );
    assert!(accept.exprs.contains(&Expr::Payload {
        base: PAYLOAD_NETWORK,
        offset: 16,
        len: 4,
        dreg: 0
    }));
    assert!(accept.exprs.contains(&Expr::Bitwise {
        sreg: 0,
        dreg: 0,
        mask: vec![0xff, 0xff, 0xff, 0xf8],
        xor: vec![0; 4]
    }));
    assert_eq!(accept.exprs.last(), Some(&Expr::Verdict(Verdict::Accept)));
    assert_eq!(
        forward.rules[1].exprs,
        [
            Expr::Immediate {
                dreg: 0,
                value: 1u32.to_ne_bytes().to_vec()
            },
            Expr::Meta {
                key: meta::MARK,
                dreg: None,
                sreg: Some(0)
            },
        ]
    );
}

#[test]
fn an_iptables_nft_target_keeps_its_name_revision_and_info() {
    let set = captured();
    let pre = set.chain(NftFamily::Ip, "mangle", "PREROUTING").unwrap();
    let Expr::Target { name, rev, info } = &pre.rules[0].exprs[1] else {
        panic!("{:?}", pre.rules[0].exprs);
    };
    assert_eq!((name.as_str(), *rev), ("CONNMARK", 2));
    // xt_connmark_tginfo2: ctmark 0, ctmask and nfmask all ones, mode SAVE (1) at 14.
    assert_eq!(&info[4..12], &[0xff; 8]);
    assert_eq!(info[14], 1);
}

#[test]
fn truncated_or_foreign_messages_are_skipped() {
    let mut bytes: Vec<Vec<u8>> = DUMP.iter().map(|h| unhex(h)).collect();
    bytes[4].truncate(60);
    bytes.push(vec![1, 2, 3]);
    let set = Ruleset::from_messages(bytes.iter().map(Vec::as_slice));
    let forward = set.chain(NftFamily::Inet, "filter", "forward").unwrap();
    assert_eq!(forward.rules.len(), 2, "{:?}", forward.rules);
}
