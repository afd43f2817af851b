//! [`Process`]: a child process guard that stops its child by PID on drop and keeps its
//! output in files, so a failing test can show what the child said. Also
//! [`run_checked`], the one way the lab runs short commands.

use super::{LabError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Process`]'s `Drop` waits after SIGTERM before it sends SIGKILL.
pub const DROP_GRACE: Duration = Duration::from_secs(3);

/// How many lines of a child's stderr a failing test prints.
const TAIL_LINES: usize = 40;

/// Runs `cmd` to completion and returns its stdout; a non-zero exit becomes
/// [`LabError::Command`] carrying `what`, the command line and its stderr.
pub fn run_checked(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::io(format!("{what}: spawning {}", command_line(cmd)), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            what: what.to_owned(),
            command: command_line(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether `program` is an executable file in one of `PATH`'s directories: what a test
/// checks before it relies on a system tool.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `cmd` as a shell-like line, for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running child process owned by a test. Dropping it sends SIGTERM, then SIGKILL after
/// [`DROP_GRACE`], always by the child's own PID; if the thread is panicking (a test
/// failed) the tail of the child's stderr is printed first.
#[derive(Debug)]
pub struct Process {
    label: String,
    command: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdin closed and stdout/stderr going to
    /// `log_dir/<label>.stdout|.stderr` (a numbered suffix is added if a previous run of the
    /// same label left its files there).
    pub fn spawn(label: &str, log_dir: &Path, mut cmd: Command) -> Result<Self> {
        let mut stem = label.to_owned();
        let mut n = 1;
        while log_dir.join(format!("{stem}.stderr")).exists() {
            n += 1;
            stem = format!("{label}.{n}");
        }
        let stdout_path = log_dir.join(format!("{stem}.stdout"));
        let stderr_path = log_dir.join(format!("{stem}.stderr"));
        let create = |path: &Path| {
            File::create(path).map_err(|e| LabError::io(format!("creating {}", path.display()), e))
        };
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path)?)
            .stderr(create(&stderr_path)?);
        let command = command_line(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("starting {label}: {command}"), e))?;
        Ok(Self {
            label: label.to_owned(),
            command,
            child,
            status: None,
            stdout_path,
            stderr_path,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) to the child's PID if it is still running.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.is_running() {
            // SAFETY: kill(2) on our own unreaped child's PID, which cannot have been reused.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{} to exit ({})", self.label, self.command),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap: the crash a restart test needs.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(5))
    }

    /// SIGTERM, then SIGKILL if the child is still there after `grace`; returns how it ended.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(grace) {
            Ok(status) => Ok(status),
            Err(_) => self.kill(),
        }
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of stderr, labelled, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        format!(
            "--- {} (pid {}, {}) stderr, last {} lines ---\n{}",
            self.label,
            self.pid(),
            self.stderr_path.display(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_tail());
        }
        let _ = self.terminate(DROP_GRACE);
    }
}
