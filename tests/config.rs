//! Bad configs are refused before anything changes, with one line naming the field; and
//! `vmtun up --dry-run` shows its plan without touching the host.
//!
//! ```text
//!   ns cfg                                   (vmtun runs here, so even a config that is
//!   ┌────────────────────────────────┐        wrongly accepted changes nothing outside)
//!   │ lo, ul0 198.18.0.1/24 ── veth ─┼── ns peer ul0 198.18.0.2/24
//!   │ br0 (for the migration plan)   │
//!   └────────────────────────────────┘
//! ```

mod common;

use common::*;
use std::time::Duration;

/// How long a refused `vmtun up` may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// A config that is valid, written around `{IFACE}`, `{KEY}`, `{PEER}` placeholders.
const GOOD: &str = r#"[interface]
name = "{IFACE}"
private_key = "{KEY}"
listen_port = 51820
address = "100.64.0.1/24"

[[peer]]
public_key = "{PEER}"
endpoint = "198.18.0.2:51820"
allowed_ips = ["100.64.0.2/32"]
"#;

/// `[migration]` for the new host, appended to a config whose peer routes 0.0.0.0/0.
const MIGRATION_NEW: &str = r#"
[migration]
role = "new"
subnets = ["203.0.113.0/29"]
via = "100.64.0.2"
vif_prefix = "vif"
bridge = "br0"
table = 201
fwmark = 1
cutover = "manual"

[[vm]]
vif = "vif0"
addresses = ["203.0.113.2"]
"#;

struct Case {
    what: &'static str,
    /// Turns the good config into the bad one.
    edit: Box<dyn Fn(&str) -> String>,
    /// The line must contain one of these (case-insensitive).
    expect_any: &'static [&'static str],
}

fn case(
    what: &'static str,
    expect_any: &'static [&'static str],
    edit: impl Fn(&str) -> String + 'static,
) -> Case {
    Case {
        what,
        edit: Box::new(edit),
        expect_any,
    }
}

fn cases(key_file_0644: String) -> Vec<Case> {
    vec![
        case("unknown key", &["colour"], |c| {
            c.replace(
                "listen_port = 51820",
                "listen_port = 51820\ncolour = \"blue\"",
            )
        }),
        case("bad base64 public key", &["public_key"], |c| {
            let start = c.find("public_key = \"").expect("template") + 14;
            let end = start + c[start..].find('"').expect("template");
            format!("{}not*base64!{}", &c[..start], &c[end..])
        }),
        case("bad base64 private key", &["private_key"], |c| {
            let start = c.find("private_key = \"").expect("template") + 15;
            let end = start + c[start..].find('"').expect("template");
            format!("{}AAAA{}", &c[..start], &c[end..])
        }),
        case("bad prefix", &["allowed_ips"], |c| {
            c.replace("100.64.0.2/32", "100.64.0.2/33")
        }),
        case("malformed address", &["address"], |c| {
            c.replace(
                "address = \"100.64.0.1/24\"",
                "address = \"100.64.0.300/24\"",
            )
        }),
        case("duplicate peer", &["public_key", "duplicate"], |c| {
            let peer = &c[c.find("[[peer]]").expect("template")..];
            format!("{c}\n{}", peer.replace("100.64.0.2/32", "100.64.0.3/32"))
        }),
        case(
            "overlapping allowed_ips",
            &["allowed_ips", "overlap"],
            |c| {
                c.replace(
                    "[\"100.64.0.2/32\"]",
                    "[\"100.64.0.0/24\", \"100.64.0.2/32\"]",
                )
            },
        ),
        case("missing private key", &["private_key"], |c| {
            c.lines()
                .filter(|l| !l.starts_with("private_key"))
                .map(|l| format!("{l}\n"))
                .collect()
        }),
        case("missing peer public key", &["public_key"], |c| {
            let peer = c.find("[[peer]]").expect("template");
            let (head, tail) = c.split_at(peer);
            let tail: String = tail
                .lines()
                .filter(|l| !l.starts_with("public_key"))
                .map(|l| format!("{l}\n"))
                .collect();
            format!("{head}{tail}")
        }),
        case("port out of range", &["listen_port"], |c| {
            c.replace("listen_port = 51820", "listen_port = 70000")
        }),
        case("endpoint without port", &["endpoint"], |c| {
            c.replace("\"198.18.0.2:51820\"", "\"198.18.0.2\"")
        }),
        case("metrics address with a name", &["metrics.listen"], |c| {
            format!("{c}\n[metrics]\nlisten = \"localhost:9586\"\n")
        }),
        case(
            "migration subnet overlapping the tunnel's address",
            &["migration.subnets", "interface.address"],
            |c| {
                c.replace("[\"100.64.0.2/32\"]", "[\"100.64.0.0/28\"]")
                    + "\n[migration]\nrole = \"old\"\nsubnets = [\"100.64.0.0/29\"]\nvia = \"100.64.0.2\"\n"
            },
        ),
        case(
            "bridge named as the tunnel",
            &["migration.bridge", "interface.name"],
            |c| {
                let name = c
                    .lines()
                    .find_map(|l| l.strip_prefix("name = "))
                    .expect("template")
                    .to_owned();
                c.replace("[\"100.64.0.2/32\"]", "[\"0.0.0.0/0\"]")
                    + &MIGRATION_NEW.replace("bridge = \"br0\"", &format!("bridge = {name}"))
            },
        ),
        case(
            "private_key_file readable by others",
            &["permission", "0644", "chmod"],
            move |c| {
                let line = c
                    .lines()
                    .find(|l| l.starts_with("private_key"))
                    .expect("template");
                c.replace(line, &format!("private_key_file = {key_file_0644:?}"))
            },
        ),
    ]
}

