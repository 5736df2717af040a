//! The OAuth2 token-endpoint client: provider configuration, the refresh and
//! code-exchange calls over reqwest, token-response validation, and the
//! classification of every failure into one `ErrorClass`.

mod assertion;
mod classify;
mod client;
mod config;
mod endpoint;
mod error;
mod form;
#[cfg(test)]
mod fuzz;
mod presets;
mod redact;
pub mod registration;
mod response;
#[cfg(any(test, feature = "testing"))]
pub mod scripted;
mod template;
mod tls;
mod trace_context;

pub use assertion::{ASSERTION_TYPE, AssertionSigner};
pub use client::{HttpSettings, ProviderClient, TokenGrant};
pub use config::{
    ClientAuth, Dialect, GrantType, ProviderConfig, RequestBody, RequestShape, ResponseShape,
    valid_header,
};
pub use endpoint::TokenEndpoint;
pub use error::{ProviderError, Salvage};
pub use presets::{HUBSPOT_TOKEN_URL, Preset, PresetDefaults, ZOHO_DATA_CENTRES};
pub use reqwest::Url;
pub use template::{
    MAX_LABEL_LEN, MAX_PARAM_LEN, UrlPlace, UrlTemplate, encode_component,
    fixes_registrable_domain, valid_label, valid_param_value,
};
pub use tls::ClientTls;
