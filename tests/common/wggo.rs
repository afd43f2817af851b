//! The harness's side of `vmtun::lab::wggo` (a stock WireGuard peer, the reference vmtun
//! must interoperate with): wireguard-go started from the harness's key pair and
//! `[[peer]]`.

use super::{KeyPair, Netns, PeerCfg, Result, Scratch, TUNNEL_PREFIX};
pub use ::vmtun::lab::wggo::WgGo;
use ::vmtun::lab::wggo::WgPeer;

/// Starts `wireguard-go` in `ns` with `keys`, listening on `port`, with tunnel address
/// `tunnel_addr`/[`TUNNEL_PREFIX`] and one peer, and waits until the device is up.
pub fn start_wggo<'a>(
    ns: &'a Netns,
    scratch: &Scratch,
    keys: &KeyPair,
    port: u16,
    tunnel_addr: &str,
    peer: &PeerCfg,
) -> Result<WgGo<'a>> {
    let peer = WgPeer {
        public_key: peer.public_key.clone(),
        endpoint: peer.endpoint.clone(),
        allowed_ips: peer.allowed_ips.clone(),
        preshared_key: peer.preshared_key.clone(),
        persistent_keepalive: peer.persistent_keepalive,
    };
    let cidr = format!("{tunnel_addr}/{TUNNEL_PREFIX}");
    WgGo::start(ns, scratch, &keys.private, port, &cidr, &peer)
}
