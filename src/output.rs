//! What a command prints on stdout. A reader that goes away early (`vmtun up --dry-run -c
//! FILE | head -1`) ends the output quietly: the write returns [`OutputError::Closed`], which
//! `main` turns into a silent exit, where `println!` would panic with a backtrace.
//!
//! Only stdout: logs and progress go to stderr through `tracing` and `eprintln!`.

use std::fmt::Display;
use std::io;

/// Why a command's output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// stdout's reader has gone (a closed pipe): nobody reads the rest, so the command stops
    /// and exits without a word.
    #[error("stdout closed by its reader")]
    Closed,
    /// Any other failure of stdout (a full disk behind a redirect, ...).
    #[error("writing to stdout: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Self::Closed
        } else {
            Self::Io(e)
        }
    }
}

/// Writes `text` to stdout as it is (no newline added) and flushes it, so a closed pipe is
/// seen here and not in a later implicit flush.
pub fn print(text: impl Display) -> Result<(), OutputError> {
    write(&mut io::stdout().lock(), text)
}

/// [`print`] into any writer: the seam the tests use.
fn write(out: &mut impl io::Write, text: impl Display) -> Result<(), OutputError> {
    write!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct ClosedPipe;

    impl io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_closed_and_other_errors_stay_errors() {
        assert!(matches!(
            write(&mut ClosedPipe, "line\n"),
            Err(OutputError::Closed)
        ));
        let full = OutputError::from(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, OutputError::Io(_)), "{full:?}");
        let mut buf = Vec::new();
        write(&mut buf, format_args!("{} {}\n", "a", 1)).expect("a Vec takes everything");
        assert_eq!(buf, b"a 1\n");
    }
}
