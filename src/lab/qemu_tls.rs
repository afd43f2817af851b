//! QEMU's own TLS on the migration stream, the alternative the seed avoided by sending the
//! stream through its tunnel: a throwaway CA, the destination's (server) and the source's
//! (client) x509 credentials, and the QEMU arguments and migration parameters that use
//! them. The lab migrates this way to measure what encryption costs the guest's pause
//! when QEMU does it, beside what the tunnel costs (`vmtun demo --real-vm --migrate-via
//! underlay-tls`).

use super::Result;
use super::process::run_checked;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The id of QEMU's `tls-creds-x509` object, which the migration's `tls-creds` names.
const CREDS_ID: &str = "migration-tls";
/// The name the destination's certificate is issued for, which the source checks
/// (`tls-hostname`): the lab migrates to an address, not a name.
pub const SERVER_NAME: &str = "new-host";
/// Validity of the lab's certificates, in days: they live as long as one run.
const DAYS: &str = "2";

/// Which end of the migration stream a QEMU's credentials are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The destination: it listens (`-incoming`) and checks the source's certificate.
    Server,
    /// The source: it connects and checks the destination's certificate against
    /// [`SERVER_NAME`].
    Client,
}

/// One QEMU's TLS credentials for the migration stream: a directory in QEMU's layout
/// (`ca-cert.pem`, and `server-*.pem` or `client-*.pem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTls {
    /// The credentials' directory.
    pub dir: PathBuf,
    /// Which end they are for.
    pub endpoint: Endpoint,
}

impl MigrationTls {
    /// QEMU's arguments: the credentials object, and on the destination the migration's
    /// `tls-creds` too (set at start: `-incoming` listens before QMP could set it).
    pub fn qemu_args(&self) -> Vec<String> {
        let endpoint = match self.endpoint {
            Endpoint::Server => "server,verify-peer=on",
            Endpoint::Client => "client",
        };
        let mut args = vec![
            "-object".into(),
            format!(
                "tls-creds-x509,id={CREDS_ID},dir={},endpoint={endpoint}",
                self.dir.display()
            ),
        ];
        if self.endpoint == Endpoint::Server {
            args.extend(["-global".into(), format!("migration.tls-creds={CREDS_ID}")]);
        }
        args
    }

    /// The source's migration parameters (`migrate-set-parameters`) that turn TLS on;
    /// none on the destination, whose arguments did.
    pub fn source_parameters(&self) -> Map<String, Value> {
        match self.endpoint {
            Endpoint::Server => Map::new(),
            Endpoint::Client => Map::from_iter([
                ("tls-creds".to_owned(), json!(CREDS_ID)),
                ("tls-hostname".to_owned(), json!(SERVER_NAME)),
            ]),
        }
    }
}

/// Makes a throwaway CA in `dir` and issues the destination's and the source's
/// certificates with it (RSA 2048, `openssl`); their credentials `(server, client)`, each in
/// a directory of its own under `dir`.
pub fn issue(dir: &Path) -> Result<(MigrationTls, MigrationTls)> {
    std::fs::create_dir_all(dir).map_err(|e| super::LabError::io(dir.display().to_string(), e))?;
    let ca_key = dir.join("ca-key.pem");
    let ca_cert = dir.join("ca-cert.pem");
    openssl(
        "the lab's migration CA",
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            DAYS,
            "-subj",
            "/CN=vmtun lab migration CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
        ],
    )?;
    let server = issue_one(dir, &ca_key, &ca_cert, Endpoint::Server)?;
    let client = issue_one(dir, &ca_key, &ca_cert, Endpoint::Client)?;
    Ok((server, client))
}

