//! What a running instance answers, and the requests that ask it: the control socket's
//! messages and the status snapshot `vmtun status` prints. The driver builds the replies and
//! `control` carries them; both use these types, so neither needs the other's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::migration::MigrationStatus;
use crate::restore::RestoreStatus;

/// What a client asks a running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A [`Status`] snapshot.
    Status,
    /// Stop and undo everything.
    Down,
    /// Role new: remove the mark rule now.
    Cutover,
    /// Role old: the guest of this VM interface is paused for the migration's last stage;
    /// send its traffic to the new host now.
    Handover(String),
    /// Role old: the guest of this VM interface runs here again; route it here.
    HandBack(String),
    /// `vmtun vif-up VIF` (libvirt's `<script>`): set up this VM interface, routing its VM
    /// onto it now or once its guest runs there.
    VifUp(String),
}

impl Request {
    /// Parses a request line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_ascii_whitespace();
        let request = match (words.next()?, words.next()) {
            ("status", None) => Self::Status,
            ("down", None) => Self::Down,
            ("cutover", None) => Self::Cutover,
            ("handover", Some(vif)) => Self::Handover(vif.to_owned()),
            ("handback", Some(vif)) => Self::HandBack(vif.to_owned()),
            ("vifup", Some(vif)) => Self::VifUp(vif.to_owned()),
            _ => return None,
        };
        words.next().is_none().then_some(request)
    }

    /// The request as the line sent on the socket.
    pub(crate) fn line(&self) -> String {
        match self {
            Self::Status => "status\n".into(),
            Self::Down => "down\n".into(),
            Self::Cutover => "cutover\n".into(),
            Self::Handover(vif) => format!("handover {vif}\n"),
            Self::HandBack(vif) => format!("handback {vif}\n"),
            Self::VifUp(vif) => format!("vifup {vif}\n"),
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The request was carried out; a status request gets the snapshot.
    Ok(Option<Box<Status>>),
    /// The request failed; the text says why.
    Error(String),
}

/// A running instance's state, as `vmtun status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// TUN device name.
    pub interface: String,
    /// This host's public key.
    pub public_key: String,
    /// UDP port.
    pub listen_port: u16,
    /// One entry per configured peer.
    pub peers: Vec<PeerStatus>,
    /// Datagrams dropped before they could be tied to a peer, by reason.
    pub drops: BTreeMap<String, u64>,
    /// What busy polling has cost and saved.
    pub busy_poll: BusyPollStatus,
    /// The move's state, when the config has `[migration]`.
    pub migration: Option<MigrationStatus>,
    /// What vmtun put back after other programs removed it.
    #[serde(default)]
    pub restore: Option<RestoreStatus>,
}

/// Busy polling in a [`Status`]: the operator's view of the CPU it spends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusyPollStatus {
    /// The configured window (0: off).
    pub window_us: u64,
    /// Wall time spent spinning so far, in milliseconds.
    pub spun_ms: f64,
    /// Spins that ended with traffic: wake-ups saved.
    pub caught: u64,
    /// Spins cut short by the CPU budget.
    pub over_budget: u64,
}

/// One peer in a [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its public key.
    pub public_key: String,
    /// Where its packets come from (configured or learned).
    pub endpoint: Option<String>,
    /// Its cryptokey routes.
    pub allowed_ips: Vec<String>,
    /// Seconds since the last completed handshake, if any.
    pub last_handshake_secs: Option<f64>,
    /// Bytes received (payload of authenticated messages).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets from or for this peer that were dropped, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// `  restored host changes: ...`: how often vmtun put back what other programs removed,
/// and the latest time; nothing while that never happened.
fn restore_lines(f: &mut fmt::Formatter<'_>, r: &RestoreStatus) -> fmt::Result {
    if let Some(last) = &r.last {
        writeln!(
            f,
            "  restored host changes: {} time(s) after another program removed them; \
             latest {:.1} ms after the removal: {}",
            r.restores,
            last.took_ns as f64 / 1e6,
            last.put_back.join("; ")
        )?;
    }
    for e in &r.failed {
        writeln!(f, "  could not restore: {e}")?;
    }
    Ok(())
}

