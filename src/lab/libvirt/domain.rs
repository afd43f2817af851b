//! The guest as a libvirt domain: its XML with the interface the README documents, the
//! lab's `<script>` that runs the shipped one, and the `virsh migrate` arguments. Pure:
//! nothing here runs anything.

use std::path::Path;

use super::ssh::ssh_uri;
use super::{VIF_SCRIPT, VIF_SCRIPT_CALLS};
use crate::lab::qemu::{GuestImage, QEMU};

/// `text` with the five XML special characters escaped, for attribute and element text.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// `text` as one single-quoted shell word.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The guest as a libvirt domain: what [`domain_xml`] describes.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// The domain's name.
    pub name: String,
    /// The kernel and initramfs, booted directly.
    pub image: GuestImage,
    /// The guest NIC's MAC (libvirt gives the tap the same with `fe` first).
    pub mac: String,
    /// The host's interface for the guest (`<target dev=...>`).
    pub vif: String,
    /// The guest's address, for its init.
    pub addr: String,
    /// The guest's arbitrary default gateway, for its init.
    pub gateway: String,
    /// A raw disk image for the guest's `/dev/vda` (virtio), a path as the daemons see it;
    /// `None`: no disk.
    pub disk: Option<String>,
}

impl DomainSpec {
    /// Where the serial console goes on every host (inside its private `/var/log/libvirt`).
    pub fn console(&self) -> String {
        format!("/var/log/libvirt/qemu/{}.console", self.name)
    }
}

/// The domain XML of `spec`: the interface as the README documents it (`type='ethernet'`,
/// the MAC, `<target dev>`, `<script path>` = [`VIF_SCRIPT`], virtio), TCG on q35 with ACPI
/// declared (without `<acpi/>` libvirt 9.0 passes `-no-acpi`, which QEMU 10 rejects), the
/// guest's RAM allocated at start (`<allocation mode='immediate'/>`, see
/// [`GuestRam`](crate::lab::qemu::GuestRam)), the console appended to a file, the disk if
/// there is one, and nothing else a lab guest does not need.
pub fn domain_xml(spec: &DomainSpec) -> String {
    let e = |s: &str| xml_escape(s);
    let disk = spec.disk.as_deref().map_or(String::new(), |path| {
        format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n",
            e(path)
        )
    });
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmtun.addr={} vmtun.gw={}",
        spec.addr, spec.gateway
    );
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <allocation mode='immediate'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/{qemu}</emulator>
{disk}    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{vif}'/>
      <script path='{script}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}' append='on'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        name = e(&spec.name),
        kernel = e(&spec.image.kernel.display().to_string()),
        initrd = e(&spec.image.initrd.display().to_string()),
        cmdline = e(&cmdline),
        qemu = QEMU,
        mac = e(&spec.mac),
        vif = e(&spec.vif),
        script = VIF_SCRIPT,
        console = e(&spec.console()),
    )
}

/// The lab's `<script>` on one host: it records the interface libvirt called it for in
/// [`VIF_SCRIPT_CALLS`], then runs the shipped script `shipped` with the binary under test
/// and the host's config (the shipped script's defaults are the installed paths; libvirt
/// passes the script no environment of its own, so the lab sets them here).
pub fn vif_script(shipped: &Path, vmtun: &Path, config: &Path) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    format!(
        "#!/bin/sh\necho \"$1\" >>{calls}\nexport VMTUN={vmtun} VMTUN_CONFIG={config}\nexec {shipped} \"$@\"\n",
        calls = VIF_SCRIPT_CALLS,
        vmtun = q(vmtun),
        config = q(config),
        shipped = q(shipped),
    )
}

/// What `virsh migrate` does with the guest's disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disks {
    /// Leaves them: shared storage, or none.
    Leave,
    /// `--copy-storage-all`: QEMU's NBD mirror copies them to the destination's images,
    /// to the same address as the migration stream.
    CopyAll,
}

/// Who drives a `virsh migrate`: the source's libvirtd or `virsh` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `--p2p`: the source's libvirtd connects to the destination's (over SSH as root) and
    /// runs the migration's steps; `virsh` only asks.
    SourceDaemon,
    /// No `--p2p`: `virsh` connects to both daemons and runs the steps between them, so it
    /// gets each daemon's error first hand.
    Virsh,
}

