//! Reading and writing sysctls through `/proc/sys`. The `net` subtree there belongs to the
//! network namespace of the thread that opens the file, so this follows `setns` like the
//! netlink sockets do.

use std::io;
use std::path::PathBuf;

use super::change::SysctlKey;

fn path(key: &SysctlKey) -> io::Result<PathBuf> {
    // Keys are built from interface names; never let one climb out of /proc/sys.
    if key
        .path()
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(PathBuf::from("/proc/sys").join(key.path()))
}

/// The current value, trimmed.
pub(crate) fn read(key: &SysctlKey) -> io::Result<String> {
    Ok(std::fs::read_to_string(path(key)?)?.trim().to_string())
}

/// Writes a value.
pub(crate) fn write(key: &SysctlKey, value: &str) -> io::Result<()> {
    std::fs::write(path(key)?, value.as_bytes())
}
