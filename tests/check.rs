//! `vmtun check` in network namespaces: it passes on a host ready for the move (the
//! handshake completes through its probe, then again as the running instance's), fails
//! with the line an operator needs on each broken prerequisite, and changes nothing.
//!
//! ```text
//!   ns a: the new host (check runs here)      ns b: the old host
//!   br0, vmtun's role-new config                runs `vmtun up` (plain tunnel)
//!   ul0 198.18.0.1/24 ──────── veth ──────────  ul0 198.18.0.2/24
//! ```

mod common;

use common::*;
use std::time::Duration;

/// How long one `vmtun check` may take (the handshake probe waits 2.5 s at most).
const CHECK_WITHIN: Duration = Duration::from_secs(20);

/// Host A's config: role new, its peer B at 198.18.0.2 (`{IFACE}`, `{KEY}`, `{PEER}`).
const NEW_HOST: &str = r#"[interface]
name = "{IFACE}"
private_key = "{KEY}"
listen_port = 51820
address = "100.64.0.1/24"

[[peer]]
public_key = "{PEER}"
endpoint = "198.18.0.2:51820"
allowed_ips = ["0.0.0.0/0"]

[migration]
role = "new"
subnets = ["203.0.113.0/29"]
via = "100.64.0.2"
bridge = "br0"
table = 201
fwmark = 1

[[vm]]
vif = "vif0"
addresses = ["203.0.113.2"]
"#;

/// The pair, A's keys and config file, B's keys.
struct Setup {
    net: Pair,
    a_keys: KeyPair,
    b_keys: KeyPair,
    iface: String,
    config: String,
}

/// A and B; A gets `br0` when `bridge`, and `net.ipv4.ip_forward` = `forwarding`.
fn setup(test: &str, bridge: bool, forwarding: bool) -> Result<Setup> {
    preflight(&["nft"]);
    let net = Pair::new(test)?;
    if bridge {
        net.a.add_bridge("br0")?;
    }
    net.a
        .sysctl("net.ipv4.ip_forward", if forwarding { "1" } else { "0" })?;
    let (a_keys, b_keys) = (vmtun_keypair(), vmtun_keypair());
    let iface = lab::unique_ifname("vc");
    let text = fill(NEW_HOST, &iface, &a_keys, &b_keys);
    let config = net.scratch.write("new.toml", &text, 0o600)?;
    let config = config.to_string_lossy().into_owned();
    Ok(Setup {
        net,
        a_keys,
        b_keys,
        iface,
        config,
    })
}

impl Setup {
    /// `vmtun ARGS -c <A's config>` in A: exit code, stdout, stderr.
    fn vmtun(&self, args: &[&str]) -> Result<(Option<i32>, String, String)> {
        let mut all = args.to_vec();
        all.extend(["-c", &self.config]);
        run_vmtun(&self.net.a, &self.net.scratch, args[0], &all, CHECK_WITHIN)
    }

    /// `vmtun check`, with the namespace compared before and after: it must change nothing.
    fn check(&self) -> Result<(Option<i32>, String, String)> {
        let before = snapshot(&self.net.a)?;
        let outcome = self.vmtun(&["check"])?;
        let after = snapshot(&self.net.a)?;
        check(before == after, || {
            format!(
                "`vmtun check` changed the namespace:\n--- before\n{before}\n--- after\n{after}"
            )
        })?;
        eprintln!(
            "vmtun check: exit {:?}\n{}{}",
            outcome.0, outcome.1, outcome.2
        );
        Ok(outcome)
    }

    /// B running `vmtun up` with A as its peer.
    fn start_b(&self) -> Result<Vmtun<'_>> {
        let peer = PeerCfg::new(&self.a_keys.public, Some(UNDERLAY_A), TUNNEL_A);
        let cfg = VmtunCfg::new(&self.b_keys, TUNNEL_B, vec![peer]);
        Vmtun::start(&self.net.b, &self.net.scratch, cfg)
    }
}

