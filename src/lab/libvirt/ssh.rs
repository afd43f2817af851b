//! SSH between two lab hosts' libvirt daemons, so that `virsh migrate --p2p` takes the
//! README's peer URI, `qemu+ssh://NEW/system`, as on real hosts: the old host's libvirtd
//! runs OpenSSH's `ssh` with root's key and the new host's known host key, both in its
//! private `/root/.ssh`; the new host runs an SSH server in its daemon's namespaces, so
//! that the login's `virt-ssh-helper` reaches that daemon's socket.
//!
//! The server is dropbear (Debian's dropbear-bin: binaries only, no service that would
//! start in the root namespace on install, no system user); libvirt only ever sees the
//! client side, which is OpenSSH's as on any host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Libvirtd, VIRSH};
use crate::lab::scratch::write_with_mode;
use crate::lab::{LabError, Process, Result, process, wait_for};

/// The lab's SSH server.
const SSH_SERVER: &str = "dropbear";
/// Its key generator (dropbear's own key format).
const SSH_SERVER_KEYGEN: &str = "dropbearkey";
/// OpenSSH's key generator (its client, `ssh`, is what libvirt runs for `qemu+ssh://`).
const SSH_KEYGEN: &str = "ssh-keygen";
/// Every program the lab's SSH needs: the server and its key generator, OpenSSH's client
/// and key generator, and `nsenter` to start the server in a daemon's namespaces.
pub const PROGRAMS: [&str; 5] = [SSH_SERVER, SSH_SERVER_KEYGEN, "ssh", SSH_KEYGEN, "nsenter"];
/// The server's host key, inside its host's private `/root/.ssh`.
const HOST_KEY: &str = "/root/.ssh/lab_host_key";
/// The ceiling of the first login (the server's start included).
const LOGIN_WAIT: Duration = Duration::from_secs(30);

/// The libvirt URI of the system daemon at `addr`, reached over SSH as root.
pub fn ssh_uri(addr: &str) -> String {
    format!("qemu+ssh://{addr}/system")
}

/// The server's command line after the program: foreground, log to stderr, no password
/// logins, listening on `addr` port 22 only, with the lab's host key.
pub fn server_args(addr: &str) -> Vec<String> {
    let listen = format!("{addr}:22");
    let args = ["-F", "-E", "-s", "-p", &listen, "-r", HOST_KEY];
    args.into_iter()
        .chain(["-P", "/run/dropbear.pid"])
        .map(String::from)
        .collect()
}

/// The `known_hosts` line that trusts `public_key` (`ssh-ed25519 AAAA...`) for `addr`.
pub fn known_hosts_line(addr: &str, public_key: &str) -> String {
    let mut fields = public_key.split_whitespace();
    let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    format!("{addr} {kind} {key}\n")
}

/// The OpenSSH public key line in `dropbearkey -y`'s output.
pub fn public_key_line(output: &str) -> Option<&str> {
    output.lines().find(|l| l.starts_with("ssh-ed25519 "))
}

/// The SSH server of a lab host, stopped by PID when dropped.
pub struct SshServer {
    process: Process,
}

impl SshServer {
    /// How many times root has logged in with its key so far: what shows that a
    /// migration's peer connection went through SSH.
    pub fn logins(&self) -> usize {
        self.process
            .stderr()
            .matches("Pubkey auth succeeded for 'root'")
            .count()
    }
}

