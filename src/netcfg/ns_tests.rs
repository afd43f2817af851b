//! netcfg against a real kernel, each test in network namespaces of its own (root needed,
//! as in CI). Topology of the cutover test:
//!
//! ```text
//!            HOST namespace (vmtun's role new)             PEER namespace
//!   vmtun0 (a TUN device)
//!   br0  198.18.0.1/24  ─────────── veth ───────────  up0 198.18.0.2/24
//!                                                      (the provider: routes 203.0.113.0/29
//!                                                       to the host once it has switched)
//!   vif0 198.18.1.1/24  ─────────── veth ───────────  vm0 198.18.1.2/24, 203.0.113.2/32
//!                                                      (the VM: replies from 203.0.113.2)
//! ```

use std::net::IpAddr;

use super::fixtures::{new_role, tunnel};
use super::testns::TestNs;
use super::*;

/// What `up` says when `nft table ip vmtun` is there already.
const NFT_TABLE_IN_THE_WAY: &str = "nft table ip vmtun already exists (not this vmtun's): \
    another vmtun with a [migration] runs in this network namespace (one may), or it was left \
    behind; if nothing uses it, remove it with `nft delete table ip vmtun`";

const TUN: &str = "vmtun0";
const SUBNET: &str = "203.0.113.0/29";

/// Everything netcfg could touch, as text: rules, routes, nftables (iptables-nft rules
/// included), addresses, links (MTU, state) and the sysctls of `ifaces`. Link qdiscs are
/// left out: the kernel attaches a default qdisc the first time a link goes up, and keeps it.
/// So is a veth's peer namespace: `ip` names it by looking through every namespace, which
/// fails now and then while other tests delete theirs.
fn snapshot(ns: &TestNs, ifaces: &[&str]) -> String {
    let mut s = ns.sh(
        "ip rule; ip -6 rule; echo --; ip route show table all; ip -6 route show table all; \
         echo --; nft list ruleset; echo --; \
         iptables-save -t mangle | grep -v '^#'; echo --; ip -o addr; echo --; \
         ip -o link 2>/dev/null | sed 's/qdisc [^ ]* //; s/ link-netns [^ ]*//'",
    );
    for i in ifaces {
        for k in ["rp_filter", "proxy_arp"] {
            s += &ns.sh(&format!("echo {i}.{k}=$(sysctl -n net.ipv4.conf.{i}.{k})"));
        }
    }
    s
}

/// A host namespace with a TUN device (persistent, as the driver's would be, but with no
/// process attached: its routes show `linkdown`) and a bridge, forwarding on.
fn host(tag: &str) -> TestNs {
    let ns = TestNs::new(tag);
    ns.sh(&format!(
        "ip tuntap add {TUN} mode tun && ip link add br0 type bridge && ip link set br0 up && \
         sysctl -qw net.ipv4.ip_forward=1"
    ));
    ns
}

/// State that belongs to someone else and must survive vmtun: an nft table, an iptables
/// mangle rule, a policy rule and a route.
fn add_foreign_state(ns: &TestNs) {
    ns.sh("nft add table inet foreign && \
         nft add chain inet foreign pre '{ type filter hook prerouting priority -150; }' && \
         nft add rule inet foreign pre ip saddr 192.0.2.0/24 counter meta mark set 7 && \
         iptables -t mangle -A PREROUTING -s 198.51.100.0/24 -j MARK --set-mark 9 && \
         ip rule add fwmark 9 lookup 300 priority 500 && \
         ip addr add 198.18.9.1/24 dev br0 && \
         ip route add 192.0.2.0/24 via 198.18.9.2 dev br0");
}

