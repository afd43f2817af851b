//! Helpers of the migration tests (tests/migration.rs): the two hosts' vmtun instances on
//! the lab of `vmtun::lab::migration`, snapshots of a host's routing and netfilter state,
//! and raw Ethernet frames (ARP, QEMU's RARP announcement, broadcast IPv4) sent onto the
//! new host's bridge from the core.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use vmtun::lab::migration::hosts::{HostConfig, HostVmtun, KeyPair};
use vmtun::lab::migration::topology::MigrationLab;
use vmtun::lab::{LabError, Netns, Result, Scratch};

/// Path of the `vmtun` binary under test.
pub const VMTUN: &str = env!("CARGO_BIN_EXE_vmtun");

/// The two hosts' configs, written but not started: `(old, new)`.
pub fn prepare_hosts<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
    cutover: &'static str,
) -> Result<(HostVmtun<'a>, HostVmtun<'a>)> {
    let vmtun = Path::new(VMTUN);
    let old_keys = KeyPair::generate(vmtun)?;
    let new_keys = KeyPair::generate(vmtun)?;
    let old = HostVmtun::prepare(
        &lab.old,
        vmtun,
        scratch,
        HostConfig::old(&old_keys, &new_keys),
    )?;
    let new = HostVmtun::prepare(
        &lab.new,
        vmtun,
        scratch,
        HostConfig::new_host(&new_keys, &old_keys, cutover),
    )?;
    Ok((old, new))
}

/// A host's routing and netfilter state, as text, to compare before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// `ip rule`.
    pub rules: String,
    /// `ip route show table all`.
    pub routes: String,
    /// `nft list ruleset` (iptables-nft's tables included).
    pub nft: String,
    /// rp_filter, proxy_arp, forwarding and src_valid_mark of every interface, and
    /// ip_forward.
    pub sysctls: String,
    /// Interfaces (names only).
    pub links: String,
}

impl HostState {
    /// Reads the state of `ns`.
    pub fn of(ns: &Netns) -> Result<Self> {
        let links = ns.ip(&["-o", "link", "show"])?;
        let mut names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect();
        names.sort_unstable();
        Ok(Self {
            rules: ns.ip(&["rule", "show"])?,
            routes: ns.ip(&["route", "show", "table", "all"])?,
            nft: ns.run("nft", &["list", "ruleset"])?,
            sysctls: ns.run(
                "sysctl",
                &[
                    "-a",
                    "-r",
                    r"^net\.ipv4\.(conf\..*\.(rp_filter|proxy_arp|forwarding|src_valid_mark)|ip_forward)$",
                ],
            )?,
            links: names.join(" "),
        })
    }

    /// A readable difference for failure messages.
    pub fn diff(&self, other: &Self) -> String {
        let mut out = String::new();
        for (name, a, b) in [
            ("ip rule", &self.rules, &other.rules),
            ("ip route show table all", &self.routes, &other.routes),
            ("nft list ruleset", &self.nft, &other.nft),
            ("sysctls", &self.sysctls, &other.sysctls),
            ("links", &self.links, &other.links),
        ] {
            if a != b {
                out += &format!("--- {name} before:\n{a}\n--- {name} after:\n{b}\n");
            }
        }
        out
    }
}

/// An Ethernet frame: destination, source, EtherType, payload (padded to 60 bytes).
fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An ARP/RARP body for Ethernet/IPv4 (RFC 826, RFC 903).
fn arp_body(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut b = vec![0, 1, 0x08, 0x00, 6, 4];
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa);
    b.extend_from_slice(&tha);
    b.extend_from_slice(&tpa);
    b
}

/// A minimal IPv4/UDP packet from `src` to `dst` (checksums computed for the IP header).
fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, src[0], src[1], src[2], src[3], dst[0], dst[1],
        dst[2], dst[3],
    ];
    let sum: u32 = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(&[0x1e, 0x61, 0x1e, 0x61, 0, 8, 0, 0]);
    p
}

/// Frames that carry the VM's address without being a native IPv4 packet for the subnet
/// to this host, each with a name: ARP requests and a gratuitous ARP for the VM's address,
/// QEMU's RARP announcement after a migration, and a broadcast IPv4 frame to the VM's
/// address.
pub fn decoy_frames(src_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    const BROADCAST: [u8; 6] = [0xff; 6];
    let vm_mac = [0x52, 0x54, 0x00, 0x00, 0x71, 0x02];
    let vm = [203, 0, 113, 2];
    let core = [198, 18, 2, 1];
    vec![
        (
            "ARP request for the VM's address",
            frame(
                BROADCAST,
                src_mac,
                0x0806,
                &arp_body(1, src_mac, core, [0; 6], vm),
            ),
        ),
        (
            "gratuitous ARP for the VM's address",
            frame(
                BROADCAST,
                src_mac,
                0x0806,
                &arp_body(2, src_mac, vm, BROADCAST, vm),
            ),
        ),
        (
            "QEMU's RARP announcement",
            frame(
                BROADCAST,
                vm_mac,
                0x8035,
                &arp_body(3, vm_mac, [0; 4], vm_mac, [0; 4]),
            ),
        ),
        (
            "broadcast IPv4 frame to the VM's address",
            frame(BROADCAST, src_mac, 0x0800, &ipv4_udp([198, 18, 10, 2], vm)),
        ),
    ]
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let text = ns.run("cat", &[&format!("/sys/class/net/{dev}/address")])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| LabError::Failed(format!("bad MAC of {dev}: {text:?}")))
}

/// Sends `frames` out of `dev` in `ns` through an `AF_PACKET` socket, unchanged.
pub fn send_frames(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let dev = dev.to_owned();
    ns.thread("frames", move || {
        let name = std::ffi::CString::new(dev.clone()).expect("no NUL in a device name");
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(LabError::io(
                format!("finding {dev}"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: socket(2); the fd is owned by OwnedFd right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(LabError::io(
                "opening a packet socket",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for f in &frames {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid before we fill it.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: sendto(2) with a buffer and address we own, sizes as declared.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(LabError::io(
                    format!("sending a frame on {dev}"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    })?
    .join()
    .map_err(|_| LabError::Failed("the frame sender panicked".into()))?
}
