//! The two questions only the network can answer: does the peer complete a handshake
//! with this host's key (one initiation through the sans-IO core, from the listen port),
//! and what MTU does the route towards its endpoint have.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::config::{Config, Peer};
use crate::noise::{Event, MAX_MESSAGE, OVERHEAD, Outbound, PeerConfig, Tunnel, TunnelConfig};

use super::facts::Handshake;

/// How long the probe waits for the handshake response.
pub const PROBE_WAIT: Duration = Duration::from_millis(2500);

/// A 20-byte IPv4 header to 192.0.2.1 (TEST-NET-1): it only makes the core start a
/// handshake; it is never sent.
fn trigger_packet() -> [u8; 20] {
    let mut p = [0u8; 20];
    p[0] = 0x45;
    p[3] = 20;
    p[8] = 64;
    p[16..20].copy_from_slice(&Ipv4Addr::new(192, 0, 2, 1).octets());
    p
}

/// Sends one handshake initiation as this host to `peer` from `socket` (bound to the
/// listen port, IPv4 or dual-stack) and waits up to [`PROBE_WAIT`] for a valid response. Nothing else is sent:
/// the peer keeps an unconfirmed session that it never uses, and starts its own handshake
/// when it has traffic for this host.
pub fn handshake(config: &Config, peer: &Peer, socket: &UdpSocket) -> Handshake {
    let Some(endpoint) = peer.endpoint else {
        return Handshake::NoEndpoint;
    };
    let start = Instant::now();
    let mut tunnel = Tunnel::new(
        TunnelConfig {
            private_key: config.interface.private_key.clone(),
            peers: vec![PeerConfig {
                public_key: peer.public_key,
                preshared_key: peer.preshared_key.clone(),
                endpoint: Some(endpoint),
                allowed_ips: vec![IpNet::V4(ipnet::Ipv4Net::default())],
                persistent_keepalive: None,
            }],
        },
        start,
        SystemTime::now(),
    );
    let mut out = vec![0u8; MAX_MESSAGE + OVERHEAD + 15];
    if tunnel.handle_outbound(start, &trigger_packet(), &mut out) != Outbound::Queued {
        return Handshake::SendFailed("the protocol core started no handshake".into());
    }
    let Some(initiation) = tunnel.poll_transmit(start, &mut out) else {
        return Handshake::SendFailed("the protocol core wrote no initiation".into());
    };
    if let Err(e) = socket
        .connect(endpoint)
        .and_then(|()| socket.send(&out[..initiation.len]))
    {
        return refused_or(e, Handshake::SendFailed);
    }
    let sent = Instant::now();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let left = PROBE_WAIT.saturating_sub(sent.elapsed());
        if left.is_zero() {
            return Handshake::NoAnswer(PROBE_WAIT);
        }
        let received = socket
            .set_read_timeout(Some(left))
            .and_then(|()| socket.recv(&mut buf));
        let n = match received {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Handshake::NoAnswer(PROBE_WAIT);
            }
            Err(e) => return refused_or(e, Handshake::SendFailed),
        };
        let now = Instant::now();
        tunnel.handle_datagram(now, endpoint, &buf[..n], &mut out);
        while let Some(event) = tunnel.poll_event() {
            if matches!(event, Event::HandshakeComplete { .. }) {
                return Handshake::Completed { rtt: now - sent };
            }
        }
    }
}

fn refused_or(e: io::Error, other: impl FnOnce(String) -> Handshake) -> Handshake {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        Handshake::Refused
    } else {
        other(e.to_string())
    }
}

/// The MTU of the route towards `endpoint`, as the kernel reports it for a UDP socket
/// connected there (`IP_MTU`): the route's MTU, or the learned path MTU.
pub fn path_mtu(endpoint: SocketAddr) -> Result<u32, String> {
    let (any, level, opt): (SocketAddr, _, _) = match endpoint {
        SocketAddr::V4(_) => (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
        ),
        SocketAddr::V6(_) => (
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
        ),
    };
    let socket = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    socket.connect(endpoint).map_err(|e| e.to_string())?;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; `mtu` and `len` are live and sized as the kernel expects.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            opt,
            (&raw mut mtu).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    u32::try_from(mtu).map_err(|_| format!("the kernel reported MTU {mtu}"))
}
