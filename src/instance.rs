//! The life of one `vmtun up`: check, lock, apply the host plan, run the driver, undo.
//!
//! Everything that can be refused (config, root, port in use, a second instance) is
//! refused before the host changes. What `up` changes is journaled by `netcfg`, so exit
//! — or `vmtun down` after a crash — undoes exactly that and nothing else.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::control::{self, Paths, Request};
use crate::driver::{Command, Driver, Exit, Identity};
use crate::handover::VmRequests;
use crate::migration::Migration;
use crate::netcfg::{self, Change, NetError, NetOps, SharedJournal, SysctlKey};
use crate::noise::{PeerConfig, Tunnel, TunnelConfig};
use crate::restore;
use crate::tun::Tun;

/// How long `vmtun down` waits for a running instance to undo its changes and exit.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Kernel socket buffer sizes asked for the UDP socket: bursts of a fast TCP flow must not
/// overflow the default ~200 KiB while the loop is busy on the other side.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// For tests of a crash in the middle of `up`: with `VMTUN_TEST_KILL_AFTER_CHANGES=N` in its
/// environment, `up` kills itself with SIGKILL (nothing undone, as a crash or `kill -9`
/// would) right after the N-th change of its plan reached the kernel.
const KILL_AFTER_CHANGES: &str = "VMTUN_TEST_KILL_AFTER_CHANGES";

/// For tests of rekeying: with `VMTUN_TEST_REKEY_AFTER_SECS=N` in its environment, `up`
/// starts a new handshake when it sends on a session it initiated N seconds ago, instead of
/// WireGuard's 120 s (see `Tunnel::set_rekey_after_time`).
const REKEY_AFTER_SECS: &str = "VMTUN_TEST_REKEY_AFTER_SECS";

/// `vmtun up`: runs until SIGINT/SIGTERM or `vmtun down`, then undoes what it did.
pub fn run(config: Config, dry_run: bool) -> anyhow::Result<()> {
    let (tunnel_params, role) = host_params(&config);
    let paths = Paths::of(&config).context("finding this network namespace")?;
    let run_dir = paths.dir.as_path();
    let plan = netcfg::plan(&tunnel_params, role.as_ref());
    if dry_run {
        let remembered = netcfg::remembered_cutover(run_dir, &config.interface.name)
            .unwrap_or_else(|e| {
                tracing::warn!("{e}");
                Vec::new()
            });
        let plan = netcfg::after_cutover(&plan, &remembered);
        let mut text = format!(
            "# vmtun up -c {} would:\nip tuntap add dev {} mode tun   # held by the process; gone when it exits\n",
            config.path.display(),
            config.interface.name
        );
        for change in &plan {
            text += &format!("{change}\n");
        }
        text += &format!(
            "# and listen on UDP port {}\n",
            config.interface.listen_port
        );
        if let Some(m) = &config.metrics {
            text += &format!("# and serve metrics on http://{}/metrics\n", m.listen);
        }
        return Ok(crate::output::print(text)?);
    }
    require_root()?;
    // Every file vmtun makes under /run/vmtun is root's alone, as the unit's UMask=0077
    // makes them: with control.group its directories let others through (0711).
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    for caveat in config.caveats() {
        tracing::warn!("{caveat}");
    }
    let mut ops = netcfg::SystemOps::new()?;
    netcfg::check_prerequisites(&mut ops, role.as_ref())?;
    let _lock = lock(&config, &paths)?;
    let leftovers = leftovers(&mut ops, &paths)?;
    for leftover in &leftovers {
        tracing::warn!(
            "a previous vmtun for {} did not exit cleanly; undoing what it left ({})",
            config.interface.name,
            leftover.path().display()
        );
    }
    undo_leftovers(&mut ops, &paths, leftovers)?;
    let udp = bind_udp(config.interface.listen_port)?;
    let metrics = config
        .metrics
        .as_ref()
        .map(|m| crate::metrics::bind(m.listen))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tun = Tun::create(&config.interface.name)?;
    let mut journal = netcfg::Journal::create(run_dir, &config.interface.name)?;
    // Only role new has a cutover to remember.
    let routed = match &role {
        Some(netcfg::Role::New(n)) => n.subnets.as_slice(),
        _ => &[],
    };
    let cut_over: Vec<_> = (journal.cut_over().iter())
        .filter(|s| routed.iter().any(|r| r.trunc() == **s))
        .copied()
        .collect();
    if !cut_over.is_empty() {
        tracing::info!(
            "{cut_over:?} cut over before (remembered in {}): no mark rule for them",
            run_dir.display()
        );
    }
    let plan = netcfg::after_cutover(&plan, &cut_over);
    let applied = match kill_after_changes() {
        Some(n) => journal.apply(
            &mut KillAfter {
                ops: &mut ops,
                left: n,
            },
            &plan,
        ),
        None => journal.apply(&mut ops, &plan),
    };
    if let Err(e) = applied {
        drop(tun);
        journal.undo_all(&mut ops)?;
        return Err(e.into());
    }
    let journal = SharedJournal::new(journal);
    let result = runtime.block_on(run_driver(&config, &paths, tun, udp, &journal, metrics));
    let _ = std::fs::remove_file(&paths.socket);
    journal.lock().undo_all(&mut ops)?;
    let exit = result?;
    tracing::info!(
        "{} down ({exit:?}); host changes undone",
        config.interface.name
    );
    Ok(())
}

