//! `vmtun follow-libvirt`: the old host's handover at the source's pause (issue 12, item 3)
//! driven by libvirt. libvirt tells its clients when the source pauses a guest for the
//! migration's last stage (the lifecycle event `Suspended Migrated`) and when a guest runs
//! again (`Resumed`); this follows them through `virsh event --loop` and makes the running
//! vmtun's `handover` requests for the domain's interfaces that `[[vm]]`s name, so that what
//! the guest is sent during its pause waits on the new host rather than dying here.
//!
//! The domains' interfaces are read (`virsh domiflist`) at start and whenever a domain
//! starts or is redefined, never on the pause's path, unless the paused domain is unknown.
//! The meaning of the events is [`parse_event`]'s and [`Domains`]'s; this module is the
//! process edge.

mod event;

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;

pub use event::{Action, Domains, Lifecycle, parse_domiflist, parse_event};

use crate::config::{Config, HandoverMode, Role};
use crate::control::{self, Reply, Request};

/// The libvirt client run for the events and the interfaces.
const VIRSH: &str = "virsh";

/// Follows the lifecycle events of the libvirt daemon at `uri` and hands `config`'s VMs
/// over at their migration's pause, back at a resume; runs until virsh's event stream ends
/// (libvirtd stopped or restarted), which is an error: the unit restarts it.
pub fn follow(config: &Config, uri: &str) -> anyhow::Result<()> {
    check_config(config)?;
    let mut follower = Follower {
        config,
        uri,
        configured: config.vms.iter().map(|vm| vm.vif.clone()).collect(),
        domains: Domains::default(),
    };
    // Subscribed before the domains are listed, so that no start between the two is missed.
    let mut events = Events::start(uri)?;
    for domain in virsh(uri, &["list", "--name"])?.lines().map(str::trim) {
        if !domain.is_empty() {
            follower.learn(domain);
        }
    }
    tracing::info!(
        "following libvirt's lifecycle events on {uri} for the VM interfaces {}",
        follower.configured.join(", ")
    );
    let stdout = events.child.stdout.take().context("virsh event's output")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading virsh event's output")?;
        let Some((domain, lifecycle)) = parse_event(&line) else {
            continue;
        };
        let seen = Instant::now();
        let acts_on_vifs = matches!(
            lifecycle,
            Lifecycle::PausedForMigration | Lifecycle::Resumed
        );
        if acts_on_vifs && !follower.domains.knows(&domain) {
            follower.learn(&domain);
        }
        for action in follower.domains.actions(&domain, &lifecycle) {
            follower.carry_out(&domain, action, seen);
        }
    }
    let status = events.child.wait().context("waiting for virsh event")?;
    anyhow::bail!(
        "libvirt's event stream on {uri} ended (virsh event: {status}): is libvirtd running? \
         (systemd restarts vmtun-follow-libvirt)"
    )
}

/// `follow-libvirt` is for the old host, with the handover on and VMs to hand over.
fn check_config(config: &Config) -> anyhow::Result<()> {
    let path = config.path.display();
    let Some(migration) = &config.migration else {
        anyhow::bail!("{path} has no [migration]: nothing to hand over");
    };
    if migration.role != Role::Old {
        anyhow::bail!(
            "follow-libvirt is for the old host (role old); {path} has role new: the new host \
             sees its guests arrive by itself"
        );
    }
    if migration.handover != HandoverMode::FirstFrame {
        anyhow::bail!(
            "{path} has [migration] handover = \"vif-gone\": the new host would confirm no \
             handover; set handover = \"first-frame\" on both hosts"
        );
    }
    if config.vms.is_empty() {
        anyhow::bail!("{path} has no [[vm]]: no VM interface to hand over");
    }
    Ok(())
}

/// `virsh event --loop --event lifecycle`, ended (by its PID) when dropped.
struct Events {
    child: Child,
}

