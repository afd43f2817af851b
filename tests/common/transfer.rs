//! A checksummed TCP transfer between two namespaces: a sender thread in one, a receiver
//! thread in the other (both `setns`-ed by the lab), each hashing what it saw with SHA-256.
//! The payload is pseudo-random, so a corrupted, dropped or duplicated byte changes the
//! receiver's hash.

use super::{LabError, Netns, Result};
use sha2::{Digest as _, Sha256};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connection that moves no byte for this long has failed.
pub const STALL: Duration = Duration::from_secs(20);
/// Bound for a whole transfer of [`super::BIG`] bytes on a loaded 2-core machine.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the sender keeps retrying its connect (the first SYN triggers the handshake).
const CONNECT_FOR: Duration = Duration::from_secs(20);
const CHUNK: usize = 64 * 1024;

/// What each side saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bytes the sender wrote.
    pub sent: u64,
    /// Bytes the receiver read.
    pub received: u64,
    /// SHA-256 of what was sent, hex.
    pub sent_sha256: String,
    /// SHA-256 of what was received, hex.
    pub received_sha256: String,
    /// Wall time of the whole transfer.
    pub elapsed: Duration,
}

impl Report {
    /// Fails unless exactly `bytes` arrived and the hashes agree.
    pub fn check(&self, bytes: usize) -> Result<()> {
        if self.sent == bytes as u64
            && self.received == bytes as u64
            && self.sent_sha256 == self.received_sha256
        {
            Ok(())
        } else {
            Err(LabError::Failed(format!("transfer corrupted: {self:?}")))
        }
    }
}

type Side = JoinHandle<Result<(u64, String)>>;

/// A transfer in progress.
pub struct Transfer {
    milestone: Receiver<()>,
    resume: mpsc::Sender<()>,
    sender: Side,
    receiver: Side,
    received: Arc<AtomicU64>,
    started: Instant,
}

impl Transfer {
    /// Sends `bytes` from namespace `from` to a listener on `to_addr` (an address of `to`).
    /// If `milestone` is set, the sender stops writing once that many bytes are written
    /// (what its socket buffer holds still flows) until [`Self::resume`]:
    /// [`Self::wait_milestone`] returns then, so a test can change the network at a known
    /// point of an open connection.
    pub fn start(
        from: &Netns,
        to: &Netns,
        to_addr: &str,
        bytes: usize,
        milestone: Option<usize>,
    ) -> Result<Self> {
        let ip: std::net::IpAddr = to_addr
            .parse()
            .map_err(|_| LabError::Refused(format!("{to_addr} is not an IP address")))?;
        let bind = SocketAddr::new(ip, 0);
        let (port_tx, port_rx) = mpsc::channel();
        let received = Arc::new(AtomicU64::new(0));
        let progress = Arc::clone(&received);
        let receiver = to.thread("receiver", move || receive(bind, port_tx, &progress))?;
        let port = port_rx
            .recv_timeout(super::WAIT)
            .map_err(|_| LabError::Failed(format!("the receiver could not listen on {bind}")))?;
        let target = SocketAddr::new(bind.ip(), port);
        let (milestone_tx, milestone_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel();
        let sender = from.thread("sender", move || {
            send(
                target,
                bytes,
                milestone.map(|m| (m, milestone_tx, resume_rx)),
            )
        })?;
        Ok(Self {
            milestone: milestone_rx,
            resume: resume_tx,
            sender,
            receiver,
            received,
            started: Instant::now(),
        })
    }

    /// Waits until the sender has written the milestone's bytes.
    pub fn wait_milestone(&self, timeout: Duration) -> Result<()> {
        self.milestone
            .recv_timeout(timeout)
            .map_err(|_| LabError::Timeout {
                what: "the transfer to reach its milestone".into(),
                after: timeout,
            })
    }

    /// Lets the sender go on after its milestone.
    pub fn resume(&self) {
        let _ = self.resume.send(());
    }

    /// Bytes the receiver has read so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Whether both sides have finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.sender.is_finished() && self.receiver.is_finished()
    }