/// Issues `endpoint`'s key and certificate into a directory of its own beside a copy of
/// the CA's certificate, QEMU's layout.
fn issue_one(
    dir: &Path,
    ca_key: &Path,
    ca_cert: &Path,
    endpoint: Endpoint,
) -> Result<MigrationTls> {
    let (role, usage, serial) = match endpoint {
        Endpoint::Server => ("server", "serverAuth", "1"),
        Endpoint::Client => ("client", "clientAuth", "2"),
    };
    let out = dir.join(role);
    let io = |e| super::LabError::io(out.display().to_string(), e);
    std::fs::create_dir_all(&out).map_err(io)?;
    std::fs::copy(ca_cert, out.join("ca-cert.pem")).map_err(io)?;
    let extensions = dir.join(format!("{role}.ext"));
    std::fs::write(
        &extensions,
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage={usage}\n\
             subjectAltName=DNS:{SERVER_NAME}\n"
        ),
    )
    .map_err(io)?;
    let key = format!("{role}/{role}-key.pem");
    let request = format!("{role}.csr");
    openssl(
        &format!("the {role}'s key"),
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={role}"),
            "-keyout",
            &key,
            "-out",
            &request,
        ],
    )?;
    openssl(
        &format!("the {role}'s certificate"),
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &request,
            "-CA",
            &ca_cert.display().to_string(),
            "-CAkey",
            &ca_key.display().to_string(),
            "-set_serial",
            serial,
            "-days",
            DAYS,
            "-extfile",
            &extensions.display().to_string(),
            "-out",
            &format!("{role}/{role}-cert.pem"),
        ],
    )?;
    Ok(MigrationTls { dir: out, endpoint })
}

/// Runs `openssl args` in `dir`.
fn openssl(what: &str, dir: &Path, args: &[&str]) -> Result<()> {
    run_checked(what, Command::new("openssl").current_dir(dir).args(args)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_listens_with_tls_and_the_source_turns_it_on_for_the_new_hosts_name() {
        let server = MigrationTls {
            dir: "/s".into(),
            endpoint: Endpoint::Server,
        };
        assert_eq!(
            server.qemu_args(),
            [
                "-object",
                "tls-creds-x509,id=migration-tls,dir=/s,endpoint=server,verify-peer=on",
                "-global",
                "migration.tls-creds=migration-tls",
            ]
        );
        assert!(server.source_parameters().is_empty());
        let client = MigrationTls {
            dir: "/c".into(),
            endpoint: Endpoint::Client,
        };
        assert_eq!(
            client.qemu_args(),
            [
                "-object",
                "tls-creds-x509,id=migration-tls,dir=/c,endpoint=client"
            ]
        );
        let parameters = client.source_parameters();
        assert_eq!(parameters["tls-creds"], "migration-tls");
        assert_eq!(parameters["tls-hostname"], SERVER_NAME);
    }

    /// The issued certificates chain to the CA, carry the right purpose and the new host's
    /// name, and sit where QEMU looks for them.
    #[test]
    fn issued_credentials_verify_against_the_ca_for_their_purpose() {
        if !crate::lab::process::on_path("openssl") {
            panic!("openssl is not installed: run scripts/setup.sh");
        }
        let scratch = crate::lab::Scratch::new("tls-test").unwrap();
        let (server, client) = issue(&scratch.path().join("tls")).unwrap();
        for (creds, role, purpose) in [
            (&server, "server", "sslserver"),
            (&client, "client", "sslclient"),
        ] {
            for file in [
                "ca-cert.pem",
                &format!("{role}-cert.pem"),
                &format!("{role}-key.pem"),
            ] {
                assert!(
                    creds.dir.join(file).is_file(),
                    "{file} missing in {:?}",
                    creds.dir
                );
            }
            let verify = |name: &str| {
                Command::new("openssl")
                    .current_dir(&creds.dir)
                    .args(["verify", "-CAfile", "ca-cert.pem", "-purpose", purpose])
                    .args(["-verify_hostname", name, &format!("{role}-cert.pem")])
                    .output()
                    .unwrap()
                    .status
                    .success()
            };
            assert!(verify(SERVER_NAME), "{role} certificate does not verify");
            assert!(
                !verify("old-host"),
                "{role} certificate verifies for another name"
            );
        }
    }
}
