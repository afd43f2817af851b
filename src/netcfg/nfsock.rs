//! A blocking netlink socket: NETLINK_NETFILTER to send nftnl batches (one datagram, so the
//! kernel applies them atomically) and collect acknowledgements or dump replies, and
//! NETLINK_ROUTE for the few route and neighbour reads of the cutover (`uplink`).
//!
//! One socket per operation: sequence numbers restart at 1 in every nftnl batch, so a fresh
//! socket can never mistake a late acknowledgement of an earlier batch for its own.

use std::collections::BTreeSet;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nftnl::FinalizedBatch;

use super::error::Cause;

/// Receive buffer size: the kernel sends dump replies in chunks of up to 16 KiB
/// (`NLMSG_GOODSIZE` is capped near 8 KiB; nft uses larger buffers for dumps).
const RECV_BUF: usize = 64 * 1024;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;

/// An open netfilter netlink socket.
pub(crate) struct NfSock {
    fd: OwnedFd,
    buf: Vec<u64>,
}

/// One netlink message received: its header fields and the whole message (header included).
#[derive(Debug, Clone)]
pub struct Msg {
    /// `nlmsg_type`.
    pub ty: u16,
    /// The message, header included.
    pub bytes: Vec<u8>,
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

impl NfSock {
    /// Opens a netfilter socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    /// Opens a route socket in the calling thread's network namespace.
    pub fn open_route() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain syscalls on values we own; the fd is wrapped at once.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            );
            if fd < 0 {
                return Err(errno());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            let r = libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            );
            if r < 0 {
                return Err(errno());
            }
            Ok(NfSock {
                fd,
                buf: vec![0u64; RECV_BUF / 8],
            })
        }
    }

    /// Sends a finalized batch as one datagram.
    pub fn send_batch(&self, batch: &FinalizedBatch) -> io::Result<()> {
        let mut iov: Vec<libc::iovec> = batch
            .iter()
            .map(|page| libc::iovec {
                iov_base: page.as_ptr() as *mut libc::c_void,
                iov_len: page.len(),
            })
            .collect();
        // SAFETY: the iovecs point into `batch`, alive for the call.
        unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            if libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) < 0 {
                return Err(errno());
            }
        }
        Ok(())
    }

    /// Sends one request message (a dump request).
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: `bytes` is valid for the call.
        let r = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
            )
        };
        if r < 0 { Err(errno()) } else { Ok(()) }
    }

    /// Receives one datagram and splits it into messages.
    fn recv(&mut self) -> io::Result<Vec<Msg>> {
        let n = loop {
            // SAFETY: the buffer is ours and RECV_BUF bytes long.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    RECV_BUF,
                    0,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = errno();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: u64 storage viewed as bytes; `n` <= RECV_BUF.
        let data = unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, n) };
        split(data)
    }

    /// Waits until every sequence number in `seqs` is acknowledged, or returns the first
    /// error the kernel reports (the whole batch is then rolled back by the kernel).
    pub fn wait_acks(&mut self, seqs: Range<u32>) -> Result<(), Cause> {
        let mut pending: BTreeSet<u32> = seqs.collect();
        while !pending.is_empty() {
            for m in self.recv().map_err(|e| Cause::from_io(&e))? {
                if m.ty == libc::NLMSG_ERROR as u16 {
                    let (code, seq) = error_of(&m.bytes)?;
                    if code != 0 {
                        return Err(Cause::Errno(-code));
                    }
                    pending.remove(&seq);
                }
            }
        }
        Ok(())
    }

    /// Sends one request and returns the first message of the answer: the reply, or the
    /// kernel's error as `Cause::Errno`.
    pub fn request(&mut self, bytes: &[u8]) -> Result<Msg, Cause> {
        self.send(bytes).map_err(|e| Cause::from_io(&e))?;
        let reply = self
            .recv()
            .map_err(|e| Cause::from_io(&e))?
            .into_iter()
            .next();
        let reply = reply.ok_or_else(|| Cause::Netlink("empty netlink answer".into()))?;
        if reply.ty == libc::NLMSG_ERROR as u16 {
            let (code, _) = error_of(&reply.bytes)?;
            return Err(Cause::Errno(-code));
        }
        Ok(reply)
    }

    /// Collects the replies of a dump until `NLMSG_DONE`.
    pub fn dump(&mut self) -> Result<Vec<Msg>, Cause> {
        let mut out = Vec::new();
        loop {
            for m in self.recv().map_err(|e| Cause::from_io(&e))? {
                if m.ty == libc::NLMSG_DONE as u16 {
                    return Ok(out);
                }
                if m.ty == libc::NLMSG_ERROR as u16 {
                    let (code, _) = error_of(&m.bytes)?;
                    if code != 0 {
                        return Err(Cause::Errno(-code));
                    }
                    continue;
                }
                out.push(m);
            }
        }
    }
}

/// Splits one received datagram into its netlink messages.
pub(crate) fn split(data: &[u8]) -> io::Result<Vec<Msg>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= data.len() {
        let len =
            u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        out.push(Msg {
            ty,
            bytes: data[off..off + len].to_vec(),
        });
        // NLMSG_ALIGN: messages are padded to 4 bytes.
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The error code and the sequence number of the request an `NLMSG_ERROR` answers.
fn error_of(bytes: &[u8]) -> Result<(i32, u32), Cause> {
    // struct nlmsgerr { int error; struct nlmsghdr msg; } after our own header.
    let need = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
    if bytes.len() < need {
        return Err(Cause::Netlink("short netlink error message".into()));
    }
    let e = NLMSG_HDRLEN;
    let code = i32::from_ne_bytes([bytes[e], bytes[e + 1], bytes[e + 2], bytes[e + 3]]);
    // The echoed header's nlmsg_seq sits 8 bytes into it.
    let s = e + 4 + 8;
    let seq = u32::from_ne_bytes([bytes[s], bytes[s + 1], bytes[s + 2], bytes[s + 3]]);
    Ok((code, seq))
}
