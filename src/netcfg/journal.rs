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

    /// Writes the state atomically (temporary file, then rename), so a crash never leaves a
    /// truncated record.
    fn persist(&self) -> Result<(), NetError> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| state_err(&self.path, format!("encoding: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
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