    /// Waits for both sides (at most `timeout`) and reports what they saw.
    pub fn finish(self, timeout: Duration) -> Result<Report> {
        ::vmtun::lab::wait_until(timeout, "the transfer to finish", || self.is_done())?;
        let join = |side: Side, name: &str| {
            side.join()
                .map_err(|_| LabError::Failed(format!("the {name} thread panicked")))?
                .map_err(|e| LabError::Failed(format!("{name}: {e}")))
        };
        let receiver = join(self.receiver, "receiver");
        let sender = join(self.sender, "sender");
        let ((received, received_sha256), (sent, sent_sha256)) = (receiver?, sender?);
        Ok(Report {
            sent,
            received,
            sent_sha256,
            received_sha256,
            elapsed: self.started.elapsed(),
        })
    }
}

/// Sends `bytes` from `from` to `to_addr` in `to` and checks the hashes.
pub fn transfer(from: &Netns, to: &Netns, to_addr: &str, bytes: usize) -> Result<Report> {
    let report = Transfer::start(from, to, to_addr, bytes, None)?.finish(TRANSFER_TIMEOUT)?;
    report.check(bytes)?;
    Ok(report)
}

/// Sends `bytes` from `from` to `to_addr` in `to` over `streams` connections at once (the
/// bytes split evenly), and checks every stream's hashes. For lossy paths: one TCP
/// connection's rate falls with the square root of the loss (Mathis et al.) whatever
/// carries it, several share the loss. The report of the stream that finished last.
pub fn transfer_parallel(
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    bytes: usize,
    streams: usize,
) -> Result<Report> {
    let each = bytes / streams;
    let transfers = (0..streams)
        .map(|_| Transfer::start(from, to, to_addr, each, None))
        .collect::<Result<Vec<_>>>()?;
    let mut last: Option<Report> = None;
    for t in transfers {
        let report = t.finish(TRANSFER_TIMEOUT)?;
        report.check(each)?;
        last = Some(last.map_or(report.clone(), |l| {
            if l.elapsed > report.elapsed {
                l
            } else {
                report
            }
        }));
    }
    last.ok_or_else(|| LabError::Refused("a transfer over no stream".into()))
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |e| LabError::io(what, e)
}

fn receive(
    bind: SocketAddr,
    port_tx: mpsc::Sender<u16>,
    progress: &AtomicU64,
) -> Result<(u64, String)> {
    let listener = TcpListener::bind(bind).map_err(io("binding the receiver"))?;
    let port = listener
        .local_addr()
        .map_err(io("reading the port"))?
        .port();
    let _ = port_tx.send(port);
    listener
        .set_nonblocking(true)
        .map_err(io("setting the listener non-blocking"))?;
    let deadline = Instant::now() + CONNECT_FOR + STALL;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(LabError::io("accepting the sender's connection", e)),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(STALL)))
        .map_err(io("configuring the receiving socket"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).map_err(|e| {
            LabError::io(
                format!("receiving after {total} bytes (stalled or reset)"),
                e,
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        progress.store(total, Ordering::SeqCst);
    }
    Ok((total, hex(&hasher.finalize())))
}

fn send(
    target: SocketAddr,
    bytes: usize,
    mut milestone: Option<(usize, mpsc::Sender<()>, Receiver<()>)>,
) -> Result<(u64, String)> {
    let deadline = Instant::now() + CONNECT_FOR;
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => {
                return Err(LabError::io(format!("connecting to {target}"), e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    stream
        .set_write_timeout(Some(STALL))
        .and_then(|()| stream.set_read_timeout(Some(STALL)))
        .map_err(io("configuring the sending socket"))?;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ u64::from(target.port()) ^ bytes as u64);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0usize;
    while sent < bytes {
        let len = CHUNK.min(bytes - sent);
        rng.fill(&mut chunk[..len]);
        stream.write_all(&chunk[..len]).map_err(|e| {
            LabError::io(format!("sending after {sent} bytes (stalled or reset)"), e)
        })?;
        hasher.update(&chunk[..len]);
        sent += len;
        if let Some((_, reached, resume)) = milestone.take_if(|(at, _, _)| sent >= *at) {
            let _ = reached.send(());
            // Bounded: a test that never resumes gets a late transfer, not a hung one.
            let _ = resume.recv_timeout(STALL);
        }
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(io("closing the sending side"))?;
    // The receiver closes once it has read everything: wait for that so "done" means
    // delivered.
    let mut rest = [0u8; 64];
    while stream
        .read(&mut rest)
        .map_err(io("waiting for the receiver to close"))?
        > 0
    {}
    Ok((sent as u64, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// xorshift64: fast, deterministic filler that no compression or dedup could shortcut.
pub struct XorShift(pub u64);

impl XorShift {
    /// Fills `buf` with the next bytes of the sequence.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
    }
}
