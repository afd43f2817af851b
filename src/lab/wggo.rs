//! A stock WireGuard peer: `wireguard-go` in a namespace, configured with `wg set` and
//! `ip`. The tests check vmtun's interoperability against it, and the real-VM lab sends
//! QEMU's migration stream through a pair of them to compare the pause with vmtun's
//! (`vmtun demo --real-vm --migrate-via wireguard-go`).

use super::{LabError, Netns, Process, Result, Scratch};
use std::time::Duration;

/// How long wireguard-go may take to create its device.
const START_WAIT: Duration = Duration::from_secs(30);

/// The one peer a [`WgGo`] talks to, as `wg set ... peer` takes it.
#[derive(Clone, Debug, Default)]
pub struct WgPeer {
    /// The peer's public key (base64).
    pub public_key: String,
    /// `ip:port`, or `None` to learn it from authenticated packets.
    pub endpoint: Option<String>,
    /// Cryptokey routing prefixes.
    pub allowed_ips: Vec<String>,
    /// Optional pre-shared key (base64).
    pub preshared_key: Option<String>,
    /// Optional keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

/// A `wireguard-go` running in the foreground in a namespace, stopped on drop.
pub struct WgGo<'a> {
    ns: &'a Netns,
    /// Interface name (unique on the host: its UAPI socket lives in the shared `/run`).
    pub name: String,
    process: Option<Process>,
}

impl Drop for WgGo<'_> {
    fn drop(&mut self) {
        // SIGTERM lets wireguard-go remove its UAPI socket; remove it if a kill did not.
        drop(self.process.take());
        let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", self.name));
    }
}

impl<'a> WgGo<'a> {
    /// Starts `wireguard-go` in `ns` with `private_key` (base64), listening on `port`, with
    /// the tunnel address `tunnel_cidr` (e.g. `100.64.1.1/24`) and one peer, and waits
    /// until the device is up.
    pub fn start(
        ns: &'a Netns,
        scratch: &Scratch,
        private_key: &str,
        port: u16,
        tunnel_cidr: &str,
        peer: &WgPeer,
    ) -> Result<Self> {
        let name = super::unique_ifname("wg");
        let mut cmd = ns.command("wireguard-go");
        cmd.arg(&name)
            .env("WG_PROCESS_FOREGROUND", "1")
            .env("LOG_LEVEL", "debug");
        let mut process = Process::spawn(&format!("wireguard-go-{name}"), scratch.path(), cmd)?;
        super::wait_until(
            START_WAIT,
            &format!("wireguard-go to create {name}"),
            || process.is_running() && ns.has_link(&name),
        )
        .map_err(|e| LabError::Failed(format!("{e}\n{}", process.stderr_tail())))?;
        // From here on, dropping `wg` stops wireguard-go.
        let wg = Self {
            ns,
            name,
            process: Some(process),
        };

        let key_file = scratch.write(&format!("{}.key", wg.name), private_key, 0o600)?;
        let key_file = key_file.to_string_lossy().into_owned();
        let port = port.to_string();
        let allowed = peer.allowed_ips.join(",");
        let mut args: Vec<&str> = vec![
            "set",
            &wg.name,
            "private-key",
            &key_file,
            "listen-port",
            &port,
            "peer",
            &peer.public_key,
            "allowed-ips",
            &allowed,
        ];
        if let Some(endpoint) = &peer.endpoint {
            args.extend(["endpoint", endpoint]);
        }
        let keepalive = peer.persistent_keepalive.map(|k| k.to_string());
        if let Some(keepalive) = &keepalive {
            args.extend(["persistent-keepalive", keepalive]);
        }
        let psk_file = match &peer.preshared_key {
            Some(psk) => Some(
                scratch
                    .write(&format!("{}.psk", wg.name), psk, 0o600)?
                    .to_string_lossy()
                    .into_owned(),
            ),
            None => None,
        };
        if let Some(psk_file) = &psk_file {
            args.extend(["preshared-key", psk_file]);
        }
        ns.run("wg", &args)?;
        ns.add_address(&wg.name, tunnel_cidr)?;
        ns.link_up(&wg.name)?;
        Ok(wg)
    }

    /// Seconds since the epoch of the last handshake with `public_key` (`wg show
    /// latest-handshakes`); `None` if there was none.
    pub fn latest_handshake(&self, public_key: &str) -> Option<u64> {
        let out = self
            .ns
            .run("wg", &["show", &self.name, "latest-handshakes"])
            .ok()?;
        out.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(public_key))
                .then(|| fields.next()?.parse::<u64>().ok())
                .flatten()
                .filter(|&t| t != 0)
        })
    }

    /// The endpoint wireguard-go uses for `public_key` (`wg show endpoints`).
    pub fn endpoint(&self, public_key: &str) -> Option<String> {
        let out = self.ns.run("wg", &["show", &self.name, "endpoints"]).ok()?;
        out.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(public_key))
                .then(|| fields.next().map(str::to_owned))
                .flatten()
                .filter(|e| e != "(none)")
        })
    }
}
