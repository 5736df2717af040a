//! [`Install`]: what `Client::install` takes, in the client's own types
//! (no prost message to fill in), and [`Installed`], what it gives back.
//!
//! ```no_run
//! # async fn demo(tokend: tokend_client::Client) -> Result<(), tokend_client::Error> {
//! use tokend_client::Install;
//! // From an OAuth2 authorization code, as a callback handler receives it:
//! let installed = tokend
//!     .install(Install::new("hubspot").authorization_code("CODE", "https://app.example/callback"))
//!     .await?;
//! println!("{}", installed.connection.connection_id);
//! // From tokens obtained elsewhere (a migration):
//! tokend
//!     .install(
//!         Install::new("sandbox")
//!             .connection_id("sandbox-acct-1")
//!             .account_id("acct-1")
//!             .access_token("ACCESS")
//!             .refresh_token("REFRESH")
//!             .expires_in(std::time::Duration::from_secs(1800)),
//!     )
//!     .await?;
//! # Ok(()) }
//! ```

use std::{collections::BTreeMap, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};
use tokend_proto::v1::{self as pb, Connection};

use crate::error::Error;

/// How the connection gets its grant.
#[derive(Clone, Debug, Default)]
enum Grant {
    /// None given: a client-credentials provider needs none.
    #[default]
    None,
    Code {
        code: SecretString,
        redirect_uri: String,
        code_verifier: Option<SecretString>,
    },
    Import {
        access_token: SecretString,
        refresh_token: Option<SecretString>,
        expires_in: Duration,
        scopes: Vec<String>,
        token_type: String,
    },
}

/// One install: a provider, optionally the connection id and account, and
/// the grant (an authorization code, imported tokens, or none for a
/// client-credentials provider). Secrets print as `[REDACTED]`.
#[derive(Clone, Debug)]
pub struct Install {
    provider: String,
    connection_id: String,
    account_id: String,
    grant: Grant,
    /// A builder call that cannot be honoured, reported by `install`.
    conflict: Option<&'static str>,
    replace: bool,
    force: bool,
    params: BTreeMap<String, String>,
}

impl Install {
    /// An install with `provider` (a name from tokend's configuration).
    pub fn new(provider: impl Into<String>) -> Self {
        Install {
            provider: provider.into(),
            connection_id: String::new(),
            account_id: String::new(),
            grant: Grant::None,
            conflict: None,
            replace: false,
            force: false,
            params: BTreeMap::new(),
        }
    }

    /// The connection id; without it tokend derives `<provider>-<account_id>`.
    pub fn connection_id(mut self, id: impl Into<String>) -> Self {
        self.connection_id = id.into();
        self
    }

    /// The provider-side account id: required for imports; for a code it
    /// may come from the provider's token response instead.
    pub fn account_id(mut self, id: impl Into<String>) -> Self {
        self.account_id = id.into();
        self
    }

    /// Exchange an OAuth2 authorization code, with the redirect URI the
    /// authorization request used.
    pub fn authorization_code(
        mut self,
        code: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        if matches!(self.grant, Grant::Import { .. }) {
            self.conflict = Some("give an authorization code or tokens, not both");
        }
        self.grant = Grant::Code {
            code: SecretString::from(code.into()),
            redirect_uri: redirect_uri.into(),
            code_verifier: None,
        };
        self
    }

    /// The PKCE code verifier of the authorization request (with
    /// [`Self::authorization_code`]).
    pub fn code_verifier(mut self, verifier: impl Into<String>) -> Self {
        match &mut self.grant {
            Grant::Code { code_verifier, .. } => {
                *code_verifier = Some(SecretString::from(verifier.into()));
            }
            _ => self.conflict = Some("code_verifier needs authorization_code first"),
        }
        self
    }