/// The line of `stdout` about `what`, e.g. `("FAIL", "bridge")`.
fn line<'a>(stdout: &'a str, verdict: &str, what: &str) -> Option<&'a str> {
    let head = format!("{verdict:<5} {what}: ");
    stdout.lines().find(|l| l.starts_with(&head))
}

fn expect_line<'a>(stdout: &'a str, verdict: &str, what: &str) -> Result<&'a str> {
    line(stdout, verdict, what)
        .ok_or_else(|| LabError::Failed(format!("no `{verdict} {what}:` line in:\n{stdout}")))
}

/// Fails unless `check` exited 1 with exactly one FAIL line, about `what`; returns it.
fn only_failure<'a>(outcome: &'a (Option<i32>, String, String), what: &str) -> Result<&'a str> {
    let (code, stdout, stderr) = outcome;
    check(*code == Some(1), || format!("exit {code:?}, expected 1"))?;
    check(stderr.contains("check: 1 FAIL"), || {
        format!("stderr does not count one FAIL: {stderr:?}")
    })?;
    expect_line(stdout, "FAIL", what)
}

#[test]
fn a_ready_host_passes_through_the_probe_and_again_while_vmtun_runs() -> Result<()> {
    let s = setup("chkok", true, true)?;
    let b = s.start_b()?;
    let (code, stdout, _) = s.check()?;
    check(code == Some(0), || format!("exit {code:?}:\n{stdout}"))?;
    check(
        stdout
            .lines()
            .all(|l| !l.starts_with("FAIL") && !l.starts_with("warn")),
        || format!("not all ok:\n{stdout}"),
    )?;
    expect_line(&stdout, "ok", "peer[0] handshake")
        .and_then(|l| check(l.contains("completed with 198.18.0.2:51820"), || l.into()))?;
    expect_line(&stdout, "ok", "peer[0] path MTU")?;
    expect_line(&stdout, "ok", "VM interfaces")
        .and_then(|l| check(l.contains("absent: vif0"), || l.into()))?;
    // B answered the probe as a responder and is otherwise unchanged.
    check(
        b.status()?.handshake_secs(&s.a_keys.public).is_none(),
        || "B counts the probe's unconfirmed session as a handshake".into(),
    )?;

    // Now A's own vmtun runs: its rule, table, nft table, device and port are its own.
    let mut up = s.net.a.spawn(
        "up-a",
        s.net.scratch.path(),
        VMTUN,
        &["up", "-c", &s.config],
    )?;
    wait_until(WAIT, "A's vmtun up to answer status", || {
        s.vmtun(&["status"])
            .is_ok_and(|(code, _, _)| code == Some(0))
    })?;
    wait_ping(&s.net.a, TUNNEL_B, WAIT)?;
    let (code, stdout, stderr) = s.vmtun(&["check"])?;
    eprintln!("vmtun check while up runs: exit {code:?}\n{stdout}{stderr}");
    check(code == Some(0), || format!("exit {code:?}:\n{stdout}"))?;
    expect_line(&stdout, "ok", "peer[0] handshake")
        .and_then(|l| check(l.contains("(running vmtun)"), || l.into()))?;
    for what in [
        "instance",
        "fwmark 0x1",
        "table 201",
        "nftables",
        "UDP port 51820",
        "tunnel interface",
    ] {
        expect_line(&stdout, "ok", what)?;
    }
    // `up --dry-run` next to the running instance: up would refuse, so no plan.
    let (code, plan, stderr) = s.vmtun(&["up", "--dry-run"])?;
    check(code == Some(1) && plan.is_empty(), || {
        format!("dry-run next to a running vmtun: exit {code:?}, stdout {plan:?}")
    })?;
    expect_line(&stderr, "FAIL", "instance")?;
    up.signal(libc::SIGTERM);
    let status = up.wait_timeout(WAIT)?;
    check(status.success(), || format!("A's vmtun up exited {status}"))?;
    Ok(())
}

