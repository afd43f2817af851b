//! The journal: applies a plan in order, records every change it made in a state file, and
//! undoes exactly those changes, in reverse order. A plan that fails halfway is rolled back
//! before the error is returned, so nothing is left half-applied.
//!
//! The state file (`<instance>.json` in the directory of the instance's network namespace,
//! `/run/vmtun/net-<inode>/`; `/run` is emptied at boot, as are the changes it records) lets `vmtun down` clean up after an instance that was killed.
//! A change is written to it *before* it is made, with the values it overwrites: killed in
//! between, the record names a change that may not be on the host, which undo takes as
//! already gone, rather than a change on the host that nobody remembers.
//!
//! The record is what vmtun has on the host now: when a subnet cuts over, its mark rule
//! leaves the record and its cutover set element joins it ([`super::after_cutover`]), so
//! [`Journal::restore`], which puts back what another program removed, never turns the
//! tunnel path back on. Which subnets have cut over is also kept beside the state file, in
//! `<instance>.cutover.json`, which outlives the instance: a restarted `up` plans from it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::after_cutover::after_cutover;
use super::change::{Change, Route};
use super::error::NetError;
use super::ops::NetOps;

/// Where state files go unless the caller says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/vmtun";

/// Version of the state file format, bumped on incompatible changes.
const STATE_VERSION: u32 = 1;

/// What a state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The instance name the file is named after.
    pub instance: String,
    /// Process id of the instance that made the changes (so `down` can tell a live instance
    /// from a dead one).
    pub pid: u32,
    /// Changes in the order they were applied, with captured previous values.
    pub changes: Vec<Change>,
}

/// What the cutover memory file (`<instance>.cutover.json`) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Memory {
    /// The subnets that have cut over on this host, in the order they did.
    cut_over: Vec<IpNet>,
}

/// What an undo did with the changes on record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Undone {
    /// Reverted: they were in place, and are not any more.
    pub reverted: usize,
    /// Already gone from this namespace (the TUN device took its routes along, the cutover
    /// removed the mark rule, or they were never here): nothing to do for them.
    pub gone: usize,
}

/// What [`Journal::restore`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// The changes that were missing and are back, in the order they were put back.
    pub put_back: Vec<Change>,
    /// What could not be checked or put back.
    pub failed: Vec<NetError>,
}

/// Records and undoes the host changes of one vmtun instance.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    memory_path: PathBuf,
    state: State,
    cut_over: Vec<IpNet>,
}

impl Journal {
    /// Starts a journal for `instance` in `dir` (created if missing) and writes its empty
    /// state file. Fails if a state file is already there: another instance is running, or
    /// one died without cleaning up and `vmtun down` should run first. The subnets a
    /// previous instance saw cut over are read back ([`Journal::cut_over`]).
    pub fn create(dir: &Path, instance: &str) -> Result<Journal, NetError> {
        let path = state_path(dir, instance);
        fs::create_dir_all(dir).map_err(|e| state_err(dir, format!("creating directory: {e}")))?;
        if path.exists() {
            return Err(state_err(
                &path,
                "already exists: an instance is running, or one died without cleaning up \
                 (run `vmtun down` to undo its changes)"
                    .into(),
            ));
        }
        let j = Journal {
            path,
            memory_path: memory_path(dir, instance),
            state: State {
                version: STATE_VERSION,
                instance: instance.into(),
                pid: std::process::id(),
                changes: Vec::new(),
            },
            cut_over: remembered_cutover(dir, instance)?,
        };
        j.persist()?;
        Ok(j)
    }

