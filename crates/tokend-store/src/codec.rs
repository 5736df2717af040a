//! The on-disk encoding of a connection record: a versioned JSON document.
//!
//! Kept apart from the domain type so the format can evolve (and, next,
//! encrypt the secret fields) without touching the engine.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokend_core::{Connection, ConnectionId, LastError, ProviderName, Status, Timestamp, TokenSet};

use crate::StoreError;

/// Version of the document layout below.
const SCHEMA: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    schema: u32,
    id: ConnectionId,
    provider: ProviderName,
    account_id: String,
    access_token: String,
    refresh_token: Option<String>,
    previous_refresh_token: Option<String>,
    token_type: String,
    scopes: Vec<String>,
    expires_at: Timestamp,
    obtained_at: Timestamp,
    version: u64,
    revision: u64,
    incarnation: u64,
    status: Status,
    last_error: Option<LastError>,
    last_refresh_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
    install_fingerprint: Option<String>,
}

pub(crate) fn encode(c: &Connection) -> Vec<u8> {
    let expose = |s: &SecretString| s.expose_secret().to_owned();
    let doc = StoredRecord {
        schema: SCHEMA,
        id: c.id.clone(),
        provider: c.provider.clone(),
        account_id: c.account_id.clone(),
        access_token: expose(&c.tokens.access_token),
        refresh_token: c.tokens.refresh_token.as_ref().map(expose),
        previous_refresh_token: c.previous_refresh_token.as_ref().map(expose),
        token_type: c.tokens.token_type.clone(),
        scopes: c.tokens.scopes.clone(),
        expires_at: c.tokens.expires_at,
        obtained_at: c.tokens.obtained_at,
        version: c.version,
        revision: c.revision,
        incarnation: c.incarnation,
        status: c.status,
        last_error: c.last_error.clone(),
        last_refresh_at: c.last_refresh_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        install_fingerprint: c.install_fingerprint.clone(),
    };
    // Serializing plain strings, numbers and enums to JSON cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<Connection, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let doc: StoredRecord = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message names a line and column, never the content.
        corrupt(format!("invalid document: {e}"))
    })?;
    if doc.schema != SCHEMA {
        return Err(corrupt(format!("unknown schema {}", doc.schema)));
    }
    if doc.id.as_str().as_bytes() != key {
        return Err(corrupt("record id does not match its key".into()));
    }
    Ok(Connection {
        id: doc.id,
        provider: doc.provider,
        account_id: doc.account_id,
        tokens: TokenSet {
            access_token: doc.access_token.into(),
            refresh_token: doc.refresh_token.map(SecretString::from),
            token_type: doc.token_type,
            scopes: doc.scopes,
            expires_at: doc.expires_at,
            obtained_at: doc.obtained_at,
        },
        previous_refresh_token: doc.previous_refresh_token.map(SecretString::from),
        version: doc.version,
        revision: doc.revision,
        incarnation: doc.incarnation,
        status: doc.status,
        last_error: doc.last_error,
        last_refresh_at: doc.last_refresh_at,
        created_at: doc.created_at,
        updated_at: doc.updated_at,
        install_fingerprint: doc.install_fingerprint,
    })
}