#[test]
fn forwarding_off_fails_and_dry_run_prints_no_plan() -> Result<()> {
    let s = setup("chkfwd", true, false)?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "forwarding")?;
    check(fail.contains("net.ipv4.ip_forward = 0"), || fail.into())?;
    // The peer's vmtun is not running: a warning that says so, not a failure.
    expect_line(&outcome.1, "warn", "peer[0] handshake").and_then(|l| {
        check(l.contains("nothing listens on 198.18.0.2:51820"), || {
            l.into()
        })
    })?;
    let (code, plan, stderr) = s.vmtun(&["up", "--dry-run"])?;
    check(code == Some(1) && plan.is_empty(), || {
        format!("dry-run with forwarding off: exit {code:?}, stdout {plan:?}")
    })?;
    expect_line(&stderr, "FAIL", "forwarding")?;
    check(stderr.contains("no plan printed"), || stderr.clone())
}

#[test]
fn a_missing_bridge_fails_naming_it() -> Result<()> {
    let s = setup("chkbr", false, true)?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "bridge")?;
    check(fail.contains("bridge br0 does not exist"), || fail.into())
}

#[test]
fn a_foreign_ipv6_fwmark_rule_fails_a_dual_stack_move() -> Result<()> {
    let s = setup("chkmark6", true, true)?;
    let dual = fill(NEW_HOST, &s.iface, &s.a_keys, &s.b_keys)
        .replace(
            r#"allowed_ips = ["0.0.0.0/0"]"#,
            r#"allowed_ips = ["0.0.0.0/0", "::/0"]"#,
        )
        .replace(
            r#"subnets = ["203.0.113.0/29"]"#,
            r#"subnets = ["203.0.113.0/29", "2001:db8:1::/64"]"#,
        )
        .replace(
            r#"addresses = ["203.0.113.2"]"#,
            r#"addresses = ["203.0.113.2", "2001:db8:1::2"]"#,
        );
    s.net.scratch.write("new.toml", &dual, 0o600)?;
    s.net.a.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    s.net.a.ip(&[
        "-6", "rule", "add", "fwmark", "0x1", "lookup", "300", "priority", "100",
    ])?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "fwmark 0x1")?;
    check(
        fail.contains("ip -6 rule '100: from all fwmark 0x1 lookup 300'"),
        || fail.into(),
    )
}

#[test]
fn a_foreign_fwmark_rule_fails_naming_it() -> Result<()> {
    let s = setup("chkmark", true, true)?;
    s.net.a.ip(&[
        "rule", "add", "fwmark", "0x1", "lookup", "300", "priority", "100",
    ])?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "fwmark 0x1")?;
    check(
        fail.contains("'100: from all fwmark 0x1 lookup 300'"),
        || fail.into(),
    )
}

/// Holds UDP port 51820 until killed.
const HOLD_PORT: &str = "import socket, time\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.bind(('0.0.0.0', 51820))\n\
time.sleep(3600)";

#[test]
fn a_taken_port_and_interface_name_fail() -> Result<()> {
    let s = setup("chkport", true, true)?;
    s.net.a.add_bridge(&s.iface)?;
    let _holder = s.net.a.spawn(
        "port-holder",
        s.net.scratch.path(),
        "/usr/bin/python3",
        &["-c", HOLD_PORT],
    )?;
    wait_until(WAIT, "socat to bind UDP 51820", || {
        s.net
            .a
            .run("ss", &["-Hlun", "sport = :51820"])
            .is_ok_and(|out| !out.trim().is_empty())
    })?;
    let (code, stdout, _) = s.check()?;
    check(code == Some(1), || format!("exit {code:?}"))?;
    expect_line(&stdout, "FAIL", "UDP port 51820")?;
    expect_line(&stdout, "FAIL", "tunnel interface")
        .and_then(|l| check(l.contains(&s.iface), || l.into()))
}

// --- The host's own policy: what else on the host would break the move.

/// `nft ARGS` in A.
fn nft(s: &Setup, command: &str) -> Result<()> {
    s.net.a.run("nft", &[command]).map(drop)
}

#[test]
fn default_forwarding_off_fails_for_interfaces_created_later() -> Result<()> {
    // ip_forward = 1 turned every interface's forwarding on, but interfaces created from
    // now on (the TUN device, a VM's arriving vif) start from the default.
    let s = setup("chkdfwd", true, true)?;
    s.net.a.sysctl("net.ipv4.conf.default.forwarding", "0")?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "default forwarding")?;
    check(
        fail.contains("net.ipv4.conf.default.forwarding = 0"),
        || fail.into(),
    )
}

