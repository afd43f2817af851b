//! Which errors from a TUN or UDP read end the data path. A read can fail for one packet
//! (an ICMP error queued on the socket, a packet with a virtio header tun-rs cannot split,
//! a short buffer) or because the device or socket is gone; only the second may stop the
//! tunnel, since ending the loop undoes the host's configuration. When one does, [`ended`]
//! says which device or socket went and what to do, in the one line the operator reads.
//! Pure, so the driver's policy has unit tests without a device that misbehaves on cue.

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

/// What a failed read came from, to name it when the error ends the data path.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The TUN device, by name.
    Tun(&'a str),
    /// The UDP socket, by port.
    Udp(u16),
}

/// The error that ends the data path after the fatal read error `e` on `source`: what is gone,
/// the kernel's words, and what to do. `up` prints it once it has undone its host changes.
pub fn ended(source: Source<'_>, e: &io::Error) -> io::Error {
    let what = match source {
        Source::Tun(name) => format!("TUN device {name} was deleted or detached"),
        Source::Udp(port) => format!("the UDP socket on port {port} can no longer be read"),
    };
    io::Error::new(
        e.kind(),
        format!("{what} ({e}); stopped and undid the host changes: start `vmtun up` again"),
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

    #[test]
    fn the_ending_error_names_what_went_on_one_line() {
        let tun = ended(Source::Tun("vmtun0"), &errno(libc::EBADFD)).to_string();
        assert!(
            tun.starts_with("TUN device vmtun0 was deleted or detached (")
                && tun.ends_with("start `vmtun up` again")
                && !tun.contains('\n'),
            "{tun}"
        );
        let udp = ended(Source::Udp(51820), &errno(libc::EBADF)).to_string();
        assert!(udp.starts_with("the UDP socket on port 51820 "), "{udp}");
    }
}
