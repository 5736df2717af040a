//! Tests of the throwaway cluster: plain and TLS.

use super::*;
use std::process::{Command, Stdio};

#[test]
fn a_cluster_starts_and_answers_in_its_own_database() {
    let c = cluster();
    let url = c.database("pgtest");
    let db = url
        .rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .expect("database name");
    assert_eq!(c.psql(db, "SELECT 40 + 2").expect("query"), "42");
}

/// psql against `c` with `sslmode`, whatever the environment says.
fn psql_with_sslmode(c: &Cluster, sslmode: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(c.bin.join("psql"))
        .env("PGSSLMODE", sslmode)
        .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &c.port.to_string(), "-d", "postgres", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn a_tls_cluster_serves_tls_only_with_a_private_key_only_it_reads() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let (c, ca) = Cluster::dedicated_tls();
    assert_eq!(c.ca_file(), Some(ca.as_path()));
    let pem = std::fs::read_to_string(&ca).expect("CA file");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let key = c.tls.as_ref().expect("tls").key_file.clone();
    let meta = std::fs::metadata(&key).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let data_owner = std::fs::metadata(c.data_dir()).expect("data dir").uid();
    assert_eq!(meta.uid(), data_owner, "the key is the server's user's");

    // Over TLS: the session says so.
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(c.psql("postgres", sql).expect("psql over TLS"), "t");
    assert_eq!(psql_with_sslmode(&c, "require", sql).expect("TLS"), "t");
    // In plaintext: refused by pg_hba.conf.
    let refused = psql_with_sslmode(&c, "disable", "SELECT 1").expect_err("plaintext");
    assert!(refused.contains("no pg_hba.conf entry"), "{refused}");

    // The database helpers work on it too, and the URL asks no sslmode.
    let url = c.database("tls");
    assert!(!url.contains("sslmode"), "{url}");
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
}

#[test]
fn a_plaintext_cluster_keeps_its_url() {
    let c = cluster();
    assert!(c.ca_file().is_none());
    assert!(c.url("x").ends_with("/x?sslmode=disable"));
    assert_eq!(
        c.url_for_host("x", "localhost"),
        format!("postgres://postgres@localhost:{}/x", c.port())
    );
}
