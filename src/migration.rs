//! The running side of the move on one host: the cutover watcher (role new), manual
//! cutover, and what `status` reports about the migration. The host changes themselves
//! (routes, rule, nftables) are planned and undone by `netcfg`; this module only finalizes
//! the cutover and observes it.
//!
//! The cutover happens twice, on purpose: the kernel flips by itself on the first native
//! packet (netcfg's `native` set, so even that packet's reply leaves natively), and the
//! watcher then removes the mark rule in one atomic netlink transaction and records when.
//! Then the new host reports the switch to the old host ([`crate::switch_report`]), where
//! VMs that have not moved yet must now send through the tunnel too.
//!
//! Both act only on packets from the provider: at start, role new learns the MACs of the
//! uplink gateways (`learn_gateways`, the rules in `crate::cutover`'s module doc), puts
//! them in the kernel's `gateways` set and hands the same list to the watcher. Without a
//! gateway MAC nothing can trigger the cutover: the watcher is reported failed (`vmtun
//! cutover` by hand) and the tunnel runs on.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{self, Config, CutoverMode, Gateway, HandoverMode, Role};
use crate::cutover::{CutoverStatus, MacAddr, Phase, Uplink, Watcher, index_of};
use crate::handover::{Announcer, Handover, NewHost, OldHost};
use crate::netcfg::{self, Family, NFT_SWITCHED_SET, NFT_TABLE, SharedJournal};
use crate::switch_report::{Listener, OnPaused, Reporter};

/// How long `vmtun up` waits for the kernel to resolve a gateway's MAC it does not know yet.
const GATEWAY_RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// A manual cutover (`vmtun cutover`), for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualCutover {
    /// When the mark rules were removed.
    #[serde(with = "crate::cutover::record::unix_nanos")]
    pub at: SystemTime,
    /// Subnets whose mark rule this removed (empty if the watcher had already done it).
    pub removed: Vec<IpNet>,
    /// How long the netlink commit took, in nanoseconds.
    pub commit_ns: u64,
}

/// What `status` shows of the migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// `old` or `new`.
    pub role: Role,
    /// The VMs' subnets.
    pub subnets: Vec<IpNet>,
    /// Role new, automatic cutover: the watcher's state and records.
    pub cutover: Option<CutoverStatus>,
    /// Role new: the last manual cutover, if any.
    pub manual_cutover: Option<ManualCutover>,
    /// Role new: subnets the kernel has already seen arrive natively (their replies leave
    /// natively even before the mark rule is removed).
    pub native_subnets: Vec<IpAddr>,
    /// Role new: subnets that had cut over before this instance started (the journal
    /// remembers them): no mark rule, no watching.
    #[serde(default)]
    pub cut_over_before: Vec<IpNet>,
    /// Role old: subnets the new host has reported switched by the provider (what VMs of
    /// theirs still here send goes through the tunnel).
    #[serde(default)]
    pub switched_subnets: Vec<IpAddr>,
    /// Role old: VM interfaces here whose VM the new host reported running there (their
    /// routes are off them: `crate::handover`).
    #[serde(default)]
    pub handed_over: Vec<String>,
}

/// The migration state of a running instance.
pub struct Migration {
    role: Role,
    subnets: Vec<IpNet>,
    watcher: Option<Watcher>,
    /// The watcher's last status, kept once it is stopped.
    finished: Option<CutoverStatus>,
    manual: Option<ManualCutover>,
    /// Records each cutover, so that neither a restore nor a restart undoes it.
    journal: SharedJournal,
    cut_over_before: Vec<IpNet>,
    /// Role new: reports the cutover to the old host.
    reporter: Option<Reporter>,
    /// Role old: hears those reports. Held for its thread.
    _listener: Option<Listener>,
    /// The VM handover, for the VM interface watcher.
    handover: Option<Handover>,
}