fn state_dir(ns: &TestNs) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{}-state", ns.name()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn role_new_applies_and_undo_restores_everything() {
    let ns = host("apply");
    add_foreign_state(&ns);
    let ifaces = [TUN, "br0"];
    let before = snapshot(&ns, &ifaces);
    let dir = state_dir(&ns);
    let role = new_role();
    let p = plan(&tunnel(), Some(&role));

    let journal = ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        check_prerequisites(&mut ops, Some(&role)).unwrap();
        let mut j = Journal::create(&dir, "t").unwrap();
        j.apply(&mut ops, &p).unwrap();
        j
    });

    let rules = ns.sh("ip rule");
    assert!(
        rules.contains("10000:\tfrom all fwmark 0x1 lookup 201"),
        "{rules}"
    );
    let t201 = ns.sh("ip route show table 201");
    assert!(
        t201.starts_with("default via 100.64.0.2 dev vmtun0 proto static"),
        "{t201}"
    );
    let main = ns.sh("ip route show table main");
    assert!(main.contains("100.64.0.0/24 dev vmtun0 proto kernel scope link src 100.64.0.1"));
    let link = ns.sh("ip -o link show vmtun0");
    assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");
    assert_eq!(
        ns.sh("sysctl -n net.ipv4.conf.vmtun0.rp_filter").trim(),
        "2"
    );
    assert_eq!(ns.sh("sysctl -n net.ipv4.conf.br0.rp_filter").trim(), "2");
    let nft = ns.sh("nft list table ip vmtun");
    println!("{nft}");
    for want in [
        "type filter hook prerouting priority mangle; policy accept;",
        "type ipv4_addr",
        "flags dynamic",
        "type ether_addr",
        "meta pkttype host iifname \"br0\" ether saddr @gateways ip daddr 203.0.113.0/29 fib saddr . iif oif exists counter packets 0 bytes 0 add @native { ip daddr & 255.255.255.248 } comment \"vmtun native 203.0.113.0/29 on br0\"",
        "iifname \"vif*\" ip saddr 203.0.113.0/29 ip saddr & 255.255.255.248 != @native counter packets 0 bytes 0 meta mark set 0x00000001 comment \"vmtun mark 203.0.113.0/29\"",
        "type filter hook forward priority mangle; policy accept;",
        "oifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter packets 0 bytes 0 tcp option maxseg size set 1380 comment \"vmtun mss into tunnel\"",
        "iifname \"vmtun0\" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter packets 0 bytes 0 tcp option maxseg size set 1380 comment \"vmtun mss out of tunnel\"",
    ] {
        assert!(nft.contains(want), "missing {want:?} in\n{nft}");
    }
    // The state file records every change with what it replaced.
    let state = std::fs::read_to_string(dir.join("t.json")).unwrap();
    assert!(state.contains("\"previous\": \"1\"") || state.contains("\"previous\": \"0\""));

    // A second instance cannot take vmtun's table over.
    let second = ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let mut j = Journal::create(&dir.join("second"), "t").unwrap();
        let table = (p.iter())
            .position(|c| matches!(c, Change::NftTable { .. }))
            .unwrap();
        j.apply(&mut ops, &p[table..=table])
    });
    assert_eq!(second.unwrap_err().to_string(), NFT_TABLE_IN_THE_WAY);

    // A remover prepared before someone else removed the rule holds a stale handle: the
    // kernel answers ENOENT, it lists again, finds nothing left and succeeds.
    let (removal, stale) = ns.run(|| {
        let mut early = MarkRemover::prepare(NFT_TABLE).unwrap();
        let removal = remove_mark_rule(NFT_TABLE, &[]).unwrap();
        (removal, early.remove(&[]).unwrap())
    });
    assert_eq!(
        removal.removed,
        vec![SUBNET.parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(stale.removed.is_empty(), "{stale:?}");
    println!("mark rule removal commit: {:?}", removal.commit);
    assert!(!ns.sh("nft list table ip vmtun").contains("mark set"));

    // Undo from the state file, as `vmtun down` does after a crash.
    drop(journal);
    ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        undo_state_file(&mut ops, &dir.join("t.json")).unwrap();
    });
    assert!(!dir.join("t.json").exists());
    assert_eq!(before, snapshot(&ns, &ifaces));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failure_mid_plan_rolls_back_and_spares_foreign_state() {
    let ns = host("fail");
    add_foreign_state(&ns);
    // Someone else's table with vmtun's name: vmtun must fail, not adopt or delete it.
    ns.sh("nft add table ip vmtun && nft add chain ip vmtun theirs");
    let ifaces = [TUN, "br0"];
    let before = snapshot(&ns, &ifaces);
    let dir = state_dir(&ns);
    let p = plan(&tunnel(), Some(&new_role()));
    let (err, leftover) = ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let mut j = Journal::create(&dir, "t").unwrap();
        let err = j.apply(&mut ops, &p).unwrap_err();
        (err, j.state().changes.clone())
    });
    assert_eq!(err.to_string(), NFT_TABLE_IN_THE_WAY);
    assert!(leftover.is_empty(), "{leftover:?}");
    assert_eq!(before, snapshot(&ns, &ifaces));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn undo_tolerates_what_went_with_the_tun_device() {
    let ns = host("gone");
    let dir = state_dir(&ns);
    let p = plan(&tunnel(), Some(&new_role()));
    let mut j = ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let mut j = Journal::create(&dir, "t").unwrap();
        j.apply(&mut ops, &p).unwrap();
        j
    });
    // The driver closes the TUN: the device, its address, routes and sysctls vanish.
    ns.sh(&format!("ip link del {TUN}"));
    ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        j.undo_all(&mut ops).unwrap();
    });
    assert_eq!(ns.sh("ip rule | grep -c fwmark || true").trim(), "0");
    assert_eq!(ns.sh("nft list ruleset").trim(), "");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The MAC of `up0` in `peer`: the new host's uplink gateway in these tests.
