//! The on-disk encoding of a connection record: a versioned JSON document
//! whose secret fields are sealed by the keyring.
//!
//! Kept apart from the domain type so the format can evolve without
//! touching the engine.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokend_core::{
    Connection, ConnectionId, LastError, ProviderName, ReconnectCause, Status, Timestamp, TokenSet,
};

use crate::{
    StoreError, Summary,
    crypto::{Keyring, Sealed},
};

/// Version of the document layout below.
const SCHEMA: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    schema: u32,
    id: ConnectionId,
    provider: ProviderName,
    account_id: String,
    access_token: Sealed,
    refresh_token: Option<Sealed>,
    previous_refresh_token: Option<Sealed>,
    token_type: String,
    scopes: Vec<String>,
    expires_at: Timestamp,
    obtained_at: Timestamp,
    version: u64,
    revision: u64,
    incarnation: u64,
    status: Status,
    /// Added within schema 1: absent in older records (read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reconnect_cause: Option<ReconnectCause>,
    last_error: Option<LastError>,
    last_refresh_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
    install_fingerprint: Option<String>,
    /// Added within schema 1: absent in older records (read as empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    params: BTreeMap<String, String>,
    /// Added within schema 1: absent in older records (read as empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// The stored bytes of `c`, its secret fields sealed with `keys`' active key.
pub fn encode(c: &Connection, keys: &Keyring) -> Vec<u8> {
    let id = c.id.as_str();
    let seal = |field: &'static str| {
        move |s: &SecretString| keys.seal(id, field, s.expose_secret().as_bytes())
    };
    let doc = StoredRecord {
        schema: SCHEMA,
        id: c.id.clone(),
        provider: c.provider.clone(),
        account_id: c.account_id.clone(),
        access_token: seal("access_token")(&c.tokens.access_token),
        refresh_token: c.tokens.refresh_token.as_ref().map(seal("refresh_token")),
        previous_refresh_token: c
            .previous_refresh_token
            .as_ref()
            .map(seal("previous_refresh_token")),
        token_type: c.tokens.token_type.clone(),
        scopes: c.tokens.scopes.clone(),
        expires_at: c.tokens.expires_at,
        obtained_at: c.tokens.obtained_at,
        version: c.version,
        revision: c.revision,
        incarnation: c.incarnation,
        status: c.status,
        reconnect_cause: c.reconnect_cause,
        last_error: c.last_error.clone(),
        last_refresh_at: c.last_refresh_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        install_fingerprint: c.install_fingerprint.clone(),
        params: c.params.clone(),
        metadata: c.metadata.clone(),
    };
    // Serializing plain strings, numbers and enums to JSON cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The fields of a stored record a [`Summary`] needs; the sealed ones are
/// skipped unparsed.
#[derive(Deserialize)]
struct StoredSummary {
    schema: u32,
    id: ConnectionId,
    provider: ProviderName,
    expires_at: Timestamp,
    obtained_at: Timestamp,
    status: Status,
}

/// The secret-free summary of the record in `bytes`, stored under `key`,
/// read without opening a sealed field; `Corrupt` as [`decode`] says.
pub fn summary(key: &[u8], bytes: &[u8]) -> Result<Summary, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let doc: StoredSummary =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("invalid document: {e}")))?;
    if doc.schema != SCHEMA {
        return Err(corrupt(format!("unknown schema {}", doc.schema)));
    }
    if doc.id.as_str().as_bytes() != key {
        return Err(corrupt("record id does not match its key".into()));
    }
    Ok(Summary {
        id: doc.id,
        provider: doc.provider,
        status: doc.status,
        expires_at: doc.expires_at,
        obtained_at: doc.obtained_at,
    })
}

/// The ids of the keys that sealed a stored record's fields.
pub fn key_ids(bytes: &[u8]) -> Vec<u32> {
    serde_json::from_slice::<StoredRecord>(bytes)
        .map(|doc| {
            [
                Some(doc.access_token),
                doc.refresh_token,
                doc.previous_refresh_token,
            ]
            .into_iter()
            .flatten()
            .map(|s| s.k)
            .collect()
        })
        .unwrap_or_default()
}

/// The record in `bytes`, stored under `key`; `Corrupt` when the bytes
/// cannot be decoded or opened with `keys`.
pub fn decode(key: &[u8], bytes: &[u8], keys: &Keyring) -> Result<Connection, StoreError> {
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
    let id = doc.id.as_str().to_owned();
    let open = |field: &str, sealed: &Sealed| -> Result<SecretString, StoreError> {
        let plain = keys
            .open(&id, field, sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| corrupt(format!("field {field} is not UTF-8")))
    };
    let access_token = open("access_token", &doc.access_token)?;
    let refresh_token = doc
        .refresh_token
        .as_ref()
        .map(|s| open("refresh_token", s))
        .transpose()?;
    let previous_refresh_token = doc
        .previous_refresh_token
        .as_ref()
        .map(|s| open("previous_refresh_token", s))
        .transpose()?;
    Ok(Connection {
        id: doc.id,
        provider: doc.provider,
        account_id: doc.account_id,
        tokens: TokenSet {
            access_token,
            refresh_token,
            token_type: doc.token_type,
            scopes: doc.scopes,
            expires_at: doc.expires_at,
            obtained_at: doc.obtained_at,
        },
        previous_refresh_token,
        version: doc.version,
        revision: doc.revision,
        incarnation: doc.incarnation,
        status: doc.status,
        reconnect_cause: doc.reconnect_cause,
        last_error: doc.last_error,
        last_refresh_at: doc.last_refresh_at,
        created_at: doc.created_at,
        updated_at: doc.updated_at,
        install_fingerprint: doc.install_fingerprint,
        params: doc.params,
        metadata: doc.metadata,
    })
}
