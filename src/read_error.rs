//! Which errors from a TUN or UDP read end the data path. A read can fail for one packet
//! (an ICMP error queued on the socket, a packet with a virtio header tun-rs cannot split,
//! a short buffer) or because the device or socket is gone; only the second may stop the
//! tunnel, since ending the loop undoes the host's configuration. Pure, so the driver's
//! policy has unit tests without a device that misbehaves on cue.

use std::io;

/// Whether a failed read means the device or socket can no longer be read (end the loop),
/// rather than that one packet or batch was lost (count it, skip it, read on).
/// Only errnos that say so are fatal: everything else (including the errors tun-rs makes up
/// for a batch it cannot split) costs what that read held.
pub fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        // A closed or foreign descriptor; a TUN queue detached from its device (EBADFD);
        // a device that is gone; a socket shut down for reading (tun answers EFAULT).
        Some(
            libc::EBADF | libc::EBADFD | libc::ENODEV | libc::ENXIO | libc::ENOTSOCK | libc::EFAULT
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn a_gone_device_or_socket_is_fatal() {
        for code in [
            libc::EBADF,
            libc::EBADFD,
            libc::ENODEV,
            libc::ENXIO,
            libc::ENOTSOCK,
            libc::EFAULT,
        ] {
            assert!(is_fatal(&errno(code)), "errno {code}");
        }
    }

    #[test]
    fn per_packet_errors_are_skipped() {
        for code in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::EMSGSIZE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EINTR,
            libc::EINVAL,
            libc::EIO,
        ] {
            assert!(!is_fatal(&errno(code)), "errno {code}");
        }
        // What tun-rs returns for a virtio header it cannot split.
        let split = io::Error::new(io::ErrorKind::InvalidInput, "unknown GSO type");
        assert!(!is_fatal(&split));
    }
}
