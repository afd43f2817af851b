//! A handshake flood: bogus initiations that pass the receiver's cheap mac1 check (anyone
//! who knows its public key can write one) but carry random Noise bytes, sent from many
//! source addresses at a fixed rate. What an attacker on the internet can aim at a vmtun
//! port; the fault tests and the flood bench (`benches/handshake_flood.rs`) use it.
//!
//! [`bogus_initiation`] is the pure part; [`Flood`] sends them from a thread in a lab
//! namespace, round-robin over its source addresses (which must be on an interface there).

use super::{LabError, Netns, Result};
use crate::keys::PublicKey;
use crate::noise::MacKeys;
use crate::wire::{HandshakeMessageMut as _, INITIATION_LEN, Initiation};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the sender tops up to its rate.
const TICK: Duration = Duration::from_millis(1);

/// An initiation (type 1, 148 bytes) to the owner of `keys` whose sender index and Noise
/// bytes come from `rng`, with a valid mac1 and no mac2: it costs the receiver the mac1
/// check, and more if it is not under load (or it holds no cookie: a cookie reply).
pub fn bogus_initiation(keys: &MacKeys, rng: &mut u64) -> [u8; INITIATION_LEN] {
    let mut bytes = [0u8; INITIATION_LEN];
    for chunk in bytes.chunks_mut(8) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
    }
    let mut msg = Initiation::new_unchecked(&mut bytes[..]);
    msg.init_header();
    msg.set_mac2(&[0; 16]);
    let mac = keys.mac1(&msg);
    msg.set_mac1(&mac);
    bytes
}

/// A flood running on a thread in a lab namespace. Stops when dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl Flood {
    /// Sends bogus initiations for `to` at `target`, `per_second` of them, from each of
    /// `sources` in turn (addresses of `ns`; one socket each, any port).
    pub fn start(
        ns: &Netns,
        sources: &[IpAddr],
        target: SocketAddr,
        to: &PublicKey,
        per_second: u32,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sources = sources.to_vec();
        let keys = MacKeys::new(to);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.thread("flood", move || {
            let sockets = (sources.iter())
                .map(|ip| {
                    UdpSocket::bind(SocketAddr::new(*ip, 0))
                        .map_err(|e| LabError::io(format!("binding a flood socket to {ip}"), e))
                })
                .collect::<Result<Vec<_>>>()?;
            let _ = ready_tx.send(());
            send(&sockets, target, &keys, per_second, &flag)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| LabError::Failed("the flood's sockets did not open".into()))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the flood; how many initiations it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| LabError::Failed("the flood thread panicked".into()))?,
            None => Ok(0),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// The flood thread: every tick, sends what the rate owes since the start. A datagram the
/// kernel refuses (a full buffer) is skipped, not retried; the count is of those sent.
fn send(
    sockets: &[UdpSocket],
    target: SocketAddr,
    keys: &MacKeys,
    per_second: u32,
    stop: &AtomicBool,
) -> Result<u64> {
    let started = Instant::now();
    let mut rng = 0x0f10_0d5e_ed00_0001u64;
    let (mut owed_so_far, mut sent) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let owed = (started.elapsed().as_secs_f64() * f64::from(per_second)) as u64;
        for n in owed_so_far..owed {
            let socket = &sockets[(n % sockets.len() as u64) as usize];
            if socket
                .send_to(&bogus_initiation(keys, &mut rng), target)
                .is_ok()
            {
                sent += 1;
            }
        }
        owed_so_far = owed;
        std::thread::sleep(TICK);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::noise::{DropReason, Inbound, Tunnel, TunnelConfig};
    use std::time::SystemTime;

    #[test]
    fn bogus_initiations_pass_mac1_and_fail_later() {
        let key = PrivateKey::generate();
        let now = Instant::now();
        let config = TunnelConfig {
            private_key: key.clone(),
            peers: Vec::new(),
        };
        let mut tunnel = Tunnel::new(config, now, SystemTime::now());
        let keys = MacKeys::new(&key.public_key());
        let mut rng = 1;
        let (a, b) = (
            bogus_initiation(&keys, &mut rng),
            bogus_initiation(&keys, &mut rng),
        );
        assert_ne!(a, b);
        let mut out = vec![0u8; 256];
        for msg in [a, b] {
            let from = "198.18.0.9:4000".parse().expect("address");
            let got = tunnel.handle_datagram(now, from, &msg, &mut out);
            assert!(
                matches!(got, Inbound::Dropped(reason) if reason != DropReason::BadMac),
                "{got:?}"
            );
        }
    }
}
