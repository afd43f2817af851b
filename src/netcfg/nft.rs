//! vmtun's nftables objects over netlink, in-process (nftnl over libnftnl; no `nft` binary).
//!
//! vmtun owns one table per family of the VM subnets (`ip vmtun`, `ip6 vmtun`, see
//! [`super::NFT_TABLE`]), each created exclusively so it never adopts someone else's. Two
//! tables rather than one `inet` table: each family's rules match its own header without
//! a `meta nfproto` guard, and an IPv4-only move has exactly the objects it always had. Every change is one nftnl batch, which the kernel applies
//! atomically. Rules carry a comment naming them; since rule handles are assigned by the
//! kernel, vmtun finds its rules again by listing the chain and matching the comment.
//!
//! The cutover set (`native`, `type ipv4_addr` or `ipv6_addr`, `flags dynamic`) is filled from the packet
//! path: the native rule adds the subnet's network address the first time a packet for the
//! subnet arrives on the bridge, and the mark rule looks the (masked) source up in the set
//! and stops marking once it is there. So the very first native packet flips the routing of
//! the VM replies inside the kernel; [`remove_mark_rule`] then finalizes in one batch.
//!
//! Only the provider's packets count: the native rule requires the frame's source MAC to be
//! in the `gateways` set (`type ether_addr`, which the plan creates empty and vmtun fills at
//! start with `gateway_elements`, journaled so that a restore puts them back: the MACs the
//! watcher is given too) and the route back to the source to leave through the interface the packet came in on (`fib saddr . iif oif
//! exists`, strict reverse path).

use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Counter, Expression, Immediate, InterfaceName, Ipv4HeaderField,
    Ipv6HeaderField, LLHeaderField, Meta, NetworkHeaderField, Payload, Register,
};
use nftnl::nftnl_sys as sys;
use nftnl::{Batch, Chain, ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily, Table};

use super::change::{
    Action, Change, Direction, Element, Family, NF_IP_PRI_MANGLE, NftHook, NftRuleKind, SetKey,
};
use super::error::{Cause, NetError};
use super::nfsock::NfSock;
use super::plan::{NFT_CHAIN, NFT_NATIVE_SET, NFT_SWITCHED_SET};

/// The netfilter family of vmtun's table for `family`.
fn proto(family: Family) -> ProtoFamily {
    match family {
        Family::Ipv4 => ProtoFamily::Ipv4,
        Family::Ipv6 => ProtoFamily::Ipv6,
    }
}

/// nft's datatype numbers for set keys (`TYPE_IPADDR`, `TYPE_IP6ADDR`, `TYPE_ETHERADDR` in
/// nftables' datatype.h) and the key lengths.
fn set_key(family: Family, key: SetKey) -> (u32, u32) {
    match (key, family) {
        (SetKey::DynamicAddress, Family::Ipv4) => (7, 4),
        (SetKey::DynamicAddress, Family::Ipv6) => (8, 16),
        (SetKey::EtherAddr, _) => (9, 6),
    }
}

/// Both families, the order vmtun's plans create their tables in.
const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// Capacity of the cutover set: one element per subnet, with room to spare.
const NATIVE_SET_SIZE: u32 = 64;

fn cstring(s: &str) -> Result<CString, Cause> {
    CString::new(s).map_err(|_| Cause::Netlink(format!("name {s:?} contains a NUL byte")))
}

/// Sends `batch` on a fresh socket and waits for the kernel's verdict; returns how long the
/// commit took, from sending to the last acknowledgement.
fn commit(batch: Batch) -> Result<Committed, Cause> {
    commit_on(&mut open()?, batch)
}

/// [`commit`] on an open socket.
fn commit_on(sock: &mut NfSock, batch: Batch) -> Result<Committed, Cause> {
    let batch = batch.finalize();
    let seqs = batch.sequence_numbers();
    let t0 = Instant::now();
    sock.send_batch(&batch).map_err(|e| Cause::from_io(&e))?;
    sock.wait_acks(seqs)?;
    let at = Instant::now();
    Ok(Committed { took: at - t0, at })
}

/// A netfilter netlink socket. Closing one can wait for an RCU grace period (milliseconds),
/// so the cutover's critical path uses a socket opened beforehand ([`MarkRemover`]).
fn open() -> Result<NfSock, Cause> {
    NfSock::open().map_err(|e| Cause::from_io(&e))
}

/// When a batch took effect, and how long the kernel took from receiving it.
struct Committed {
    took: Duration,
    at: Instant,
}

/// Wraps an add message so it fails with `File exists` instead of reusing an object: nftnl
/// adds tables, chains and sets without `NLM_F_EXCL` (like `nft add`), and vmtun must only
/// ever delete objects it created.
struct Exclusive<'a, T: NlMsg>(&'a T);

// SAFETY: writes exactly what the inner message writes, then only changes header flags.
unsafe impl<T: NlMsg> NlMsg for Exclusive<'_, T> {
    unsafe fn write(&self, buf: *mut libc::c_void, seq: u32, msg_type: MsgType) {
        unsafe { self.0.write(buf, seq, msg_type) };
        let hdr = buf as *mut libc::nlmsghdr;
        // SAFETY: the inner write put a complete nlmsghdr at `buf`.
        unsafe {
            let mut h = hdr.read_unaligned();
            h.nlmsg_flags |= (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
            hdr.write_unaligned(h);
        }
    }
}

