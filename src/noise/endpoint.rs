//! Which UDP addresses a peer's endpoint may be. Owns the one rule the core (learning an
//! endpoint from a datagram's source), the UDP edge (sending) and the config (a configured
//! `endpoint`) share, so they cannot disagree.

use std::net::{IpAddr, SocketAddr};

/// Whether a datagram can be sent to `addr`: not port 0 (the kernel answers EINVAL, and
/// quinn-udp then turns segmentation offload off for the whole socket, for every peer),
/// not the unspecified address, not multicast nor the IPv4 broadcast address (one peer is
/// one host). An IPv4-mapped IPv6 address is judged as the IPv4 address it stands for.
/// A datagram from any other source is dropped before any work (`unusable_source`).
pub fn can_send_to(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let bad_ip = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !bad_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_with_a_port_is_usable_and_nothing_else() {
        for ok in [
            "198.18.0.1:51820",
            "[2001:db8::1]:1",
            "127.0.0.1:9",
            "[::ffff:198.18.0.1]:7",
        ] {
            assert!(can_send_to(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "198.18.0.1:0",
            "0.0.0.0:51820",
            "[::]:51820",
            "224.0.0.1:51820",
            "239.255.255.250:1900",
            "[ff02::1]:51820",
            "255.255.255.255:51820",
            "[::ffff:255.255.255.255]:51820",
            "[::ffff:0.0.0.0]:51820",
        ] {
            assert!(!can_send_to(bad.parse().unwrap()), "{bad}");
        }
    }
}