#[test]
fn a_forward_chain_that_drops_the_tunnel_fails_until_it_accepts_it() -> Result<()> {
    let s = setup("chkfwdc", true, true)?;
    nft(&s, "add table inet filter")?;
    nft(
        &s,
        "add chain inet filter forward { type filter hook forward priority 0; policy drop; }",
    )?;
    nft(
        &s,
        "add rule inet filter forward ct state established,related accept",
    )?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "forward chain inet filter forward")?;
    check(
        fail.contains(&format!(
            "from {} to vif* for 203.0.113.0/29 (its policy drop)",
            s.iface
        )),
        || fail.into(),
    )?;
    let fix = format!(
        "nft insert rule inet filter forward iifname \"{}\" oifname \"vif*\" accept",
        s.iface
    );
    check(outcome.1.contains(&fix), || outcome.1.clone())?;
    // What the line says to do makes the move's traffic pass.
    nft(&s, &fix["nft ".len()..])?;
    nft(
        &s,
        &format!(
            "insert rule inet filter forward iifname \"vif*\" oifname \"{}\" accept",
            s.iface
        ),
    )?;
    let (code, stdout, _) = s.check()?;
    check(code == Some(0), || format!("exit {code:?}:\n{stdout}"))?;
    expect_line(&stdout, "ok", "forward hook").map(drop)
}

#[test]
fn an_iptables_nft_drop_on_the_tunnel_interface_fails_naming_the_rule() -> Result<()> {
    preflight(&["iptables-nft"]);
    let s = setup("chkipt", true, true)?;
    s.net.a.run(
        "iptables-nft",
        &["-A", "FORWARD", "-o", &s.iface, "-j", "DROP"],
    )?;
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "forward chain ip filter FORWARD")?;
    check(
        fail.contains(&format!("rule 'oifname \"{}\" drop'", s.iface)),
        || fail.into(),
    )?;
    let fix = format!(
        "iptables -t filter -I FORWARD -i vif+ -o {} -j ACCEPT",
        s.iface
    );
    check(outcome.1.contains(&fix), || outcome.1.clone())
}

#[test]
fn nft_rules_on_the_fwmark_fail_and_connmark_save_with_restore_warns() -> Result<()> {
    preflight(&["iptables-nft"]);
    let s = setup("chknftm", true, true)?;
    nft(&s, "add table ip mangle2")?;
    nft(
        &s,
        "add chain ip mangle2 pre { type filter hook prerouting priority -100; }",
    )?;
    nft(
        &s,
        "add rule ip mangle2 pre iifname \"eth9\" meta mark set 0x1",
    )?;
    // On the VM interfaces only, so the probe's packets leave the counters as they are.
    for mode in ["--save-mark", "--restore-mark"] {
        s.net.a.run(
            "iptables-nft",
            &[
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                "vif+",
                "-j",
                "CONNMARK",
                mode,
            ],
        )?;
    }
    let outcome = s.check()?;
    let fail = only_failure(&outcome, "fwmark 0x1")?;
    check(
        fail.contains("nft rule 'iifname \"eth9\" meta mark set 0x1' in ip mangle2 pre"),
        || fail.into(),
    )?;
    expect_line(&outcome.1, "warn", "conntrack mark").and_then(|l| {
        check(
            l.contains("-j CONNMARK' in ip mangle PREROUTING") && l.contains("table 201"),
            || l.into(),
        )
    })
}