/// A named set (dynamic, of addresses; or of MACs), written with raw libnftnl calls because
/// nftnl's `Set` has no way to set the flags and size a dynamic set needs.
struct RawSet(NonNull<sys::nftnl_set>, Family);

impl RawSet {
    fn new(family: Family, table: &CStr, name: &CStr, key: SetKey) -> Self {
        let (key_type, key_len) = set_key(family, key);
        // SAFETY: libnftnl allocation and attribute setters; strings are copied.
        unsafe {
            let s = sys::nftnl_set_alloc();
            let s = NonNull::new(s).unwrap_or_else(|| std::process::abort());
            let p = s.as_ptr();
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, proto(family) as u32);
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, 1);
            if key == SetKey::DynamicAddress {
                // `flags dynamic`: the kernel picks a backend that supports updates from the
                // packet path (the dynset expression refuses sets without one).
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, libc::NFT_SET_EVAL as u32);
            }
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, key_len);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DESC_SIZE as u16, NATIVE_SET_SIZE);
            RawSet(s, family)
        }
    }

    /// Adds `key` as an element (written by [`SetElements`]).
    fn add_element(&mut self, key: &[u8]) {
        // SAFETY: libnftnl copies the key; the set takes ownership of the element.
        unsafe {
            let e = sys::nftnl_set_elem_alloc();
            if e.is_null() {
                std::process::abort();
            }
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr().cast(),
                key.len() as u32,
            );
            sys::nftnl_set_elem_add(self.0.as_ptr(), e);
        }
    }
}

/// The elements of a [`RawSet`], as one NEWSETELEM message.
struct SetElements<'a>(&'a RawSet);

// SAFETY: writes one NEWSETELEM message built by libnftnl.
unsafe impl NlMsg for SetElements<'_> {
    unsafe fn write(&self, buf: *mut libc::c_void, seq: u32, msg_type: MsgType) {
        let ty = match msg_type {
            MsgType::Add => libc::NFT_MSG_NEWSETELEM,
            MsgType::Del => libc::NFT_MSG_DELSETELEM,
        };
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf as *mut libc::c_char,
                ty as u16,
                proto(self.0.1) as u16,
                (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload(h, self.0.0.as_ptr());
        }
    }
}

impl Drop for RawSet {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { sys::nftnl_set_free(self.0.as_ptr()) }
    }
}

// SAFETY: writes one NEWSET/DELSET message built by libnftnl.
unsafe impl NlMsg for RawSet {
    unsafe fn write(&self, buf: *mut libc::c_void, seq: u32, msg_type: MsgType) {
        let ty = match msg_type {
            MsgType::Add => libc::NFT_MSG_NEWSET,
            MsgType::Del => libc::NFT_MSG_DELSET,
        };
        let flags = match msg_type {
            MsgType::Add => libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK,
            MsgType::Del => libc::NLM_F_ACK,
        };
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf as *mut libc::c_char,
                ty as u16,
                proto(self.1) as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(h, self.0.as_ptr());
        }
    }
}

/// `lookup reg 1 set NAME [inverted]`, by set name (the set lives in an earlier batch).
struct Lookup {
    set: CString,
    inverted: bool,
}

impl Expression for Lookup {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl allocation and setters; the name is copied.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"lookup".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            sys::nftnl_expr_set_u32(
                p,
                sys::NFTNL_EXPR_LOOKUP_SREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.set.as_ptr());
            if self.inverted {
                sys::nftnl_expr_set_u32(
                    p,
                    sys::NFTNL_EXPR_LOOKUP_FLAGS as u16,
                    libc::NFT_LOOKUP_F_INV as u32,
                );
            }
            e
        }
    }
}

/// `dynset add reg_key 1 set NAME`: adds register 1 to the set from the packet path.
struct DynsetAdd {
    set: CString,
}

impl Expression for DynsetAdd {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl allocation and setters; the name is copied.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"dynset".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            sys::nftnl_expr_set_u32(
                p,
                sys::NFTNL_EXPR_DYNSET_SREG_KEY as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                p,
                sys::NFTNL_EXPR_DYNSET_OP as u16,
                libc::NFT_DYNSET_OP_ADD as u32,
            );
            sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_DYNSET_SET_NAME as u16, self.set.as_ptr());
            e
        }
    }
}

/// `NFT_FIB_RESULT_OIF` (linux/netfilter/nf_tables.h): the fib expression yields the output
/// interface of the route it looks up.
const NFT_FIB_RESULT_OIF: u32 = 1;
/// `NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT` (linux/netfilter/nf_tables.h):
/// look up the packet's source, the route must leave through the input interface, and yield
/// only whether one does.
const FIB_SADDR_IIF_PRESENT: u32 = (1 << 0) | (1 << 3) | (1 << 5);

/// `fib saddr . iif oif exists` into register 2, leaving register 1 (the subnet's address,
/// the set element) alone (nftnl has no fib expression): one byte, 1 when the route back to
/// the source leaves through the interface the packet came in on.
struct FibReversePath;

