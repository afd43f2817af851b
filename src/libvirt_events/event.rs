//! What libvirt's lifecycle events mean for the old host's handover, pure: the lines `virsh
//! event --loop --event lifecycle` prints, the interfaces `virsh domiflist` lists, and the
//! requests to make of the running vmtun for each event.

use std::collections::HashMap;

/// One domain's lifecycle change, as far as the handover cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// The source paused the guest for the migration's last stage (`Suspended Migrated`;
    /// `Suspended Post-copy`, where the destination runs it at once).
    PausedForMigration,
    /// The guest runs here again (`Resumed`, any detail): after a failed or cancelled
    /// migration, or an operator's resume.
    Resumed,
    /// The domain started or was (re)defined here: its interfaces may be new.
    Started,
    /// The domain is no longer defined here.
    Undefined,
    /// Anything else (stopped, shut down, an operator's pause...): nothing to do.
    Other,
}

/// One event line: the domain and what happened to it; `None` for a line that is not a
/// lifecycle event (virsh's other output). Parsed with virsh's C locale messages (the
/// follower runs it with `LC_ALL=C`).
pub fn parse_event(line: &str) -> Option<(String, Lifecycle)> {
    let rest = line
        .trim_end()
        .strip_prefix("event 'lifecycle' for domain '")?;
    let (domain, what) = rest.rsplit_once("': ")?;
    let (event, detail) = what.split_once(' ').unwrap_or((what, ""));
    let lifecycle = match (event, detail) {
        ("Suspended", "Migrated" | "Post-copy") => Lifecycle::PausedForMigration,
        ("Resumed", _) => Lifecycle::Resumed,
        ("Started" | "Defined", _) => Lifecycle::Started,
        ("Undefined", _) => Lifecycle::Undefined,
        _ => Lifecycle::Other,
    };
    Some((domain.to_owned(), lifecycle))
}

/// The interface names `virsh domiflist` lists (its first column, below the header and
/// its rule of dashes); an interface without a name (`-`) is left out.
pub fn parse_domiflist(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "-")
        .map(str::to_owned)
        .collect()
}

/// What to ask of the running vmtun, or of libvirt, for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `vmtun handover VIF`.
    HandOver(String),
    /// `vmtun handover --back VIF`.
    HandBack(String),
    /// Read the domain's interfaces again (`virsh domiflist`).
    Refresh(String),
}

/// The domains the follower knows, with their interfaces that vmtun's `[[vm]]`s name.
#[derive(Debug, Default)]
pub struct Domains {
    vifs: HashMap<String, Vec<String>>,
}

impl Domains {
    /// `domain` has `interfaces` (all of them; only those in `configured` are kept).
    pub fn learn(&mut self, domain: &str, interfaces: &[String], configured: &[String]) {
        let ours = (interfaces.iter())
            .filter(|i| configured.contains(i))
            .cloned()
            .collect();
        self.vifs.insert(domain.to_owned(), ours);
    }

    /// Whether `domain`'s interfaces are known (an unknown one is read before acting).
    pub fn knows(&self, domain: &str) -> bool {
        self.vifs.contains_key(domain)
    }

    /// The configured VM interfaces of `domain`.
    pub fn vifs(&self, domain: &str) -> &[String] {
        self.vifs.get(domain).map_or(&[], Vec::as_slice)
    }

    /// What `lifecycle` of `domain` asks for: hand its VMs over at the pause, back at a
    /// resume, re-read its interfaces when it starts.
    pub fn actions(&mut self, domain: &str, lifecycle: &Lifecycle) -> Vec<Action> {
        match lifecycle {
            Lifecycle::PausedForMigration => (self.vifs(domain).iter())
                .map(|vif| Action::HandOver(vif.clone()))
                .collect(),
            Lifecycle::Resumed => (self.vifs(domain).iter())
                .map(|vif| Action::HandBack(vif.clone()))
                .collect(),
            Lifecycle::Started => vec![Action::Refresh(domain.to_owned())],
            Lifecycle::Undefined => {
                self.vifs.remove(domain);
                Vec::new()
            }
            Lifecycle::Other => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_lifecycle_lines_read_as_what_the_handover_needs() {
        for (line, domain, lifecycle) in [
            (
                "event 'lifecycle' for domain 'web1': Suspended Migrated\n",
                "web1",
                Lifecycle::PausedForMigration,
            ),
            (
                "event 'lifecycle' for domain 'web1': Suspended Post-copy",
                "web1",
                Lifecycle::PausedForMigration,
            ),
            (
                "event 'lifecycle' for domain 'it's: odd': Resumed Migrated",
                "it's: odd",
                Lifecycle::Resumed,
            ),
            (
                "event 'lifecycle' for domain 'db': Resumed Unpaused",
                "db",
                Lifecycle::Resumed,
            ),
            (
                "event 'lifecycle' for domain 'db': Started Booted",
                "db",
                Lifecycle::Started,
            ),
            (
                "event 'lifecycle' for domain 'db': Defined Updated",
                "db",
                Lifecycle::Started,
            ),
            (
                "event 'lifecycle' for domain 'db': Undefined Removed",
                "db",
                Lifecycle::Undefined,
            ),
            // An operator's pause is not a migration's.
            (
                "event 'lifecycle' for domain 'db': Suspended Paused",
                "db",
                Lifecycle::Other,
            ),
            (
                "event 'lifecycle' for domain 'db': Stopped Migrated",
                "db",
                Lifecycle::Other,
            ),
        ] {
            assert_eq!(
                parse_event(line),
                Some((domain.to_owned(), lifecycle)),
                "{line}"
            );
        }
        for line in [
            "",
            "event 'reboot' for domain 'db'",
            "events received: 3",
            "event 'lifecycle' for domain 'db' Suspended Migrated",
        ] {
            assert_eq!(parse_event(line), None, "{line:?}");
        }
    }

    #[test]
    fn domiflist_gives_the_interface_names() {
        let text = " Interface   Type       Source   Model    MAC
-------------------------------------------------------------
 vif0        ethernet   -        virtio   52:54:00:12:34:56
 -           network    default  virtio   52:54:00:12:34:57
 vnet3       bridge     br0      e1000    52:54:00:12:34:58

";
        assert_eq!(parse_domiflist(text), ["vif0", "vnet3"]);
        assert!(parse_domiflist("").is_empty());
    }

    #[test]
    fn a_migrating_domain_hands_over_only_the_configured_interfaces() {
        let configured = ["vif0".to_owned(), "vif1".to_owned()];
        let mut domains = Domains::default();
        domains.learn("web1", &["vif0".into(), "vnet7".into()], &configured);
        assert!(domains.knows("web1") && !domains.knows("db"));
        let paused = Lifecycle::PausedForMigration;
        assert_eq!(
            domains.actions("web1", &paused),
            [Action::HandOver("vif0".into())]
        );
        assert_eq!(
            domains.actions("web1", &Lifecycle::Resumed),
            [Action::HandBack("vif0".into())]
        );
        assert_eq!(
            domains.actions("web1", &Lifecycle::Started),
            [Action::Refresh("web1".into())]
        );
        assert!(domains.actions("db", &paused).is_empty());
        assert!(domains.actions("web1", &Lifecycle::Other).is_empty());
        domains.actions("web1", &Lifecycle::Undefined);
        assert!(!domains.knows("web1"));
    }
}
