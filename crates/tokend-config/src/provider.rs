//! One `[providers.NAME]` table resolved into a [`ProviderConfig`]: the
//! preset's defaults under the table's own keys, every problem of the
//! table collected with the key it is about.

use std::{collections::BTreeMap, time::Duration};

use secrecy::SecretString;
use tokend_core::{ProviderName, RefreshPolicy};
use tokend_provider::{ClientAuth, Dialect, Preset, PresetDefaults, ProviderConfig};

use crate::{
    error::{ConfigError, Fault, Faults},
    file::*,
    secret::read_secret,
};

impl ProviderSection {
    pub(crate) fn resolve(
        &self,
        name: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<ProviderConfig, ConfigError> {
        // `check-config` lists it with the other problems instead.
        if let Some(warning) = self.plain_http_warning() {
            tracing::warn!(provider = name, "{}", warning.reason);
        }
        self.resolve_all(name, env)
            .map_err(|faults| ConfigError::Provider {
                name: name.to_owned(),
                reason: faults
                    .into_iter()
                    .map(|f| f.reason)
                    .collect::<Vec<_>>()
                    .join("; "),
            })
    }

    /// The provider, or every problem of its table (not only the first),
    /// each with the key it is about.
    pub(crate) fn resolve_all(
        &self,
        name: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<ProviderConfig, Vec<Fault>> {
        let mut f = Faults::default();
        let provider_name = f.take(
            &[],
            ProviderName::new(name).map_err(|e| format!("invalid name: {e}")),
        );
        let defaults = PresetDefaults::of(self.preset);
        let versioned;
        let token_url: Option<(&str, &str)> =
            match (&self.token_url, defaults.token_url, &self.api_version) {
                (Some(_), _, Some(_)) => {
                    f.add(
                    &["api_version"],
                    "set token_url or api_version, not both (api_version picks the preset's URL)"
                        .into(),
                );
                    None
                }
                (None, _, Some(v)) if matches!(self.preset, Some(Preset::Hubspot)) => {
                    if v.is_empty() || v.len() > 8 || !v.bytes().all(|b| b.is_ascii_alphanumeric())
                    {
                        f.add(
                            &["api_version"],
                            format!("api_version {v:?} must be letters and digits, like v1 or v3"),
                        );
                        None
                    } else {
                        versioned = format!("https://api.hubapi.com/oauth/{v}/token");
                        Some(("api_version", versioned.as_str()))
                    }
                }
                (_, _, Some(_)) => {
                    f.add(
                        &["api_version"],
                        "api_version is a key of the hubspot preset only".into(),
                    );
                    None
                }
                (Some(url), _, None) => Some(("token_url", url.as_str())),
                (None, Some(url), None) => Some(("preset", url)),
                (None, None, None) => {
                    f.add(&["token_url"], "token_url is required".into());
                    None
                }
            };
        // A URL with `{name}` placeholders is a per-connection template:
        // checked by filling every placeholder with a sample value.
        let parse_url = |key: &str,
                         url: &str|
         -> Result<
            (tokend_provider::Url, Option<tokend_provider::UrlTemplate>),
            String,
        > {
            let template = tokend_provider::UrlTemplate::parse(url)
                .map_err(|e| format!("invalid {key}: {e}"))?;
            let sample = match &template {
                Some(t) => {
                    t.places().map_err(|e| format!("invalid {key}: {e}"))?;
                    let params = t
                        .names()
                        .iter()
                        .map(|n| (n.clone(), "sample".to_owned()))
                        .collect();
                    t.render(&params)
                        .map_err(|e| format!("invalid {key}: {e}"))?
                }
                None => url.parse().map_err(|e| format!("invalid {key}: {e}"))?,
            };
            if !matches!(sample.scheme(), "https" | "http") {
                return Err(format!("{key} must be http or https"));
            }
            if template.is_some() {
                // Never used unfilled: a host that cannot resolve (RFC 2606),
                // so a path that forgot to fill it fails instead of sending
                // secrets anywhere.
                let unfilled = "https://unfilled-url-template.invalid/"
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                return Ok((unfilled, template));
            }
            Ok((sample, None))
        };
        let token_url =
            token_url.and_then(|(key, url)| f.take(&[key], parse_url("token_url", url)));
        let (refresh_url, refresh_url_template) = match self.refresh_url.as_deref() {
            Some(u) => f
                .take(&["refresh_url"], parse_url("refresh_url", u))
                .map_or((None, None), |(url, template)| (Some(url), template)),
            None => (None, None),
        };
        let revocation_url = match self.revocation_url.as_deref() {
            Some(u) => match f.take(&["revocation_url"], parse_url("revocation_url", u)) {
                Some((url, None)) => Some(url),
                Some((_, Some(_))) => {
                    f.add(
                        &["revocation_url"],
                        "revocation_url cannot name placeholders (yet)".into(),
                    );
                    None
                }
                None => None,
            },
            None => None,
        };
        if self.revoke_on_delete && self.revocation_url.is_none() {
            f.add(
                &["revoke_on_delete"],
                "revoke_on_delete needs a revocation_url".into(),
            );
        }
        let token_path: Vec<String> = match self.token_path.as_deref() {
            None | Some("") => Vec::new(),
            Some(path) => {
                let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
                if keys.iter().any(String::is_empty) {
                    f.add(
                        &["token_path"],
                        format!("token_path {path:?} has an empty key"),
                    );
                }
                keys
            }
        };
        if self.client_id.is_empty() {
            f.add(&["client_id"], "client_id is required".into());
        }
        let public = matches!(
            self.client_auth,
            Some(
                ClientAuthName::None
                    | ClientAuthName::PrivateKeyJwt
                    | ClientAuthName::TlsClientAuth
            )
        );
        let secret_key = if self.client_secret_file.is_some() && self.client_secret_env.is_none() {
            "client_secret_file"
        } else {
            "client_secret_env"
        };
        let client_secret = if public {
            if self.client_secret_env.is_some() || self.client_secret_file.is_some() {
                let method = match self.client_auth {
                    Some(ClientAuthName::PrivateKeyJwt) => {
                        "private_key_jwt\" signs with a private key"
                    }
                    Some(ClientAuthName::TlsClientAuth) => {
                        "tls_client_auth\" presents a certificate"
                    }
                    _ => "none\" is a public client",
                };
                f.add(
                    &[secret_key],
                    format!("client_auth = \"{method}: give it no client secret"),
                );
            }
            Some(String::new())
        } else {
            let secret = f.take(
                &[secret_key],
                read_secret(
                    "client_secret",
                    self.client_secret_env.as_deref(),
                    self.client_secret_file.as_deref(),
                    self.allow_readable_secret_file,
                    env,
                ),
            );
            if secret.as_ref().is_some_and(String::is_empty) {
                f.add(&[secret_key], "the client secret is empty".into());
            }
            secret
        };
        let client_assertion = self
            .client_assertion(env)
            .map_err(|e| (self.assertion_key(), e));
        let client_assertion = f.take_keyed(client_assertion);
        let jwt_audience_template = match self.jwt_audience.as_deref() {
            Some(a) => f
                .take(
                    &["jwt_audience"],
                    tokend_provider::UrlTemplate::parse(a)
                        .map_err(|e| format!("invalid jwt_audience: {e}")),
                )
                .flatten(),
            None => None,
        };
        let param_values = f.take_keyed(self.param_values(&defaults));
        let tls = f.take_keyed(self.tls());
        let mut extra_params: Vec<(String, String)> =
            self.extra_params.clone().into_iter().collect();
        if let Some(uri) = &self.redirect_uri {
            extra_params.push(("redirect_uri".into(), uri.clone()));
        }
        let client_auth = match self.client_auth {
            Some(ClientAuthName::ClientSecretBasic) => ClientAuth::ClientSecretBasic,
            Some(ClientAuthName::ClientSecretPost) => ClientAuth::ClientSecretPost,
            Some(ClientAuthName::None) => ClientAuth::None,
            Some(ClientAuthName::Both) => ClientAuth::Both,
            Some(ClientAuthName::PrivateKeyJwt) => ClientAuth::PrivateKeyJwt,
            Some(ClientAuthName::TlsClientAuth) => ClientAuth::TlsClientAuth,
            None => defaults.client_auth,
        };
        let dialect = match self.dialect {
            Some(DialectName::Hubspot) => Dialect::Hubspot,
            Some(DialectName::Rfc6749) => Dialect::Rfc6749,
            Some(DialectName::Slack) => Dialect::Slack,
            Some(DialectName::Github) => Dialect::Github,
            Some(DialectName::Microsoft) => Dialect::Microsoft,
            Some(DialectName::Zoho) => Dialect::Zoho,
            Some(DialectName::Facebook) => Dialect::Facebook,
            None => defaults.dialect,
        };
        let body = match self.body {
            Some(BodyName::Form) => tokend_provider::RequestBody::Form,
            Some(BodyName::Json) => tokend_provider::RequestBody::Json,
            None => defaults.body,
        };
        use crate::ranges as r;
        let mut secs = |range: r::Range, v: Option<u64>| {
            f.take(&[range.name()], range.check_opt(v))
                .flatten()
                .map(Duration::from_secs)
        };
        let default_lifetime = secs(
            r::PROVIDER_DEFAULT_LIFETIME_SECS,
            self.default_lifetime_secs,
        )
        .unwrap_or(Duration::from_secs(defaults.default_lifetime_secs));
        let mut refresh_policy = RefreshPolicy::default();
        if let Some(b) = secs(r::PROVIDER_REFRESH_BUFFER_SECS, self.refresh_buffer_secs) {
            refresh_policy.buffer = b;
        }
        let keepalive_days = secs(r::PROVIDER_KEEPALIVE_DAYS, self.keepalive_days);
        refresh_policy.keepalive = keepalive_days
            .map(|d| d.as_secs())
            .or(defaults.keepalive_days)
            .map(|days| Duration::from_secs(days * 86_400));
        let rotation_grace = secs(r::PROVIDER_ROTATION_GRACE_SECS, self.rotation_grace_secs)
            .unwrap_or(Duration::from_secs(defaults.rotation_grace_secs));
        let min_refresh_interval = secs(
            r::PROVIDER_MIN_REFRESH_INTERVAL_SECS,
            self.min_refresh_interval_secs,
        )
        .unwrap_or(ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL);
        let refresh_params =
            f.take_keyed(self.checked_params("refresh_params", &self.refresh_params));
        let exchange_params =
            f.take_keyed(self.checked_params("exchange_params", &self.exchange_params));
        let query_params = f.take_keyed(self.checked_params("query_params", &self.query_params));
        let headers = f.take_keyed(self.checked_headers());
        let (
            Some(provider_name),
            Some(token_url),
            Some(client_secret),
            Some(client_assertion),
            Some(param_values),
            Some(tls),
            Some(refresh_params),
            Some(exchange_params),
            Some(query_params),
            Some(headers),
        ) = (
            provider_name,
            token_url,
            client_secret,
            client_assertion,
            param_values,
            tls,
            refresh_params,
            exchange_params,
            query_params,
            headers,
        )
        else {
            return Err(f.list);
        };
        if !f.list.is_empty() {
            return Err(f.list);
        }
        let (token_url, token_url_template) = token_url;
        let mut config = ProviderConfig {
            name: provider_name,
            token_url,
            client_id: self.client_id.clone(),
            client_secret: SecretString::from(client_secret),
            client_auth,
            extra_params,
            default_lifetime,
            refresh_policy,
            dialect,
            account_id_field: self
                .account_id_field
                .clone()
                .or_else(|| defaults.account_id_field.map(str::to_owned)),
            rotation_grace,
            min_refresh_interval,
            request: tokend_provider::RequestShape {
                refresh_url,
                body,
                token_url_template,
                refresh_url_template,
                jwt_audience_template,
                param_values,
                refresh_params,
                exchange_params,
                query_params,
                headers,
                revocation_url,
                revoke_on_delete: self.revoke_on_delete,
                refresh_with_access_token: match self.refresh_with {
                    Some(RefreshWith::AccessToken) => true,
                    Some(RefreshWith::RefreshToken) => false,
                    None => defaults.exchange.is_some(),
                },
                refresh_grant_type: self
                    .refresh_grant_type
                    .clone()
                    .or_else(|| defaults.exchange.map(|(g, _)| g.to_owned())),
                refresh_token_param: self
                    .refresh_token_param
                    .clone()
                    .or_else(|| defaults.exchange.map(|(_, p)| p.to_owned())),
                client_assertion,
                tls,
            },
            response: tokend_provider::ResponseShape {
                token_path,
                metadata_fields: self.metadata_fields.clone().unwrap_or_else(|| {
                    defaults
                        .metadata_fields
                        .iter()
                        .map(|f| (*f).to_owned())
                        .collect()
                }),
            },
            grant: match self.grant {
                Some(GrantName::ClientCredentials) => tokend_provider::GrantType::ClientCredentials,
                Some(GrantName::AuthorizationCode) | None => {
                    tokend_provider::GrantType::AuthorizationCode
                }
            },
            scopes: self.scopes.clone(),
        };
        // A preset's list for a placeholder the file's own URL dropped.
        let names = config.connection_params();
        config
            .request
            .param_values
            .retain(|name, _| names.contains(name) || self.param_values.contains_key(name));
        // Its messages start with the key they are about: `token_url: ...`,
        // `param_values.NAME ...`.
        config.check_templates().map_err(|e| {
            let key: Vec<String> = e
                .split([':', ' '])
                .next()
                .unwrap_or_default()
                .split('.')
                .map(str::to_owned)
                .collect();
            vec![Fault { key, reason: e }]
        })?;
        Ok(config)
    }

    /// The key a `client_assertion` problem is about: the first
    /// `private_key_*`/`jwt_*` key set, else `client_auth`.
    pub(crate) fn assertion_key(&self) -> Vec<String> {
        let wanted = matches!(self.client_auth, Some(ClientAuthName::PrivateKeyJwt));
        let keys = [
            ("private_key_env", self.private_key_env.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
            ("jwt_algorithm", self.jwt_algorithm.is_some() && !wanted),
            ("jwt_key_id", self.jwt_key_id.is_some() && !wanted),
            ("jwt_audience", self.jwt_audience.is_some() && !wanted),
        ];
        let key = keys
            .iter()
            .find(|(_, set)| *set)
            .map_or("client_auth", |(k, _)| k);
        vec![key.to_owned()]
    }

    /// A `token_url` that sends the client secret and refresh tokens in the
    /// clear to another host: `serve` warns, `check-config` lists it.
    pub(crate) fn plain_http_warning(&self) -> Option<Fault> {
        let url: tokend_provider::Url = self.token_url.as_deref()?.parse().ok()?;
        let local = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        (url.scheme() == "http" && !local).then(|| Fault {
            key: vec!["token_url".into()],
            reason: format!(
                "token_url {url} is plain http:// to another host: the client secret and refresh tokens cross the network in the clear"
            ),
        })
    }

    /// `param_values`: the preset's lists, extended by the file's.
    pub(crate) fn param_values(
        &self,
        defaults: &PresetDefaults,
    ) -> Result<BTreeMap<String, Vec<String>>, (Vec<String>, String)> {
        let mut lists: BTreeMap<String, Vec<String>> = defaults
            .param_values
            .iter()
            .map(|(name, values)| {
                let values = values.iter().map(|v| (*v).to_owned()).collect();
                ((*name).to_owned(), values)
            })
            .collect();
        for (name, values) in &self.param_values {
            if values.is_empty() {
                return Err((
                    vec!["param_values".to_owned(), name.clone()],
                    format!("param_values.{name} is empty: list the values, or leave the key out"),
                ));
            }
            let list = lists.entry(name.clone()).or_default();
            for value in values {
                if !list.contains(value) {
                    list.push(value.clone());
                }
            }
        }
        Ok(lists)
    }
}

/// The provider entry for a sandbox reachable at `token_url`, as `tokend
/// serve --sandbox` and the tests configure it.
pub fn sandbox_provider(
    name: &str,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<ProviderConfig, ConfigError> {
    let section = ProviderSection {
        preset: Some(Preset::Sandbox),
        token_url: Some(token_url.to_owned()),
        client_id: client_id.to_owned(),
        client_secret_env: Some("SANDBOX_CLIENT_SECRET".to_owned()),
        ..Default::default()
    };
    section.resolve(name, &|_| Some(client_secret.to_owned()))
}
