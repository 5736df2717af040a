//! The parts of a `[providers.NAME]` table that resolve on their own: the
//! `private_key_jwt` signer, client TLS, connection parameters and
//! headers.

use std::{collections::BTreeMap, path::Path};

use crate::{error::KeyedError, file::*, secret::read_secret};

impl ProviderSection {
    /// The `private_key_jwt` signer: a key is required by that method and
    /// refused by every other.
    pub(crate) fn client_assertion(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<tokend_provider::AssertionSigner>, String> {
        let wanted = matches!(self.client_auth, Some(ClientAuthName::PrivateKeyJwt));
        let given = self.private_key_env.is_some() || self.private_key_file.is_some();
        if !wanted {
            if given
                || self.jwt_algorithm.is_some()
                || self.jwt_key_id.is_some()
                || self.jwt_audience.is_some()
            {
                return Err(
                    "private_key_* and jwt_* are for client_auth = \"private_key_jwt\"".into(),
                );
            }
            return Ok(None);
        }
        let pem = read_secret(
            "private_key",
            self.private_key_env.as_deref(),
            self.private_key_file.as_deref(),
            self.allow_readable_secret_file,
            env,
        )?;
        // A per-connection audience is filled in for each connection.
        let audience = self
            .jwt_audience
            .clone()
            .filter(|a| !matches!(tokend_provider::UrlTemplate::parse(a), Ok(Some(_))));
        tokend_provider::AssertionSigner::from_pem(
            pem.as_bytes(),
            self.jwt_algorithm.as_deref().unwrap_or("RS256"),
            self.jwt_key_id.clone(),
            audience,
        )
        .map(Some)
    }

    /// The provider's TLS settings: a client certificate (required by
    /// `tls_client_auth`, allowed with any method) and private roots.
    pub(crate) fn tls(&self) -> Result<Option<tokend_provider::ClientTls>, (Vec<String>, String)> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                (
                    vec![key.to_owned()],
                    format!("cannot read {key} {}: {e}", path.display()),
                )
            })
        };
        let identity = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(cert), Some(key)) => {
                let key = read_secret(
                    "tls_client_key",
                    None,
                    Some(key),
                    self.allow_readable_secret_file,
                    &|_| None,
                )
                .map_err(|e| (vec!["tls_client_key_file".to_owned()], e))?;
                Some((read("tls_client_cert_file", cert)?, key.into_bytes()))
            }
            (None, None) => None,
            (cert, _) => {
                let key = if cert.is_some() {
                    "tls_client_cert_file"
                } else {
                    "tls_client_key_file"
                };
                return Err((
                    vec![key.to_owned()],
                    "set both tls_client_cert_file and tls_client_key_file, or neither".into(),
                ));
            }
        };
        if matches!(self.client_auth, Some(ClientAuthName::TlsClientAuth)) && identity.is_none() {
            return Err((vec!["client_auth".to_owned()], "client_auth = \"tls_client_auth\" needs tls_client_cert_file and tls_client_key_file".into()));
        }
        let roots = match &self.tls_ca_file {
            Some(path) => Some(read("tls_ca_file", path)?),
            None => None,
        };
        if identity.is_none() && roots.is_none() {
            return Ok(None);
        }
        tokend_provider::ClientTls::from_pem(
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            roots.as_deref(),
        )
        .map(Some)
        .map_err(|e| {
            let key = if identity.is_some() {
                "tls_client_cert_file"
            } else {
                "tls_ca_file"
            };
            (vec![key.to_owned()], e)
        })
    }

    /// A table of parameters, each value's placeholders checked.
    pub(crate) fn checked_params(
        &self,
        key: &str,
        table: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, KeyedError> {
        for (name, value) in table {
            if name.is_empty() {
                return Err((vec![key.to_owned()], format!("{key} has an empty name")));
            }
            tokend_provider::UrlTemplate::parse(value).map_err(|e| {
                (
                    vec![key.to_owned(), name.clone()],
                    format!("{key}.{name}: {e}"),
                )
            })?;
        }
        Ok(table.clone().into_iter().collect())
    }

    /// The extra headers, names and values checked, the ones tokend sets
    /// itself refused.
    pub(crate) fn checked_headers(&self) -> Result<Vec<(String, String)>, KeyedError> {
        for (name, value) in &self.headers {
            let at = || vec!["headers".to_owned(), name.clone()];
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "authorization" | "content-type" | "content-length" | "host" | "transfer-encoding"
            ) {
                return Err((
                    at(),
                    format!("headers.{name}: tokend sets this header itself"),
                ));
            }
            if !tokend_provider::valid_header(name, value) {
                return Err((at(), format!("headers.{name}: not a valid HTTP header")));
            }
        }
        self.checked_params("headers", &self.headers)
    }
}
