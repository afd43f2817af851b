//! A lossy, jittery wire between two interfaces of one namespace, in userspace: what `tc
//! qdisc add dev X root netem loss 20% delay 50ms 20ms` does on each direction of a link.
//! This machine's kernel is built without `sch_netem` (and without `ethtool` to turn the
//! veths' offloads off), so the lab forwards the frames itself.
//!
//! [`Schedule`] is the pure core of one direction: each frame is dropped with the loss
//! probability or delivered after the delay plus a uniform jitter, as netem's default
//! distribution; frames overtake each other when their delays say so, as with netem.
//! [`Wire`] is the thread that carries frames both ways between two interfaces with one
//! `AF_PACKET` socket on each. Its sockets use `PACKET_VNET_HDR`, so a frame keeps its
//! checksum-offload state (a checksum the sender's veth left to the hardware is still
//! completed by the kernel after the wire). The hosts' ends should have `gso_max_segs 1`
//! (see [`Wire::start`]), so that every frame is one packet and the loss is per packet.

use super::{LabError, Netns, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Size of `struct virtio_net_hdr` (linux/virtio_net.h), which `PACKET_VNET_HDR` puts
/// before every frame.
const VNET_HDR_LEN: usize = 10;
/// Room for the largest frame a veth can pass, after the virtio header.
const FRAME_MAX: usize = VNET_HDR_LEN + 65_536;
/// How often the wire thread looks at its stop flag when no frame is due.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// What the wire does to every frame, in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Impairment {
    /// Percentage of frames dropped (0-100).
    pub loss_percent: u32,
    /// Mean one-way delay.
    pub delay: Duration,
    /// Each frame's delay is `delay` plus or minus up to this, uniformly.
    pub jitter: Duration,
}

/// One direction of the wire: frames in, frames out when due.
#[derive(Debug)]
pub struct Schedule {
    impairment: Impairment,
    rng: u64,
    /// Frames waiting, earliest first; the sequence number keeps equal times in order.
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    seq: u64,
    /// Frames handed in so far.
    pub seen: u64,
    /// Frames dropped so far.
    pub dropped: u64,
}

impl Schedule {
    /// An empty direction; `seed` makes its drops and delays reproducible.
    pub fn new(impairment: Impairment, seed: u64) -> Self {
        Self {
            impairment,
            rng: seed | 1,
            queue: BinaryHeap::new(),
            seq: 0,
            seen: 0,
            dropped: 0,
        }
    }

    /// A frame arrived at `now`: drop it, or queue it for its time.
    pub fn handle_frame(&mut self, now: Instant, frame: Vec<u8>) {
        self.seen += 1;
        if self.next_below(100) < u64::from(self.impairment.loss_percent) {
            self.dropped += 1;
            return;
        }
        let jitter = self.impairment.jitter.as_micros() as u64;
        let offset = self.next_below(2 * jitter + 1);
        let delay = (self.impairment.delay + Duration::from_micros(offset))
            .saturating_sub(self.impairment.jitter);
        self.queue.push(Reverse((now + delay, self.seq, frame)));
        self.seq += 1;
    }

    /// When the next frame is due, if any waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next frame due at `now`, if any.
    pub fn poll_frame(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.poll_timeout()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse((_, _, frame))| frame)
    }

    /// xorshift64, reduced to `0..n` (the bias is far below what a test can see).
    fn next_below(&mut self, n: u64) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x % n.max(1)
    }
}

/// What a wire did, per direction (first to second interface, then back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Frames that arrived at the wire.
    pub seen: [u64; 2],
    /// Frames it dropped.
    pub dropped: [u64; 2],
}

/// A running wire between two interfaces of a namespace. Stops when dropped.
pub struct Wire {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<WireStats>>>,
}

