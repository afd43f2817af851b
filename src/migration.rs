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

use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{self, Config, CutoverMode, Role};
use crate::cutover::{CutoverStatus, Phase, Watcher};
use crate::netcfg::{self, NFT_SWITCHED_SET, NFT_TABLE};
use crate::switch_report::{Listener, Reporter};

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
    /// Role old: subnets the new host has reported switched by the provider (what VMs of
    /// theirs still here send goes through the tunnel).
    #[serde(default)]
    pub switched_subnets: Vec<IpAddr>,
}

/// The migration state of a running instance.
pub struct Migration {
    role: Role,
    subnets: Vec<IpNet>,
    watcher: Option<Watcher>,
    /// The watcher's last status, kept once it is stopped.
    finished: Option<CutoverStatus>,
    manual: Option<ManualCutover>,
    /// Role new: reports the cutover to the old host.
    reporter: Option<Reporter>,
    /// Role old: hears those reports. Held for its thread.
    _listener: Option<Listener>,
}

impl Migration {
    /// Starts what the role needs at run time: on role new, the reporter of the switch and,
    /// with `cutover = "auto"`, the watcher on the bridge; on role old, the listener for the
    /// new host's reports. Call after the host plan is applied (the mark rule and the tunnel
    /// address exist).
    pub fn start(m: &config::Migration, config: &Config) -> anyhow::Result<Self> {
        let here = config.interface.address.addr();
        let reporter = match m.role {
            Role::New => Some(Reporter::start(here, m.via)?),
            Role::Old => None,
        };
        let watcher = match (m.role, m.cutover, &reporter) {
            (Role::New, CutoverMode::Auto, Some(reporter)) => {
                let mut remover = netcfg::MarkRemover::prepare(NFT_TABLE)?;
                let report = reporter.sender();
                Some(Watcher::spawn(&m.bridge, m.subnets.clone(), move |d| {
                    let removal = remover.remove(&[d.subnet])?;
                    tracing::info!(
                        subnet = %d.subnet,
                        src = %d.src,
                        commit_us = removal.commit.as_micros() as u64,
                        "cutover: first native packet seen on the bridge; mark rule removed"
                    );
                    if let Some(report) = &report {
                        let _ = report.send(d.subnet);
                    }
                    Ok::<_, netcfg::NetError>(removal.gone_at)
                })?)
            }
            _ => None,
        };
        let listener = match m.role {
            Role::Old => {
                let subnets = m.subnets.iter().map(IpNet::trunc).collect();
                Some(Listener::start(
                    &config.interface.name,
                    here,
                    m.via,
                    subnets,
                    |net| match netcfg::add_subnet_to_set(NFT_TABLE, NFT_SWITCHED_SET, net) {
                        Ok(()) => tracing::info!(
                            subnet = %net,
                            "the new host reports the provider's switch: what VMs still here \
                             send from this subnet now goes through the tunnel"
                        ),
                        Err(e) => tracing::warn!("switch of {net} reported, but: {e}"),
                    },
                )?)
            }
            Role::New => None,
        };
        Ok(Self {
            role: m.role,
            subnets: m.subnets.clone(),
            watcher,
            finished: None,
            manual: None,
            reporter,
            _listener: listener,
        })
    }

    /// `vmtun cutover`: stops the watcher and removes every mark rule now.
    pub fn cutover_now(&mut self) -> anyhow::Result<&ManualCutover> {
        if self.role != Role::New {
            anyhow::bail!("cutover is for the new host (role new); this host is role old");
        }
        if let Some(w) = self.watcher.take() {
            self.finished = Some(w.stop());
        }
        let removal = netcfg::remove_mark_rule(NFT_TABLE, &self.subnets)?;
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
        Ok(self.manual.insert(ManualCutover {
            at: SystemTime::now(),
            removed: removal.removed,
            commit_ns: u64::try_from(removal.commit.as_nanos()).unwrap_or(u64::MAX),
        }))
    }

    /// The snapshot for `status`.
    pub fn status(&self) -> MigrationStatus {
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
            switched_subnets,
        }
    }
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
        match &self.cutover {
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
