//! [`Scratch`]: a private directory for one test's configs, keys and logs, removed when the
//! test passes and kept (its path printed) when it fails.

use super::{LAB_PREFIX, LabError, Result, next_serial};
use std::path::{Path, PathBuf};

/// A temporary directory `/tmp/vmtunlab-<pid>-<serial>-<tag>`. Dropped normally it is
/// deleted; dropped while panicking it stays for inspection.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates the directory (mode 0700: it holds private keys).
    pub fn new(tag: &str) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = std::env::temp_dir().join(format!(
            "{LAB_PREFIX}-{}-{}-{tag}",
            std::process::id(),
            next_serial()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory with file mode `mode`; its path.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> Result<PathBuf> {
        let path = self.path.join(name);
        write_with_mode(&path, contents, mode)?;
        Ok(path)
    }
}

/// Writes `contents` to `path` with file mode `mode` exactly (whatever the umask): keys
/// and configs that their readers refuse when others may read or write them.
pub fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let what = || format!("writing {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LabError::io(what(), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| LabError::io(what(), e))?;
    // The umask may have narrowed `mode` at creation; tests depend on the exact bits.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| LabError::io(what(), e))
}