impl Wire {
    /// Carries frames both ways between `first` and `second` in `ns` (both up, with no
    /// address: the namespace itself must not answer), each direction impaired by
    /// `impairment`. Offloads of the hosts' ends are theirs to turn off: `ip link set DEV
    /// gso_max_segs 1` there makes every frame one packet.
    pub fn start(ns: &Netns, first: &str, second: &str, impairment: Impairment) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let devs = [first.to_owned(), second.to_owned()];
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.thread("wire", move || {
            let sockets = [wire_socket(&devs[0])?, wire_socket(&devs[1])?];
            let _ = ready_tx.send(());
            carry(&sockets, impairment, &flag)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| LabError::Failed(format!("the wire {first} <-> {second} did not open")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the wire and says what it did.
    pub fn stop(mut self) -> Result<WireStats> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<WireStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| LabError::Failed("the wire thread panicked".into()))?,
            None => Ok(WireStats::default()),
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// The wire thread's loop: read what arrived on each side into its direction's schedule,
/// send what is due out of the other side.
fn carry(sockets: &[OwnedFd; 2], impairment: Impairment, stop: &AtomicBool) -> Result<WireStats> {
    let mut directions = [
        Schedule::new(impairment, 0x5eed_0001),
        Schedule::new(impairment, 0x5eed_0002),
    ];
    let mut buf = vec![0u8; FRAME_MAX];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = directions.iter().filter_map(Schedule::poll_timeout).min();
        let wait = due.map_or(STOP_CHECK, |at| at.saturating_duration_since(now));
        let mut pollfds = sockets.each_ref().map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout_ms = wait.min(STOP_CHECK).as_millis() as libc::c_int;
        // SAFETY: poll(2) on a live array of two pollfds.
        unsafe { libc::poll(pollfds.as_mut_ptr(), 2, timeout_ms) };
        let now = Instant::now();
        for (side, socket) in sockets.iter().enumerate() {
            // SAFETY: recv(2) into a buffer we own, with its true size; non-blocking.
            while let n @ 0.. = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            } {
                directions[side].handle_frame(now, buf[..n as usize].to_vec());
            }
        }
        for (side, direction) in directions.iter_mut().enumerate() {
            let out = &sockets[1 - side];
            while let Some(frame) = direction.poll_frame(now) {
                // SAFETY: send(2) of a buffer we own; a frame the kernel refuses is lost, as
                // on a wire.
                unsafe {
                    libc::send(
                        out.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
            }
        }
    }
    Ok(WireStats {
        seen: directions.each_ref().map(|d| d.seen),
        dropped: directions.each_ref().map(|d| d.dropped),
    })
}

/// An `AF_PACKET` socket for every protocol on `dev` (in the calling thread's namespace),
/// with the virtio header on every frame and without the frames it sends itself.
fn wire_socket(dev: &str) -> Result<OwnedFd> {
    let os_err = |what: String| LabError::io(what, std::io::Error::last_os_error());
    let name = std::ffi::CString::new(dev).map_err(|_| LabError::Refused(dev.into()))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(os_err(format!("finding {dev} for the wire")));
    }
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(protocol)) };
    if fd < 0 {
        return Err(os_err(format!("opening a packet socket on {dev}")));
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for (option, what) in [
        (libc::PACKET_VNET_HDR, "PACKET_VNET_HDR"),
        (libc::PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING"),
    ] {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt(2) with a c_int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                option,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err(format!("setting {what} on {dev}")));
        }
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is valid before we fill it.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as libc::c_int;
    // SAFETY: bind(2) with a sockaddr_ll of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(format!("binding the wire's socket to {dev}")));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETEM: Impairment = Impairment {
        loss_percent: 20,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
    };

    #[test]
    fn drops_about_the_loss_and_delays_within_the_jitter() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(NETEM, 42);
        for i in 0..10_000u32 {
            schedule.handle_frame(t0, i.to_le_bytes().to_vec());
        }
        assert!(
            (1_800..2_200).contains(&schedule.dropped),
            "{}",
            schedule.dropped
        );
        assert_eq!(schedule.poll_frame(t0 + Duration::from_millis(29)), None);
        let mut delivered = 0;
        while schedule
            .poll_frame(t0 + Duration::from_millis(70))
            .is_some()
        {
            delivered += 1;
        }
        assert_eq!(delivered, 10_000 - schedule.dropped);
        assert_eq!(schedule.poll_timeout(), None);
    }

    #[test]
    fn frames_come_out_in_order_of_their_time_so_jitter_reorders() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(NETEM, 7);
        for i in 0..1_000u32 {
            schedule.handle_frame(
                t0 + Duration::from_micros(u64::from(i)),
                i.to_le_bytes().to_vec(),
            );
        }
        let mut last = t0;
        let mut order = Vec::new();
        while let Some(at) = schedule.poll_timeout() {
            assert!(at >= last);
            last = at;
            let frame = schedule.poll_frame(at).expect("due");
            order.push(u32::from_le_bytes(frame.try_into().expect("4 bytes")));
        }
        assert!(
            order.windows(2).any(|w| w[0] > w[1]),
            "no frame overtook another"
        );
    }

    #[test]
    fn without_impairment_frames_pass_at_once_in_order() {
        let t0 = Instant::now();
        let none = Impairment {
            loss_percent: 0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        };
        let mut schedule = Schedule::new(none, 1);
        for i in 0..100u8 {
            schedule.handle_frame(t0, vec![i]);
        }
        let out: Vec<u8> = std::iter::from_fn(|| schedule.poll_frame(t0))
            .map(|f| f[0])
            .collect();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert_eq!(schedule.dropped, 0);
    }
}