impl Expression for FibReversePath {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl allocation and setters.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"fib".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            let set = |attr: u32, v: u32| sys::nftnl_expr_set_u32(p, attr as u16, v);
            set(sys::NFTNL_EXPR_FIB_DREG, libc::NFT_REG_2 as u32);
            set(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_OIF);
            set(sys::NFTNL_EXPR_FIB_FLAGS, FIB_SADDR_IIF_PRESENT);
            e
        }
    }
}

/// `cmp eq reg 2 1`: the [`FibReversePath`] found such a route (nftnl's `Cmp` reads register
/// 1 only). Compared as a host-order u32, as nft does: the kernel clears the register's
/// 32-bit word before it stores the byte (`nft_reg_store8`), and nft lists it as `exists`
/// only in that form.
struct Register2IsTrue;

impl Expression for Register2IsTrue {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        let one: u32 = 1;
        // SAFETY: libnftnl allocation and setters; the data is copied.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"cmp".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_CMP_SREG as u16, libc::NFT_REG_2 as u32);
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_CMP_OP as u16, libc::NFT_CMP_EQ as u32);
            sys::nftnl_expr_set(
                p,
                sys::NFTNL_EXPR_CMP_DATA as u16,
                (&raw const one).cast(),
                4,
            );
            e
        }
    }
}

/// `meta pkttype` into register 1 (nftnl's `Meta` lacks the key).
struct MetaPktType;

impl Expression for MetaPktType {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl allocation and setters.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"meta".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_META_DREG as u16, libc::NFT_REG_1 as u32);
            sys::nftnl_expr_set_u32(
                p,
                sys::NFTNL_EXPR_META_KEY as u16,
                libc::NFT_META_PKTTYPE as u32,
            );
            e
        }
    }
}

/// `payload load LEN bytes @ transport header + OFFSET => reg 1` (nftnl's `Payload::Transport`
/// has no field for TCP flags, and its raw variant names byte offsets `offset_bits`).
struct TransportBytes {
    offset: u32,
    len: u32,
}

impl Expression for TransportBytes {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl allocation and setters.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"payload".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            let set = |attr: u32, v: u32| sys::nftnl_expr_set_u32(p, attr as u16, v);
            set(sys::NFTNL_EXPR_PAYLOAD_DREG, libc::NFT_REG_1 as u32);
            set(
                sys::NFTNL_EXPR_PAYLOAD_BASE,
                libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            );
            set(sys::NFTNL_EXPR_PAYLOAD_OFFSET, self.offset);
            set(sys::NFTNL_EXPR_PAYLOAD_LEN, self.len);
            e
        }
    }
}

/// TCP option kind 2, maximum segment size (RFC 9293).
const TCPOPT_MAXSEG: u32 = 2;
/// `NFT_EXTHDR_OP_TCPOPT` (linux/netfilter/nf_tables.h): the exthdr expression works on TCP
/// options.
const NFT_EXTHDR_OP_TCPOPT: u32 = 1;

/// `tcp option maxseg size` (2 bytes after the option's kind and length) loaded into
/// register 1, or written from it. The kernel never raises an MSS this way, and a SYN
/// without the option is left alone.
struct TcpMss {
    write: bool,
}

impl Expression for TcpMss {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl allocation and setters.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"exthdr".as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            let set = |attr: u32, v: u32| sys::nftnl_expr_set_u32(p, attr as u16, v);
            set(sys::NFTNL_EXPR_EXTHDR_OP, NFT_EXTHDR_OP_TCPOPT);
            set(sys::NFTNL_EXPR_EXTHDR_TYPE, TCPOPT_MAXSEG);
            set(sys::NFTNL_EXPR_EXTHDR_OFFSET, 2);
            set(sys::NFTNL_EXPR_EXTHDR_LEN, 2);
            let reg = if self.write {
                sys::NFTNL_EXPR_EXTHDR_SREG
            } else {
                sys::NFTNL_EXPR_EXTHDR_DREG
            };
            set(reg, libc::NFT_REG_1 as u32);
            e
        }
    }
}

/// Byte 13 of the TCP header: the flags.
const TCP_FLAGS_OFFSET: u32 = 13;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

fn chain<'a>(table: &'a Table, name: &CStr, hook: NftHook) -> Chain<'a> {
    let mut c = Chain::new(name, table);
    let hook = match hook {
        NftHook::Prerouting => Hook::PreRouting,
        NftHook::Forward => Hook::Forward,
    };
    c.set_hook(hook, NF_IP_PRI_MANGLE);
    c.set_type(ChainType::Filter);
    c.set_policy(Policy::Accept);
    c
}

/// Which address of the header a rule matches.
#[derive(Clone, Copy)]
enum Field {
    Source,
    Destination,
}

/// Appends `ip|ip6 saddr|daddr NET` (payload, mask, compare); register 1 then holds the
/// masked address, i.e. the subnet's network address.
fn match_subnet(rule: &mut nftnl::Rule, field: Field, net: &IpNet) {
    let header = match (net, field) {
        (IpNet::V4(_), Field::Source) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr),
        (IpNet::V4(_), Field::Destination) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr),
        (IpNet::V6(_), Field::Source) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr),
        (IpNet::V6(_), Field::Destination) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr),
    };
    rule.add_expr(&Payload::Network(header));
    let zero = match net {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    rule.add_expr(&Bitwise::new(net.netmask(), zero));
    rule.add_expr(&Cmp::new(CmpOp::Eq, net.network()));
}