/// What netcfg needs to know of the config.
fn host_params(config: &Config) -> (netcfg::TunnelParams, Option<netcfg::Role>) {
    let tunnel = netcfg::TunnelParams {
        tun: config.interface.name.clone(),
        address: config.interface.address,
        mtu: config.interface.mtu.into(),
    };
    let role = config.migration.as_ref().map(|m| match m.role {
        crate::config::Role::Old => netcfg::Role::Old(netcfg::OldParams {
            subnets: m.subnets.clone(),
            via: m.via,
            table: netcfg::TableId(m.table),
            fwmark: netcfg::FwMark(m.fwmark),
            rule_priority: netcfg::DEFAULT_RULE_PRIORITY,
            vif_prefix: m.vif_prefix.clone(),
        }),
        crate::config::Role::New => netcfg::Role::New(netcfg::NewParams {
            subnets: m.subnets.clone(),
            via: m.via,
            table: netcfg::TableId(m.table),
            fwmark: netcfg::FwMark(m.fwmark),
            rule_priority: netcfg::DEFAULT_RULE_PRIORITY,
            vif_prefix: m.vif_prefix.clone(),
            bridge: m.bridge.clone(),
            native_interfaces: m.native_interfaces.clone(),
            kernel_flip: m.cutover_hold.is_zero(),
        }),
    });
    (tunnel, role)
}

/// [`KILL_AFTER_CHANGES`], if set.
fn kill_after_changes() -> Option<usize> {
    let n = std::env::var(KILL_AFTER_CHANGES).ok()?.parse().ok()?;
    tracing::warn!("{KILL_AFTER_CHANGES}={n}: this vmtun kills itself after {n} host change(s)");
    Some(n)
}

/// [`REKEY_AFTER_SECS`], if set.
fn rekey_after_time() -> Option<std::time::Duration> {
    let secs = std::env::var(REKEY_AFTER_SECS).ok()?.parse().ok()?;
    tracing::warn!("{REKEY_AFTER_SECS}={secs}: this vmtun rekeys every {secs} s of sending");
    Some(std::time::Duration::from_secs(secs))
}

/// The [`NetOps`] of `up` under [`KILL_AFTER_CHANGES`]: the system's, and SIGKILL once
/// `left` changes are made.
struct KillAfter<'a> {
    ops: &'a mut dyn NetOps,
    left: usize,
}

