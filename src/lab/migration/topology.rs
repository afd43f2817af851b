//! [`MigrationLab`]: the five namespaces of the migration scenario and the provider's
//! behaviour (routing, anti-spoofing, the switch, counters per link). What vmtun or the
//! seed's commands do on the hosts is not here: see [`super::hosts`].

use super::*;
use crate::lab::{self, LabError, Netns, Result};
use std::process::Command;

/// One of the two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Where the VM starts.
    Old,
    /// Where it moves to.
    New,
}

/// Packets the core counted from the VM subnet, per link (its nft named counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CoreCounters {
    /// Forwarded from the old host's link.
    pub from_old: u64,
    /// Forwarded from the new host's link (after the switch).
    pub from_new: u64,
    /// Dropped by the anti-spoofing rule (from the new host, before the switch).
    pub spoof_dropped: u64,
}

/// The core's nftables ruleset: anti-spoofing on the new host's link, then count and stamp
/// replies from the VM subnets by the link they arrive on (DSCP CS1 old, CS2 new), for
/// each family the lab has.
fn core_ruleset(families: &[Family]) -> String {
    let rules: String = families
        .iter()
        .map(|family| {
            let (ip, net) = (family.nft(), subnet(*family));
            format!(
                r#"        iifname "new0" {ip} saddr {net} counter name "spoof_drop" drop comment "anti-spoofing {ip}"
        iifname "old0" {ip} saddr {net} counter name "from_old" {ip} dscp set cs1
        iifname "new0" {ip} saddr {net} counter name "from_new" {ip} dscp set cs2
"#
            )
        })
        .collect();
    format!(
        r#"table inet lab {{
    counter from_old {{ }}
    counter from_new {{ }}
    counter spoof_drop {{ }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
{rules}    }}
}}
"#
    )
}

/// The length of a host route of `family` (/32, /128).
fn family_bits(family: Family) -> u8 {
    match family {
        Family::Ipv4 => 32,
        Family::Ipv6 => 128,
    }
}

/// The scenario's namespaces, links and provider. Dropping it deletes every namespace (and
/// with them all links, routes, rules and the processes inside).
pub struct MigrationLab {
    /// The client ("the internet").
    pub client: Netns,
    /// The provider's core router.
    pub core: Netns,
    /// The host the VM leaves.
    pub old: Netns,
    /// The host the VM arrives at.
    pub new: Netns,
    /// The VM ([`Guest::FIRST`]).
    pub vm: Netns,
    /// More VMs ([`Guest`] 1, 2...), when built with [`Self::build_with`].
    pub more_vms: Vec<Netns>,
    /// The families the lab carries: IPv4, and IPv6 when built dual-stack.
    pub families: Vec<Family>,
}

impl MigrationLab {
    /// Builds the namespaces and links, routes the VM subnet to the old host with the
    /// anti-spoofing in place, sets `rp_filter` to `host_rp_filter` on the hosts (1, strict,
    /// is a hardened host: vmtun must loosen only what it needs) and attaches the VM to the
    /// old host as its libvirt script did before vmtun (a /32 on vif0, proxy ARP). IPv6
    /// is off in every namespace.
    pub fn build(host_rp_filter: u8) -> Result<Self> {
        Self::build_with(host_rp_filter, &[Family::Ipv4], 1)
    }

    /// [`Self::build`] with IPv6 beside IPv4 everywhere: the client, core and hosts get the
    /// `2001:db8:1x::/64` twins of their links, the core routes [`SUBNET6`] like
    /// [`SUBNET`], and the VM has [`VM_ADDR6`] with its gateway [`VM_GATEWAY6`].
    pub fn build_dual_stack(host_rp_filter: u8) -> Result<Self> {
        Self::build_with(host_rp_filter, &[Family::Ipv4, Family::Ipv6], 1)
    }

