//! Request validation: every field a caller sends is checked here, and a
//! bad one becomes INVALID_ARGUMENT naming the field.

use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use tokend_core::{ConnectionId, ProviderName, Status as ConnStatus};
use tokend_proto::v1 as pb;

use tokend_config::limits::MAX_REQUEST_BYTES;
use tokend_engine::engine::{Engine, InstallGrant, InstallInput};

use crate::error::ServiceError;

type Result<T> = std::result::Result<T, ServiceError>;

/// Largest `min_ttl_seconds` accepted (a day): no provider issues longer
/// tokens that need brokering.
pub(super) const MAX_MIN_TTL: i64 = 24 * 3600;
/// Largest imported `expires_in_seconds` (400 days).
const MAX_IMPORT_TTL: i64 = 400 * 24 * 3600;
pub(super) const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_ACCOUNT_ID_LEN: usize = 256;
const MAX_SCOPES: usize = 200;
const DEFAULT_PAGE_SIZE: i32 = 100;
const MAX_PAGE_SIZE: i32 = 1000;

pub(super) fn connection_id(raw: &str) -> Result<ConnectionId> {
    ConnectionId::new(raw).map_err(|e| ServiceError::invalid("connection_id", e.to_string()))
}

fn provider_name(engine: &Engine, raw: &str) -> Result<ProviderName> {
    let name =
        ProviderName::new(raw).map_err(|e| ServiceError::invalid("provider", e.to_string()))?;
    if engine.provider(&name).is_none() {
        let mut known: Vec<_> = engine.provider_names().map(|p| p.to_string()).collect();
        known.sort();
        return Err(ServiceError::invalid(
            "provider",
            format!("unknown provider {raw:?}; configured: {}", known.join(", ")),
        ));
    }
    Ok(name)
}