impl NetOps for KillAfter<'_> {
    fn capture(&mut self, c: &Change) -> Result<Change, NetError> {
        self.ops.capture(c)
    }

    fn apply(&mut self, c: &Change) -> Result<(), NetError> {
        self.ops.apply(c)?;
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            // SAFETY: kill(2) on our own pid; SIGKILL does not return.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        Ok(())
    }

    fn revert(&mut self, c: &Change) -> Result<(), NetError> {
        self.ops.revert(c)
    }

    fn is_in_place(&mut self, c: &Change) -> Result<bool, NetError> {
        self.ops.is_in_place(c)
    }

    fn read_sysctl(&mut self, key: &SysctlKey) -> Result<String, NetError> {
        self.ops.read_sysctl(key)
    }

    fn remove_route(&mut self, r: &netcfg::Route) -> Result<(), NetError> {
        self.ops.remove_route(r)
    }
}

async fn run_driver(
    config: &Config,
    paths: &Paths,
    tun: Tun,
    udp: std::net::UdpSocket,
    journal: &SharedJournal,
    metrics: Option<std::net::TcpListener>,
) -> anyhow::Result<Exit> {
    let monitor = restore::Monitor::start(journal.clone())
        .context("watching for removals of vmtun's host changes (netlink notifications)")?;
    let identity = Identity {
        interface: config.interface.name.clone(),
        public_key: config.interface.private_key.public_key().to_base64(),
        listen_port: config.interface.listen_port,
        allowed_ips: config
            .peers
            .iter()
            .map(|p| p.allowed_ips.iter().map(|n| n.to_string()).collect())
            .collect(),
        restore: Some(monitor.status()),
    };
    let mut tunnel = Tunnel::new(tunnel_config(config), Instant::now(), SystemTime::now());
    tunnel.set_mtu(config.interface.mtu.into());
    if let Some(after) = rekey_after_time() {
        tunnel.set_rekey_after_time(after);
    }
    let udp = crate::udp::Udp::new(udp)?;
    if !udp.is_dual_stack() {
        for (i, peer) in config.peers.iter().enumerate() {
            if let Some(endpoint) = peer.endpoint.filter(SocketAddr::is_ipv6) {
                tracing::warn!(
                    "peer[{i}].endpoint {endpoint} is IPv6 but the UDP socket is IPv4 only: \
                     that peer is reachable only if it contacts this host over IPv4"
                );
            }
        }
    }
    tracing::info!(
        "{} up: {} on UDP port {}, {} peer(s)",
        config.interface.name,
        config.interface.address,
        config.interface.listen_port,
        config.peers.len()
    );
    let migration = config
        .migration
        .as_ref()
        .map(|m| Migration::start(m, config, journal))
        .transpose()?;
    let handover = migration.as_ref().and_then(Migration::handover);
    let vm_requests = VmRequests::new(Arc::new(config.clone()), handover.clone());
    let vifs = (!config.vms.is_empty())
        .then(|| tokio::spawn(crate::vif::watch(Arc::new(config.clone()), handover)));
    let (driver, handle) = Driver::new(
        tunnel,
        tun,
        udp,
        identity,
        migration,
        config.interface.busy_poll,
    )?;
    let access = control::Access {
        interface: config.interface.name.clone(),
        group: config.control.group.clone(),
    };
    let listener = control::listen(&paths.socket, access, handle.clone(), vm_requests)?;
    let metrics = metrics
        .map(|m| crate::metrics::serve(m, handle.clone()))
        .transpose()?;
    let (done_tx, mut done) = oneshot::channel();
    let data_path = std::thread::Builder::new()
        .name("vmtun-data".into())
        .spawn(move || {
            let _ = done_tx.send(driver.run());
        })?;
    // Registered before readiness, so that a stop right after it is undone like any.
    let shutdown = shutdown_signal();
    crate::notify::send(crate::notify::State::Ready);
    // The monitor stops first: what vmtun undoes on its way out is not to be put back.
    let exit = tokio::select! {
        exit = &mut done => {
            monitor.stop();
            exit
        }
        () = shutdown => {
            monitor.stop();
            handle.send(Command::Stop);
            done.await
        }
    };
    crate::notify::send(crate::notify::State::Stopping);
    let _ = data_path.join();
    let exit = exit.context("the data path thread died")??;
    listener.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(vifs) = vifs {
        vifs.abort();
    }
    Ok(exit)
}

