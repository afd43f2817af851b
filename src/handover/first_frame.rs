//! The OS edge of the handover: a thread that waits for the first frame arriving on one VM
//! interface (the cutover's packet socket, `PacketSocket::arriving`) and says so once.
//!
//! The socket is open when [`FirstFrame::watch`] returns, so no frame after that call is
//! missed. The thread runs at real-time priority when allowed (as the cutover watcher,
//! for the same reason: it sleeps until one frame and must act on it at once).

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use crate::cutover::{CutoverError, PacketSocket, Run, StopSignal, real_time_priority};

/// How a watch ended (unless it was stopped first).
#[derive(Debug)]
pub enum Ended {
    /// A frame arrived on the interface with this index, at this kernel receive time.
    Frame {
        /// The interface's index.
        ifindex: u32,
        /// When the kernel received it.
        at: SystemTime,
    },
    /// The interface disappeared (or the socket failed): nothing more will come.
    Failed(io::Error),
}

/// A running watch on one interface. Dropping it stops the thread without waiting for it;
/// [`FirstFrame::stop`] waits.
pub struct FirstFrame {
    ifindex: u32,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl FirstFrame {
    /// Opens the socket on `vif` (index `ifindex`, in this network namespace) and waits on
    /// a thread of its own; `on_end` is called from that thread, once, unless stopped first.
    pub fn watch(
        vif: &str,
        ifindex: u32,
        on_end: impl FnOnce(Ended) + Send + 'static,
    ) -> Result<Self, CutoverError> {
        let mut socket = PacketSocket::arriving(vif)?;
        let stop = Arc::new(StopSignal::new().map_err(|source| CutoverError::Io {
            iface: vif.to_owned(),
            action: "creating the stop signal",
            source,
        })?);
        let thread = {
            let stop = stop.clone();
            let name = vif.to_owned();
            thread::Builder::new()
                .name(format!("first-frame-{vif}"))
                .spawn(move || {
                    if let Err(e) = real_time_priority() {
                        tracing::debug!("handover: watching {name} at normal priority ({e})");
                    }
                    let ended =
                        match socket.run(&stop, |frame| Some((frame.ifindex, frame.captured_at))) {
                            Ok(Run::Done((ifindex, at))) => Ended::Frame { ifindex, at },
                            Ok(Run::Stopped) => return,
                            Err(e) => Ended::Failed(e),
                        };
                    on_end(ended);
                })
                .map_err(|source| CutoverError::Io {
                    iface: vif.to_owned(),
                    action: "starting its thread",
                    source,
                })?
        };
        Ok(Self {
            ifindex,
            stop,
            thread: Some(thread),
        })
    }

    /// The index of the interface watched.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether the calling thread is this watch's own (inside its `on_end`).
    pub fn runs_here(&self) -> bool {
        (self.thread.as_ref()).is_some_and(|t| t.thread().id() == thread::current().id())
    }

    /// Stops the watch and waits for its thread. Not from inside its `on_end`.
    pub fn stop(mut self) {
        self.stop.raise();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FirstFrame {
    fn drop(&mut self) {
        self.stop.raise();
    }
}
