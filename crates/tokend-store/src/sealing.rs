//! Envelope encryption of secret fields at rest: XChaCha20-Poly1305, a fresh
//! random 192-bit nonce per write, the key id beside every ciphertext, and
//! associated data the caller builds (the codec binds the connection id, the
//! field name and every stored field that decides where the secret goes).

use std::{collections::BTreeMap, fmt, io::Write, path::Path};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use serde::{Deserialize, Serialize};

/// Why keys could not be loaded or a field could not be opened. Never
/// contains key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write key file {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("invalid key material: {0}")]
    Invalid(String),
    #[error("field {field} is sealed with unknown key {key_id}")]
    UnknownKey { field: String, key_id: u32 },
    #[error(
        "field {field} does not decrypt: tampered (its ciphertext, or a stored field bound to it such as the provider, account or parameters), or copied from another record"
    )]
    Tampered { field: String },
}

/// One encrypted field as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key that sealed it.
    pub k: u32,
    /// Base64 nonce (24 bytes).
    pub n: String,
    /// Base64 ciphertext with the Poly1305 tag.
    pub c: String,
}

/// The key file (`tokend.keys`): every key still needed to decrypt, and
/// which one encrypts new writes.
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub active: u32,
    pub keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
pub struct KeyEntry {
    pub id: u32,
    /// Base64 of 32 random bytes.
    pub key: String,
    /// Made by a tokend that binds every sealed field to its record's route
    /// (on-disk format 4): nothing it sealed is of the old, unbound form, so
    /// it never opens one, whatever a data dir's or database's upgrade
    /// marker says. Absent (false) in key files made before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bound: bool,
}

/// Loaded keys. Its `Debug` shows key ids only.
pub struct Keyring {
    ciphers: BTreeMap<u32, XChaCha20Poly1305>,
    active: u32,
    /// Keys made with the binding (`KeyEntry::bound`), which never open an
    /// unbound field.
    bound: Vec<u32>,
    /// Where the keys came from, as errors name it: never key material.
    origin: KeyOrigin,
}

/// Where a keyring's keys came from, for errors that must say which key
/// file is wrong or missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Not said (tests, tools).
    #[default]
    Unnamed,
    /// The `TOKEND_KEYS` variable.
    Env,
    /// The key file at this path.
    File(std::path::PathBuf),
    /// No key file was at this path: the keys were made in memory, and are
    /// not saved yet.
    NewFile(std::path::PathBuf),
}

/// Whether a keyring holds the key a store recorded under an id
/// ([`Keyring::key_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMatch {
    /// It holds that very key.
    Holds,
    /// It has no key with that id.
    Missing,
    /// It has a key with that id, but another one (a key file made afresh
    /// numbers its first key 1 too).
    Different,
}

/// What a key check seals: a constant, so opening it proves the key alone.
const KEY_CHECK_PLAINTEXT: &[u8] = b"tokend key check";