#[test]
fn a_rule_that_takes_marked_replies_elsewhere_fails_the_reply_route() -> Result<()> {
    let s = setup("chkrt", true, true)?;
    let _b = s.start_b()?;
    let mut up = s.net.a.spawn(
        "up-a",
        s.net.scratch.path(),
        VMTUN,
        &["up", "-c", &s.config],
    )?;
    wait_until(WAIT, "A's vmtun up to answer status", || {
        s.vmtun(&["status"])
            .is_ok_and(|(code, _, _)| code == Some(0))
    })?;
    let (code, stdout, _) = s.vmtun(&["check"])?;
    check(code == Some(0), || format!("exit {code:?}:\n{stdout}"))?;
    expect_line(&stdout, "ok", "reply route 203.0.113.0/29").and_then(|l| {
        check(
            l.contains("iif lo mark 0x1") && l.contains(&format!("dev {} table 201", s.iface)),
            || l.into(),
        )
    })?;
    // The host's own policy routing for its VM subnet, before vmtun's rule.
    s.net
        .a
        .ip(&["route", "add", "default", "via", "198.18.0.2"])?;
    s.net.a.ip(&[
        "rule",
        "add",
        "from",
        "203.0.113.0/29",
        "lookup",
        "main",
        "priority",
        "100",
    ])?;
    let (code, stdout, stderr) = s.vmtun(&["check"])?;
    eprintln!("vmtun check: exit {code:?}\n{stdout}{stderr}");
    check(code == Some(1), || format!("exit {code:?}:\n{stdout}"))?;
    expect_line(&stdout, "FAIL", "reply route 203.0.113.0/29")
        .and_then(|l| check(l.contains("-> dev ul0 table 254"), || l.into()))?;
    up.signal(libc::SIGTERM);
    let status = up.wait_timeout(WAIT)?;
    check(status.success(), || format!("A's vmtun up exited {status}"))
}

#[test]
fn the_old_hosts_own_blackhole_for_the_subnet_is_reported() -> Result<()> {
    let s = setup("chkbh", true, true)?;
    let old =
        fill(NEW_HOST, &s.iface, &s.a_keys, &s.b_keys).replace("role = \"new\"", "role = \"old\"");
    s.net.scratch.write("new.toml", &old, 0o600)?;
    s.net
        .a
        .ip(&["route", "add", "blackhole", "203.0.113.0/29"])?;
    let (_, stdout, _) = s.check()?;
    expect_line(&stdout, "ok", "main table 203.0.113.0/29").and_then(|l| {
        check(
            l.contains("'blackhole 203.0.113.0/29'")
                && l.contains("vmtun sets it aside while it runs"),
            || l.into(),
        )
    })
}

#[test]
fn a_more_specific_route_that_takes_the_subnet_from_the_tunnel_fails_on_the_old_host() -> Result<()>
{
    let s = setup("chkold", true, true)?;
    let old =
        fill(NEW_HOST, &s.iface, &s.a_keys, &s.b_keys).replace("role = \"new\"", "role = \"old\"");
    s.net.scratch.write("new.toml", &old, 0o600)?;
    let _b = s.start_b()?;
    let mut up = s.net.a.spawn(
        "up-a",
        s.net.scratch.path(),
        VMTUN,
        &["up", "-c", &s.config],
    )?;
    wait_until(WAIT, "A's vmtun up to answer status", || {
        s.vmtun(&["status"])
            .is_ok_and(|(code, _, _)| code == Some(0))
    })?;
    let (_, stdout, _) = s.vmtun(&["check"])?;
    expect_line(&stdout, "ok", "subnet route 203.0.113.0/29").and_then(|l| {
        check(
            l.contains(&format!("ip route get 203.0.113.0 -> dev {}", s.iface)),
            || l.into(),
        )
    })?;
    s.net
        .a
        .ip(&["route", "add", "203.0.113.0/30", "via", "198.18.0.2"])?;
    let (code, stdout, stderr) = s.vmtun(&["check"])?;
    eprintln!("vmtun check: exit {code:?}\n{stdout}{stderr}");
    check(code == Some(1), || format!("exit {code:?}:\n{stdout}"))?;
    expect_line(&stdout, "FAIL", "subnet route 203.0.113.0/29")
        .and_then(|l| check(l.contains("-> dev ul0"), || l.into()))?;
    up.signal(libc::SIGTERM);
    let status = up.wait_timeout(WAIT)?;
    check(status.success(), || format!("A's vmtun up exited {status}"))
}