    /// Import this access token (obtained elsewhere). Expired unless
    /// [`Self::expires_in`] says otherwise.
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        let access_token = SecretString::from(token.into());
        match &mut self.grant {
            Grant::Import {
                access_token: t, ..
            } => *t = access_token,
            grant => {
                if matches!(grant, Grant::Code { .. }) {
                    self.conflict = Some("give an authorization code or tokens, not both");
                }
                *grant = Grant::Import {
                    access_token,
                    refresh_token: None,
                    expires_in: Duration::ZERO,
                    scopes: Vec::new(),
                    token_type: String::new(),
                };
            }
        }
        self
    }

    fn import(&mut self, what: &'static str) -> Option<&mut Grant> {
        if matches!(self.grant, Grant::Import { .. }) {
            Some(&mut self.grant)
        } else {
            self.conflict = Some(what);
            None
        }
    }

    /// The refresh token that goes with [`Self::access_token`].
    pub fn refresh_token(mut self, token: impl Into<String>) -> Self {
        if let Some(Grant::Import { refresh_token, .. }) =
            self.import("refresh_token needs access_token first")
        {
            *refresh_token = Some(SecretString::from(token.into()));
        }
        self
    }

    /// Validity left on the imported access token (default: none, so
    /// tokend refreshes it on first use). Whole seconds.
    pub fn expires_in(mut self, left: Duration) -> Self {
        if let Some(Grant::Import { expires_in, .. }) =
            self.import("expires_in needs access_token first")
        {
            *expires_in = left;
        }
        self
    }

    /// Scopes of the imported grant.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        if let Some(Grant::Import { scopes: s, .. }) =
            self.import("scopes needs access_token first")
        {
            *s = scopes.into_iter().map(Into::into).collect();
        }
        self
    }

    /// Token type of the imported token (default `Bearer`).
    pub fn token_type(mut self, token_type: impl Into<String>) -> Self {
        if let Some(Grant::Import { token_type: t, .. }) =
            self.import("token_type needs access_token first")
        {
            *t = token_type.into();
        }
        self
    }

    /// A placeholder of the provider's per-connection URLs, e.g.
    /// `("subdomain", "acme")`.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.insert(name.into(), value.into());
        self
    }

    /// Allow replacing a connection that holds another account's grant
    /// (needs an explicit connection id). Without it such an install is
    /// [`Error::AlreadyExists`].
    pub fn replace(mut self, yes: bool) -> Self {
        self.replace = yes;
        self
    }

    /// Allow replacing a stored record tokend cannot read (it may hold the
    /// only copy of a live grant). Without it: [`Error::RecordUnreadable`].
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }

    /// The wire request, or the builder misuse that makes it meaningless.
    pub(crate) fn into_request(self) -> Result<pb::InstallRequest, Error> {
        if let Some(problem) = self.conflict {
            return Err(Error::InvalidArgument {
                field: "grant".into(),
                description: problem.into(),
                reason: String::new(),
            });
        }
        let grant = match self.grant {
            Grant::None => None,
            Grant::Code {
                code,
                redirect_uri,
                code_verifier,
            } => Some(pb::install_request::Grant::AuthorizationCode(
                pb::AuthorizationCode {
                    code: code.expose_secret().to_owned(),
                    redirect_uri,
                    code_verifier: code_verifier
                        .map(|v| v.expose_secret().to_owned())
                        .unwrap_or_default(),
                },
            )),
            Grant::Import {
                access_token,
                refresh_token,
                expires_in,
                scopes,
                token_type,
            } => Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                access_token: access_token.expose_secret().to_owned(),
                refresh_token: refresh_token
                    .map(|t| t.expose_secret().to_owned())
                    .unwrap_or_default(),
                expires_in_seconds: i64::try_from(expires_in.as_secs()).unwrap_or(i64::MAX),
                scopes,
                token_type,
            })),
        };
        Ok(pb::InstallRequest {
            provider: self.provider,
            connection_id: self.connection_id,
            account_id: self.account_id,
            grant,
            replace: self.replace,
            params: self.params.into_iter().collect(),
            force: self.force,
        })
    }
}

/// What an install did.
#[derive(Clone, Debug)]
pub struct Installed {
    /// The connection as stored (no secret in it).
    pub connection: Connection,
    /// A new connection (false: an existing one was replaced).
    pub created: bool,
    /// The same install was already done (e.g. a code exchanged twice):
    /// nothing changed.
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_each_grant_and_refuses_mixed_ones() {
        let r = Install::new("sandbox")
            .connection_id("c")
            .account_id("a")
            .access_token("at")
            .refresh_token("rt")
            .expires_in(Duration::from_secs(60))
            .scopes(["crm"])
            .param("dc", "eu")
            .into_request()
            .unwrap();
        assert!(matches!(
            r.grant,
            Some(pb::install_request::Grant::TokenImport(ref t))
                if t.access_token == "at" && t.refresh_token == "rt" && t.expires_in_seconds == 60 && t.scopes == ["crm"]
        ));
        assert_eq!(r.params.get("dc").map(String::as_str), Some("eu"));
        let r = Install::new("hubspot")
            .authorization_code("code", "https://cb")
            .code_verifier("v")
            .into_request()
            .unwrap();
        assert!(matches!(
            r.grant,
            Some(pb::install_request::Grant::AuthorizationCode(ref c))
                if c.code == "code" && c.redirect_uri == "https://cb" && c.code_verifier == "v"
        ));
        assert!(Install::new("cc").into_request().unwrap().grant.is_none());
        for bad in [
            Install::new("p")
                .access_token("a")
                .authorization_code("c", "r"),
            Install::new("p")
                .authorization_code("c", "r")
                .access_token("a"),
            Install::new("p").refresh_token("r"),
            Install::new("p").code_verifier("v"),
        ] {
            assert!(matches!(
                bad.into_request(),
                Err(Error::InvalidArgument { field, .. }) if field == "grant"
            ));
        }
        let printed = format!(
            "{:?}",
            Install::new("p")
                .access_token("SECRET-AT")
                .refresh_token("SECRET-RT")
        );
        assert!(!printed.contains("SECRET"), "{printed}");
    }
}