/// `virsh migrate` of `domain` to the daemon on `dest`, the lab's form of the README's
/// command: live, driven by `driver`, to `qemu+ssh://DEST/system`, persistent on the
/// destination, and QEMU's stream (and with [`Disks::CopyAll`] the disks' copy) sent to
/// `stream` (`--migrateuri`): the destination's underlay address, or its tunnel address
/// so that they cross vmtun's tunnel. Without `--migrateuri` the destination offers its
/// hostname, which the source cannot resolve.
pub fn migrate_args(
    domain: &str,
    dest: &str,
    stream: &str,
    disks: Disks,
    driver: Driver,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["migrate".into(), "--live".into()];
    if driver == Driver::SourceDaemon {
        args.push("--p2p".into());
    }
    args.extend(["--persistent".into(), "--verbose".into()]);
    if disks == Disks::CopyAll {
        args.push("--copy-storage-all".into());
    }
    args.extend([
        domain.into(),
        ssh_uri(dest),
        "--migrateuri".into(),
        format!("tcp://{stream}"),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "vmtunlab-guest".into(),
            image: GuestImage {
                kernel: "/g/vmlinuz".into(),
                initrd: "/g/initrd".into(),
            },
            mac: "52:54:00:00:71:02".into(),
            vif: "vif0".into(),
            addr: "203.0.113.2".into(),
            gateway: "192.0.2.1".into(),
            disk: None,
        }
    }

    #[test]
    fn the_domain_has_the_documented_interface_and_acpi() {
        let xml = domain_xml(&spec());
        let interface = "<interface type='ethernet'>\n      <mac address='52:54:00:00:71:02'/>\n      <target dev='vif0'/>\n      <script path='/etc/libvirt/scripts/vif-route'/>\n      <model type='virtio'/>\n    </interface>";
        assert!(xml.contains(interface), "{xml}");
        assert!(xml.contains("<acpi/>"));
        assert!(xml.contains("<allocation mode='immediate'/>"));
        assert!(xml.contains("<domain type='qemu'>"));
        assert!(xml.contains("vmtun.addr=203.0.113.2 vmtun.gw=192.0.2.1"));
        assert!(!xml.contains("<disk"));
        assert!(
            xml.contains(
                "<source path='/var/log/libvirt/qemu/vmtunlab-guest.console' append='on'/>"
            )
        );
    }

    #[test]
    fn a_disk_is_a_raw_virtio_disk_vda() {
        let mut with_disk = spec();
        with_disk.disk = Some("/var/lib/libvirt/images/g.raw".into());
        let xml = domain_xml(&with_disk);
        let disk = "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='/var/lib/libvirt/images/g.raw'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <interface type='ethernet'>";
        assert!(xml.contains(disk), "{xml}");
    }

    #[test]
    fn xml_text_is_escaped() {
        let mut odd = spec();
        odd.image.kernel = "/a&b/<k>'".into();
        let xml = domain_xml(&odd);
        assert!(
            xml.contains("<kernel>/a&amp;b/&lt;k&gt;&apos;</kernel>"),
            "{xml}"
        );
    }

    #[test]
    fn the_lab_script_records_the_call_and_runs_the_shipped_one() {
        let script = vif_script(
            Path::new("/repo/packaging/libvirt/vif-up"),
            Path::new("/t/vmtun"),
            Path::new("/s/it's.toml"),
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("echo \"$1\" >>/var/log/libvirt/vif-route.calls\n"));
        assert!(script.contains("export VMTUN='/t/vmtun' VMTUN_CONFIG='/s/it'\\''s.toml'\n"));
        assert!(script.ends_with("exec '/repo/packaging/libvirt/vif-up' \"$@\"\n"));
    }

    #[test]
    fn migration_is_live_peer_to_peer_over_ssh_and_to_the_underlay_address() {
        let args = migrate_args(
            "g",
            "198.18.2.2",
            "198.18.2.2",
            Disks::Leave,
            Driver::SourceDaemon,
        );
        assert_eq!(
            args,
            [
                "migrate",
                "--live",
                "--p2p",
                "--persistent",
                "--verbose",
                "g",
                "qemu+ssh://198.18.2.2/system",
                "--migrateuri",
                "tcp://198.18.2.2"
            ]
        );
    }

    #[test]
    fn the_stream_and_the_disks_copy_can_go_to_the_tunnel_address() {
        let args = migrate_args(
            "g",
            "198.18.2.2",
            "100.64.0.2",
            Disks::CopyAll,
            Driver::SourceDaemon,
        );
        assert_eq!(
            args,
            [
                "migrate",
                "--live",
                "--p2p",
                "--persistent",
                "--verbose",
                "--copy-storage-all",
                "g",
                "qemu+ssh://198.18.2.2/system",
                "--migrateuri",
                "tcp://100.64.0.2"
            ]
        );
    }

    #[test]
    fn without_p2p_virsh_drives_the_migration_itself() {
        let args = migrate_args("g", "198.18.2.2", "198.18.2.2", Disks::Leave, Driver::Virsh);
        assert_eq!(
            args.join(" "),
            "migrate --live --persistent --verbose g qemu+ssh://198.18.2.2/system --migrateuri tcp://198.18.2.2"
        );
    }
}
