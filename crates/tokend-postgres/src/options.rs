//! How to reach the database: the URL (a secret: it may hold a password),
//! pool size, timeouts and TLS, resolved once into a driver config.

use std::{path::PathBuf, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::PgError;

/// TLS to the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plaintext: only for a database on loopback or a private link.
    Disable,
    /// TLS, verifying the server's certificate and host name against the
    /// system's roots, or against `ca_file` (PEM) when given.
    VerifyFull { ca_file: Option<PathBuf> },
}

/// Everything the store needs to connect. `Debug` never shows the URL.
#[derive(Clone)]
pub struct PgOptions {
    pub url: SecretString,
    /// Most connections open at once, per replica.
    pub pool_size: usize,
    /// Longest any statement may run before the server cancels it.
    pub statement_timeout: Duration,
    /// Longest to wait for a connection (to open one, or for a free one).
    pub connect_timeout: Duration,
    pub tls: Tls,
    /// How often the committed end of the event log is read (through the
    /// pool), besides the notifications, and the `LISTEN` connection checked:
    /// bounds how late another replica's event can be seen when a
    /// notification is lost or the `LISTEN` connection went silent.
    pub poll_interval: Duration,
    /// Longest sent data may go unacknowledged before the kernel drops the
    /// connection (`TCP_USER_TIMEOUT`).
    pub tcp_user_timeout: Duration,
    /// Idle time before TCP keepalive probes start; three unanswered
    /// probes, one every half of this (at least 1 s), drop the connection.
    pub keepalive_idle: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"[redacted]")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("poll_interval", &self.poll_interval)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("keepalive_idle", &self.keepalive_idle)
            .finish()
    }
}

impl PgOptions {
    /// Defaults for everything but the URL.
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            tls: Tls::Disable,
            poll_interval: Duration::from_secs(1),
            tcp_user_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(5),
        }
    }

    /// The longest one store call may take, measured by tokend itself:
    /// waiting for a pooled connection (`connect_timeout`) and its
    /// statements (`statement_timeout`). The server cancels a slow statement
    /// itself; this bound is for a connection that went silent (a dead
    /// peer, a dropped route), which no server-side timeout can end.
    pub fn call_timeout(&self) -> Duration {
        self.statement_timeout.saturating_add(self.connect_timeout)
    }

    /// Whether every host the URL names is on this machine (loopback
    /// addresses, `localhost`, or a Unix socket): where plaintext is fine.
    pub fn loopback_only(&self) -> Result<bool, PgError> {
        use tokio_postgres::config::Host;
        let config = self.driver_config()?;
        let local = |host: &Host| match host {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            Host::Unix(_) => true,
        };
        let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
        Ok(!(hosts.is_empty() && addrs.is_empty())
            && hosts.iter().all(local)
            && addrs.iter().all(|ip| ip.is_loopback()))
    }

    /// Whether the URL itself asks for TLS (`sslmode=require` or stricter):
    /// then plaintext is never the default, whatever the host.
    pub fn url_requires_tls(&self) -> Result<bool, PgError> {
        let config: tokio_postgres::Config = self.url.expose_secret().parse().map_err(|_| {
            PgError::Config("the database URL is not a valid PostgreSQL URL".into())
        })?;
        Ok(config.get_ssl_mode() == SslMode::Require)
    }

    /// The driver's config: the URL's settings, with timeouts and TLS mode
    /// from these options.
    pub(crate) fn driver_config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config: tokio_postgres::Config = self
            .url
            .expose_secret()
            .parse()
            // The driver's parse errors quote no part of the URL, but say
            // nothing of it either way.
            .map_err(|_| {
                PgError::Config("the database URL is not a valid PostgreSQL URL".into())
            })?;
        let timeout_ms = self.statement_timeout.as_millis().max(1);
        config
            .options(format!("-c statement_timeout={timeout_ms}"))
            .connect_timeout(self.connect_timeout)
            .application_name("tokend")
            // A peer gone silent is noticed in seconds, not after the
            // kernel's defaults (2 h of idle, 15 min of retransmissions).
            .tcp_user_timeout(self.tcp_user_timeout)
            .keepalives(true)
            .keepalives_idle(self.keepalive_idle)
            .keepalives_interval((self.keepalive_idle / 2).max(Duration::from_secs(1)))
            .keepalives_retries(3);
        config.ssl_mode(match self.tls {
            Tls::Disable => SslMode::Disable,
            Tls::VerifyFull { .. } => SslMode::Require,
        });
        Ok(config)
    }

    /// The TLS connector (used only when TLS is on; rustls, verifying the
    /// certificate and host name).
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, PgError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.tls {
            Tls::VerifyFull {
                ca_file: Some(path),
            } => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                    PgError::Config(format!("cannot read CA file {}: {e}", path.display()))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        PgError::Config(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        PgError::Config(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                }
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot parse is skipped, as
                    // every rustls client does.
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}