#[test]
fn bad_configs_are_refused_with_one_line_naming_the_field() -> Result<()> {
    preflight(&["nft"]);
    let net = Pair::new("badcfg")?;
    let (own, peer) = (vmtun_keypair(), vmtun_keypair());
    let key_file = net
        .scratch
        .write("open.key", &format!("{}\n", own.private), 0o644)?;
    let before = snapshot(&net.a)?;
    let mut failures = Vec::new();
    for (i, case) in cases(key_file.to_string_lossy().into_owned())
        .iter()
        .enumerate()
    {
        let iface = lab::unique_ifname("vt");
        let text = (case.edit)(&fill(GOOD, &iface, &own, &peer));
        let path = net.scratch.write(&format!("bad{i}.toml"), &text, 0o600)?;
        let path = path.to_string_lossy().into_owned();
        let outcome = run_vmtun(
            &net.a,
            &net.scratch,
            &format!("bad{i}"),
            &["up", "-c", &path],
            EXIT_WITHIN,
        );
        let (code, _, stderr) = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                failures.push(format!("{}: {e}", case.what));
                continue;
            }
        };
        eprintln!("{}: exit {code:?}: {}", case.what, stderr.trim());
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let lower = stderr.to_lowercase();
        if code == Some(0) || code.is_none() {
            failures.push(format!("{}: exit {code:?}, expected non-zero", case.what));
        } else if lines.len() != 1 {
            failures.push(format!(
                "{}: {} stderr lines, expected 1: {stderr:?}",
                case.what,
                lines.len()
            ));
        } else if !case
            .expect_any
            .iter()
            .any(|w| lower.contains(&w.to_lowercase()))
        {
            failures.push(format!(
                "{}: {stderr:?} names none of {:?}",
                case.what, case.expect_any
            ));
        }
        if net.a.has_link(&iface) {
            failures.push(format!("{}: device {iface} was created", case.what));
        }
    }
    let after = snapshot(&net.a)?;
    check(before == after, || {
        "refused configs changed the namespace".into()
    })?;
    check(failures.is_empty(), || {
        format!(
            "{} of the bad configs were not handled:\n  {}",
            failures.len(),
            failures.join("\n  ")
        )
    })
}

/// `[migration]` for the old host.
const MIGRATION_OLD: &str = r#"
[migration]
role = "old"
subnets = ["203.0.113.0/29"]
via = "100.64.0.2"

[[vm]]
vif = "vif0"
addresses = ["203.0.113.2"]
"#;

/// What every plan starts with: the TUN device (`{IFACE}` and `{CONFIG}` filled in).
const PLAN_TUNNEL: &str = "\
# vmtun up -c {CONFIG} would:
ip tuntap add dev {IFACE} mode tun   # held by the process; gone when it exits
ip addr add 100.64.0.1/24 dev {IFACE}
ip link set dev {IFACE} mtu 1420
ip link set dev {IFACE} up
";

/// Role old sends the subnet's addresses that have no VM here into the tunnel, refuses
/// what comes out of it for them, and sends what VMs still here send into it once the new
/// host reports the subnet switched.
const PLAN_OLD: &str = r#"ip route add default via 100.64.0.2 dev {IFACE} table 201
# the host's blackhole/unreachable/prohibit route for 203.0.113.0/29, if any, is set aside until exit
ip rule add to 203.0.113.0/29 lookup main suppress_prefixlength 29 priority 9996
ip rule add iif {IFACE} to 203.0.113.0/29 unreachable priority 9997
ip rule add to 203.0.113.0/29 lookup 201 priority 9998
ip rule add fwmark 0x1 lookup main suppress_prefixlength 0 priority 9999
ip rule add fwmark 0x1 lookup 201 priority 10000
sysctl -w net.ipv4.conf.{IFACE}.rp_filter=2
nft add table ip vmtun
nft add chain ip vmtun prerouting '{ type filter hook prerouting priority mangle; policy accept; }'
nft add set ip vmtun switched '{ type ipv4_addr; flags dynamic; }'
nft add rule ip vmtun prerouting iifname "vif*" ip saddr 203.0.113.0/29 ip saddr & 255.255.255.248 == @switched counter meta mark set 0x1 comment "vmtun switched 203.0.113.0/29"
"#;

/// Both roles clamp the MSS of TCP handshakes crossing the tunnel.
const PLAN_CLAMP: &str = r#"nft add chain ip vmtun forward '{ type filter hook forward priority mangle; policy accept; }'
nft add rule ip vmtun forward oifname "{IFACE}" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter tcp option maxseg size set 1380 comment "vmtun mss into tunnel"
nft add rule ip vmtun forward iifname "{IFACE}" tcp flags syn / syn,rst tcp option maxseg size > 1380 counter tcp option maxseg size set 1380 comment "vmtun mss out of tunnel"
"#;

