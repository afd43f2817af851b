//! Full-size packets for a moved VM while its traffic crosses the tunnel (after the move,
//! before the provider's switch): every link has MTU 1500, the tunnel ~1420, and the client
//! and the VM drop ICMP "fragmentation needed" as many paths do, so path MTU discovery
//! cannot help. TCP must still move whole files both ways (vmtun clamps the MSS of the
//! handshakes it routes into and out of the tunnel); a datagram too big for the tunnel with
//! DF set must come back as the ICMP error that teaches its sender the tunnel's MTU.
//!
//! Both families: the lab is built dual-stack and vmtun carries the VM's IPv4 /29 and its
//! IPv6 /64. The lab is `vmtun::lab::migration`'s (see tests/migration.rs for its drawing).

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::transfer::transfer;
use common::{Netns, Result, Scratch, check, preflight, wait_ping};
use helpers::{WAIT, launch_both, prepare_hosts_with};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use vmtun::lab::LabError;
use vmtun::lab::migration::hosts::HostVmtun;
use vmtun::lab::migration::probe::Echo;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{CLIENT, CLIENT6, ECHO_PORT, Family, VIF, vm_addr};

/// What each direction moves through the tunnel.
const TRANSFER_BYTES: usize = 5 * 1024 * 1024;
/// The tunnel device's MTU (vmtun's default).
const TUNNEL_MTU: usize = 1420;
/// Both families, as vmtun carries them here.
const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// The IP and UDP headers of `family`.
fn udp_headers(family: Family) -> usize {
    match family {
        Family::Ipv4 => 20 + 8,
        Family::Ipv6 => 40 + 8,
    }
}

/// The client's address of `family`.
fn client(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => CLIENT,
        Family::Ipv6 => CLIENT6,
    }
}

/// Makes `ns` drop every ICMP size error it receives (IPv4 fragmentation needed, IPv6
/// packet too big): a path MTU discovery black hole at that end.
fn drop_icmp_size_errors(ns: &Netns) -> Result<()> {
    for rule in [
        "add table inet blackhole",
        "add chain inet blackhole in { type filter hook input priority 0 ; }",
        "add rule inet blackhole in icmp type destination-unreachable icmp code frag-needed counter drop",
        "add rule inet blackhole in icmpv6 type packet-too-big counter drop",
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        ns.run("nft", &args)?;
    }
    Ok(())
}

/// Brings a dual-stack `lab` to the moment after the move: vmtun on both hosts carrying
/// both families, the VM on the new host with `vif-up` done, the provider still routing
/// the subnets to the old host. Returns the two instances (old, new), which stop when
/// dropped.
fn after_the_move<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
) -> Result<(HostVmtun<'a>, HostVmtun<'a>)> {
    let (mut old, mut new) = prepare_hosts_with(lab, scratch, "auto", |old, new| {
        *old = old.clone().carrying(&BOTH);
        *new = new.clone().carrying(&BOTH);
    })?;
    launch_both(lab, &mut old, &mut new)?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    for family in BOTH {
        wait_ping(&lab.client, vm_addr(family), WAIT)?;
    }
    Ok((old, new))
}

/// The packets counted by vmtun's MSS clamp rules of `family` on `host` (both directions).
fn clamped(host: &Netns, family: Family) -> Result<u64> {
    let listing = host.run("nft", &["list", "chain", family.nft(), "vmtun", "forward"])?;
    Ok(listing
        .lines()
        .filter(|l| l.contains("maxseg size set"))
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum())
}

