//! Reading a file that holds a secret (a private key, or a config with one inline), as ssh
//! does: the file must be a regular file owned by us or root that nobody else can read.
//! The check is made on the opened descriptor (fstat) and the text is read from that same
//! descriptor, so the file cannot be swapped between check and read; a key file is opened
//! with `O_NOFOLLOW`, so a symlink cannot point it elsewhere.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use zeroize::Zeroizing;

/// Whether the last component of the path may be a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A config file: often a link into a deployment's tree; what counts is what it reaches.
    Follow,
    /// A key file: a link could point it at a file someone else controls.
    Refuse,
}

/// A file's text with the owner and mode of the descriptor it was read from.
pub struct Opened {
    /// The contents, wiped when dropped (it may hold a key).
    pub text: Zeroizing<String>,
    /// Owner's uid.
    pub uid: u32,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
}

/// Opens `path` (per `links`), reads it, and reports its owner and mode as opened. Errors
/// say what was wrong in a line, without the path (the caller names it).
pub fn read(path: &Path, links: Links) -> Result<Opened, String> {
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = File::options()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                "is a symbolic link; name the file itself (or copy it, mode 600)".to_string()
            }
            _ => e.to_string(),
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|e: io::Error| e.to_string())?;
    Ok(Opened {
        text,
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
    })
}

impl Opened {
    /// Why others could read this secret, as the end of a sentence naming `shown`, with
    /// what to run; `None` if only its owner (us or root) can. `euid` is ours.
    pub fn exposure(&self, shown: &str, euid: u32) -> Option<String> {
        exposure(self.uid, self.mode, euid, shown)
    }
}

/// The judgement of [`Opened::exposure`], pure for its unit tests.
fn exposure(uid: u32, mode: u32, euid: u32, shown: &str) -> Option<String> {
    if uid != euid && uid != 0 {
        return Some(format!(
            "{shown} is owned by uid {uid}, not by us (uid {euid}) or root; run chown {euid} {shown}"
        ));
    }
    let mode = mode & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{shown} has permissions {mode:04o}, readable by group or others; run chmod 600 {shown}"
        )
    })
}

/// Our effective uid: the owner a secret file may have besides root.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_may_read_and_the_owner_is_us_or_root() {
        assert_eq!(exposure(1000, 0o600, 1000, "k"), None);
        assert_eq!(exposure(0, 0o400, 1000, "k"), None, "root's file");
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            let e = exposure(1000, mode, 1000, "k").unwrap();
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.ends_with("run chmod 600 k"), "{e}");
        }
        let e = exposure(65534, 0o600, 0, "k").unwrap();
        assert_eq!(
            e,
            "k is owned by uid 65534, not by us (uid 0) or root; run chown 0 k"
        );
    }
}