    /// Loads the state file left at `path` (by a killed instance), to undo it.
    pub fn load(path: &Path) -> Result<Journal, NetError> {
        let text = fs::read_to_string(path).map_err(|e| state_err(path, e.to_string()))?;
        let state: State =
            serde_json::from_str(&text).map_err(|e| state_err(path, format!("not valid: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(state_err(
                path,
                format!(
                    "format version {} (this vmtun reads {STATE_VERSION})",
                    state.version
                ),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Journal {
            path: path.into(),
            memory_path: memory_path(dir, &state.instance),
            cut_over: remembered_cutover(dir, &state.instance)?,
            state,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded state: what is currently applied.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The subnets that have cut over on this host, by this instance or one before it.
    pub fn cut_over(&self) -> &[IpNet] {
        &self.cut_over
    }

    /// Applies `plan` in order, recording each change (with what it overwrites) before
    /// making it. On the first failure, the changes this call made are reverted (newest
    /// first) and the error names the change that failed. Changes recorded by earlier calls
    /// stay.
    pub fn apply(&mut self, ops: &mut dyn NetOps, plan: &[Change]) -> Result<(), NetError> {
        let start = self.state.changes.len();
        for c in plan {
            if let Err(failure) = self.apply_one(ops, c) {
                return Err(self.roll_back(ops, start, failure));
            }
        }
        Ok(())
    }

    /// Records `c` and makes it. A change that fails is taken off the record again: it may
    /// have failed because its object was someone else's (`File exists`).
    fn apply_one(&mut self, ops: &mut dyn NetOps, c: &Change) -> Result<(), NetError> {
        let c = ops.capture(c)?;
        self.state.changes.push(c);
        let made = self
            .persist()
            .and_then(|()| match self.state.changes.last() {
                Some(c) => ops.apply(c),
                None => unreachable!("pushed just above"),
            });
        if made.is_err() {
            self.state.changes.pop();
            // Best effort: the record names a change that is not made, which undo takes.
            let _ = self.persist();
        }
        made
    }

    /// Reverts the changes recorded from index `start` on, newest first.
    fn roll_back(&mut self, ops: &mut dyn NetOps, start: usize, error: NetError) -> NetError {
        let made = self.state.changes.split_off(start);
        let (kept, leftovers, _) = revert_all(ops, made);
        self.state.changes.extend(kept);
        // Best effort: the error below already says what is left.
        let _ = self.persist();
        if leftovers.is_empty() {
            error
        } else {
            NetError::RollbackFailed {
                error: Box::new(error),
                leftovers,
            }
        }
    }

    /// Records that `subnets` cut over, around `remove`, which takes their mark rules off
    /// the host: the record drops the rules before `remove` runs (so a restore in between
    /// cannot put them back; the caller holds the journal) and gets them back if it fails.
    /// Afterwards the state file and the cutover memory are written; failing that is
    /// logged, since the cutover itself happened.
    pub fn record_cutover<T, E>(
        &mut self,
        subnets: &[IpNet],
        remove: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let before = std::mem::take(&mut self.state.changes);
        self.state.changes = after_cutover(&before, subnets);
        let removed = remove();
        if removed.is_err() {
            self.state.changes = before;
            return removed;
        }
        for s in subnets {
            if !self.cut_over.contains(&s.trunc()) {
                self.cut_over.push(s.trunc());
            }
        }
        if let Err(e) = self.persist().and_then(|()| self.persist_memory()) {
            tracing::warn!("the cutover of {subnets:?} happened, but recording it failed: {e}");
        }
        removed
    }

    /// Puts back, in the order they were first applied, the recorded changes that are no
    /// longer in place (another program flushed the ruleset, deleted a rule, reset a
    /// sysctl). The record is unchanged: it already says what should be there.
    pub fn restore(&self, ops: &mut dyn NetOps) -> Restored {
        let mut done = Restored::default();
        for c in &self.state.changes {
            match ops.is_in_place(c) {
                Ok(true) => {}
                Ok(false) => match ops.apply(c) {
                    Ok(()) => done.put_back.push(c.clone()),
                    Err(e) => done.failed.push(e),
                },
                Err(e) => done.failed.push(e),
            }
        }
        done
    }

    /// Undoes every recorded change, newest first. Objects already gone (routes that went
    /// with the TUN device, the mark rule the cutover removed) count as undone, and are
    /// counted apart, so that nobody claims to have cleaned what was not there. On success
    /// the state file is removed; otherwise it keeps what is still in place. The cutover
    /// memory stays.
    pub fn undo_all(&mut self, ops: &mut dyn NetOps) -> Result<Undone, NetError> {
        let made = std::mem::take(&mut self.state.changes);
        let (kept, failures, undone) = revert_all(ops, made);
        self.state.changes = kept;
        if failures.is_empty() {
            match fs::remove_file(&self.path) {
                Ok(()) => Ok(undone),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(undone),
                Err(e) => Err(state_err(&self.path, format!("removing: {e}"))),
            }
        } else {
            self.persist()?;
            Err(NetError::Undo(failures))
        }
    }

    /// Whether any route, policy rule or nft rule on record is in place in the caller's
    /// network namespace: how a state file that does not say which namespace it is for (one
    /// from before the files were keyed by namespace) is recognised where it was made.
    /// Sysctls and addresses do not count: a namespace with a `br0` of its own or the same
    /// values would pass for another.
    pub fn is_in_this_namespace(&self, ops: &mut dyn NetOps) -> bool {
        self.state
            .changes
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Change::Route(_) | Change::Rule(_) | Change::NftRule { .. }
                )
            })
            .any(|c| ops.is_in_place(c).unwrap_or(false))
    }

    /// Writes the state atomically (temporary file, then rename), so a killed process never
    /// leaves a truncated record. No fsync: the changes recorded do not survive a reboot
    /// either, and `/run` is usually a tmpfs.
    fn persist(&self) -> Result<(), NetError> {
        write_json(&self.path, &self.state)
    }

    fn persist_memory(&self) -> Result<(), NetError> {
        let memory = Memory {
            cut_over: self.cut_over.clone(),
        };
        write_json(&self.memory_path, &memory)
    }
}

/// A running instance's journal, shared by the threads that change what it records: the
/// cutover watcher ([`Journal::record_cutover`]), the restore monitor ([`Journal::restore`])
/// and the exit ([`Journal::undo_all`]). Holding the lock, each sees the others' work whole.
#[derive(Debug, Clone)]
pub struct SharedJournal(Arc<Mutex<Journal>>);

impl SharedJournal {
    /// Shares `journal`.
    pub fn new(journal: Journal) -> Self {
        Self(Arc::new(Mutex::new(journal)))
    }

    /// The journal, exclusively until the guard drops.
    pub fn lock(&self) -> MutexGuard<'_, Journal> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `<instance>.json` in `dir`: the state file of `instance`.
pub fn state_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.json"))
}

/// `<instance>.cutover.json` in `dir`: the cutover memory of `instance`.
pub fn memory_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.cutover.json"))
}

/// The subnets that have cut over on this host for `instance`, as an earlier instance
/// recorded them in `dir` (none without a record). For `up` and `up --dry-run`.
pub fn remembered_cutover(dir: &Path, instance: &str) -> Result<Vec<IpNet>, NetError> {
    let path = memory_path(dir, instance);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<Memory>(&text)
            .map(|m| m.cut_over)
            .map_err(|e| {
                state_err(
                    &path,
                    format!("not valid: {e} (remove it to forget the cutover)"),
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(state_err(&path, e.to_string())),
    }
}

/// Writes `value` as JSON to `path` atomically (temporary file, then rename).
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), NetError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| state_err(path, format!("encoding: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| state_err(path, format!("writing: {e}")))
}

/// Reverts `made` newest first; returns the changes still in place (in applied order), the
/// failures, and how many were reverted or gone already. "Already gone" is success.
fn revert_all(ops: &mut dyn NetOps, made: Vec<Change>) -> (Vec<Change>, Vec<NetError>, Undone) {
    let mut kept = Vec::new();
    let mut failures = Vec::new();
    let mut undone = Undone::default();
    for c in made.into_iter().rev() {
        match ops.revert(&c) {
            Ok(()) if c.undoes_nothing() => undone.gone += 1,
            Ok(()) => undone.reverted += 1,
            Err(e) if e.is_gone() => undone.gone += 1,
            Err(e) => {
                failures.push(e);
                kept.push(c);
            }
        }
    }
    kept.reverse();
    (kept, failures, undone)
}

/// Undoes what a dead instance left in the state file at `path` (for `vmtun down`), and
/// removes the file when everything is undone.
pub fn undo_state_file(ops: &mut dyn NetOps, path: &Path) -> Result<Undone, NetError> {
    Journal::load(path)?.undo_all(ops)
}

/// Applies changes that outlive vmtun (the [`super::vif_up`] plan) without journaling them.
/// Idempotent: an object that already exists is fine, so libvirt may call it repeatedly.
pub fn apply_idempotent(ops: &mut dyn NetOps, plan: &[Change]) -> Result<(), NetError> {
    for c in plan {
        match ops.apply(c) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes routes that outlive vmtun (those of the [`super::vif_up`] plan, when a VM's
/// traffic is handed to the tunnel) without journaling, whoever added them
/// ([`NetOps::remove_route`]). Idempotent: a route already gone is fine.
pub fn remove_routes(ops: &mut dyn NetOps, routes: &[Route]) -> Result<(), NetError> {
    for r in routes {
        match ops.remove_route(r) {
            Ok(()) => {}
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn state_err(path: &Path, detail: String) -> NetError {
    NetError::StateFile {
        path: path.into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::fake::{Call, FakeOps};
    use crate::netcfg::fixtures::{new_role, tunnel};
    use crate::netcfg::plan::plan;

    fn full_plan() -> Vec<Change> {
        plan(&tunnel(), Some(&new_role()))
    }

    /// Where the plan has the mark's policy rule (`fwmark 0x1 lookup 201`).
    fn mark_rule_at(p: &[Change]) -> usize {
        p.iter()
            .position(|c| matches!(c, Change::Rule(r) if r.fwmark.is_some() && r.table == Some(crate::netcfg::TableId(201))))
            .expect("the plan has the mark rule")
    }

    fn host() -> FakeOps {
        let mut f = FakeOps::with_interface("vmtun0", true);
        f.add_interface("br0");
        f
    }

    /// A unique, empty state directory under the system's temporary directory.
    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netcfg-journal-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn applied(calls: &[Call]) -> Vec<Change> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Apply(c) => Some(c.clone()),
                Call::Revert(_) => None,
            })
            .collect()
    }

    fn reverted(calls: &[Call]) -> Vec<Change> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Revert(c) => Some(c.clone()),
                Call::Apply(_) => None,
            })
            .collect()
    }

    #[test]
    fn apply_then_undo_restores_the_host_in_reverse_order() {
        let d = dir("undo");
        let mut ops = host();
        let pristine = ops.clone();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &full_plan()).unwrap();
        assert_eq!(ops.mtus["vmtun0"], 1420);
        assert_eq!(ops.sysctls["net/ipv4/conf/br0/rp_filter"], "2");
        let recorded = j.state().changes.clone();
        assert_eq!(recorded.len(), full_plan().len());
        // Captured values are recorded, so undo can restore them.
        assert!(recorded.contains(&Change::Mtu {
            dev: "vmtun0".into(),
            mtu: 1420,
            previous: Some(1500)
        }));

        j.undo_all(&mut ops).unwrap();
        let mut reverse = recorded;
        reverse.reverse();
        assert_eq!(reverted(&ops.calls), reverse);
        assert_eq!(ops.present, pristine.present);
        assert_eq!(ops.sysctls, pristine.sysctls);
        assert_eq!(ops.mtus, pristine.mtus);
        assert_eq!(ops.up, pristine.up);
        assert!(!j.path().exists(), "state file removed after a full undo");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn failure_mid_plan_reverts_what_was_applied_and_names_the_change() {
        let d = dir("rollback");
        let p = full_plan();
        let mut ops = host();
        let pristine = ops.clone();
        // The mark's policy rule fails.
        let at = mark_rule_at(&p);
        ops.fail_apply.push((p[at].clone(), libc::EEXIST));
        let mut j = Journal::create(&d, "i").unwrap();
        let err = j.apply(&mut ops, &p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an ip rule `fwmark 0x1 lookup 201 priority 10000` already exists (not vmtun's): \
             remove it with `ip rule del fwmark 0x1 lookup 201 priority 10000`, or set \
             migration.fwmark to a mark no other rule uses"
        );
        assert_eq!(applied(&ops.calls).len(), at + 1);
        assert_eq!(
            reverted(&ops.calls).len(),
            at,
            "the failed change is not reverted"
        );
        assert_eq!(ops.present, pristine.present);
        assert_eq!(ops.mtus, pristine.mtus);
        assert_eq!(ops.up, pristine.up);
        assert!(j.state().changes.is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_rollback_is_reported_and_kept_for_later() {
        let d = dir("leftover");
        let p = full_plan();
        let mut ops = host();
        ops.fail_apply
            .push((p[mark_rule_at(&p)].clone(), libc::EEXIST));
        // The route (p[3]) cannot be removed during rollback.
        ops.fail_revert.push((p[3].clone(), libc::EBUSY));
        let mut j = Journal::create(&d, "i").unwrap();
        let err = j.apply(&mut ops, &p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an ip rule `fwmark 0x1 lookup 201 priority 10000` already exists (not vmtun's): \
             remove it with `ip rule del fwmark 0x1 lookup 201 priority 10000`, or set \
             migration.fwmark to a mark no other rule uses; rolling back also failed, still \
             in place: removing route default via 100.64.0.2 dev vmtun0 table 201: Device or \
             resource busy"
        );
        assert_eq!(j.state().changes, vec![p[3].clone()]);
        // The leftover is on disk for `vmtun down`.
        let on_disk = Journal::load(j.path()).unwrap();
        assert_eq!(on_disk.state().changes, vec![p[3].clone()]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn undo_tolerates_objects_already_gone_and_keeps_real_failures() {
        let d = dir("gone");
        let p = full_plan();
        let mut ops = host();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &p).unwrap();
        // The cutover removed the mark rule; the sysctl on br0 cannot be restored.
        let mark = p.last().unwrap().clone();
        ops.present.retain(|c| *c != mark);
        let br0 = (j.state().changes.iter())
            .find(|c| c.to_string().contains("br0.rp_filter"))
            .unwrap()
            .clone();
        ops.fail_revert.push((br0.clone(), libc::EPERM));
        let err = j.undo_all(&mut ops).unwrap_err();
        assert_eq!(
            err.to_string(),
            "undo left 1 change(s) in place: restoring sysctl net.ipv4.conf.br0.rp_filter=1: \
             Operation not permitted"
        );
        assert_eq!(j.state().changes, vec![br0.clone()]);
        // `vmtun down` retries from the state file once the cause is fixed.
        ops.fail_revert.clear();
        undo_state_file(&mut ops, j.path()).unwrap();
        assert!(!j.path().exists());
        assert_eq!(ops.sysctls["net/ipv4/conf/br0/rp_filter"], "1");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn state_file_round_trips() {
        let d = dir("roundtrip");
        let mut ops = host();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &full_plan()).unwrap();
        let loaded = Journal::load(&d.join("i.json")).unwrap();
        assert_eq!(loaded.state(), j.state());
        assert_eq!(loaded.state().pid, std::process::id());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_existing_state_file_blocks_a_second_instance() {
        let d = dir("twice");
        let _first = Journal::create(&d, "i").unwrap();
        let err = Journal::create(&d, "i").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(err.to_string().contains("vmtun down"), "{err}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_state_file_is_named() {
        let d = dir("corrupt");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("i.json");
        fs::write(&path, "{ not json").unwrap();
        let err = Journal::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("state file {}: not valid: ", path.display())),
            "{err}"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn idempotent_apply_accepts_existing_objects() {
        let mut ops = FakeOps::with_interface("vif0", true);
        let p = crate::netcfg::plan::vif_up("vif0", &["203.0.113.2".parse().unwrap()]);
        apply_idempotent(&mut ops, &p).unwrap();
        apply_idempotent(&mut ops, &p).unwrap();
        assert_eq!(ops.present.len(), 1);
        assert_eq!(ops.sysctls["net/ipv4/conf/vif0/proxy_arp"], "1");
        assert_eq!(ops.sysctls["net/ipv4/neigh/vif0/proxy_delay"], "0");
        assert_eq!(
            ops.sysctls["net/ipv4/neigh/vif0/unres_qlen_bytes"],
            "4194304"
        );
    }

    #[test]
    fn prerequisites_name_the_sysctl() {
        use crate::netcfg::prereq::check_prerequisites;
        let role = crate::netcfg::fixtures::old_role(&["203.0.113.0/29"]);
        let mut off = FakeOps::with_interface("vmtun0", false);
        assert_eq!(
            check_prerequisites(&mut off, Some(&role))
                .unwrap_err()
                .to_string(),
            "sysctl net.ipv4.ip_forward is 0, but role old forwards packets: \
             set it with `sysctl -w net.ipv4.ip_forward=1`"
        );
        check_prerequisites(&mut off, None).unwrap();
        let mut on = FakeOps::with_interface("vmtun0", true);
        check_prerequisites(&mut on, Some(&role)).unwrap();
        // An IPv6 subnet needs IPv6 forwarding too.
        let dual = crate::netcfg::fixtures::old_role(&["203.0.113.0/29", "2001:db8:1::/64"]);
        on.sysctls
            .insert("net/ipv6/conf/all/forwarding".into(), "0".into());
        assert_eq!(
            check_prerequisites(&mut on, Some(&dual))
                .unwrap_err()
                .to_string(),
            "sysctl net.ipv6.conf.all.forwarding is 0, but role old forwards packets: \
             set it with `sysctl -w net.ipv6.conf.all.forwarding=1`"
        );
        check_prerequisites(&mut on, Some(&role)).unwrap();
    }

    /// A [`FakeOps`] that, when asked to make a change, reads the state file first: the
    /// journal's record at the moment the kernel would change.
    struct Witness {
        host: FakeOps,
        path: PathBuf,
        seen: Vec<Vec<Change>>,
    }

    impl NetOps for Witness {
        fn capture(&mut self, c: &Change) -> Result<Change, NetError> {
            self.host.capture(c)
        }
        fn apply(&mut self, c: &Change) -> Result<(), NetError> {
            self.seen
                .push(Journal::load(&self.path).unwrap().state().changes.clone());
            self.host.apply(c)
        }
        fn revert(&mut self, c: &Change) -> Result<(), NetError> {
            self.host.revert(c)
        }
        fn is_in_place(&mut self, c: &Change) -> Result<bool, NetError> {
            self.host.is_in_place(c)
        }
        fn read_sysctl(&mut self, key: &crate::netcfg::SysctlKey) -> Result<String, NetError> {
            self.host.read_sysctl(key)
        }
    }

    #[test]
    fn each_change_is_on_record_with_what_it_overwrites_before_it_is_made() {
        let d = dir("intent");
        let p = full_plan();
        let mut j = Journal::create(&d, "i").unwrap();
        let mut ops = Witness {
            host: host(),
            path: j.path().to_owned(),
            seen: Vec::new(),
        };
        j.apply(&mut ops, &p).unwrap();
        assert_eq!(ops.seen.len(), p.len());
        for (i, record) in ops.seen.iter().enumerate() {
            assert_eq!(
                record.len(),
                i + 1,
                "when `{}` was made, the state file held {record:?}",
                p[i]
            );
            assert_eq!(record[..], j.state().changes[..=i]);
        }
        // So the sysctl's record carries the host's value, not vmtun's.
        let rp = j
            .state()
            .changes
            .iter()
            .find(|c| c.to_string().contains("br0.rp_filter"))
            .unwrap();
        assert_eq!(
            rp.to_string(),
            "sysctl -w net.ipv4.conf.br0.rp_filter=2  # was 1"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_change_that_fails_leaves_the_record() {
        let d = dir("intent-fail");
        let p = full_plan();
        let mut ops = host();
        // Someone else's rule is there: vmtun must never come to undo it.
        ops.fail_apply
            .push((p[mark_rule_at(&p)].clone(), libc::EEXIST));
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &p).unwrap_err();
        let on_disk = Journal::load(j.path()).unwrap();
        assert!(on_disk.state().changes.is_empty(), "{:?}", on_disk.state());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn restore_puts_back_what_is_missing_in_the_order_it_was_applied() {
        let d = dir("restore");
        let p = full_plan();
        let mut ops = host();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &p).unwrap();
        let whole = ops.clone();
        assert!(
            j.restore(&mut ops).put_back.is_empty(),
            "nothing was missing"
        );

        // `nft flush ruleset`, `ip rule del`, and rp_filter reset by someone else.
        ops.present
            .retain(|c| !c.to_string().starts_with("nft ") && !matches!(c, Change::Rule(_)));
        ops.sysctls
            .insert("net/ipv4/conf/br0/rp_filter".into(), "1".into());
        let restored = j.restore(&mut ops);
        assert!(restored.failed.is_empty(), "{:?}", restored.failed);
        let missing: Vec<Change> = j
            .state()
            .changes
            .iter()
            .filter(|c| {
                c.to_string().starts_with("nft ")
                    || matches!(c, Change::Rule(_))
                    || c.to_string().contains("br0.rp_filter")
            })
            .cloned()
            .collect();
        assert_eq!(restored.put_back, missing);
        assert_eq!(ops.present, {
            // The rule comes back after the route, the tables after the sysctls: the order
            // of the plan.
            let mut p = whole.present.clone();
            p.sort_by_key(|c| j.state().changes.iter().position(|x| x == c));
            p
        });
        assert_eq!(ops.sysctls, whole.sysctls);
        let _ = fs::remove_dir_all(&d);
    }

    fn mark_rule_of(changes: &[Change]) -> Option<&Change> {
        changes.iter().find(|c| {
            matches!(
                c,
                Change::NftRule {
                    rule: crate::netcfg::NftRuleKind::Mark { .. },
                    ..
                }
            )
        })
    }

    #[test]
    fn after_a_cutover_restore_leaves_the_mark_rule_out_and_puts_the_element_back() {
        let d = dir("cutover");
        let p = full_plan();
        let subnet: IpNet = "203.0.113.0/29".parse().unwrap();
        let mut ops = host();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &p).unwrap();
        let mark = mark_rule_of(&p).unwrap().clone();
        // The watcher removes the rule; the kernel had put the element in the set.
        let element = Change::NftSetElement {
            family: crate::netcfg::Family::Ipv4,
            table: "vmtun".into(),
            set: "native".into(),
            element: crate::netcfg::Element::Addr("203.0.113.0".parse().unwrap()),
        };
        ops.present.push(element.clone());
        j.record_cutover(&[subnet], || ops.revert(&mark)).unwrap();
        assert!(mark_rule_of(&j.state().changes).is_none());
        assert!(j.state().changes.contains(&element));
        assert_eq!(j.cut_over(), [subnet]);
        let on_disk = Journal::load(j.path()).unwrap();
        assert_eq!(on_disk.state(), j.state());

        // `nft flush ruleset`: the table comes back with the element and without the rule.
        ops.present.retain(|c| !c.to_string().starts_with("nft "));
        let restored = j.restore(&mut ops);
        assert!(restored.failed.is_empty(), "{:?}", restored.failed);
        assert!(!ops.present.contains(&mark));
        assert!(ops.present.contains(&element));
        assert!(restored.put_back.contains(&element));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_removal_keeps_the_mark_rule_on_record() {
        let d = dir("cutover-fail");
        let mut ops = host();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &full_plan()).unwrap();
        let before = j.state().clone();
        let err = j.record_cutover(&["203.0.113.0/29".parse().unwrap()], || {
            Err::<(), _>("netlink said no")
        });
        assert_eq!(err, Err("netlink said no"));
        assert_eq!(j.state(), &before);
        assert!(j.cut_over().is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_cutover_is_remembered_after_the_instance_is_gone() {
        let d = dir("remember");
        let subnet: IpNet = "203.0.113.0/29".parse().unwrap();
        let mut ops = host();
        let mut j = Journal::create(&d, "i").unwrap();
        j.apply(&mut ops, &full_plan()).unwrap();
        j.record_cutover(&[subnet], || Ok::<(), ()>(())).unwrap();
        j.undo_all(&mut ops).unwrap();
        assert!(!j.path().exists());
        assert_eq!(remembered_cutover(&d, "i").unwrap(), [subnet]);
        let next = Journal::create(&d, "i").unwrap();
        assert_eq!(next.cut_over(), [subnet]);
        // Another instance name has its own memory.
        assert!(remembered_cutover(&d, "other").unwrap().is_empty());
        let _ = fs::remove_dir_all(&d);
    }
}