/// `iifname "PREFIX*" ip saddr NET [ip saddr & MASK [!]= @SET] counter meta mark set M`:
/// marks what the VMs send; `set` is the set the masked source is looked up in and whether
/// the rule applies when it is absent (`true`) or present.
fn mark_vm_sources(
    r: &mut nftnl::Rule,
    vif_prefix: &str,
    subnet: &IpNet,
    fwmark: super::change::FwMark,
    set: Option<(&str, bool)>,
) -> Result<(), Cause> {
    r.add_expr(&Meta::IifName);
    r.add_expr(&Cmp::new(
        CmpOp::Eq,
        InterfaceName::StartingWith(cstring(vif_prefix)?),
    ));
    match_subnet(r, Field::Source, subnet);
    if let Some((set, inverted)) = set {
        // Register 1 holds `ip saddr & MASK`.
        r.add_expr(&Lookup {
            set: cstring(set)?,
            inverted,
        });
    }
    r.add_expr(&Counter);
    r.add_expr(&Immediate::new(fwmark.0, Register::Reg1));
    r.add_expr(&Meta::Mark { set: true });
    Ok(())
}

fn build_rule<'a>(chain: &'a Chain<'a>, kind: &NftRuleKind) -> Result<nftnl::Rule<'a>, Cause> {
    let mut r = nftnl::Rule::new(chain);
    match kind {
        NftRuleKind::Mark {
            vif_prefix,
            subnet,
            fwmark,
            skip_set,
        } => {
            // Skip once the subnet went native.
            let set = skip_set.as_deref().map(|set| (set, true));
            mark_vm_sources(&mut r, vif_prefix, subnet, *fwmark, set)?;
        }
        NftRuleKind::SwitchedMark {
            vif_prefix,
            subnet,
            fwmark,
            set,
        } => mark_vm_sources(&mut r, vif_prefix, subnet, *fwmark, Some((set, false)))?,
        NftRuleKind::Native {
            iface,
            subnet,
            set,
            gateways,
        } => {
            // Only frames addressed to this host: a broadcast or a frame flooded to another
            // host's MAC on the bridge is no sign that the provider routes the subnet here.
            r.add_expr(&MetaPktType);
            r.add_expr(&Cmp::new(CmpOp::Eq, libc::PACKET_HOST));
            r.add_expr(&Meta::IifName);
            r.add_expr(&Cmp::new(CmpOp::Eq, InterfaceName::Exact(cstring(iface)?)));
            if let Some(gateways) = gateways {
                // From the provider's router only: a neighbour on the segment is not. (The
                // interface type first, as nft does: an Ethernet header is there to read.)
                r.add_expr(&Meta::IifType);
                r.add_expr(&Cmp::new(CmpOp::Eq, libc::ARPHRD_ETHER));
                r.add_expr(&Payload::LinkLayer(LLHeaderField::Saddr));
                r.add_expr(&Lookup {
                    set: cstring(gateways)?,
                    inverted: false,
                });
            }
            match_subnet(&mut r, Field::Destination, subnet);
            if gateways.is_some() {
                // After the cheap destination match, so that only packets for the subnet
                // cost a route lookup.
                r.add_expr(&FibReversePath);
                r.add_expr(&Register2IsTrue);
            }
            r.add_expr(&Counter);
            if let Some(set) = set {
                // Register 1 holds `ip daddr & MASK`, which the match above proved to be the
                // subnet's network address: that is the element (one per subnet). A
                // constant loaded with `immediate` would do the same, but nft cannot type
                // it when listing the rule.
                r.add_expr(&DynsetAdd { set: cstring(set)? });
            }
        }
        NftRuleKind::ClampMss {
            tun,
            direction,
            mss,
        } => {
            r.add_expr(&match direction {
                Direction::Into => Meta::OifName,
                Direction::OutOf => Meta::IifName,
            });
            r.add_expr(&Cmp::new(CmpOp::Eq, InterfaceName::Exact(cstring(tun)?)));
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
            r.add_expr(&TransportBytes {
                offset: TCP_FLAGS_OFFSET,
                len: 1,
            });
            r.add_expr(&Bitwise::new(TCP_SYN | TCP_RST, 0u8));
            r.add_expr(&Cmp::new(CmpOp::Eq, TCP_SYN));
            // Registers hold the option in network byte order; compared as bytes, a
            // big-endian u16 orders as the number does.
            let mss = mss.to_be_bytes();
            r.add_expr(&TcpMss { write: false });
            r.add_expr(&Cmp::new(CmpOp::Gt, &mss[..]));
            r.add_expr(&Counter);
            r.add_expr(&Immediate::new(mss, Register::Reg1));
            r.add_expr(&TcpMss { write: true });
        }
    }
    r.set_comment(cstring(&kind.comment())?)
        .map_err(|e| Cause::Netlink(e.into()))?;
    Ok(r)
}

