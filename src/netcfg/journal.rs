//! The journal: applies a plan in order, records every change it made in a state file, and
//! undoes exactly those changes, in reverse order. A plan that fails halfway is rolled back
//! before the error is returned, so nothing is left half-applied.
//!
//! The state file (`/run/vmtun/<instance>.json` by default; `/run` is emptied at boot, as
//! are the changes it records) lets `vmtun down` clean up after an instance that was killed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::change::Change;
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

/// Records and undoes the host changes of one vmtun instance.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: State,
}

impl Journal {
    /// Starts a journal for `instance` in `dir` (created if missing) and writes its empty
    /// state file. Fails if a state file is already there: another instance is running, or
    /// one died without cleaning up and `vmtun down` should run first.
    pub fn create(dir: &Path, instance: &str) -> Result<Journal, NetError> {
        let path = dir.join(format!("{instance}.json"));
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
            state: State {
                version: STATE_VERSION,
                instance: instance.into(),
                pid: std::process::id(),
                changes: Vec::new(),
            },
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
        Ok(Journal {
            path: path.into(),
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

    /// Applies `plan` in order, recording each change once made. On the first failure, the
    /// changes this call made are reverted (newest first) and the error names the change that
    /// failed. Changes recorded by earlier calls stay.
    pub fn apply(&mut self, ops: &mut dyn NetOps, plan: &[Change]) -> Result<(), NetError> {
        let start = self.state.changes.len();
        for c in plan {
            let step = ops.capture(c).and_then(|c| {
                ops.apply(&c)?;
                Ok(c)
            });
            let failure = match step {
                Ok(c) => {
                    self.state.changes.push(c);
                    match self.persist() {
                        Ok(()) => continue,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            return Err(self.roll_back(ops, start, failure));
        }
        Ok(())
    }

    /// Reverts the changes recorded from index `start` on, newest first.
    fn roll_back(&mut self, ops: &mut dyn NetOps, start: usize, error: NetError) -> NetError {
        let made = self.state.changes.split_off(start);
        let (kept, leftovers) = revert_all(ops, made);
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

    /// Undoes every recorded change, newest first. Objects already gone (routes that went
    /// with the TUN device, the mark rule the cutover removed) count as undone. On success
    /// the state file is removed; otherwise it keeps what is still in place.
    pub fn undo_all(&mut self, ops: &mut dyn NetOps) -> Result<(), NetError> {
        let made = std::mem::take(&mut self.state.changes);
        let (kept, failures) = revert_all(ops, made);
        self.state.changes = kept;
        if failures.is_empty() {
            match fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(state_err(&self.path, format!("removing: {e}"))),
            }
        } else {
            self.persist()?;
            Err(NetError::Undo(failures))
        }
    }

    /// Writes the state atomically (temporary file, then rename), so a killed process never
    /// leaves a truncated record. No fsync: the changes recorded do not survive a reboot
    /// either, and `/run` is usually a tmpfs.
    fn persist(&self) -> Result<(), NetError> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| state_err(&self.path, format!("encoding: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| state_err(&self.path, format!("writing: {e}")))
    }
}

/// Reverts `made` newest first; returns the changes still in place (in applied order) and
/// the failures. "Already gone" is success.
fn revert_all(ops: &mut dyn NetOps, made: Vec<Change>) -> (Vec<Change>, Vec<NetError>) {
    let mut kept = Vec::new();
    let mut failures = Vec::new();
    for c in made.into_iter().rev() {
        match ops.revert(&c) {
            Ok(()) => {}
            Err(e) if e.is_gone() => {}
            Err(e) => {
                failures.push(e);
                kept.push(c);
            }
        }
    }
    kept.reverse();
    (kept, failures)
}

/// Undoes what a dead instance left in the state file at `path` (for `vmtun down`), and
/// removes the file when everything is undone.
pub fn undo_state_file(ops: &mut dyn NetOps, path: &Path) -> Result<(), NetError> {
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
            "adding rule fwmark 0x1 lookup 201 priority 10000: File exists"
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
            "adding rule fwmark 0x1 lookup 201 priority 10000: File exists; rolling back also \
             failed, still in place: removing route default via 100.64.0.2 dev vmtun0 table \
             201: Device or resource busy"
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
}