fn drops_line(drops: &BTreeMap<String, u64>) -> String {
    let total: u64 = drops.values().sum();
    let parts: Vec<String> = drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        format!("{total}")
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "interface: {}", self.interface)?;
        writeln!(f, "  public key: {}", self.public_key)?;
        writeln!(f, "  listening port: {}", self.listen_port)?;
        writeln!(f, "  dropped (no peer): {}", drops_line(&self.drops))?;
        let b = &self.busy_poll;
        match b.window_us {
            0 => writeln!(f, "  busy polling: off")?,
            w => writeln!(
                f,
                "  busy polling: {w} us window; spun {:.1} ms, caught {} wake-ups, {} spins cut by the CPU budget",
                b.spun_ms, b.caught, b.over_budget
            )?,
        }
        if let Some(r) = &self.restore {
            restore_lines(f, r)?;
        }
        for p in &self.peers {
            writeln!(f, "\npeer: {}", p.public_key)?;
            writeln!(
                f,
                "  endpoint: {}",
                p.endpoint.as_deref().unwrap_or("(none yet)")
            )?;
            writeln!(f, "  allowed ips: {}", p.allowed_ips.join(", "))?;
            match p.last_handshake_secs {
                Some(s) => writeln!(f, "  latest handshake: {s:.1} s ago")?,
                None => writeln!(f, "  latest handshake: never")?,
            }
            writeln!(
                f,
                "  transfer: {} B received ({} packets), {} B sent ({} packets)",
                p.rx_bytes, p.rx_packets, p.tx_bytes, p.tx_packets
            )?;
            writeln!(f, "  dropped: {}", drops_line(&p.drops))?;
        }
        if let Some(m) = &self.migration {
            write!(f, "\n{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::Restore;

    fn status(restore: Option<RestoreStatus>) -> Status {
        Status {
            interface: "vmtun0".into(),
            public_key: "key".into(),
            listen_port: 51820,
            peers: Vec::new(),
            drops: BTreeMap::new(),
            busy_poll: BusyPollStatus {
                window_us: 0,
                spun_ms: 0.0,
                caught: 0,
                over_budget: 0,
            },
            migration: None,
            restore,
        }
    }

    #[test]
    fn restores_show_only_once_there_was_one() {
        let quiet = status(Some(RestoreStatus::default())).to_string();
        assert_eq!(quiet, status(None).to_string());
        assert_eq!(quiet.lines().count(), 5);
        let restored = status(Some(RestoreStatus {
            restores: 2,
            last: Some(Restore {
                at_unix_ns: 1,
                took_ns: 24_500_000,
                put_back: vec![
                    "ip rule add fwmark 0x1 lookup 201 priority 10000".into(),
                    "nft add table ip vmtun".into(),
                ],
            }),
            failed: vec!["adding nft table ip vmtun: File exists".into()],
        }));
        assert_eq!(
            restored.to_string().lines().skip(5).collect::<Vec<_>>(),
            [
                "  restored host changes: 2 time(s) after another program removed them; \
                 latest 24.5 ms after the removal: ip rule add fwmark 0x1 lookup 201 \
                 priority 10000; nft add table ip vmtun",
                "  could not restore: adding nft table ip vmtun: File exists",
            ]
        );
    }

    #[test]
    fn every_request_reads_back_as_itself_and_nothing_else_parses() {
        for request in [
            Request::Status,
            Request::Down,
            Request::Cutover,
            Request::Handover("vif0".into()),
            Request::HandBack("vnet12".into()),
            Request::VifUp("vif0".into()),
        ] {
            assert_eq!(Request::parse(&request.line()), Some(request));
        }
        for line in [
            "",
            "handover",
            "handover a b",
            "status now",
            "handback",
            "stop",
        ] {
            assert_eq!(Request::parse(line), None, "{line:?}");
        }
    }
}