/// A rule found in a chain listing.
#[derive(Debug, Clone)]
pub(crate) struct ListedRule {
    pub handle: u64,
    pub comment: Option<String>,
}

/// Builds a request of message type `msg` (an `NFT_MSG_GET*`) with `flags` and the payload
/// written by `payload`, in 8-byte aligned storage; its length in bytes.
fn request(
    family: Family,
    msg: i32,
    flags: i32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> (Vec<u64>, usize) {
    let mut buf = vec![0u64; (nftnl::nft_nlmsg_maxsize() as usize).div_ceil(8)];
    // SAFETY: the buffer holds the largest nftables message.
    let len = unsafe {
        let h = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr() as *mut libc::c_char,
            msg as u16,
            proto(family) as u16,
            flags as u16,
            1,
        );
        payload(h);
        (*h).nlmsg_len as usize
    };
    (buf, len)
}

/// Sends a dump request of message type `msg` (an `NFT_MSG_GET*`), with the payload
/// written by `payload`, and returns the replies of type `reply` (an `NFT_MSG_NEW*`), each
/// copied to 8-byte aligned storage for libnftnl's parsers.
fn dump(
    sock: &mut NfSock,
    family: Family,
    msg: i32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
    reply: i32,
) -> Result<Vec<Vec<u64>>, Cause> {
    let (buf, len) = request(family, msg, libc::NLM_F_DUMP | libc::NLM_F_ACK, payload);
    // SAFETY: `len` bytes of `buf` were written by `request`.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, len) };
    sock.send(bytes).map_err(|e| Cause::from_io(&e))?;
    let reply_type = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | reply as u16;
    Ok(sock
        .dump()?
        .into_iter()
        .filter(|m| m.ty == reply_type)
        .map(|m| {
            let mut aligned = vec![0u64; m.bytes.len().div_ceil(8)];
            // SAFETY: `aligned` has room for all the bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    m.bytes.as_ptr(),
                    aligned.as_mut_ptr() as *mut u8,
                    m.bytes.len(),
                )
            };
            aligned
        })
        .collect())
}

/// Whether the object a `GET` request of type `msg` names exists (the kernel answers it, or
/// says `No such file or directory`).
fn exists(
    sock: &mut NfSock,
    family: Family,
    msg: i32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Result<bool, Cause> {
    let (buf, len) = request(family, msg, libc::NLM_F_ACK, payload);
    // SAFETY: `len` bytes of `buf` were written by `request`.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, len) };
    sock.send(bytes).map_err(|e| Cause::from_io(&e))?;
    match sock.wait_acks(1..2) {
        Ok(()) => Ok(true),
        Err(Cause::Errno(libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the nft change `c` is in place: its table, chain or set exists, its element is
/// in its set, its rule (by comment) in its chain.
pub(crate) fn is_in_place(c: &Change) -> Result<bool, Cause> {
    let mut sock = open()?;
    let absent_is_false = |r: Result<bool, Cause>| match r {
        Err(Cause::Errno(libc::ENOENT)) => Ok(false),
        other => other,
    };
    match c {
        Change::NftTable { family, name } => {
            let n = cstring(name)?;
            // SAFETY: a table object used only to write the request's name, freed at once.
            exists(&mut sock, *family, libc::NFT_MSG_GETTABLE, |h| unsafe {
                let t = sys::nftnl_table_alloc();
                if t.is_null() {
                    std::process::abort();
                }
                sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, n.as_ptr());
                sys::nftnl_table_nlmsg_build_payload(h, t);
                sys::nftnl_table_free(t);
            })
        }
        Change::NftChain {
            family,
            table,
            name,
            ..
        } => {
            let (t, n) = (cstring(table)?, cstring(name)?);
            // SAFETY: a chain object used only to write the request's names, freed at once.
            exists(&mut sock, *family, libc::NFT_MSG_GETCHAIN, |h| unsafe {
                let c = sys::nftnl_chain_alloc();
                if c.is_null() {
                    std::process::abort();
                }
                sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, t.as_ptr());
                sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_NAME as u16, n.as_ptr());
                sys::nftnl_chain_nlmsg_build_payload(h, c);
                sys::nftnl_chain_free(c);
            })
        }
        Change::NftSet {
            family,
            table,
            name,
            ..
        } => {
            let (t, n) = (cstring(table)?, cstring(name)?);
            // SAFETY: a set object used only to write the request's names, freed at once.
            exists(&mut sock, *family, libc::NFT_MSG_GETSET, |h| unsafe {
                let s = sys::nftnl_set_alloc();
                if s.is_null() {
                    std::process::abort();
                }
                sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
                sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, n.as_ptr());
                sys::nftnl_set_nlmsg_build_payload(h, s);
                sys::nftnl_set_free(s);
            })
        }
        Change::NftSetElement {
            family,
            table,
            set,
            element,
        } => absent_is_false(set_elements(&mut sock, *family, table, set).map(|found| {
            let key = element.key();
            // The kernel may pad a key to its registers' 4-byte size (a MAC: 8 bytes).
            found.iter().any(|k| {
                k.len() >= key.len()
                    && k[..key.len()] == key[..]
                    && k[key.len()..].iter().all(|b| *b == 0)
            })
        })),
        Change::NftRule {
            family,
            table,
            chain,
            rule,
        } => {
            let comment = rule.comment();
            absent_is_false(list_rules(&mut sock, *family, table, chain).map(|rules| {
                rules
                    .iter()
                    .any(|r| r.comment.as_deref() == Some(comment.as_str()))
            }))
        }
        _ => Err(Cause::Netlink("not an nftables change".into())),
    }
}

/// Lists the rules of `table`/`chain` of `family` with their handles and comments. A missing
/// table or chain is `No such file or directory`.
pub(crate) fn list_rules(
    sock: &mut NfSock,
    family: Family,
    table: &str,
    chain_name: &str,
) -> Result<Vec<ListedRule>, Cause> {
    let t = cstring(table)?;
    let c = cstring(chain_name)?;
    let replies = dump(
        sock,
        family,
        libc::NFT_MSG_GETRULE,
        // SAFETY: a rule object used only to write the request's table and chain.
        |h| unsafe {
            let r = sys::nftnl_rule_alloc();
            if r.is_null() {
                std::process::abort();
            }
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, t.as_ptr());
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, c.as_ptr());
            sys::nftnl_rule_nlmsg_build_payload(h, r);
            sys::nftnl_rule_free(r);
        },
        libc::NFT_MSG_NEWRULE,
    )?;
    let mut out = Vec::new();
    for m in replies {
        // SAFETY: `m` is a complete, aligned NEWRULE message; the rule is freed below.
        unsafe {
            let r = sys::nftnl_rule_alloc();
            if r.is_null() {
                std::process::abort();
            }
            if sys::nftnl_rule_nlmsg_parse(m.as_ptr() as *const libc::nlmsghdr, r) < 0 {
                sys::nftnl_rule_free(r);
                continue;
            }
            let handle = sys::nftnl_rule_get_u64(r, sys::NFTNL_RULE_HANDLE as u16);
            let mut ulen: u32 = 0;
            let ud = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut ulen);
            let comment = if ud.is_null() {
                None
            } else {
                comment_of(std::slice::from_raw_parts(ud as *const u8, ulen as usize))
            };
            sys::nftnl_rule_free(r);
            out.push(ListedRule { handle, comment });
        }
    }
    Ok(out)
}

