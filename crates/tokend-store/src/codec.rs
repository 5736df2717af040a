//! The on-disk encoding of a connection record: a versioned JSON document
//! whose secret fields are sealed by the keyring, each bound (as AEAD
//! associated data) to the record's routing fields: whatever decides where
//! the secret is sent.
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
    StoreError,
    sealing::{Keyring, Sealed, unbound_associated_data},
    summary::Summary,
};

/// Version of the document layout below, which is also the version of the
/// binding of its sealed fields.
/// 2: each sealed field is bound to [`Route`]: connection id, field name,
/// provider, account id, params and metadata.
/// 1: bound to the connection id and the field name only: the provider and
/// params were plain JSON that an edited backup or a database writer could
/// repoint. Opened only by [`upgrade`], on the way to schema 2.
const SCHEMA: u32 = 2;
const SCHEMA_UNBOUND: u32 = 1;

/// Starts binding 2's associated data, so it never equals binding 1's (which
/// starts with the connection id's length).
const BINDING_TAG: &[u8] = b"tokend/binding/2";

/// The stored fields that decide where a record's secrets go, or to whom:
/// the provider (its token URL and client credentials), the account, the
/// params that fill the provider's URL templates (`for_connection`), and the
/// metadata handed to callers with the token (Salesforce's `instance_url`,
/// where the caller sends it).
struct Route<'a> {
    id: &'a str,
    provider: &'a str,
    account_id: &'a str,
    params: &'a BTreeMap<String, String>,
    metadata: &'a BTreeMap<String, String>,
}

impl Route<'_> {
    /// The associated data of sealed field `field`: every part
    /// length-prefixed, and each map as its length then its pairs in key
    /// order, so two different routes never encode alike.
    fn associated_data(&self, field: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(256);
        let mut put = |bytes: &[u8]| {
            aad.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            aad.extend_from_slice(bytes);
        };
        put(BINDING_TAG);
        put(self.id.as_bytes());
        put(field.as_bytes());
        put(self.provider.as_bytes());
        put(self.account_id.as_bytes());
        for map in [self.params, self.metadata] {
            put(&(map.len() as u64).to_le_bytes());
            for (k, v) in map {
                put(k.as_bytes());
                put(v.as_bytes());
            }
        }
        aad
    }
}

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

