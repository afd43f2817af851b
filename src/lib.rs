//! vmtun moves running VMs between hosts in different data centres while they keep their
//! public addresses. It carries the VMs' subnet through a WireGuard-compatible tunnel and
//! sets up (and undoes) the routing of the move.
//!
//! The layers, from the bytes up:
//! - [`keys`] and [`config`]: pure values; every input error is found here, before any
//!   change to the host.
//! - `wire` and `noise`: the sans-IO protocol core. Bytes and `now` go in, bytes and timer
//!   deadlines come out; no sockets, no clock reads.
//! - `driver`: the data path's event loop, on a thread of its own over plain epoll (mio);
//!   it moves packets between the TUN device, the UDP socket and the core. The control
//!   socket, signals and the VM-interface watcher run on a small tokio runtime and reach
//!   it through a handle. [`busy_poll`] is its policy for spinning briefly after traffic
//!   instead of sleeping. [`status`] holds what the control socket carries, shared by the
//!   driver (which answers) and [`control`] (which carries), so neither imports the other.
//! - [`metrics`]: the opt-in Prometheus endpoint; it renders the same snapshots (pure)
//!   and serves them with a tiny HTTP responder on that tokio runtime.
//! - [`check`]: `vmtun check`, the preflight that reads the host (facts) and judges it in
//!   pure code (verdicts), changing nothing.
//! - `netcfg` and `cutover`: a pure plan of host changes and a packet classifier, each with
//!   a thin OS edge (netlink, netfilter, pcap). Only the OS edges touch the kernel.
//! - [`handover`]: once a live-migrated guest runs on the new host, the old host stops
//!   routing it to the paused source (pure state machines for each side, a packet-socket
//!   edge, and the reports through [`switch_report`]'s channel); also at the source's pause,
//!   on `vmtun handover`, which [`libvirt_events`] makes from libvirt's lifecycle events.
//!   Its control requests are served on the tokio runtime, never on the driver's thread.
//! - [`restore`]: notices when another program removes what netcfg's journal records, and
//!   puts it back (a sans-IO pacer and a tokio task on netlink notifications).
//! - At the edge of the process: [`output`] (a command's stdout, quiet when its reader goes
//!   away) and [`notify`] (readiness for systemd's `Type=notify`).

pub mod busy_poll;
pub mod check;
pub mod config;
pub mod control;
pub mod control_access;
pub mod cutover;
pub mod demo;
pub mod driver;
pub mod handover;
pub mod instance;
pub mod keys;
pub mod lab;
pub mod libvirt_events;
pub mod metrics;
pub mod migration;
pub mod netcfg;
pub mod noise;
pub mod notify;
pub mod output;
pub mod read_error;
pub mod restore;
pub mod secret_file;
pub mod status;
pub mod switch_report;
pub mod tun;
pub mod udp;
pub mod vif;
pub mod wire;