/// A secret field: present, bounded, and free of whitespace.
fn secret(field: &'static str, raw: String, required: bool) -> Result<Option<SecretString>> {
    if raw.is_empty() {
        return if required {
            Err(ServiceError::invalid(field, "must not be empty"))
        } else {
            Ok(None)
        };
    }
    if raw.len() > MAX_TOKEN_LEN {
        return Err(ServiceError::invalid(
            field,
            format!("must be at most {MAX_TOKEN_LEN} bytes"),
        ));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ServiceError::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(Some(SecretString::from(raw)))
}

fn printable(field: &'static str, raw: &str, max: usize) -> Result<()> {
    if raw.len() > max {
        return Err(ServiceError::invalid(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub(super) fn install_input(engine: &Engine, req: pb::InstallRequest) -> Result<InstallInput> {
    let provider = provider_name(engine, &req.provider)?;
    let connection_id = match req.connection_id.as_str() {
        "" => None,
        raw => Some(connection_id(raw)?),
    };
    printable("account_id", &req.account_id, MAX_ACCOUNT_ID_LEN)?;
    let account_id = (!req.account_id.is_empty()).then_some(req.account_id);
    let client_credentials =
        engine.grant_of(&provider) == Some(tokend_provider::GrantType::ClientCredentials);
    let grant = match req.grant {
        None if client_credentials => {
            if account_id.is_none() && connection_id.is_none() {
                return Err(ServiceError::invalid(
                    "connection_id",
                    "required for a client_credentials connection: name it (or give an account_id)",
                ));
            }
            InstallGrant::ClientCredentials
        }
        None => {
            return Err(ServiceError::invalid(
                "grant",
                "set authorization_code or token_import (a provider configured with grant = \"client_credentials\" needs neither)",
            ));
        }
        Some(pb::install_request::Grant::AuthorizationCode(c)) => {
            printable("authorization_code.redirect_uri", &c.redirect_uri, 2048)?;
            let code_verifier = secret("authorization_code.code_verifier", c.code_verifier, false)?;
            if let Some(v) = &code_verifier {
                use secrecy::ExposeSecret;
                // RFC 7636 §4.1.
                if !(43..=128).contains(&v.expose_secret().len()) {
                    return Err(ServiceError::invalid(
                        "authorization_code.code_verifier",
                        "must be 43 to 128 characters (RFC 7636)",
                    ));
                }
            }
            InstallGrant::Code {
                code: secret("authorization_code.code", c.code, true)?.unwrap_or_default(),
                redirect_uri: c.redirect_uri,
                code_verifier,
            }
        }
        Some(pb::install_request::Grant::TokenImport(t)) => {
            if account_id.is_none() && connection_id.is_none() {
                return Err(ServiceError::invalid(
                    "account_id",
                    "required for a token import without connection_id",
                ));
            }
            if !(0..=MAX_IMPORT_TTL).contains(&t.expires_in_seconds) {
                return Err(ServiceError::invalid(
                    "token_import.expires_in_seconds",
                    format!("must be between 0 and {MAX_IMPORT_TTL}"),
                ));
            }
            if t.refresh_token.is_empty() && t.expires_in_seconds == 0 {
                return Err(ServiceError::invalid(
                    "token_import.expires_in_seconds",
                    "required when there is no refresh_token: without one, tokend cannot renew the access token, and an unknown lifetime reads as already expired",
                ));
            }
            if t.scopes.len() > MAX_SCOPES {
                return Err(ServiceError::invalid(
                    "token_import.scopes",
                    format!("at most {MAX_SCOPES} scopes"),
                ));
            }
            if t.scopes.iter().any(|s| {
                s.is_empty()
                    || s.len() > 256
                    || s.chars().any(|c| c.is_whitespace() || c.is_control())
            }) {
                return Err(ServiceError::invalid(
                    "token_import.scopes",
                    "each scope must be 1 to 256 characters without whitespace",
                ));
            }
            let token_type = match t.token_type.as_str() {
                "" => "Bearer".to_owned(),
                tt if tt.len() <= 32
                    && tt.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    tt.to_owned()
                }
                _ => {
                    return Err(ServiceError::invalid(
                        "token_import.token_type",
                        "must be up to 32 letters, digits or '-'",
                    ));
                }
            };
            InstallGrant::Import {
                access_token: secret("token_import.access_token", t.access_token, true)?
                    .unwrap_or_default(),
                refresh_token: secret("token_import.refresh_token", t.refresh_token, false)?,
                expires_in: Duration::from_secs(t.expires_in_seconds as u64),
                scopes: t.scopes,
                token_type,
            }
        }
    };
    if req.replace && connection_id.is_none() {
        return Err(ServiceError::invalid(
            "replace",
            "only with an explicit connection_id: a derived id never replaces another account",
        ));
    }
    let params = connection_params(engine, &provider, req.params)?;
    Ok(InstallInput {
        provider,
        connection_id,
        account_id,
        grant,
        replace: req.replace,
        params,
        force: req.force,
    })
}

/// Exactly the parameters the provider's templates name, each a value the
/// provider takes there (`ProviderConfig::check_param`): one of its listed
/// values, or one DNS label in a host, so no value can choose the domain a
/// secret is sent to, nor change a URL's scheme, host boundary or path.
/// The field named is `params.NAME`, and the value is never quoted.
fn connection_params(
    engine: &Engine,
    provider: &tokend_core::ProviderName,
    params: std::collections::HashMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>> {
    let config = engine.provider(provider);
    let wanted: Vec<String> = config.map(|p| p.connection_params()).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    // In name order, so the same request always names the same field.
    let mut params: Vec<(String, String)> = params.into_iter().collect();
    params.sort_unstable();
    for (name, value) in params {
        if !wanted.contains(&name) {
            // The name is the caller's: shown only when it is a plain name.
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let (field, shown): (std::borrow::Cow<'static, str>, &str) = if plain {
                (format!("params.{name}").into(), name.as_str())
            } else {
                ("params".into(), "(unprintable)")
            };
            return Err(ServiceError::invalid(
                field,
                if wanted.is_empty() {
                    format!("{shown}: provider {provider} takes no connection parameters")
                } else {
                    format!(
                        "{shown}: not a parameter of provider {provider}; it takes {}",
                        wanted.join(", ")
                    )
                },
            ));
        }
        if let Some(config) = config
            && let Err(e) = config.check_param(&name, &value)
        {
            return Err(ServiceError::invalid(
                format!("params.{name}"),
                format!("{name}: {e}"),
            ));
        }
        out.insert(name, value);
    }
    if let Some(missing) = wanted.iter().find(|n| !out.contains_key(*n)) {
        return Err(ServiceError::invalid(
            format!("params.{missing}"),
            format!("{missing}: required by provider {provider}'s endpoint"),
        ));
    }
    Ok(out)
}

pub(super) fn page_token_encode(id: &ConnectionId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_str())
}

pub(super) fn page_token_decode(token: &str) -> Result<Option<ConnectionId>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token", "not a token from a previous response");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let s = String::from_utf8(bytes).map_err(|_| invalid())?;
    ConnectionId::new(s).map(Some).map_err(|_| invalid())
}

/// The filters and page size of a `ListConnectionsRequest`.
pub(super) struct ListParams {
    pub page_size: usize,
    pub provider: Option<ProviderName>,
    pub status: Option<ConnStatus>,
    pub after: Option<ConnectionId>,
}

pub(super) fn list_params(req: &pb::ListConnectionsRequest) -> Result<ListParams> {
    let page_size = match req.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
        _ => {
            return Err(ServiceError::invalid(
                "page_size",
                format!("must be between 0 and {MAX_PAGE_SIZE}"),
            ));
        }
    } as usize;
    let provider = match req.provider.as_str() {
        "" => None,
        raw => Some(
            ProviderName::new(raw).map_err(|e| ServiceError::invalid("provider", e.to_string()))?,
        ),
    };
    let status = match pb::ConnectionStatus::try_from(req.status) {
        Ok(pb::ConnectionStatus::Unspecified) => None,
        Ok(pb::ConnectionStatus::Active) => Some(ConnStatus::Active),
        Ok(pb::ConnectionStatus::ReconnectRequired) => Some(ConnStatus::ReconnectRequired),
        Err(_) => {
            return Err(ServiceError::invalid(
                "status",
                format!("unknown status {}", req.status),
            ));
        }
    };
    Ok(ListParams {
        page_size,
        provider,
        status,
        after: page_token_decode(&req.page_token)?,
    })
}

/// Refuses requests larger than [`MAX_REQUEST_BYTES`] with a precise
/// INVALID_ARGUMENT. (tonic's decoding limit, set to the same size, refuses
/// a longer declared message first; the edge layer words it the same way.)
/// A `WatchConnections` request: its filter and where to start.
pub(super) fn watch_all(
    req: &pb::WatchConnectionsRequest,
) -> Result<(
    tokend_engine::feed::EventFilter,
    Option<tokend_engine::feed::Presented>,
)> {
    let f = req.filter.clone().unwrap_or_default();
    let types = f
        .event_types
        .iter()
        .map(|t| match pb::EventType::try_from(*t) {
            Ok(pb::EventType::Installed) => Ok(tokend_core::EventType::Installed),
            Ok(pb::EventType::TokenRotated) => Ok(tokend_core::EventType::TokenRotated),
            Ok(pb::EventType::RefreshFailed) => Ok(tokend_core::EventType::RefreshFailed),
            Ok(pb::EventType::ReconnectRequired) => Ok(tokend_core::EventType::ReconnectRequired),
            Ok(pb::EventType::Recovered) => Ok(tokend_core::EventType::Recovered),
            Ok(pb::EventType::Deleted) => Ok(tokend_core::EventType::Deleted),
            _ => Err(ServiceError::invalid(
                "filter.event_types",
                format!("{t} is not an event type to filter on"),
            )),
        })
        .collect::<Result<_>>()?;
    let statuses = f
        .statuses
        .iter()
        .map(|s| match pb::ConnectionStatus::try_from(*s) {
            Ok(pb::ConnectionStatus::Active) => Ok(ConnStatus::Active),
            Ok(pb::ConnectionStatus::ReconnectRequired) => Ok(ConnStatus::ReconnectRequired),
            _ => Err(ServiceError::invalid(
                "filter.statuses",
                format!("{s} is not a connection status"),
            )),
        })
        .collect::<Result<_>>()?;
    let filter = tokend_engine::feed::EventFilter {
        providers: f.providers,
        id_prefixes: f.connection_id_prefixes,
        types,
        statuses,
    }
    .checked()
    .map_err(|e| {
        ServiceError::invalid(
            if e.field == "providers" {
                "filter.providers"
            } else {
                "filter.connection_id_prefixes"
            },
            e.description,
        )
    })?;
    let cursor = match req.resume_after.as_str() {
        "" => None,
        raw => Some(tokend_engine::feed::Presented::decode(raw).ok_or_else(|| {
            ServiceError::invalid(
                "resume_after",
                "not a cursor tokend issued (pass a ConnectionEvent's cursor unchanged)",
            )
        })?),
    };
    Ok((filter, cursor))
}

pub(super) fn check_size(message: &impl prost::Message) -> Result<()> {
    let size = message.encoded_len();
    if size > MAX_REQUEST_BYTES {
        return Err(ServiceError::invalid(
            "request",
            format!("is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = ConnectionId::new("hubspot-1").unwrap();
        assert_eq!(
            page_token_decode(&page_token_encode(&id)).unwrap(),
            Some(id)
        );
        assert_eq!(page_token_decode("").unwrap(), None);
        assert!(page_token_decode("!!!").is_err());
        assert!(
            page_token_decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a b"))
                .is_err()
        );
    }
}