    /// The lab with `families` and `vms` VMs (1 to [`guest::MAX_GUESTS`]), each attached to
    /// the old host as its libvirt script did before vmtun.
    pub fn build_with(host_rp_filter: u8, families: &[Family], vms: u8) -> Result<Self> {
        if !(1..=guest::MAX_GUESTS).contains(&vms) {
            return Err(LabError::Failed(format!(
                "the lab holds 1 to {} VMs, not {vms}",
                guest::MAX_GUESTS
            )));
        }
        let ipv6 = families.contains(&Family::Ipv6);
        let ns = |tag: &str| -> Result<Netns> {
            let ns = Netns::new(tag)?;
            if ipv6 {
                ns.quiet_ipv6()
            } else {
                ns.disable_ipv6()
            }?;
            Ok(ns)
        };
        let lab = Self {
            client: ns("client")?,
            core: ns("core")?,
            old: ns("old")?,
            new: ns("new")?,
            vm: ns("vm")?,
            more_vms: (1..vms)
                .map(|i| ns(&format!("vm{i}")))
                .collect::<Result<_>>()?,
            families: families.to_vec(),
        };
        lab::veth(&lab.client, "eth0", &lab.core, "c0")?;
        lab.client
            .add_address("eth0", &format!("{CLIENT}/{UNDERLAY_PREFIX}"))?;
        lab.core
            .add_address("c0", &format!("{CORE_CLIENT}/{UNDERLAY_PREFIX}"))?;
        lab.client
            .ip(&["route", "add", "default", "via", CORE_CLIENT])?;
        lab.core.sysctl("net.ipv4.ip_forward", "1")?;
        // The provider filters with nftables (below), not with reverse-path checks: a reply
        // arriving from the old host after the switch must reach the counters.
        lab.core.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        for (host, link, core_addr, host_addr) in [
            (&lab.old, "old0", CORE_OLD, OLD),
            (&lab.new, "new0", CORE_NEW, NEW),
        ] {
            lab::veth(&lab.core, link, host, "up0")?;
            lab.core
                .add_address(link, &format!("{core_addr}/{UNDERLAY_PREFIX}"))?;
            host.add_bridge(BRIDGE)?;
            host.set_master("up0", BRIDGE)?;
            host.add_address(BRIDGE, &format!("{host_addr}/{UNDERLAY_PREFIX}"))?;
            host.ip(&["route", "add", "default", "via", core_addr])?;
            host.sysctl("net.ipv4.ip_forward", "1")?;
            host.sysctl("net.ipv4.conf.all.rp_filter", &host_rp_filter.to_string())?;
            host.sysctl(
                "net.ipv4.conf.default.rp_filter",
                &host_rp_filter.to_string(),
            )?;
        }
        lab.core.ip(&["route", "add", SUBNET, "via", OLD])?;
        if ipv6 {
            lab.add_ipv6()?;
        }
        lab.nft(&lab.core, &core_ruleset(families))?;
        for guest in lab.guests() {
            lab.attach(guest, Site::Old)?;
            lab.seed_guest_vif_up(guest, Site::Old)?;
        }
        Ok(lab)
    }