fn gateway_mac(peer: &TestNs) -> [u8; 6] {
    let mac: crate::cutover::MacAddr = peer
        .sh("cat /sys/class/net/up0/address")
        .trim()
        .parse()
        .unwrap();
    mac.0
}

#[test]
fn cutover_set_flips_marking_on_the_first_native_packet() {
    let host = host("cut");
    let peer = TestNs::new("peer");
    // No duplicate address detection on the links made here: their link-local addresses
    // would otherwise turn from tentative to valid while the test runs, and the snapshots
    // before and after would differ by that alone.
    host.sh("sysctl -qw net.ipv6.conf.default.accept_dad=0");
    host.sh(&format!(
        "ip link del br0 && \
         ip link add br0 type veth peer name up0 netns {p} && \
         ip link add vif0 type veth peer name vm0 netns {p} && \
         ip addr add 198.18.0.1/24 dev br0 && ip link set br0 up && \
         ip addr add 198.18.1.1/24 dev vif0 && ip link set vif0 up",
        p = peer.name()
    ));
    let br0_mac = host.sh("cat /sys/class/net/br0/address");
    let vif0_mac = host.sh("cat /sys/class/net/vif0/address");
    peer.sh(&format!(
        "ip addr add 198.18.0.2/24 dev up0 && ip link set up0 up && \
         ip addr add 198.18.1.2/24 dev vm0 && ip addr add 203.0.113.2/32 dev vm0 && \
         ip link set vm0 up && \
         ip neigh replace 198.18.0.1 lladdr {} dev up0 nud permanent && \
         ip neigh replace 198.18.1.1 lladdr {} dev vm0 nud permanent && \
         ip route add 203.0.113.0/29 via 198.18.0.1 dev up0",
        br0_mac.trim(),
        vif0_mac.trim()
    ));
    let ifaces = [TUN, "br0", "vif0"];
    let before = snapshot(&host, &ifaces);
    let dir = state_dir(&host);
    let p = plan(&tunnel(), Some(&new_role()));
    let mut j = host.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let mut j = Journal::create(&dir, "t").unwrap();
        j.apply(&mut ops, &p).unwrap();
        apply_idempotent(&mut ops, &vif_up("vif0", &[IpAddr::from([203, 0, 113, 2])])).unwrap();
        j
    });
    // An observer after vmtun's chain counts marked packets.
    host.sh("nft add table ip observe && \
         nft add chain ip observe pre '{ type filter hook prerouting priority 0; }' && \
         nft add rule ip observe pre meta mark 0x1 counter");
    let marked = || {
        let out = host.sh("nft list chain ip observe pre");
        let i = out.find("packets ").expect("counter") + "packets ".len();
        out[i..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let vm_reply = || peer.try_sh("ping -c1 -W0.2 -I 203.0.113.2 198.18.1.1");
    let native = || peer.try_sh("ping -c1 -W0.2 203.0.113.3");
    let set = || host.sh("nft list set ip vmtun native");

    vm_reply();
    assert_eq!(marked(), 1, "a VM packet is marked before the cutover");
    assert!(!set().contains("elements"), "{}", set());

    // Only the gateway may flip it: before its MAC is in the set, its packet does nothing.
    native();
    assert!(
        !set().contains("elements"),
        "flipped by an unknown MAC: {}",
        set()
    );
    let gateway = gateway_mac(&peer);
    host.run(|| {
        let mut ops = SystemOps::new().unwrap();
        apply_idempotent(&mut ops, &gateway_elements(&[Family::Ipv4], &[gateway])).unwrap()
    });
    // From the gateway, but the route back to the source leaves through vif0, not br0.
    peer.try_sh("ping -c1 -W0.2 -I 198.18.1.2 203.0.113.3");
    assert!(
        !set().contains("elements"),
        "flipped by a source routed elsewhere: {}",
        set()
    );

    assert!(host.run(|| native_subnets(NFT_TABLE).unwrap()).is_empty());
    native();
    assert!(set().contains("elements = { 203.0.113.0 }"), "{}", set());
    assert_eq!(
        host.run(|| native_subnets(NFT_TABLE).unwrap()),
        vec![std::net::Ipv4Addr::new(203, 0, 113, 0)]
    );

    vm_reply();
    assert_eq!(
        marked(),
        1,
        "no VM packet is marked after the first native one"
    );

    let removal = host.run(|| remove_mark_rule(NFT_TABLE, &[SUBNET.parse().unwrap()]).unwrap());
    println!("mark rule removal commit: {:?}", removal.commit);
    assert_eq!(removal.removed.len(), 1);
    let again = host.run(|| remove_mark_rule(NFT_TABLE, &[]).unwrap());
    assert!(again.removed.is_empty(), "finalizing twice is harmless");

    host.sh("nft delete table ip observe");
    host.run(|| {
        let mut ops = SystemOps::new().unwrap();
        j.undo_all(&mut ops).unwrap();
    });
    // vif-up's routes and proxy_arp belong to the VM interface and stay; remove them to
    // compare the rest.
    host.sh("ip route del 203.0.113.2/32 dev vif0 && sysctl -qw net.ipv4.conf.vif0.proxy_arp=0");
    assert_eq!(before, snapshot(&host, &ifaces));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same flip for an IPv6 subnet beside the IPv4 one: its own table, set and rules, and
/// the first native IPv6 packet flips IPv6 only.
#[test]
fn ipv6_cutover_flips_its_own_family_and_undo_restores_everything() {
    let host = host("cut6");
    let peer = TestNs::new("peer6");
    // No duplicate address detection on the links made here: their link-local addresses
    // would otherwise turn from tentative to valid while the test runs, and the snapshots
    // before and after would differ by that alone.
    host.sh("sysctl -qw net.ipv6.conf.default.accept_dad=0");
    host.sh(&format!(
        "ip link del br0 && \
         ip link add br0 type veth peer name up0 netns {p} && \
         ip link add vif0 type veth peer name vm0 netns {p} && \
         ip addr add 2001:db8:18::1/64 dev br0 nodad && ip link set br0 up && \
         ip addr add 2001:db8:19::1/64 dev vif0 nodad && ip link set vif0 up && \
         sysctl -qw net.ipv6.conf.all.forwarding=1",
        p = peer.name()
    ));
    let br0_mac = host.sh("cat /sys/class/net/br0/address");
    let vif0_mac = host.sh("cat /sys/class/net/vif0/address");
    peer.sh(&format!(
        "ip addr add 2001:db8:18::2/64 dev up0 nodad && ip link set up0 up && \
         ip addr add 2001:db8:19::2/64 dev vm0 nodad && \
         ip addr add 2001:db8:1::2/128 dev vm0 nodad && ip link set vm0 up && \
         ip neigh replace 2001:db8:18::1 lladdr {} dev up0 nud permanent && \
         ip neigh replace 2001:db8:19::1 lladdr {} dev vm0 nud permanent && \
         ip route add 2001:db8:1::/64 via 2001:db8:18::1 dev up0",
        br0_mac.trim(),
        vif0_mac.trim()
    ));
    let ifaces = [TUN, "br0", "vif0"];
    let before = snapshot(&host, &ifaces);
    let dir = state_dir(&host);
    let Role::New(mut n) = new_role() else {
        unreachable!()
    };
    n.subnets.push("2001:db8:1::/64".parse().unwrap());
    let role = Role::New(n);
    let p = plan(&tunnel(), Some(&role));
    let mut j = host.run(|| {
        let mut ops = SystemOps::new().unwrap();
        check_prerequisites(&mut ops, Some(&role)).unwrap();
        let mut j = Journal::create(&dir, "t").unwrap();
        j.apply(&mut ops, &p).unwrap();
        j
    });
    assert!(
        (host.sh("ip -6 rule")).contains("10000:\tfrom all fwmark 0x1 lookup 201"),
        "{}",
        host.sh("ip -6 rule")
    );
    let t201 = host.sh("ip -6 route show table 201");
    assert!(
        t201.starts_with("default dev vmtun0 proto static"),
        "{t201}"
    );
    host.sh("nft add table ip6 observe && \
         nft add chain ip6 observe pre '{ type filter hook prerouting priority 0; }' && \
         nft add rule ip6 observe pre meta mark 0x1 counter");
    let marked = || {
        let out = host.sh("nft list chain ip6 observe pre");
        let i = out.find("packets ").expect("counter") + "packets ".len();
        out[i..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let vm_reply = || peer.try_sh("ping -6 -c1 -W0.2 -I 2001:db8:1::2 2001:db8:19::1");
    let native = || peer.try_sh("ping -6 -c1 -W0.2 2001:db8:1::3");

    vm_reply();
    assert_eq!(marked(), 1, "a VM packet is marked before the cutover");
    let set6 = || host.sh("nft list set ip6 vmtun native");
    native();
    assert!(
        !set6().contains("elements"),
        "flipped by an unknown MAC: {}",
        set6()
    );
    let gateway = gateway_mac(&peer);
    host.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let elements = gateway_elements(&[Family::Ipv4, Family::Ipv6], &[gateway]);
        apply_idempotent(&mut ops, &elements).unwrap()
    });
    // From the gateway, but the route back to the source leaves through vif0, not br0.
    peer.try_sh("ping -6 -c1 -W0.2 -I 2001:db8:19::2 2001:db8:1::3");
    assert!(
        !set6().contains("elements"),
        "flipped by a source routed elsewhere: {}",
        set6()
    );
    native();
    assert!(
        host.sh("nft list set ip6 vmtun native")
            .contains("elements = { 2001:db8:1:: }"),
        "{}",
        host.sh("nft list set ip6 vmtun native")
    );
    assert_eq!(
        host.run(|| native_subnets(NFT_TABLE).unwrap()),
        vec!["2001:db8:1::".parse::<IpAddr>().unwrap()],
        "the IPv4 subnet has not flipped"
    );
    vm_reply();
    assert_eq!(
        marked(),
        1,
        "no VM packet is marked after the first native one"
    );

    let removal =
        host.run(|| remove_mark_rule(NFT_TABLE, &["2001:db8:1::/64".parse().unwrap()]).unwrap());
    assert_eq!(
        removal.removed,
        vec!["2001:db8:1::/64".parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(
        host.sh("nft list table ip vmtun")
            .contains("vmtun mark 203.0.113.0/29")
    );
    assert!(!host.sh("nft list table ip6 vmtun").contains("mark set"));

    host.sh("nft delete table ip6 observe");
    host.run(|| {
        let mut ops = SystemOps::new().unwrap();
        j.undo_all(&mut ops).unwrap();
    });
    assert_eq!(before, snapshot(&host, &ifaces));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vif_up_with_ipv6_answers_for_the_gateway_at_once() {
    let ns = TestNs::new("vif6");
    let vm = TestNs::new("vm6");
    ns.sh(&format!(
        "ip link add vif4 type veth peer name eth0 netns {} && ip link set vif4 up && \
         sysctl -qw net.ipv6.conf.all.forwarding=1",
        vm.name()
    ));
    vm.sh("ip link set lo up && ip link set eth0 up && \
         ip addr add 2001:db8:1::2/128 dev eth0 nodad");
    let p = vif_up("vif4", &["2001:db8:1::2".parse().unwrap()]);
    ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        apply_idempotent(&mut ops, &p).unwrap();
        apply_idempotent(&mut ops, &p).unwrap();
    });
    let routes = ns.sh("ip -6 route show dev vif4");
    assert!(routes.contains("2001:db8:1::2 proto static"), "{routes}");
    // The VM's gateway answers at once (no duplicate address detection pending), and the
    // host routes back to the VM's address: a ping from the VM to an address of the host.
    ns.sh("ip link set lo up && ip addr add 2001:db8:20::1/128 dev lo");
    vm.sh("ip -6 route add default via fe80::1 dev eth0");
    let (ok, ping) = vm.try_sh("ping -6 -c1 -W2 2001:db8:20::1");
    assert!(ok && ping.contains("1 received"), "{ping}");
}

#[test]
fn vif_up_is_idempotent() {
    let ns = TestNs::new("vif");
    ns.sh("ip link add vif3 type veth peer name vif3p && ip link set vif3 up");
    let p = vif_up(
        "vif3",
        &[IpAddr::from([192, 0, 2, 10]), IpAddr::from([192, 0, 2, 11])],
    );
    ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        apply_idempotent(&mut ops, &p).unwrap();
        apply_idempotent(&mut ops, &p).unwrap();
    });
    let routes = ns.sh("ip route show dev vif3");
    assert!(
        routes.contains("192.0.2.10 proto static scope link"),
        "{routes}"
    );
    assert!(
        routes.contains("192.0.2.11 proto static scope link"),
        "{routes}"
    );
    assert_eq!(ns.sh("sysctl -n net.ipv4.conf.vif3.proxy_arp").trim(), "1");
    // Proxy ARP answers at once: a VM's first packet after its ARP cache expired must not
    // wait up to 0.8 s (the default `proxy_delay`, in jiffies) for its gateway's answer.
    assert_eq!(
        ns.sh("sysctl -n net.ipv4.neigh.vif3.proxy_delay").trim(),
        "0"
    );
}

#[test]
fn missing_forwarding_and_interfaces_are_named() {
    let ns = TestNs::new("pre");
    ns.sh("sysctl -qw net.ipv4.ip_forward=0");
    let (pre, missing) = ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let pre = check_prerequisites(&mut ops, Some(&new_role())).unwrap_err();
        let missing = ops.apply(&plan(&tunnel(), None)[0]).unwrap_err();
        (pre, missing)
    });
    assert_eq!(
        pre.to_string(),
        "sysctl net.ipv4.ip_forward is 0, but role new forwards packets: \
         set it with `sysctl -w net.ipv4.ip_forward=1`"
    );
    assert_eq!(
        missing.to_string(),
        "adding address 100.64.0.1/24 on vmtun0: interface vmtun0 not found"
    );
}