/// The core's view of the config.
pub fn tunnel_config(config: &Config) -> TunnelConfig {
    TunnelConfig {
        private_key: config.interface.private_key.clone(),
        peers: config
            .peers
            .iter()
            .map(|p| PeerConfig {
                public_key: p.public_key,
                preshared_key: p.preshared_key.clone(),
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive,
            })
            .collect(),
    }
}

/// The state files a dead instance of this namespace left: its own, and one from before the
/// files were keyed by namespace if its changes are here (elsewhere it is another
/// namespace's, and stays for a `down` there). Refused while that older vmtun still runs:
/// its changes are not leftovers.
fn leftovers(ops: &mut dyn NetOps, paths: &Paths) -> anyhow::Result<Vec<netcfg::Journal>> {
    let mut found = Vec::new();
    if paths.state.exists() {
        found.push(netcfg::Journal::load(&paths.state)?);
    }
    if paths.legacy_state.exists() {
        let legacy = netcfg::Journal::load(&paths.legacy_state)?;
        if legacy.is_in_this_namespace(ops) {
            if let Ok(file) = File::open(&paths.legacy_lock)
                && flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_err()
            {
                bail!(
                    "an older vmtun for {} is running here (pid {}, lock {}): stop it with \
                     the vmtun that started it, or `kill` that pid",
                    legacy.state().instance,
                    legacy.state().pid,
                    paths.legacy_lock.display()
                );
            }
            found.push(legacy);
        }
    }
    Ok(found)
}

/// Undoes `leftovers` (see [`leftovers`]); with an older vmtun's state file undone, its
/// control socket and lock go too.
fn undo_leftovers(
    ops: &mut dyn NetOps,
    paths: &Paths,
    leftovers: Vec<netcfg::Journal>,
) -> Result<netcfg::Undone, NetError> {
    let mut all = netcfg::Undone::default();
    for mut leftover in leftovers {
        let undone = leftover.undo_all(ops)?;
        if leftover.path() == paths.legacy_state {
            let _ = std::fs::remove_file(&paths.legacy_socket);
            let _ = std::fs::remove_file(&paths.legacy_lock);
        }
        all.reverted += undone.reverted;
        all.gone += undone.gone;
    }
    Ok(all)
}

