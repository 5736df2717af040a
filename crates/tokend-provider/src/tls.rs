//! Per-provider TLS: a client certificate for mutual TLS at the token
//! endpoint (RFC 8705 `tls_client_auth`), and private roots for providers
//! whose endpoints a public CA did not sign.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

/// A provider's TLS settings. The private key lives only inside
/// `reqwest::Identity` and never appears in `Debug` output.
#[derive(Clone)]
pub struct ClientTls {
    identity: Option<reqwest::Identity>,
    roots: Vec<reqwest::Certificate>,
    /// What `Debug` shows: which parts are set, never their contents.
    summary: String,
    /// The HTTP client with these settings, built at first use and shared
    /// by every clone (one connection pool per provider).
    built: Arc<OnceLock<reqwest::Client>>,
}

impl ClientTls {
    /// From a PEM certificate chain and its PEM private key (both or
    /// neither), and a PEM bundle of roots to trust instead of the system's.
    ///
    /// # Errors
    /// A certificate or key that does not parse; the text never quotes them.
    pub fn from_pem(
        client_cert_and_key: Option<(&[u8], &[u8])>,
        roots: Option<&[u8]>,
    ) -> Result<Self, String> {
        let identity = match client_cert_and_key {
            Some((cert, key)) => {
                let mut pem = Vec::with_capacity(cert.len() + key.len() + 1);
                pem.extend_from_slice(cert);
                pem.push(b'\n');
                pem.extend_from_slice(key);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                    "the TLS client certificate and key do not parse as PEM".to_owned()
                })?;
                Some(identity)
            }
            None => None,
        };
        let roots = match roots {
            Some(pem) => {
                let roots = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|_| "the TLS roots do not parse as PEM certificates".to_owned())?;
                if roots.is_empty() {
                    return Err("the TLS roots file holds no certificate".into());
                }
                roots
            }
            None => Vec::new(),
        };
        let summary = format!(
            "client certificate: {}, private roots: {}",
            if identity.is_some() { "yes" } else { "no" },
            roots.len()
        );
        Ok(Self {
            identity,
            roots,
            summary,
            built: Arc::default(),
        })
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// The HTTP client for this provider: `base` with these settings.
    pub(crate) fn client(
        &self,
        base: impl FnOnce() -> reqwest::ClientBuilder,
    ) -> reqwest::Result<reqwest::Client> {
        if let Some(client) = self.built.get() {
            return Ok(client.clone());
        }
        let mut builder = base();
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        if !self.roots.is_empty() {
            builder = builder.tls_certs_only(self.roots.iter().cloned());
        }
        let client = builder.build()?;
        Ok(self.built.get_or_init(|| client).clone())
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientTls").field(&self.summary).finish()
    }
}