/// The stored bytes of `c`, its secret fields sealed with `keys`' active key
/// and bound to its route.
pub fn encode(c: &Connection, keys: &Keyring) -> Vec<u8> {
    let route = Route {
        id: c.id.as_str(),
        provider: c.provider.as_str(),
        account_id: &c.account_id,
        params: &c.params,
        metadata: &c.metadata,
    };
    let route = &route;
    let seal = |field: &'static str| {
        move |s: &SecretString| {
            keys.seal(&route.associated_data(field), s.expose_secret().as_bytes())
        }
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
/// read without opening a sealed field (of either schema: it vouches for
/// nothing); `Corrupt` when the document cannot be parsed.
pub fn summary(key: &[u8], bytes: &[u8]) -> Result<Summary, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let doc: StoredSummary =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("invalid document: {e}")))?;
    if doc.schema != SCHEMA && doc.schema != SCHEMA_UNBOUND {
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
/// cannot be decoded or opened with `keys`, when a stored field bound to the
/// secrets was changed, and for a record sealed without that binding.
pub fn decode(key: &[u8], bytes: &[u8], keys: &Keyring) -> Result<Connection, StoreError> {
    let doc = parse(key, bytes)?;
    if doc.schema == SCHEMA_UNBOUND {
        return Err(corrupt(
            key,
            "sealed without binding its provider, account and params (schema 1), in a store already upgraded past it: refused".into(),
        ));
    }
    open(key, doc, keys)
}

/// For upgrades only (a data dir or database at an older format, a backup
/// taken before format 4): the record in `bytes` re-encoded under the
/// binding when it was sealed without it (schema 1, opened the old way), or
/// `None` when it is current and opens under the binding. `Corrupt` as
/// [`decode`] says otherwise.
pub fn upgrade(key: &[u8], bytes: &[u8], keys: &Keyring) -> Result<Option<Vec<u8>>, StoreError> {
    let doc = parse(key, bytes)?;
    if doc.schema == SCHEMA {
        open(key, doc, keys)?;
        return Ok(None);
    }
    open(key, doc, keys).map(|record| Some(encode(&record, keys)))
}

/// A record as builds before binding 2 sealed it (schema 1): for tests of
/// the upgrade only; nothing else writes it.
#[doc(hidden)]
pub fn encode_unbound(c: &Connection, keys: &Keyring) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(&encode(c, keys)).unwrap_or_default();
    let id = c.id.as_str();
    let seal = |field: &str, s: &SecretString| {
        serde_json::to_value(keys.seal(
            &unbound_associated_data(id, field),
            s.expose_secret().as_bytes(),
        ))
        .unwrap_or_default()
    };
    doc["schema"] = SCHEMA_UNBOUND.into();
    doc["access_token"] = seal("access_token", &c.tokens.access_token);
    if let Some(rt) = &c.tokens.refresh_token {
        doc["refresh_token"] = seal("refresh_token", rt);
    }
    if let Some(prt) = &c.previous_refresh_token {
        doc["previous_refresh_token"] = seal("previous_refresh_token", prt);
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

fn corrupt(key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        id: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

/// The document in `bytes`, of a known schema and stored under its own id.
fn parse(key: &[u8], bytes: &[u8]) -> Result<StoredRecord, StoreError> {
    let doc: StoredRecord = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message names a line and column, never the content.
        corrupt(key, format!("invalid document: {e}"))
    })?;
    if doc.schema != SCHEMA && doc.schema != SCHEMA_UNBOUND {
        return Err(corrupt(key, format!("unknown schema {}", doc.schema)));
    }
    if doc.id.as_str().as_bytes() != key {
        return Err(corrupt(key, "record id does not match its key".into()));
    }
    Ok(doc)
}

/// Opens `doc`'s sealed fields with the associated data of its schema.
fn open(key: &[u8], doc: StoredRecord, keys: &Keyring) -> Result<Connection, StoreError> {
    let route = Route {
        id: doc.id.as_str(),
        provider: doc.provider.as_str(),
        account_id: &doc.account_id,
        params: &doc.params,
        metadata: &doc.metadata,
    };
    let associated_data = |field: &str| match doc.schema {
        SCHEMA => route.associated_data(field),
        _ => unbound_associated_data(route.id, field),
    };
    let open = |field: &str, sealed: &Sealed| -> Result<SecretString, StoreError> {
        if doc.schema != SCHEMA && keys.made_with_binding(sealed.k) {
            return Err(corrupt(
                key,
                format!(
                    "field {field} is of the unbound form under key {}, which was made after the binding: refused",
                    sealed.k
                ),
            ));
        }
        let plain = keys
            .open(field, &associated_data(field), sealed)
            .map_err(|e| corrupt(key, e.to_string()))?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| corrupt(key, format!("field {field} is not UTF-8")))
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::conformance::record;

    fn edit(bytes: &[u8], change: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut doc: Value = serde_json::from_slice(bytes).unwrap();
        change(&mut doc);
        serde_json::to_vec(&doc).unwrap()
    }

    /// Keys as a key file made before the binding holds them.
    fn pre_binding_keys() -> Keyring {
        let mut file = crate::sealing::KeyFile::generate();
        file.keys[0].bound = false;
        file.keyring().unwrap()
    }

    fn is_tampered(result: Result<Connection, StoreError>) -> bool {
        matches!(result, Err(StoreError::Corrupt { reason, .. }) if reason.contains("does not decrypt"))
    }

    /// Guards issue 24 item 2: every stored field that decides where a
    /// record's secrets go (provider, account, each param, each metadata
    /// entry, present or added or removed) is bound to every sealed field;
    /// changing any one of them makes the record unreadable, never
    /// usable with the new route.
    #[test]
    fn changing_any_bound_field_makes_the_record_unreadable() {
        let keys = Keyring::ephemeral();
        let c = record("victim", 1);
        let bytes = encode(&c, &keys);
        assert_eq!(
            decode(b"victim", &bytes, &keys).unwrap().params,
            c.params,
            "the untouched record opens"
        );
        type Tamper = Box<dyn FnOnce(&mut Value)>;
        let tampers: Vec<(&str, Tamper)> = vec![
            ("provider", Box::new(|d| d["provider"] = json!("attacker"))),
            (
                "account_id",
                Box::new(|d| d["account_id"] = json!("acct-other")),
            ),
            (
                "a param's value",
                Box::new(|d| d["params"]["subdomain"] = json!("attacker.example")),
            ),
            (
                "an added param",
                Box::new(|d| d["params"]["host"] = json!("attacker.example")),
            ),
            (
                "the params removed",
                Box::new(|d| {
                    d.as_object_mut().unwrap().remove("params");
                }),
            ),
            (
                "a metadata value",
                Box::new(|d| d["metadata"]["instance_url"] = json!("https://attacker.example")),
            ),
            (
                "an added metadata entry",
                Box::new(|d| d["metadata"]["api_url"] = json!("https://attacker.example")),
            ),
            (
                "the schema, downgraded to the unbound one",
                Box::new(|d| d["schema"] = json!(1)),
            ),
        ];
        for (what, tamper) in tampers {
            let edited = edit(&bytes, tamper);
            let result = decode(b"victim", &edited, &keys);
            assert!(
                matches!(result, Err(StoreError::Corrupt { .. })),
                "{what}: the record must be unreadable"
            );
            assert!(
                upgrade(b"victim", &edited, &keys).is_err(),
                "{what}: not even an upgrade opens it"
            );
        }
        // Only the refresh token bound to another route: still refused.
        let other = encode(
            &Connection {
                provider: ProviderName::new("attacker").unwrap(),
                ..c.clone()
            },
            &keys,
        );
        let spliced = edit(&bytes, |d| {
            let o: Value = serde_json::from_slice(&other).unwrap();
            d["refresh_token"] = o["refresh_token"].clone();
        });
        assert!(is_tampered(decode(b"victim", &spliced, &keys)));
    }

    /// Guards: the associated data is canonical: moving bytes between
    /// params' keys and values, or between params and metadata, changes it.
    #[test]
    fn the_binding_is_length_prefixed() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (a, b, empty) = (map(&[("ab", "c")]), map(&[("a", "bc")]), map(&[]));
        let route = |params, metadata| Route {
            id: "c",
            provider: "p",
            account_id: "acct",
            params,
            metadata,
        };
        let ad = |r: Route<'_>| r.associated_data("refresh_token");
        assert_ne!(ad(route(&a, &empty)), ad(route(&b, &empty)));
        assert_ne!(ad(route(&a, &empty)), ad(route(&empty, &a)));
        assert_ne!(
            ad(route(&empty, &empty)),
            unbound_associated_data("c", "refresh_token")
        );
    }

    /// Guards: a record sealed before the binding (schema 1) is refused by
    /// `decode` (so one written back later, a downgrade, is never used),
    /// and `upgrade` alone opens it, once, into a bound record equal in
    /// every field; a current record needs no upgrade.
    #[test]
    fn unbound_records_open_only_through_the_upgrade() {
        use secrecy::ExposeSecret;
        let keys = pre_binding_keys();
        let c = record("old", 3);
        let unbound = encode_unbound(&c, &keys);
        let refused = decode(b"old", &unbound, &keys).unwrap_err().to_string();
        assert!(refused.contains("schema 1"), "{refused}");
        let upgraded = upgrade(b"old", &unbound, &keys)
            .unwrap()
            .expect("re-sealed");
        let back = decode(b"old", &upgraded, &keys).unwrap();
        assert_eq!(back.provider, c.provider);
        assert_eq!(back.params, c.params);
        assert_eq!(back.metadata, c.metadata);
        assert_eq!(back.revision, c.revision);
        assert_eq!(
            back.tokens.refresh_token.unwrap().expose_secret(),
            c.tokens.refresh_token.as_ref().unwrap().expose_secret()
        );
        assert_eq!(upgrade(b"old", &upgraded, &keys).unwrap(), None);
        assert_eq!(summary(b"old", &unbound).unwrap(), Summary::of(&c));
    }

    /// Guards the downgrade: a key made by a build with the binding never
    /// opens the unbound form, not even through the upgrade, so an unbound
    /// record forged under it (or a reset upgrade marker) gains nothing.
    #[test]
    fn keys_made_with_the_binding_never_open_the_unbound_form() {
        let keys = Keyring::ephemeral();
        let forged = encode_unbound(&record("forged", 1), &keys);
        let refused = upgrade(b"forged", &forged, &keys).unwrap_err().to_string();
        assert!(refused.contains("made after the binding"), "{refused}");
        assert!(decode(b"forged", &forged, &keys).is_err());
    }
}