/// The elements of vmtun's cutover sets in both families' tables: the network addresses of
/// the subnets for which a packet has arrived natively, i.e. whose replies the kernel no
/// longer sends through the tunnel. For `vmtun status`. A family without a table has none.
pub fn native_subnets(table: &str) -> Result<Vec<IpAddr>, NetError> {
    elements_of_both(table, NFT_NATIVE_SET)
}

/// The elements of the old host's sets of switched subnets (see
/// [`NftRuleKind::SwitchedMark`]): the network addresses of the subnets the new host has
/// reported switched by the provider. For `vmtun status`.
pub fn switched_subnets(table: &str) -> Result<Vec<IpAddr>, NetError> {
    elements_of_both(table, NFT_SWITCHED_SET)
}

/// The elements of `set` in both families' tables named `table`.
fn elements_of_both(table: &str, set: &str) -> Result<Vec<IpAddr>, NetError> {
    let mut out = Vec::new();
    for family in FAMILIES {
        match open().and_then(|mut sock| set_elements(&mut sock, family, table, set)) {
            Ok(found) => out.extend(found.iter().filter_map(|k| {
                <[u8; 4]>::try_from(&k[..])
                    .map(IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(&k[..]).map(IpAddr::from))
                    .ok()
            })),
            Err(Cause::Errno(libc::ENOENT)) => {}
            Err(cause) => {
                return Err(NetError::Op {
                    doing: format!("listing nft set {} {table} {set}", family.nft()),
                    cause,
                });
            }
        }
    }
    Ok(out)
}

/// Adds `subnet`'s network address to `set` in vmtun's table of its family. Adding an
/// element that is there already succeeds.
pub fn add_subnet_to_set(table: &str, set: &str, subnet: IpNet) -> Result<(), NetError> {
    let element = Change::NftSetElement {
        family: Family::of(subnet.addr()),
        table: table.into(),
        set: set.into(),
        element: Element::Addr(subnet.network()),
    };
    carry_out(Action::Apply, &element)
        .map_err(|cause| NetError::change(Action::Apply, &element, cause))
}