/// Lets root on `client`'s host log in to `server`'s host: a key for the client, a host
/// key for the server, each trusting the other's, and the server started in `server`'s
/// namespaces. Returns once `virsh -c qemu+ssh://SERVER/system`, run where `client`'s
/// libvirtd runs, reached `server`'s daemon.
pub fn open(client: &Libvirtd<'_>, server: &Libvirtd<'_>, log_dir: &Path) -> Result<SshServer> {
    let client_dir = ssh_dir(client)?;
    let server_dir = ssh_dir(server)?;
    let key = client_dir.join("id_ed25519");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    process::run_checked(
        "making root's SSH key for the old host",
        Command::new(SSH_KEYGEN)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "vmtunlab", "-f"])
            .arg(&key),
    )?;
    let host_key = server
        .host_path(HOST_KEY)
        .expect("/root/.ssh is one of the daemon's private directories");
    let _ = std::fs::remove_file(&host_key);
    process::run_checked(
        "making the new host's SSH host key",
        Command::new(SSH_SERVER_KEYGEN)
            .args(["-t", "ed25519", "-f"])
            .arg(&host_key),
    )?;
    let shown = process::run_checked(
        "reading the new host's SSH host key",
        Command::new(SSH_SERVER_KEYGEN)
            .args(["-y", "-f"])
            .arg(&host_key),
    )?;
    let host_public = public_key_line(&shown).ok_or_else(|| {
        LabError::Failed(format!(
            "no ssh-ed25519 key in dropbearkey -y's output:\n{shown}"
        ))
    })?;
    write_with_mode(
        &server_dir.join("authorized_keys"),
        &read(&key.with_extension("pub"))?,
        0o600,
    )?;
    write_with_mode(
        &client_dir.join("known_hosts"),
        &known_hosts_line(server.address(), host_public),
        0o600,
    )?;

    let mut cmd = server.command(SSH_SERVER);
    cmd.args(server_args(server.address()));
    let mut sshd = Process::spawn(&format!("ssh-server-{}", server.label()), log_dir, cmd)?;
    let uri = ssh_uri(server.address());
    let mut last_error = String::new();
    let reached = wait_for(LOGIN_WAIT, &format!("virsh -c {uri} hostname"), || {
        if let Some(status) = sshd.exit_status() {
            return Some(Err(LabError::Failed(format!(
                "{SSH_SERVER} exited with {status}:\n{}",
                sshd.stderr_tail()
            ))));
        }
        let attempt = process::run_checked(
            "virsh over SSH",
            client
                .command("timeout")
                .args(["10", VIRSH, "-c", &uri, "hostname"]),
        );
        attempt.map_err(|e| last_error = e.to_string()).ok().map(Ok)
    })
    .map_err(|e| {
        LabError::Failed(format!(
            "{e}; the last attempt: {last_error}\n{}",
            sshd.stderr_tail()
        ))
    })??;
    let reached = reached.trim();
    if reached != server.hostname() {
        return Err(LabError::Failed(format!(
            "{uri} reached {reached:?}, not the new host's daemon ({})",
            server.hostname()
        )));
    }
    Ok(SshServer { process: sshd })
}

/// `daemon`'s `/root/.ssh` on the host, made with mode 0700 (both ends refuse keys in a
/// directory others may write).
fn ssh_dir(daemon: &Libvirtd<'_>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = daemon
        .host_path("/root/.ssh")
        .expect("/root/.ssh is one of the daemon's private directories");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| LabError::io(format!("making {}", dir.display()), e))?;
    Ok(dir)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_listens_on_the_underlay_address_with_the_lab_key_and_no_passwords() {
        assert_eq!(
            server_args("198.18.2.2").join(" "),
            "-F -E -s -p 198.18.2.2:22 -r /root/.ssh/lab_host_key -P /run/dropbear.pid"
        );
    }

    #[test]
    fn the_client_trusts_the_servers_key_for_its_address_only() {
        let shown =
            "Public key portion is:\nssh-ed25519 AAAAC3Nz root@new\nFingerprint: sha1!! 00:11\n";
        let key = public_key_line(shown).unwrap();
        assert_eq!(key, "ssh-ed25519 AAAAC3Nz root@new");
        assert_eq!(
            known_hosts_line("198.18.2.2", key),
            "198.18.2.2 ssh-ed25519 AAAAC3Nz\n"
        );
        assert_eq!(public_key_line("Fingerprint only\n"), None);
    }

    #[test]
    fn the_peer_uri_is_root_over_ssh_to_the_system_daemon() {
        assert_eq!(ssh_uri("198.18.2.2"), "qemu+ssh://198.18.2.2/system");
    }
}