/// Role new adds the same, the return path through the old site, and the kernel flip.
const PLAN_NEW: &str = r#"ip route add default via 100.64.0.2 dev {IFACE} table 201
# the host's blackhole/unreachable/prohibit route for 203.0.113.0/29, if any, is set aside until exit
ip rule add to 203.0.113.0/29 lookup main suppress_prefixlength 29 priority 9996
ip rule add iif {IFACE} to 203.0.113.0/29 unreachable priority 9997
ip rule add to 203.0.113.0/29 lookup 201 priority 9998
ip rule add fwmark 0x1 lookup main suppress_prefixlength 0 priority 9999
ip rule add fwmark 0x1 lookup 201 priority 10000
sysctl -w net.ipv4.conf.{IFACE}.rp_filter=2
sysctl -w net.ipv4.conf.br0.rp_filter=2
nft add table ip vmtun
nft add chain ip vmtun prerouting '{ type filter hook prerouting priority mangle; policy accept; }'
nft add set ip vmtun native '{ type ipv4_addr; flags dynamic; }'
nft add set ip vmtun gateways '{ type ether_addr; }'
nft add rule ip vmtun prerouting meta pkttype host iifname "br0" ether saddr @gateways ip daddr 203.0.113.0/29 fib saddr . iif oif exists counter add @native { ip daddr & 255.255.255.248 } comment "vmtun native 203.0.113.0/29 on br0"
nft add rule ip vmtun prerouting iifname "vif*" ip saddr 203.0.113.0/29 ip saddr & 255.255.255.248 != @native counter meta mark set 0x1 comment "vmtun mark 203.0.113.0/29"
"#;

/// What the plan ends with.
const PLAN_END: &str = "# and listen on UDP port 51820\n";

/// Which `[migration]` the dry-run config has.
#[derive(Clone, Copy, Debug)]
enum Role {
    Tunnel,
    Old,
    New,
}

fn dry_run(role: Role) -> Result<()> {
    preflight(&["nft"]);
    let net = Pair::new("dryrun")?;
    net.a.add_bridge("br0")?;
    // The preflight that `--dry-run` runs first refuses a migration host that does not route.
    net.a.sysctl("net.ipv4.ip_forward", "1")?;
    let (own, peer) = (vmtun_keypair(), vmtun_keypair());
    let iface = lab::unique_ifname("vt");
    let mut text = fill(GOOD, &iface, &own, &peer);
    let (role_plan, clamp) = match role {
        Role::Tunnel => ("", ""),
        Role::Old => {
            text = text.replace(
                "[\"100.64.0.2/32\"]",
                "[\"100.64.0.2/32\", \"203.0.113.0/29\"]",
            ) + MIGRATION_OLD;
            (PLAN_OLD, PLAN_CLAMP)
        }
        Role::New => {
            text = text.replace("[\"100.64.0.2/32\"]", "[\"0.0.0.0/0\"]") + MIGRATION_NEW;
            (PLAN_NEW, PLAN_CLAMP)
        }
    };
    let path = net.scratch.write("dry.toml", &text, 0o600)?;
    let path = path.to_string_lossy().into_owned();
    let before = snapshot(&net.a)?;
    let (code, stdout, stderr) = run_vmtun(
        &net.a,
        &net.scratch,
        "dry-run",
        &["up", "-c", &path, "--dry-run"],
        EXIT_WITHIN,
    )?;
    check(code == Some(0), || {
        format!("`up --dry-run` exited {code:?}: {stderr}")
    })?;
    check(
        !stdout.contains(&own.private) && !stderr.contains(&own.private),
        || "`up --dry-run` printed the private key".into(),
    )?;
    let expected = [PLAN_TUNNEL, role_plan, clamp, PLAN_END]
        .concat()
        .replace("{CONFIG}", &path)
        .replace("{IFACE}", &iface);
    check(stdout == expected, || {
        format!("`up --dry-run` ({role:?}) printed\n{stdout}\nexpected\n{expected}")
    })?;
    let after = snapshot(&net.a)?;
    check(before == after, || {
        format!("`up --dry-run` changed the namespace:\n--- before\n{before}\n--- after\n{after}")
    })?;
    let socket = ::vmtun::control::Paths::in_netns(net.a.id()?, &iface).socket;
    check(!socket.exists(), || {
        format!("`up --dry-run` left {}", socket.display())
    })?;
    Ok(())
}

#[test]
fn dry_run_of_a_plain_tunnel_prints_its_plan_and_changes_nothing() -> Result<()> {
    dry_run(Role::Tunnel)
}

#[test]
fn dry_run_of_an_old_host_prints_its_plan_and_changes_nothing() -> Result<()> {
    dry_run(Role::Old)
}

#[test]
fn dry_run_of_a_new_host_prints_its_plan_and_changes_nothing() -> Result<()> {
    dry_run(Role::New)
}