/// The associated data of key `key_id`'s check value: never equal to a
/// record field's (those start with a length or the binding tag).
fn key_check_aad(key_id: u32) -> Vec<u8> {
    let mut aad = b"tokend/key-check/".to_vec();
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.ciphers.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The associated data of records sealed before binding 2 (on-disk format 3
/// and older): the connection id and the field name only. Read while
/// upgrading such records, never written.
pub fn unbound_associated_data(connection_id: &str, field: &str) -> Vec<u8> {
    // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
    let mut aad = Vec::with_capacity(connection_id.len() + field.len() + 16);
    aad.extend_from_slice(&(connection_id.len() as u64).to_le_bytes());
    aad.extend_from_slice(connection_id.as_bytes());
    aad.extend_from_slice(field.as_bytes());
    aad
}

impl KeyFile {
    /// A key file with one new random key.
    pub fn generate() -> Self {
        KeyFile {
            active: 1,
            keys: vec![KeyEntry {
                id: 1,
                key: B64.encode(XChaCha20Poly1305::generate_key(&mut OsRng)),
                bound: true,
            }],
        }
    }

    /// Adds a new random key and makes it active; returns its id.
    pub fn rotate(&mut self) -> u32 {
        let id = self.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        self.keys.push(KeyEntry {
            id,
            key: B64.encode(XChaCha20Poly1305::generate_key(&mut OsRng)),
            bound: true,
        });
        self.active = id;
        id
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        serde_json::from_slice(bytes).map_err(|e| KeyError::Invalid(format!("not a key file: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes)
    }

    /// Writes the file atomically (temp file + rename), readable by the
    /// owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let fail = |e: std::io::Error| KeyError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let tmp = path.with_extension("keys.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(fail)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| KeyError::Invalid(e.to_string()))?;
        file.write_all(&json).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
        Ok(())
    }

    pub fn keyring(&self) -> Result<Keyring, KeyError> {
        let mut ciphers = BTreeMap::new();
        for entry in &self.keys {
            let bytes = B64
                .decode(&entry.key)
                .map_err(|_| KeyError::Invalid(format!("key {} is not base64", entry.id)))?;
            if bytes.len() != 32 {
                return Err(KeyError::Invalid(format!(
                    "key {} is not 32 bytes",
                    entry.id
                )));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| KeyError::Invalid(format!("key {} is unusable", entry.id)))?;
            if ciphers.insert(entry.id, cipher).is_some() {
                return Err(KeyError::Invalid(format!(
                    "key id {} appears twice",
                    entry.id
                )));
            }
        }
        if !ciphers.contains_key(&self.active) {
            return Err(KeyError::Invalid(format!(
                "active key {} is not in the file",
                self.active
            )));
        }
        Ok(Keyring {
            ciphers,
            active: self.active,
            bound: self.keys.iter().filter(|k| k.bound).map(|k| k.id).collect(),
            origin: KeyOrigin::Unnamed,
        })
    }
}

impl Keyring {
    /// A keyring with one random key, for tests and in-memory use.
    pub fn ephemeral() -> Self {
        KeyFile::generate()
            .keyring()
            .expect("a generated key file is valid")
    }

    pub fn active_key_id(&self) -> u32 {
        self.active
    }

    /// The same keys, described in errors as coming from `origin`.
    pub fn with_origin(mut self, origin: KeyOrigin) -> Self {
        self.origin = origin;
        self
    }

    /// Where the keys came from, for errors.
    pub fn origin(&self) -> &KeyOrigin {
        &self.origin
    }

    /// A check value for key `key_id`: a constant sealed under that key
    /// alone, which a store keeps to tell later whether a keyring holds the
    /// same key (not merely one numbered alike). It reveals nothing of the
    /// key. `None` when this keyring has no such key.
    pub fn key_check(&self, key_id: u32) -> Option<Sealed> {
        self.ciphers
            .get(&key_id)
            .map(|cipher| seal_with(cipher, key_id, &key_check_aad(key_id), KEY_CHECK_PLAINTEXT))
    }

    /// Whether this keyring holds the key whose check value is `check`.
    pub fn verify_key_check(&self, key_id: u32, check: &Sealed) -> KeyMatch {
        if !self.ciphers.contains_key(&key_id) {
            return KeyMatch::Missing;
        }
        match self.open("key check", &key_check_aad(key_id), check) {
            Ok(plain) if check.k == key_id && plain == KEY_CHECK_PLAINTEXT => KeyMatch::Holds,
            _ => KeyMatch::Different,
        }
    }

    /// Whether key `key_id` was made with the binding, so nothing it
    /// sealed is of the old, unbound form.
    pub fn made_with_binding(&self, key_id: u32) -> bool {
        self.bound.contains(&key_id)
    }

    /// Every key this keyring can open, in id order.
    pub fn key_ids(&self) -> Vec<u32> {
        self.ciphers.keys().copied().collect()
    }

    /// Encrypts `plaintext`, bound to the associated data `aad`: it opens
    /// only with the same `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Sealed {
        seal_with(&self.ciphers[&self.active], self.active, aad, plaintext)
    }

    /// Decrypts field `field` (named in errors only), checking it was
    /// sealed with the associated data `aad`.
    pub fn open(&self, field: &str, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, KeyError> {
        let cipher = self
            .ciphers
            .get(&sealed.k)
            .ok_or_else(|| KeyError::UnknownKey {
                field: field.to_owned(),
                key_id: sealed.k,
            })?;
        let tampered = || KeyError::Tampered {
            field: field.to_owned(),
        };
        let nonce = B64.decode(&sealed.n).map_err(|_| tampered())?;
        if nonce.len() != 24 {
            return Err(tampered());
        }
        let ciphertext = B64.decode(&sealed.c).map_err(|_| tampered())?;
        cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad,
                },
            )
            .map_err(|_| tampered())
    }
}

/// Seals `plaintext` with `cipher` (key `key_id`) and a fresh nonce.
fn seal_with(cipher: &XChaCha20Poly1305, key_id: u32, aad: &[u8], plaintext: &[u8]) -> Sealed {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    // Encryption with a valid key and nonce only fails for messages
    // beyond 256 GiB; tokens are a few KiB.
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    Sealed {
        k: key_id,
        n: B64.encode(nonce),
        c: B64.encode(ciphertext),
    }
}

/// Loads the key file at `path`, creating it with one new key if absent.
/// Returns the file and whether it was created.
pub fn load_or_create_key_file(path: &Path) -> Result<(KeyFile, bool), KeyError> {
    if path.exists() {
        return Ok((KeyFile::load(path)?, false));
    }
    let file = KeyFile::generate();
    file.save(path)?;
    Ok((file, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The associated data these tests bind: connection and field only.
    fn ad(connection_id: &str, field: &str) -> Vec<u8> {
        unbound_associated_data(connection_id, field)
    }

    #[test]
    fn seal_and_open_round_trip_with_fresh_nonces() {
        let ring = Keyring::ephemeral();
        let a = ring.seal(&ad("conn-1", "access_token"), b"secret-token");
        let b = ring.seal(&ad("conn-1", "access_token"), b"secret-token");
        assert_ne!(a.n, b.n, "a fresh nonce per write");
        assert_ne!(a.c, b.c);
        assert_eq!(
            ring.open("access_token", &ad("conn-1", "access_token"), &a)
                .unwrap(),
            b"secret-token"
        );
        assert!(!a.c.contains("secret-token"));
    }

    #[test]
    fn ciphertexts_are_bound_to_their_connection_and_field() {
        let ring = Keyring::ephemeral();
        let a = ring.seal(&ad("conn-1", "refresh_token"), b"rt");
        assert!(matches!(
            ring.open("refresh_token", &ad("conn-2", "refresh_token"), &a),
            Err(KeyError::Tampered { .. })
        ));
        assert!(matches!(
            ring.open("access_token", &ad("conn-1", "access_token"), &a),
            Err(KeyError::Tampered { .. })
        ));
    }

    #[test]
    fn tampering_is_detected_not_panicked_on() {
        let ring = Keyring::ephemeral();
        let mut a = ring.seal(&ad("c", "f"), b"value");
        let mut bytes = B64.decode(&a.c).unwrap();
        bytes[0] ^= 1;
        a.c = B64.encode(bytes);
        assert!(matches!(
            ring.open("f", &ad("c", "f"), &a),
            Err(KeyError::Tampered { .. })
        ));
        a.n = "short".into();
        assert!(ring.open("f", &ad("c", "f"), &a).is_err());
        a.n = "!!!".into();
        assert!(ring.open("f", &ad("c", "f"), &a).is_err());
        a.k = 99;
        assert!(matches!(
            ring.open("f", &ad("c", "f"), &a),
            Err(KeyError::UnknownKey { key_id: 99, .. })
        ));
    }

    #[test]
    fn rotation_keeps_old_keys_for_decryption() {
        let mut file = KeyFile::generate();
        let old = file.keyring().unwrap().seal(&ad("c", "f"), b"v");
        assert_eq!(file.rotate(), 2);
        let ring = file.keyring().unwrap();
        assert_eq!(ring.active_key_id(), 2);
        assert_eq!(ring.open("f", &ad("c", "f"), &old).unwrap(), b"v");
        assert_eq!(ring.seal(&ad("c", "f"), b"v").k, 2);
        assert!(!format!("{ring:?}").contains(&file.keys[0].key));
    }

    #[test]
    fn key_files_are_private_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokend.keys");
        let (file, created) = load_or_create_key_file(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, created) = load_or_create_key_file(&path).unwrap();
        assert!(!created);
        assert_eq!(again.keys[0].key, file.keys[0].key);
        assert!(
            KeyFile::parse(br#"{"active":3,"keys":[]}"#)
                .unwrap()
                .keyring()
                .is_err()
        );
        assert!(
            KeyFile::parse(br#"{"active":1,"keys":[{"id":1,"key":"c2hvcnQ="}]}"#)
                .unwrap()
                .keyring()
                .is_err()
        );
        assert!(KeyFile::parse(b"garbage").is_err());
    }
}