    /// The IPv6 twin of the links and routes [`Self::build_with`] made for IPv4.
    fn add_ipv6(&self) -> Result<()> {
        let with_prefix = |a: &str| format!("{a}/{UNDERLAY6_PREFIX}");
        self.client.add_address("eth0", &with_prefix(CLIENT6))?;
        self.core.add_address("c0", &with_prefix(CORE_CLIENT6))?;
        self.client
            .ip(&["-6", "route", "add", "default", "via", CORE_CLIENT6])?;
        self.core.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for (host, link, core_addr, host_addr) in [
            (&self.old, "old0", CORE_OLD6, OLD6),
            (&self.new, "new0", CORE_NEW6, NEW6),
        ] {
            self.core.add_address(link, &with_prefix(core_addr))?;
            host.add_address(BRIDGE, &with_prefix(host_addr))?;
            host.ip(&["-6", "route", "add", "default", "via", core_addr])?;
            host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        self.core
            .ip(&["-6", "route", "add", SUBNET6, "via", OLD6])?;
        Ok(())
    }

    fn has_ipv6(&self) -> bool {
        self.families.contains(&Family::Ipv6)
    }

    /// The namespace of `site`.
    pub fn host(&self, site: Site) -> &Netns {
        match site {
            Site::Old => &self.old,
            Site::New => &self.new,
        }
    }

    fn nft(&self, ns: &Netns, ruleset: &str) -> Result<()> {
        let mut child = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io(format!("running nft -f - in {}", ns.name()), e))?;
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(ruleset.as_bytes())
                .map_err(|e| LabError::io("writing the ruleset to nft", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io("waiting for nft", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::Failed(format!(
                "nft -f - in {} failed: {}\n{ruleset}",
                ns.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Every VM of the lab, the scenario's first.
    pub fn guests(&self) -> impl Iterator<Item = Guest> + use<> {
        (0..=self.more_vms.len() as u8).map(Guest)
    }

    /// The namespace of `guest`.
    pub fn guest_ns(&self, guest: Guest) -> &Netns {
        match guest.0 {
            0 => &self.vm,
            i => &self.more_vms[usize::from(i) - 1],
        }
    }

    /// Plugs the VM into `site`: a veth pair `vif0` (host, libvirt's tap MAC) / `eth0` (VM,
    /// the guest's MAC), and inside the VM its address and default route, as the guest has
    /// them. The host side gets no route and no proxy ARP: that is `vif-up`'s job.
    pub fn attach_vm(&self, site: Site) -> Result<()> {
        self.attach(Guest::FIRST, site)
    }

    /// [`Self::attach_vm`] for any of the lab's VMs.
    pub fn attach(&self, guest: Guest, site: Site) -> Result<()> {
        self.attach_with(guest, site, || Ok(()))
    }

    /// [`Self::attach`], running `guest_state` (more guest-side state) before the tap goes
    /// up.
    fn attach_with(
        &self,
        guest: Guest,
        site: Site,
        guest_state: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.plug(guest, self.guest_ns(guest), site, guest_state)
    }

    /// A second instance of `guest` in a namespace of its own, plugged into `site` like the
    /// first (same MACs, address and routes; no IPv6 chatter): QEMU's destination of a live
    /// migration, whose tap exists while the source's still does. It sends nothing by
    /// itself (no IPv6 chatter, and nothing reaches it before the old host hands the VM
    /// over), so the test decides when "the guest runs" there: its first frame. Dropping the
    /// namespace unplugs it.
    pub fn attach_copy(&self, guest: Guest, site: Site) -> Result<Netns> {
        let copy = Netns::new("vmcopy")?;
        if self.has_ipv6() {
            copy.quiet_ipv6()?;
        } else {
            copy.disable_ipv6()?;
        }
        self.plug(guest, &copy, site, || Ok(()))?;
        Ok(copy)
    }

    /// Plugs `vm`, holding `guest`, into `site` (see [`Self::attach_vm`]).
    fn plug(
        &self,
        guest: Guest,
        vm: &Netns,
        site: Site,
        guest_state: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let host = self.host(site);
        let vif = guest.vif();
        lab::process::run_checked(
            &format!("creating the VM's veth {vif}@{}", host.name()),
            Command::new("ip").args([
                "link",
                "add",
                &vif,
                "address",
                &guest.vif_mac(),
                "netns",
                host.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &guest.mac(),
                "netns",
                vm.name(),
            ]),
        )?;
        // The guest side first, the host's tap last: a running guest's NIC is configured
        // when the tap comes up, and vmtun routes the vif (and ARPs for the VM) the moment
        // it is up; an unanswered first ARP would cost a 1 s retransmission.
        vm.link_up("eth0")?;
        vm.add_address("eth0", &format!("{}/32", guest.addr(Family::Ipv4)))?;
        vm.ip(&[
            "route", "add", "default", "via", VM_GATEWAY, "dev", "eth0", "onlink",
        ])?;
        if self.has_ipv6() {
            vm.add_address("eth0", &format!("{}/128", guest.addr(Family::Ipv6)))?;
            vm.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                VM_GATEWAY6,
                "dev",
                "eth0",
            ])?;
        }
        guest_state()?;
        host.link_up(&vif)
    }

    /// Limits what each host sends into the provider's network (`up0`, both directions of
    /// the underlay) to `mbit` Mbit/s with a token bucket, as a real link between two
    /// data centres limits it; the lab's veths otherwise carry whatever the CPU can. The
    /// bucket holds 1 ms of the rate, at least 256 KiB (a 64 KiB GSO packet must fit).
    pub fn limit_underlay(&self, mbit: u32) -> Result<()> {
        let bytes_per_ms = u64::from(mbit) * 1_000_000 / 8 / 1_000;
        let burst = bytes_per_ms.max(256 * 1024).to_string();
        let rate = format!("{mbit}mbit");
        for host in [&self.old, &self.new] {
            host.run(
                "tc",
                &[
                    "qdisc", "add", "dev", "up0", "root", "tbf", "rate", &rate, "burst", &burst,
                    "latency", "20ms",
                ],
            )?;
        }
        Ok(())
    }

    /// Unplugs the VM from `site` (deleting vif0 deletes the VM's eth0 with it, and the /32
    /// route on vif0): what libvirt does to the tap when a migrated VM leaves.
    pub fn detach_vm(&self, site: Site) -> Result<()> {
        self.detach(Guest::FIRST, site)
    }

    /// [`Self::detach_vm`] for any of the lab's VMs.
    pub fn detach(&self, guest: Guest, site: Site) -> Result<()> {
        self.host(site).ip(&["link", "del", &guest.vif()]).map(drop)
    }

    /// Moves the VM from `from` to `to` as a live migration does: unplug, plug in on the
    /// other host, and give the guest back its ARP entry for the gateway. A migrated guest
    /// keeps its memory, so its ARP cache still holds the gateway at the tap's MAC, which
    /// is the same on the new host ([`VIF_MAC`]); only the lab's veth, recreated, lost it.
    /// Without this the guest would ARP again and wait for proxy ARP's answer.
    pub fn move_vm(&self, from: Site, to: Site) -> Result<()> {
        self.move_guest(Guest::FIRST, from, to)
    }

    /// [`Self::move_vm`] for any of the lab's VMs.
    pub fn move_guest(&self, guest: Guest, from: Site, to: Site) -> Result<()> {
        self.detach(guest, from)?;
        let vm = self.guest_ns(guest);
        let vif_mac = guest.vif_mac();
        self.attach_with(guest, to, || {
            vm.ip(&[
                "neigh", "replace", VM_GATEWAY, "lladdr", &vif_mac, "dev", "eth0", "nud", "stale",
            ])?;
            if self.has_ipv6() {
                vm.ip(&[
                    "-6",
                    "neigh",
                    "replace",
                    VM_GATEWAY6,
                    "lladdr",
                    &vif_mac,
                    "dev",
                    "eth0",
                    "nud",
                    "stale",
                ])?;
            }
            Ok(())
        })
    }

    /// The seed's libvirt script for vif0 on `site`, done by hand: the VM's /32 on vif0 and
    /// proxy ARP (and, dual-stack, the /128 and the gateway's link-local address, as
    /// `vif-up` does). Used where vmtun does not run (the VM's first host, the baselines).
    pub fn seed_vif_up(&self, site: Site) -> Result<()> {
        self.seed_guest_vif_up(Guest::FIRST, site)
    }

    /// [`Self::seed_vif_up`] for any of the lab's VMs.
    pub fn seed_guest_vif_up(&self, guest: Guest, site: Site) -> Result<()> {
        let host = self.host(site);
        let vif = guest.vif();
        let host_route = |family| format!("{}/{}", guest.addr(family), family_bits(family));
        host.ip(&["route", "replace", &host_route(Family::Ipv4), "dev", &vif])?;
        host.sysctl(&format!("net.ipv4.conf.{vif}.proxy_arp"), "1")?;
        if self.has_ipv6() {
            host.ip(&[
                "-6",
                "route",
                "replace",
                &host_route(Family::Ipv6),
                "dev",
                &vif,
            ])?;
            host.ip(&["addr", "replace", &format!("{VM_GATEWAY6}/64"), "dev", &vif])?;
        }
        Ok(())
    }

    /// The provider switches the VM subnets to the new host: first it accepts the subnets
    /// as sources from the new host (the anti-spoofing rules go), then it routes them
    /// there. Replies from the old host stay accepted (counted and stamped as such).
    pub fn switch_provider(&self) -> Result<()> {
        self.lift_source_filter()?;
        self.route_to_new()
    }

    /// The first half of [`Self::switch_provider`]: the core accepts the VM subnets as
    /// sources from the new host (the anti-spoofing rules go).
    pub fn lift_source_filter(&self) -> Result<()> {
        let listing = self
            .core
            .run("nft", &["-a", "list", "chain", "inet", "lab", "forward"])?;
        let handles: Vec<u64> = listing
            .lines()
            .filter(|line| line.contains("anti-spoofing"))
            .filter_map(|line| line.rsplit("# handle ").next()?.trim().parse().ok())
            .collect();
        if handles.len() != self.families.len() {
            return Err(LabError::Failed(format!(
                "expected {} anti-spoofing rules in the core: {listing}",
                self.families.len()
            )));
        }
        for handle in handles {
            let handle = handle.to_string();
            let args = [
                "delete", "rule", "inet", "lab", "forward", "handle", &handle,
            ];
            self.core.run("nft", &args)?;
        }
        Ok(())
    }

    /// The second half of [`Self::switch_provider`]: the core routes the VM subnets to the
    /// new host. A provider may do this first, before [`Self::lift_source_filter`].
    pub fn route_to_new(&self) -> Result<()> {
        self.core.ip(&["route", "replace", SUBNET, "via", NEW])?;
        if self.has_ipv6() {
            self.core
                .ip(&["-6", "route", "replace", SUBNET6, "via", NEW6])?;
        }
        Ok(())
    }

    /// The provider, after its switch, stops accepting the VM subnets as sources from the
    /// old host too (its anti-spoofing follows the route): what a VM left on the old host
    /// sends out natively is dropped from now on.
    pub fn drop_subnets_from_old(&self) -> Result<()> {
        for family in &self.families {
            let (ip, net) = (family.nft(), subnet(*family));
            self.core.run(
                "nft",
                &[
                    "insert",
                    "rule",
                    "inet",
                    "lab",
                    "forward",
                    "iifname",
                    "old0",
                    ip,
                    "saddr",
                    net,
                    "counter",
                    "drop",
                    "comment",
                    "\"anti-spoofing old\"",
                ],
            )?;
        }
        Ok(())
    }

    /// The core's counters of packets from the VM subnet per link.
    pub fn core_counters(&self) -> Result<CoreCounters> {
        let read = |name: &str| -> Result<u64> {
            let text = self
                .core
                .run("nft", &["list", "counter", "inet", "lab", name])?;
            text.split_whitespace()
                .skip_while(|word| *word != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| LabError::Failed(format!("no packet count in {text:?}")))
        };
        Ok(CoreCounters {
            from_old: read("from_old")?,
            from_new: read("from_new")?,
            spoof_dropped: read("spoof_drop")?,
        })
    }
}
