//! The lab's one error type. Every variant names what the lab was doing, so a failed test
//! says which command or wait broke rather than a bare OS error.

use std::time::Duration;

/// Why a lab step failed.
#[derive(thiserror::Error)]
pub enum LabError {
    /// A command ran but exited unsuccessfully.
    #[error("{what}: `{command}` exited with {status}: {stderr}")]
    Command {
        /// What the lab was doing, e.g. "adding 198.18.0.1/24 to eth0 in vmtunlab-12-0-a".
        what: String,
        /// The command line, for copying into a shell.
        command: String,
        /// The exit status as text.
        status: String,
        /// The command's stderr, trimmed.
        stderr: String,
    },
    /// An operating system call failed (spawning, files, sockets, setns).
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long the lab waited.
        after: Duration,
    },
    /// The caller asked for something the lab refuses, e.g. an address outside its ranges.
    #[error("refused: {0}")]
    Refused(String),
    /// A check inside a test or helper failed.
    #[error("{0}")]
    Failed(String),
}

// Debug prints the message: tests returning `lab::Result` show it verbatim on failure.
impl std::fmt::Debug for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl LabError {
    /// Wraps an OS error with what the lab was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// The lab's result type.
pub type Result<T> = std::result::Result<T, LabError>;
