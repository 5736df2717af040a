//! Certificates for a TLS cluster: a CA, the server's certificate and key,
//! and an unrelated CA for tests that must be refused.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Where a TLS cluster's certificates are.
#[derive(Debug, Clone)]
pub(crate) struct ServerTls {
    /// The CA that issued the server's certificate (PEM).
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

/// The common name of the CA a TLS cluster's certificate is issued by.
pub const TLS_CA_NAME: &str = "tokend-pgtest CA";

/// A new CA: its parameters and key, to issue certificates with.
pub(crate) fn new_ca(
    common_name: &str,
) -> Result<(rcgen::CertificateParams, rcgen::KeyPair), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    Ok((params, key))
}

/// A freshly generated CA certificate (PEM) named `common_name`, related to
/// no cluster: to check that a client trusting it refuses a TLS cluster's
/// server (use [`TLS_CA_NAME`] for one whose name matches the real issuer's,
/// so only the signature tells them apart). The file is removed on drop.
///
/// # Panics
/// When the certificate cannot be made or written.
pub fn unrelated_ca_file(common_name: &str) -> tempfile::NamedTempFile {
    let made = new_ca(common_name).and_then(|(params, key)| {
        params
            .self_signed(&key)
            .map(|c| c.pem())
            .map_err(|e| format!("CA certificate: {e}"))
    });
    let pem = match made {
        Ok(pem) => pem,
        Err(e) => panic!("test CA: {e}"),
    };
    let mut file = match tempfile::Builder::new()
        .prefix("tokend-unrelated-ca-")
        .suffix(".pem")
        .tempfile()
    {
        Ok(f) => f,
        Err(e) => panic!("test CA file: {e}"),
    };
    if let Err(e) = std::io::Write::write_all(&mut file, pem.as_bytes()) {
        panic!("test CA file: {e}");
    }
    file
}

/// Makes a CA and a server certificate for `localhost` and `127.0.0.1`
/// under `dir`: `ca.crt`, `server.crt` and `server.key` (mode 0600, and the
/// server's user's, as PostgreSQL insists).
pub(crate) fn write_server_tls(dir: &Path, run_as: Option<&str>) -> Result<ServerTls, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };

    let (ca_params, ca_key) = new_ca(TLS_CA_NAME)?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| format!("CA certificate: {e}"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| format!("server certificate: {e}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(|e| format!("server key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("server certificate: {e}"))?;

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tls = ServerTls {
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("server.crt"),
        key_file: dir.join("server.key"),
    };
    let write = |path: &Path, contents: &str, mode: u32| -> Result<(), String> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, contents.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // The mode asked for at creation is masked by the umask: set it.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&tls.ca_file, &ca_cert.pem(), 0o644)?;
    write(&tls.cert_file, &cert.pem(), 0o644)?;
    write(&tls.key_file, &key.serialize_pem(), 0o600)?;
    if let Some(user) = run_as {
        // The server reads them as its own user, and refuses a key it
        // does not own (or root does not, with mode 0640).
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!("cannot hand {} to the {user} user", dir.display()));
        }
    }
    Ok(tls)
}