#[test]
fn tcp_moves_whole_files_both_ways_through_a_pmtu_black_hole() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("fullsize-tcp")?;
    let lab = MigrationLab::build_dual_stack(1)?;
    let (_old, _new) = after_the_move(&lab, &scratch)?;
    drop_icmp_size_errors(&lab.client)?;
    drop_icmp_size_errors(&lab.vm)?;

    for family in BOTH {
        let vm = vm_addr(family);
        let inbound = transfer(&lab.client, &lab.vm, vm, TRANSFER_BYTES)?;
        eprintln!("client -> VM {vm}: {inbound:?}");
        let outbound = transfer(&lab.vm, &lab.client, client(family), TRANSFER_BYTES)?;
        eprintln!("VM {vm} -> client: {outbound:?}");
        // Each connection's SYN crossed the tunnel from the old host, its SYN-ACK from the
        // new.
        for (name, host) in [("old", &lab.old), ("new", &lab.new)] {
            let n = clamped(host, family)?;
            check(n >= 2, || {
                format!(
                    "the {name} host's {} MSS clamp counted {n} handshake packets, expected >= 2",
                    family.nft()
                )
            })?;
        }
    }
    Ok(())
}

/// Sends `len` bytes with DF set (IPv6 never fragments on the way) from a UDP socket in
/// `ns` to the VM's echo responder at its address of `family`, and returns (whether the
/// echo came back, the path MTU the socket then knows).
fn send_df(ns: &Netns, family: Family, len: usize) -> Result<(bool, usize)> {
    let vm: IpAddr = vm_addr(family).parse().expect("constant");
    let target = SocketAddr::new(vm, ECHO_PORT);
    let (level, discover, mtu) = match family {
        Family::Ipv4 => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_MTU),
        Family::Ipv6 => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_MTU),
    };
    ns.thread("df-sender", move || {
        let io = |what: &'static str| move |e| LabError::io(what, e);
        let any = if vm.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(any).map_err(io("binding"))?;
        // IP_PMTUDISC_DO and IPV6_PMTUDISC_DO are both 2: never fragment locally.
        set_int(&socket, level, discover, libc::IP_PMTUDISC_DO)?;
        socket.connect(target).map_err(io("connecting"))?;
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .map_err(io("setting the timeout"))?;
        let payload = vec![0x5a; len];
        let mut answered = false;
        let mut buf = vec![0u8; 2048];
        // The first datagram leaves (the client's link has MTU 1500) and dies at the
        // tunnel; the ICMP error that comes back lowers the socket's path MTU. Try a few
        // times: an error report, or an echo, ends it.
        for _ in 0..5 {
            match socket.send(&payload) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => break,
                Err(e) => return Err(LabError::io("sending", e)),
            }
            match socket.recv(&mut buf) {
                Ok(n) if n == len => {
                    answered = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(LabError::io("receiving", e)),
            }
        }
        Ok((answered, get_int(&socket, level, mtu)?))
    })?
    .join()
    .map_err(|_| LabError::Failed("the DF sender panicked".into()))?
}

fn set_int(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: setsockopt with a live fd and an int-sized option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(LabError::io("setsockopt", std::io::Error::last_os_error()))
    }
}

fn get_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int) -> Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt with a live fd and an int-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(usize::try_from(value).unwrap_or(0))
    } else {
        Err(LabError::io("getsockopt", std::io::Error::last_os_error()))
    }
}

#[test]
fn a_full_size_datagram_with_df_teaches_its_sender_the_tunnel_mtu() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("fullsize-udp")?;
    let lab = MigrationLab::build_dual_stack(1)?;
    let (_old, _new) = after_the_move(&lab, &scratch)?;
    let echo = Echo::start(&lab.vm, ECHO_PORT)?;

    for family in BOTH {
        let headers = udp_headers(family);
        // A 1500-byte packet, too big for the tunnel.
        let (answered, mtu) = send_df(&lab.client, family, 1500 - headers)?;
        check(!answered && mtu == TUNNEL_MTU, || {
            format!(
                "{family:?}: a 1500-byte DF datagram: answered {answered}, the sender's path \
                 MTU {mtu} (expected no answer and {TUNNEL_MTU} from the ICMP error)"
            )
        })?;
        // What the sender learned fits: the largest datagram the tunnel carries comes back.
        let (answered, mtu) = send_df(&lab.client, family, TUNNEL_MTU - headers)?;
        check(answered, || {
            format!("{family:?}: a {TUNNEL_MTU}-byte DF datagram was not echoed (path MTU {mtu})")
        })?;
    }
    echo.stop()
}