/// `vmtun down`: asks a running instance to stop, or cleans up after a dead one, in the
/// caller's network namespace. It says what it found, and fails when what it was asked to
/// stop is in another namespace.
pub fn down(config: &Config) -> anyhow::Result<()> {
    require_root()?;
    let paths = Paths::of(config).context("finding this network namespace")?;
    let lock = match lock(config, &paths) {
        Ok(lock) => lock,
        Err(_) => return stop_running(config, &paths),
    };
    let mut ops = netcfg::SystemOps::new()?;
    let leftovers = leftovers(&mut ops, &paths)?;
    let name = &config.interface.name;
    if !leftovers.is_empty() {
        if undo_leftovers(&mut ops, &paths, leftovers)?.reverted > 0 {
            println!("cleaned up after a vmtun for {name} that did not exit cleanly");
        } else {
            println!(
                "no vmtun running for {name}; nothing that one which did not exit cleanly \
                 changed was left (its changes went with its TUN device); removed its record"
            );
        }
    } else if paths.socket.exists() {
        println!(
            "no vmtun running for {}; removed its stale control socket {}",
            config.interface.name,
            paths.socket.display()
        );
    } else {
        let mut elsewhere = paths.elsewhere(name);
        if paths.legacy_state.exists() {
            elsewhere.push(paths.legacy_state.clone());
        }
        if !elsewhere.is_empty() {
            bail!(
                "no vmtun for {name} in this network namespace ({}), but another namespace \
                 has one ({}): run `vmtun down` in that namespace (`ip netns exec NAME` or \
                 `nsenter --net=/proc/PID/ns/net`), or remove the file if its namespace is gone",
                paths.netns,
                elsewhere
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("no vmtun running for {name} and nothing left to clean");
    }
    let _ = std::fs::remove_file(&paths.socket);
    drop(lock);
    Ok(())
}

/// Asks the instance holding the lock to stop, and waits until it has undone its changes
/// (it releases the lock last).
fn stop_running(config: &Config, paths: &Paths) -> anyhow::Result<()> {
    // The reply may be cut short by the instance exiting: only an explicit refusal counts.
    if let Ok(control::Reply::Error(e)) = control::request(config, Request::Down) {
        bail!("{e}");
    }
    let file = match OpenOptions::new().read(true).open(&paths.lock) {
        Ok(file) => file,
        // The instance removes its lock file as its last act.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::open("/dev/null")?,
        Err(e) => return Err(e).context("opening the instance lock"),
    };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        if e.kind() != std::io::ErrorKind::WouldBlock || Instant::now() > deadline {
            bail!(
                "vmtun for {} did not stop within {} s (pid in {})",
                config.interface.name,
                STOP_TIMEOUT.as_secs(),
                paths.lock.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if paths.state.exists() {
        bail!(
            "vmtun for {} stopped, but could not undo all it changed (see its log); what is \
             left is in {}: run `vmtun down -c {}` again once the cause is fixed",
            config.interface.name,
            paths.state.display(),
            config.path.display()
        );
    }
    println!(
        "vmtun for {} stopped; its host changes are undone",
        config.interface.name
    );
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: it creates a TUN device and changes routes");
    }
    Ok(())
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the fd is valid for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The instance lock: held while this value lives (or until the process dies). Dropping it
/// removes the lock file first, so neither a clean exit nor a refused start leaves one.
struct InstanceLock {
    file: File,
    path: std::path::PathBuf,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Still locked here: the fd closes (and the lock goes) after this body.
        let _ = std::fs::remove_file(&self.path);
        // The namespace's directory goes with its last file (another instance's lock, a
        // cutover memory keep it); `lock` copes with losing this race.
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Takes the instance lock, in the namespace's directory (created if missing).
fn lock(config: &Config, paths: &Paths) -> anyhow::Result<InstanceLock> {
    let open = || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.dir)?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&paths.lock)
    };
    // Another instance's exit may remove the directory between the two steps: once more.
    let file = open()
        .or_else(|_| open())
        .with_context(|| format!("opening {}", paths.lock.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    if let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            let pid = std::fs::read_to_string(&paths.lock).unwrap_or_default();
            bail!(
                "vmtun is already running for {} (pid {}); stop it with: vmtun down -c {}",
                config.interface.name,
                pid.trim(),
                config.path.display()
            );
        }
        return Err(e).context("locking the instance");
    }
    let lock = InstanceLock {
        file,
        path: paths.lock.clone(),
    };
    lock.file.set_len(0)?;
    write!(&lock.file, "{}", std::process::id())?;
    Ok(lock)
}

fn bind_udp(port: u16) -> anyhow::Result<std::net::UdpSocket> {
    let socket = crate::udp::bind(port)
        .with_context(|| format!("interface.listen_port: cannot bind UDP port {port}"))?;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // Best effort: the kernel clamps to net.core.[rw]mem_max.
        // SAFETY: valid fd, pointer to a c_int of the stated size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(socket)
}

/// Takes SIGINT and SIGTERM from this call on, and completes on the first. Called before
/// readiness is announced: a stop that follows at once must undo, not be the signal's
/// default death.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