impl Events {
    fn start(uri: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(VIRSH);
        command
            .env("LC_ALL", "C")
            .args(["-c", uri, "event", "--loop", "--event", "lifecycle"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe; it only sets a flag of the child.
        unsafe {
            command.pre_exec(|| {
                // Ends with us however we end (a signal runs no destructor).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting `{VIRSH} event` (is libvirt-clients installed?)"))?;
        Ok(Self { child })
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `virsh -c URI ARGS` to completion; its stdout, or its stderr as the error.
fn virsh(uri: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(VIRSH)
        .env("LC_ALL", "C")
        .args(["-c", uri])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{VIRSH} {}`", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{VIRSH} -c {uri} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `follow` keeps: whom to ask, and the domains' VM interfaces as last read.
struct Follower<'a> {
    config: &'a Config,
    uri: &'a str,
    /// The `[[vm]]` interfaces.
    configured: Vec<String>,
    domains: Domains,
}

impl Follower<'_> {
    /// Reads `domain`'s interfaces; a domain libvirt cannot list (gone meanwhile) has none.
    fn learn(&mut self, domain: &str) {
        match virsh(self.uri, &["domiflist", domain]) {
            Ok(text) => {
                (self.domains).learn(domain, &parse_domiflist(&text), &self.configured);
                let vifs = self.domains.vifs(domain);
                if !vifs.is_empty() {
                    tracing::info!("{domain}: VM interfaces {}", vifs.join(", "));
                }
            }
            Err(e) => tracing::warn!("{domain}: cannot read its interfaces: {e:#}"),
        }
    }

    /// Carries out one action for `domain`'s event seen at `seen`, logging what it did.
    fn carry_out(&mut self, domain: &str, action: Action, seen: Instant) {
        let (request, what) = match action {
            Action::Refresh(domain) => return self.learn(&domain),
            Action::HandOver(vif) => (
                Request::Handover(vif.clone()),
                format!("{domain} paused for its migration: {vif} handed over to the new host"),
            ),
            Action::HandBack(vif) => (
                Request::HandBack(vif.clone()),
                format!("{domain} runs here: {vif} routed here"),
            ),
        };
        match control::request(self.config, request) {
            Ok(Reply::Ok(_)) => tracing::info!(
                "{what} ({:.1} ms after the event)",
                seen.elapsed().as_secs_f64() * 1e3
            ),
            Ok(Reply::Error(e)) => tracing::warn!("{domain}: vmtun refused: {e}"),
            Err(e) => tracing::warn!("{domain}: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(migration: &str, vms: &str) -> Config {
        let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let peer = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";
        let text = format!(
            "[interface]\nname = \"vmtun0\"\nprivate_key = \"{key}\"\naddress = \"100.64.0.1/24\"\n\n\
             [[peer]]\npublic_key = \"{peer}\"\nallowed_ips = [\"0.0.0.0/0\"]\n\n{migration}\n{vms}"
        );
        Config::parse(&text, Path::new("/etc/vmtun/test.toml")).unwrap()
    }

    const OLD: &str =
        "[migration]\nrole = \"old\"\nsubnets = [\"203.0.113.0/29\"]\nvia = \"100.64.0.2\"\n";
    const VM: &str = "[[vm]]\nvif = \"vif0\"\naddresses = [\"203.0.113.2\"]\n";

    #[test]
    fn only_an_old_host_with_vms_and_the_handover_on_is_followed_for() {
        assert!(check_config(&config(OLD, VM)).is_ok());
        for (migration, vms, says) in [
            ("", "", "no [migration]"),
            (&OLD.replace("old", "new"), VM, "role new"),
            (
                &format!("{OLD}handover = \"vif-gone\"\n"),
                VM,
                "handover = \"vif-gone\"",
            ),
            (OLD, "", "no [[vm]]"),
        ] {
            let refused = check_config(&config(migration, vms))
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(says) && refused.contains("/etc/vmtun/test.toml"),
                "{refused}"
            );
        }
    }
}