impl Migration {
    /// Starts what the role needs at run time: on role new, the reporter of the switch
    /// (which reports at once the subnets that cut over before), the uplink gateways' MACs
    /// in the kernel's set and, with `cutover = "auto"`, the watcher on the native
    /// interfaces for the subnets that have not cut over yet; on role old, the listener for
    /// the new host's reports. Call after the host plan is applied (the mark rules and the
    /// tunnel address exist); each cutover is recorded in `journal`.
    pub fn start(
        m: &config::Migration,
        config: &Config,
        journal: &SharedJournal,
    ) -> anyhow::Result<Self> {
        let here = config.interface.address.addr();
        let remembered = journal.lock().cut_over().to_vec();
        let (cut_over_before, waiting): (Vec<IpNet>, Vec<IpNet>) = (m.subnets.iter())
            .partition(|s| m.role == Role::New && remembered.contains(&s.trunc()));
        let handover_on = m.handover == HandoverMode::FirstFrame && !config.vms.is_empty();
        let on_paused = OnPaused::default();
        let reporter = match m.role {
            Role::New => Some(Reporter::start(
                &config.interface.name,
                here,
                m.via,
                handover_on.then(|| Announcer::new(&config.vms)),
                on_paused.clone(),
            )?),
            Role::Old => None,
        };
        let handover = match (m.role, &reporter) {
            (Role::New, Some(reporter)) if handover_on => (reporter.sender()).map(|sender| {
                Handover::New(Arc::new(NewHost::new(
                    sender,
                    Arc::new(config.clone()),
                    journal.clone(),
                )))
            }),
            (Role::Old, _) if !config.vms.is_empty() => {
                Some(Handover::Old(Arc::new(OldHost::new(
                    Arc::new(config.clone()),
                    handover_on,
                    crate::control::Paths::of(config)?.handover_memory,
                )?)))
            }
            _ => None,
        };
        if let Some(new_host) = new_host_of(&handover) {
            let _ = on_paused.set(Box::new(move |addresses| new_host.paused_there(addresses)));
        }
        if let Some(reporter) = &reporter {
            for net in &cut_over_before {
                reporter.report(net.trunc());
            }
        }
        let mut finished = None;
        let gateways = match m.role {
            Role::New if !waiting.is_empty() => match learn_gateways(m) {
                Ok(macs) => {
                    let raw: Vec<[u8; 6]> = macs.iter().map(|mac| mac.0).collect();
                    let elements = netcfg::gateway_elements(&Family::all_of(&m.subnets), &raw);
                    let mut ops = netcfg::SystemOps::new()?;
                    journal.lock().apply(&mut ops, &elements)?;
                    macs
                }
                Err(error) => {
                    tracing::error!("{error}");
                    finished = Some(CutoverStatus {
                        phase: Phase::Failed { error },
                        records: Vec::new(),
                        waiting: waiting.iter().map(IpNet::trunc).collect(),
                    });
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        let watcher = match (m.role, m.cutover, &reporter) {
            (Role::New, CutoverMode::Auto, Some(reporter)) if !gateways.is_empty() => {
                let mut remover = netcfg::MarkRemover::prepare(NFT_TABLE)?;
                let journal = journal.clone();
                let report = reporter.sender();
                let uplink = Uplink {
                    interfaces: m.native_ifaces(),
                    gateways,
                };
                let hold = m.cutover_hold;
                let new_host = new_host_of(&handover);
                Some(Watcher::spawn(&uplink, waiting, move |d| {
                    if !hold.is_zero() {
                        tracing::info!(
                            subnet = %d.subnet,
                            hold_ms = hold.as_millis() as u64,
                            "cutover: first native packet; replies keep going through the old host for the hold"
                        );
                        std::thread::sleep(hold);
                    }
                    let removal = journal
                        .lock()
                        .record_cutover(&[d.subnet], || remover.remove(&[d.subnet]))?;
                    tracing::info!(
                        subnet = %d.subnet,
                        src = %d.src,
                        commit_us = removal.commit.as_micros() as u64,
                        "cutover: first native packet seen on the bridge; mark rule removed"
                    );
                    if let Some(report) = &report {
                        report.switched(d.subnet);
                    }
                    if let Some(new_host) = &new_host {
                        new_host.cut_over(d.subnet);
                    }
                    Ok::<_, netcfg::NetError>(removal.gone_at)
                })?)
            }
            _ => None,
        };
        let listener = match m.role {
            Role::Old => {
                let old = match &handover {
                    Some(Handover::Old(old)) => Some(old.clone()),
                    _ => None,
                };
                let listener = Listener::start(
                    &config.interface.name,
                    here,
                    m.via,
                    m.subnets.iter().map(IpNet::trunc).collect(),
                    |net| netcfg::add_subnet_to_set(NFT_TABLE, NFT_SWITCHED_SET, net),
                    {
                        let old = old.clone();
                        move |report| old.as_ref().and_then(|old| old.handle_report(report))
                    },
                )?;
                if let Some(old) = &old {
                    old.tell_the_new_host(listener.to_peer());
                }
                Some(listener)
            }
            Role::New => None,
        };
        Ok(Self {
            role: m.role,
            subnets: m.subnets.clone(),
            watcher,
            finished: finished.filter(|_| m.cutover == CutoverMode::Auto),
            manual: None,
            journal: journal.clone(),
            cut_over_before,
            reporter,
            _listener: listener,
            handover,
        })
    }

    /// The VM handover (role new: watching the VM interfaces; role old: acting on the
    /// reports), for the VM interface watcher; `None` when there is none to run.
    pub fn handover(&self) -> Option<Handover> {
        self.handover.clone()
    }

    /// `vmtun cutover`: stops the watcher and removes every mark rule now.
    pub fn cutover_now(&mut self) -> anyhow::Result<&ManualCutover> {
        if self.role != Role::New {
            anyhow::bail!("cutover is for the new host (role new); this host is role old");
        }
        if let Some(w) = self.watcher.take() {
            self.finished = Some(w.stop());
        }
        let removal = (self.journal.lock()).record_cutover(&self.subnets, || {
            netcfg::remove_mark_rule(NFT_TABLE, &self.subnets)
        })?;
        tracing::info!(
            removed = ?removal.removed,
            commit_us = removal.commit.as_micros() as u64,
            "manual cutover: mark rules removed"
        );
        if let Some(reporter) = &self.reporter {
            for net in &self.subnets {
                reporter.report(net.trunc());
            }
        }
        if let Some(new_host) = new_host_of(&self.handover) {
            for net in &self.subnets {
                new_host.cut_over(net.trunc());
            }
        }
        Ok(self.manual.insert(ManualCutover {
            at: SystemTime::now(),
            removed: removal.removed,
            commit_ns: u64::try_from(removal.commit.as_nanos()).unwrap_or(u64::MAX),
        }))
    }

    /// The snapshot for `status`.
    pub fn status(&self) -> MigrationStatus {
        let handed_over = match &self.handover {
            Some(Handover::Old(old)) => old.given_away(),
            _ => Vec::new(),
        };
        let (native_subnets, switched_subnets) = match self.role {
            Role::New => (
                netcfg::native_subnets(NFT_TABLE).unwrap_or_default(),
                Vec::new(),
            ),
            Role::Old => (
                Vec::new(),
                netcfg::switched_subnets(NFT_TABLE).unwrap_or_default(),
            ),
        };
        MigrationStatus {
            role: self.role,
            subnets: self.subnets.clone(),
            cutover: self
                .watcher
                .as_ref()
                .map(Watcher::status)
                .or_else(|| self.finished.clone()),
            manual_cutover: self.manual.clone(),
            native_subnets,
            cut_over_before: self.cut_over_before.clone(),
            switched_subnets,
            handed_over,
        }
    }
}

/// The new host's handover, to tell of a cutover.
fn new_host_of(handover: &Option<Handover>) -> Option<Arc<NewHost>> {
    match handover {
        Some(Handover::New(host)) => Some(host.clone()),
        _ => None,
    }
}

/// The MACs of the uplink gateways (see `crate::cutover`'s module doc for the rules): those
/// `[migration] gateways` names, or, when it is empty, the gateways of the host's default
/// routes through the native interfaces, each resolved in the neighbour table (waiting up to
/// [`GATEWAY_RESOLVE_WAIT`] for one the kernel does not know yet). Gateways that do not
/// resolve are logged; an error (one line, for the operator) when no MAC at all is known.
fn learn_gateways(m: &config::Migration) -> Result<Vec<MacAddr>, String> {
    let ifaces = m.native_ifaces();
    let ifindexes: Vec<u32> = ifaces.iter().filter_map(|i| index_of(i)).collect();
    let mut macs: Vec<MacAddr> = Vec::new();
    let mut addresses: Vec<(IpAddr, u32)> = Vec::new();
    let first = ifindexes.first().copied().unwrap_or(0);
    for gateway in &m.gateways {
        match *gateway {
            Gateway::Mac(mac) => macs.push(mac),
            Gateway::Address(addr) => addresses.push((addr, first)),
        }
    }
    let on = ifaces.join(", ");
    if m.gateways.is_empty() {
        addresses = netcfg::default_gateways(&ifindexes).map_err(|e| {
            format!("cutover: reading the default routes: {e}; run `vmtun cutover` at the switch")
        })?;
        if addresses.is_empty() {
            return Err(format!(
                "cutover: no default route through {on} names the uplink gateway, so nothing may trigger the cutover: set [migration] gateways, or run `vmtun cutover` at the switch"
            ));
        }
    }
    let resolved = netcfg::resolve_gateway_macs(&addresses, &ifindexes, GATEWAY_RESOLVE_WAIT)
        .map_err(|e| {
            format!("cutover: reading the neighbour table: {e}; run `vmtun cutover` at the switch")
        })?;
    let mut unresolved = Vec::new();
    for (addr, mac) in resolved {
        match mac {
            Some(mac) => {
                tracing::info!(gateway = %addr, mac = %MacAddr(mac), "uplink gateway");
                macs.push(MacAddr(mac));
            }
            None => unresolved.push(addr.to_string()),
        }
    }
    if !unresolved.is_empty() {
        tracing::warn!(
            "cutover: the uplink gateway {} has no MAC in the neighbour table on {on} after {} s: its packets will not trigger the cutover; give its MAC in [migration] gateways",
            unresolved.join(", "),
            GATEWAY_RESOLVE_WAIT.as_secs()
        );
    }
    macs.sort();
    macs.dedup();
    if macs.is_empty() {
        return Err(format!(
            "cutover: the uplink gateway {} has no MAC in the neighbour table on {on}, so nothing may trigger the cutover: give its MAC in [migration] gateways, or run `vmtun cutover` at the switch",
            unresolved.join(", ")
        ));
    }
    Ok(macs)
}

impl std::fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.role {
            Role::Old => "old (the subnets go through the tunnel once a VM has left)",
            Role::New => "new (VM replies leave through the old host until cutover)",
        };
        fn list(nets: &[impl std::fmt::Display]) -> String {
            nets.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
        writeln!(f, "migration: role {role}")?;
        writeln!(f, "  subnets: {}", list(&self.subnets))?;
        if self.role == Role::Old {
            let switched: Vec<String> = (self.switched_subnets.iter())
                .map(|a| a.to_string())
                .collect();
            if !self.handed_over.is_empty() {
                writeln!(
                    f,
                    "  running on the new host (routes to their interface here removed): {}",
                    self.handed_over.join(", ")
                )?;
            }
            return writeln!(
                f,
                "  switched by the provider (reported by the new host): {}",
                if switched.is_empty() {
                    "none yet".into()
                } else {
                    switched.join(", ")
                }
            );
        }
        let native: Vec<String> = self.native_subnets.iter().map(|a| a.to_string()).collect();
        writeln!(
            f,
            "  arrived natively (kernel flip): {}",
            if native.is_empty() {
                "none yet".into()
            } else {
                native.join(", ")
            }
        )?;
        if !self.cut_over_before.is_empty() {
            writeln!(
                f,
                "  cut over before this instance started: {} (remembered: no mark rule)",
                list(&self.cut_over_before)
            )?;
        }
        match &self.cutover {
            None if (self.subnets.iter()).all(|s| self.cut_over_before.contains(&s.trunc())) => {
                writeln!(
                    f,
                    "  cutover watcher: not needed (every subnet has cut over)"
                )?
            }
            Some(c) => {
                match &c.phase {
                    Phase::Watching => writeln!(
                        f,
                        "  cutover watcher: watching, waiting for {}",
                        list(&c.waiting)
                    )?,
                    Phase::Done => writeln!(f, "  cutover watcher: done")?,
                    Phase::Stopped => writeln!(f, "  cutover watcher: stopped")?,
                    Phase::Failed { error } => {
                        writeln!(f, "  cutover watcher: FAILED ({error}); run vmtun cutover")?
                    }
                }
                for r in &c.records {
                    writeln!(
                        f,
                        "  cutover {}: first native packet from {} to {}; mark rule gone {:.3} ms later{}",
                        r.subnet,
                        r.src,
                        r.dst,
                        r.latency.as_secs_f64() * 1e3,
                        r.error
                            .as_deref()
                            .map(|e| format!(" (error: {e})"))
                            .unwrap_or_default()
                    )?;
                }
            }
            None => writeln!(f, "  cutover watcher: off (cutover = \"manual\")")?,
        }
        if let Some(m) = &self.manual_cutover {
            writeln!(
                f,
                "  manual cutover: removed the mark rule of {} (commit {} µs)",
                list(&m.removed),
                m.commit_ns / 1000
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_old_status_names_the_vms_handed_over_to_the_new_host() {
        let mut s = MigrationStatus {
            role: Role::Old,
            subnets: vec!["203.0.113.0/29".parse().unwrap()],
            cutover: None,
            manual_cutover: None,
            native_subnets: Vec::new(),
            cut_over_before: Vec::new(),
            switched_subnets: Vec::new(),
            handed_over: Vec::new(),
        };
        assert!(!s.to_string().contains("running on the new host"), "{s}");
        s.handed_over = vec!["vif0".into(), "vif3".into()];
        assert_eq!(
            s.to_string(),
            "migration: role old (the subnets go through the tunnel once a VM has left)
  subnets: 203.0.113.0/29
  running on the new host (routes to their interface here removed): vif0, vif3
  switched by the provider (reported by the new host): none yet
"
        );
        // A status from a vmtun without the handover reads as none handed over.
        let mut json = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("handed_over");
        let read: MigrationStatus = serde_json::from_value(json).unwrap();
        assert!(read.handed_over.is_empty());
    }

    #[test]
    fn status_after_a_restart_names_the_subnets_that_cut_over_before() {
        let net: IpNet = "203.0.113.0/29".parse().unwrap();
        let mut s = MigrationStatus {
            role: Role::New,
            subnets: vec![net],
            cutover: None,
            manual_cutover: None,
            native_subnets: vec!["203.0.113.0".parse().unwrap()],
            cut_over_before: vec![net],
            switched_subnets: Vec::new(),
            handed_over: Vec::new(),
        };
        assert_eq!(
            s.to_string(),
            "migration: role new (VM replies leave through the old host until cutover)
  subnets: 203.0.113.0/29
  arrived natively (kernel flip): 203.0.113.0
  cut over before this instance started: 203.0.113.0/29 (remembered: no mark rule)
  cutover watcher: not needed (every subnet has cut over)
"
        );
        // With a subnet still to come and `cutover = "manual"`, the watcher is off.
        s.subnets.push("198.51.100.0/29".parse().unwrap());
        assert!(
            s.to_string()
                .ends_with("  cutover watcher: off (cutover = \"manual\")\n"),
            "{s}"
        );
        // A status from a vmtun that did not know restarts reads as none.
        let json = serde_json::to_value(&s).unwrap();
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("cut_over_before");
        let read: MigrationStatus = serde_json::from_value(old).unwrap();
        assert!(read.cut_over_before.is_empty());
    }
}
