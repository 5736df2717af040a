//! The seam between the refresh engine and token endpoints: a trait the
//! HTTP client implements, so the engine's state machine can be tested
//! against a scripted provider with no I/O.

use async_trait::async_trait;
use secrecy::SecretString;

use crate::{
    client::{ProviderClient, TokenGrant},
    config::ProviderConfig,
    error::ProviderError,
};

/// Calls to one provider's token endpoint.
#[async_trait]
pub trait TokenEndpoint: Send + Sync + 'static {
    /// Exchanges a refresh token for a new token set.
    async fn refresh(
        &self,
        config: &ProviderConfig,
        refresh_token: &SecretString,
    ) -> Result<TokenGrant, ProviderError>;

    /// Exchanges an authorization code (with PKCE when a verifier is given).
    async fn exchange_code(
        &self,
        config: &ProviderConfig,
        code: &SecretString,
        redirect_uri: &str,
        code_verifier: Option<&SecretString>,
    ) -> Result<TokenGrant, ProviderError>;

    /// Revokes a token (RFC 7009). An endpoint that cannot says so.
    async fn revoke(
        &self,
        config: &ProviderConfig,
        token: &SecretString,
        hint: &str,
    ) -> Result<(), ProviderError> {
        let _ = (config, token, hint);
        Err(unsupported("this token endpoint cannot revoke"))
    }

    /// A token for the client itself (the `client_credentials` grant). An
    /// endpoint that cannot do it says so as a misconfiguration.
    async fn client_credentials(
        &self,
        config: &ProviderConfig,
    ) -> Result<TokenGrant, ProviderError> {
        let _ = config;
        Err(unsupported(
            "this token endpoint does not do the client_credentials grant",
        ))
    }
}

/// What an endpoint that cannot do something answers: a misconfiguration.
fn unsupported(message: &str) -> ProviderError {
    ProviderError {
        class: tokend_core::ErrorClass::ClientMisconfigured,
        code: "unsupported".into(),
        message: message.into(),
        http_status: None,
        correlation_id: None,
        retry_after: None,
        salvage: None,
        unanswered: false,
    }
}

#[async_trait]
impl TokenEndpoint for ProviderClient {
    async fn refresh(
        &self,
        config: &ProviderConfig,
        refresh_token: &SecretString,
    ) -> Result<TokenGrant, ProviderError> {
        ProviderClient::refresh(self, config, refresh_token).await
    }

    async fn exchange_code(
        &self,
        config: &ProviderConfig,
        code: &SecretString,
        redirect_uri: &str,
        code_verifier: Option<&SecretString>,
    ) -> Result<TokenGrant, ProviderError> {
        ProviderClient::exchange_code(self, config, code, redirect_uri, code_verifier).await
    }

    async fn client_credentials(
        &self,
        config: &ProviderConfig,
    ) -> Result<TokenGrant, ProviderError> {
        ProviderClient::client_credentials(self, config).await
    }

    async fn revoke(
        &self,
        config: &ProviderConfig,
        token: &SecretString,
        hint: &str,
    ) -> Result<(), ProviderError> {
        ProviderClient::revoke(self, config, token, hint).await
    }
}