/// The elements of set `set` in `table` of `family` (addresses of the family).
fn set_elements(
    sock: &mut NfSock,
    family: Family,
    table: &str,
    set_name: &str,
) -> Result<Vec<Vec<u8>>, Cause> {
    let t = cstring(table)?;
    let n = cstring(set_name)?;
    // SAFETY: libnftnl allocation; freed at the end of this function.
    let set = unsafe { sys::nftnl_set_alloc() };
    if set.is_null() {
        std::process::abort();
    }
    // SAFETY: the strings are copied into the set object.
    unsafe {
        sys::nftnl_set_set_str(set, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
        sys::nftnl_set_set_str(set, sys::NFTNL_SET_NAME as u16, n.as_ptr());
    }
    let replies = dump(
        sock,
        family,
        libc::NFT_MSG_GETSETELEM,
        // SAFETY: writes the set's table and name into the request.
        |h| unsafe { sys::nftnl_set_elems_nlmsg_build_payload(h, set) },
        libc::NFT_MSG_NEWSETELEM,
    );
    let mut out = Vec::new();
    // SAFETY: each reply is a complete, aligned NEWSETELEM message; parsing appends its
    // elements to `set`, whose keys are then copied out.
    unsafe {
        if let Ok(replies) = &replies {
            for m in replies {
                sys::nftnl_set_elems_nlmsg_parse(m.as_ptr() as *const libc::nlmsghdr, set);
            }
            let it = sys::nftnl_set_elems_iter_create(set);
            if !it.is_null() {
                loop {
                    let e = sys::nftnl_set_elems_iter_next(it);
                    if e.is_null() {
                        break;
                    }
                    let mut len: u32 = 0;
                    let k = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
                    if k.is_null() {
                        continue;
                    }
                    out.push(std::slice::from_raw_parts(k as *const u8, len as usize).to_vec());
                }
                sys::nftnl_set_elems_iter_destroy(it);
            }
        }
        sys::nftnl_set_free(set);
    }
    replies?;
    Ok(out)
}

/// The comment in a rule's user data: type-length-value records (`struct nftnl_udata`,
/// one byte each for type and length), the comment being type `NFTNL_UDATA_RULE_COMMENT`
/// with a NUL-terminated string.
fn comment_of(mut ud: &[u8]) -> Option<String> {
    while ud.len() >= 2 {
        let (ty, len) = (ud[0], ud[1] as usize);
        let value = ud.get(2..2 + len)?;
        if u32::from(ty) == sys::NFTNL_UDATA_RULE_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        ud = &ud[2 + len..];
    }
    None
}

/// One of vmtun's rules, by family and handle, for deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    family: Family,
    handle: u64,
}

/// Deletes these rules from `chain_name` of the family's `table` in one batch (both families'
/// tables at once if need be: the kernel applies a batch whole or not at all); returns the
/// commit time.
fn delete_rules(
    sock: &mut NfSock,
    table: &str,
    chain_name: &str,
    handles: &[Handle],
) -> Result<Committed, Cause> {
    let (table, chain_name) = (cstring(table)?, cstring(chain_name)?);
    let tables = FAMILIES.map(|f| Table::new(&table, proto(f)));
    let chains = [0, 1].map(|i| Chain::new(&chain_name, &tables[i]));
    let mut batch = Batch::new();
    for h in handles {
        let chain = &chains[usize::from(h.family == Family::Ipv6)];
        let mut r = nftnl::Rule::new(chain);
        r.set_handle(h.handle);
        batch.add(&r, MsgType::Del);
    }
    commit_on(sock, batch)
}

/// Applies or reverts one nft change (one batch). Other changes are not nft's.
pub(crate) fn carry_out(action: Action, c: &Change) -> Result<(), Cause> {
    let add = action == Action::Apply;
    let mut batch = Batch::new();
    match c {
        Change::NftTable { family, name } => {
            let t = Table::new(cstring(name)?, proto(*family));
            if add {
                batch.add(&Exclusive(&t), MsgType::Add);
            } else {
                batch.add(&t, MsgType::Del);
            }
            commit(batch)?;
        }
        Change::NftChain {
            family,
            table,
            name,
            hook,
        } => {
            let t = Table::new(cstring(table)?, proto(*family));
            let ch = chain(&t, &cstring(name)?, *hook);
            if add {
                batch.add(&Exclusive(&ch), MsgType::Add);
            } else {
                batch.add(&ch, MsgType::Del);
            }
            commit(batch)?;
        }
        Change::NftSet {
            family,
            table,
            name,
            key,
        } => {
            let s = RawSet::new(*family, &cstring(table)?, &cstring(name)?, *key);
            batch.add(&s, if add { MsgType::Add } else { MsgType::Del });
            commit(batch)?;
        }
        Change::NftSetElement {
            family,
            table,
            set,
            element,
        } => {
            let key = match element {
                Element::Addr(_) => SetKey::DynamicAddress,
                Element::Mac(_) => SetKey::EtherAddr,
            };
            let mut raw = RawSet::new(*family, &cstring(table)?, &cstring(set)?, key);
            raw.add_element(&element.key());
            batch.add(
                &SetElements(&raw),
                if add { MsgType::Add } else { MsgType::Del },
            );
            commit(batch)?;
        }
        Change::NftRule {
            family,
            table,
            chain,
            rule,
        } if add => {
            let t = Table::new(cstring(table)?, proto(*family));
            let ch = Chain::new(cstring(chain)?, &t);
            let r = build_rule(&ch, rule)?;
            batch.add(&r, MsgType::Add);
            commit(batch)?;
        }
        Change::NftRule {
            family,
            table,
            chain,
            rule,
        } => {
            let comment = rule.comment();
            let mut sock = open()?;
            let handles: Vec<Handle> = list_rules(&mut sock, *family, table, chain)?
                .into_iter()
                .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
                .map(|r| Handle {
                    family: *family,
                    handle: r.handle,
                })
                .collect();
            if handles.is_empty() {
                return Err(Cause::Errno(libc::ENOENT));
            }
            delete_rules(&mut sock, table, chain, &handles)?;
        }
        _ => return Err(Cause::Netlink("not an nftables change".into())),
    }
    Ok(())
}

