//! The provider client against the sandbox provider over real HTTP: both
//! client-auth styles, both error dialects, and every failure class; a file
//! per area, the helpers they share here.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokend_core::{Clock, ErrorClass, ProviderName, RefreshPolicy};
use tokend_provider::{ClientAuth, Dialect, HttpSettings, ProviderClient, ProviderConfig};
use tokend_sandbox::{Dialect as SandboxDialect, Fault, Rotation, Sandbox, SandboxConfig};

fn config(sandbox: &Sandbox, auth: ClientAuth, dialect: Dialect) -> ProviderConfig {
    let c = sandbox.config();
    ProviderConfig {
        name: ProviderName::new("sandbox").unwrap(),
        token_url: sandbox.token_url().parse().unwrap(),
        client_id: c.client_id,
        client_secret: SecretString::from(c.client_secret),
        client_auth: auth,
        extra_params: vec![("redirect_uri".into(), "https://app.example.com/cb".into())],
        default_lifetime: Duration::from_secs(1800),
        refresh_policy: RefreshPolicy::default(),
        dialect,
        account_id_field: Some("account_id".into()),
        rotation_grace: Duration::ZERO,
        min_refresh_interval: ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL,
        request: Default::default(),
        response: Default::default(),
        grant: Default::default(),
        scopes: vec![],
    }
}

fn client(request_timeout: Duration) -> ProviderClient {
    ProviderClient::new(
        &HttpSettings {
            request_timeout,
            ..Default::default()
        },
        Clock::system(),
    )
    .unwrap()
}

mod client_auth;
mod dialects;
mod flows;