#[test]
fn works_from_inside_the_drivers_runtime() {
    let ns = TestNs::new("tokio");
    ns.sh(&format!("ip tuntap add {TUN} mode tun"));
    let p = plan(&tunnel(), None);
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut ops = SystemOps::new().unwrap();
            for c in &p {
                let c = ops.capture(c).unwrap();
                ops.apply(&c).unwrap();
            }
            // Dropped inside the async context: must not panic.
            drop(ops);
        });
    });
    assert!(
        ns.sh("ip -o addr show dev vmtun0")
            .contains("100.64.0.1/24")
    );
}

#[test]
fn a_missing_bridge_is_named() {
    let ns = TestNs::new("nobr");
    ns.sh(&format!(
        "ip tuntap add {TUN} mode tun && sysctl -qw net.ipv4.ip_forward=1"
    ));
    let before = snapshot(&ns, &[TUN]);
    let dir = state_dir(&ns);
    let p = plan(&tunnel(), Some(&new_role()));
    let err = ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        Journal::create(&dir, "t")
            .unwrap()
            .apply(&mut ops, &p)
            .unwrap_err()
    });
    assert_eq!(
        err.to_string(),
        "setting sysctl net.ipv4.conf.br0.rp_filter=2: interface br0 not found"
    );
    assert_eq!(before, snapshot(&ns, &[TUN]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What another program does to vmtun's objects on a real kernel: `nft flush ruleset`, `ip
/// rule del`, `ip route del`, `rp_filter` reset. The notification sockets see each; the
/// journal finds exactly those changes missing and puts them back, leaving the host as
/// vmtun set it (and, after the cutover, without the mark rule and with the set element).
#[test]
fn removals_are_noticed_and_put_back_as_recorded() {
    let ns = host("restore");
    add_foreign_state(&ns);
    let ifaces = [TUN, "br0"];
    let dir = state_dir(&ns);
    let p = plan(&tunnel(), Some(&new_role()));
    let subnet: ipnet::IpNet = SUBNET.parse().unwrap();
    ns.run(|| {
        let mut ops = SystemOps::new().unwrap();
        let mut j = Journal::create(&dir, "t").unwrap();
        j.apply(&mut ops, &p).unwrap();
        let applied = snapshot(&ns, &ifaces);
        let vmtun_table = ns.sh("nft list table ip vmtun");
        let interest = Interest::of(&j.state().changes);
        let mut route = EventSocket::open(EventSource::Route).unwrap();
        let mut nft = EventSocket::open(EventSource::Nftables).unwrap();
        // What each notification socket says once a command has run: woken or not.
        let woken = |sock: &mut EventSocket, cmd: &str| {
            ns.sh(cmd);
            let mut any = false;
            while let Some(w) = sock.read(&interest).unwrap() {
                any |= w;
            }
            any
        };
        assert!(!woken(&mut nft, "nft add table inet other"), "not vmtun's");
        assert!(
            !woken(&mut nft, "nft delete table inet other"),
            "not vmtun's"
        );
        assert!(!woken(&mut route, "ip route add 198.51.100.0/24 dev br0"));
        assert!(!woken(&mut route, "ip route del 198.51.100.0/24 dev br0"));
        assert!(woken(&mut nft, "nft flush ruleset"));
        assert!(woken(
            &mut route,
            "ip rule del fwmark 1 lookup 201 priority 10000"
        ));
        assert!(woken(&mut route, "ip route del default table 201"));
        assert!(woken(
            &mut route,
            "sysctl -qw net.ipv4.conf.br0.rp_filter=1"
        ));
        assert_ne!(snapshot(&ns, &ifaces), applied);

        let restored = j.restore(&mut ops);
        assert!(restored.failed.is_empty(), "{:?}", restored.failed);
        let put_back: Vec<String> = restored.put_back.iter().map(|c| c.to_string()).collect();
        assert_eq!(put_back.len(), 3 + 9, "{put_back:#?}");
        assert_eq!(
            put_back[..3],
            [
                "ip route add default via 100.64.0.2 dev vmtun0 table 201",
                "ip rule add fwmark 0x1 lookup 201 priority 10000",
                "sysctl -w net.ipv4.conf.br0.rp_filter=2  # was 0",
            ]
        );
        // vmtun's table is back as it was (the foreign one went with the flush: not ours).
        assert_eq!(ns.sh("nft list table ip vmtun"), vmtun_table);
        assert!(j.restore(&mut ops).put_back.is_empty(), "all in place");

        // The cutover: the mark rule goes on purpose and the set element comes.
        j.record_cutover(&[subnet], || remove_mark_rule(NFT_TABLE, &[subnet]))
            .unwrap();
        ns.sh("nft flush ruleset");
        let restored = j.restore(&mut ops);
        assert!(restored.failed.is_empty(), "{:?}", restored.failed);
        let table = ns.sh("nft list table ip vmtun");
        assert!(!table.contains("vmtun mark"), "{table}");
        assert!(table.contains("elements = { 203.0.113.0 }"), "{table}");
        assert!(table.contains("vmtun native 203.0.113.0/29"), "{table}");
        j.undo_all(&mut ops).unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