/// The result of [`remove_mark_rule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRemoval {
    /// Subnets whose mark rule was removed (empty if none was left: already finalized).
    pub removed: Vec<IpNet>,
    /// How long the netlink commit took, from sending the batch to the kernel's last
    /// acknowledgement (listing the rules beforehand is not included).
    pub commit: Duration,
    /// When the kernel had applied the removal (or found nothing to remove).
    pub gone_at: Instant,
}

/// Finalizes the cutover: removes the mark rules for `subnets` (all of vmtun's mark rules
/// when empty) from vmtun's tables named `table`, in one atomic batch. Only vmtun's own
/// rules go; the cutover sets and the native rules stay until undo. Idempotent: with no mark
/// rule left it removes nothing and succeeds. For `vmtun cutover`; the watcher prepares a
/// [`MarkRemover`].
pub fn remove_mark_rule(table: &str, subnets: &[IpNet]) -> Result<MarkRemoval, NetError> {
    MarkRemover::prepare(table)?.remove(subnets)
}

/// The cutover's finalization made ready before the packet that triggers it: a socket
/// already open and the mark rules' handles already listed, so that on the first native
/// packet one batch goes to the kernel and nothing else (listing the rules and closing a
/// socket on the way took 0.3 ms at the median and over 1 ms at worst, BENCHMARKS.md).
pub struct MarkRemover {
    table: String,
    sock: NfSock,
    /// vmtun's mark rules as last listed: subnet and handle.
    rules: Vec<(IpNet, Handle)>,
}

impl MarkRemover {
    /// Opens the socket and lists the mark rules of vmtun's tables named `table` (a family
    /// without a table has none; neither table is an error).
    pub fn prepare(table: &str) -> Result<Self, NetError> {
        let mut sock = open().map_err(|cause| removing(table, cause))?;
        let rules = mark_rules(&mut sock, table).map_err(|cause| removing(table, cause))?;
        Ok(Self {
            table: table.to_owned(),
            sock,
            rules,
        })
    }

    /// Removes the mark rules for `subnets` (all when empty) in one batch. Should the
    /// rules have changed since they were listed (the kernel knows no such handle), lists
    /// them again and retries once.
    pub fn remove(&mut self, subnets: &[IpNet]) -> Result<MarkRemoval, NetError> {
        let result = match self.try_remove(subnets) {
            Err(Cause::Errno(libc::ENOENT)) => {
                mark_rules(&mut self.sock, &self.table).and_then(|rules| {
                    self.rules = rules;
                    self.try_remove(subnets)
                })
            }
            other => other,
        };
        result.map_err(|cause| removing(&self.table, cause))
    }

    fn try_remove(&mut self, subnets: &[IpNet]) -> Result<MarkRemoval, Cause> {
        let wanted = |net: &IpNet| subnets.is_empty() || subnets.iter().any(|s| s.trunc() == *net);
        let (removed, handles): (Vec<IpNet>, Vec<Handle>) = self
            .rules
            .iter()
            .filter(|(net, _)| wanted(net))
            .copied()
            .unzip();
        if handles.is_empty() {
            return Ok(MarkRemoval {
                removed,
                commit: Duration::ZERO,
                gone_at: Instant::now(),
            });
        }
        let done = delete_rules(&mut self.sock, &self.table, NFT_CHAIN, &handles)?;
        self.rules.retain(|(net, _)| !wanted(net));
        Ok(MarkRemoval {
            removed,
            commit: done.took,
            gone_at: done.at,
        })
    }
}

fn removing(table: &str, cause: Cause) -> NetError {
    NetError::Op {
        doing: format!("removing the mark rules from nft table {table}"),
        cause,
    }
}

/// vmtun's mark rules in both families' `table`, by the subnet their comment names. A
/// missing table has none, but with neither table there, the missing table is the answer.
fn mark_rules(sock: &mut NfSock, table: &str) -> Result<Vec<(IpNet, Handle)>, Cause> {
    let mut out = Vec::new();
    let mut missing = 0;
    for family in FAMILIES {
        let listed = match list_rules(sock, family, table, NFT_CHAIN) {
            Err(Cause::Errno(libc::ENOENT)) => {
                missing += 1;
                continue;
            }
            other => other?,
        };
        out.extend(listed.into_iter().filter_map(|r| {
            let net = r
                .comment
                .as_deref()?
                .strip_prefix("vmtun mark ")?
                .parse()
                .ok()?;
            Some((
                net,
                Handle {
                    family,
                    handle: r.handle,
                },
            ))
        }));
    }
    if missing == FAMILIES.len() {
        return Err(Cause::Errno(libc::ENOENT));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_is_read_from_user_data() {
        let mut ud = vec![0u8, 6];
        ud.extend_from_slice(b"vmtun\0");
        assert_eq!(comment_of(&ud).as_deref(), Some("vmtun"));
        // Another record first, then a truncated one.
        let mut ud2 = vec![9u8, 1, 0];
        ud2.extend_from_slice(&ud);
        assert_eq!(comment_of(&ud2).as_deref(), Some("vmtun"));
        assert_eq!(comment_of(&[0, 9, b'x']), None);
    }
}
