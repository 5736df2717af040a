//! Key files as the server and the `tokend keys` commands use them: where
//! the keyring comes from (`TOKEND_KEYS` or a file created on first start),
//! re-encryption after a rotation with its usage report, the online
//! rotation watcher, and the checks before a key is retired.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

#[cfg(test)]
use crate::sealing::load_or_create_key_file;
use crate::{
    sealing::{KeyError, KeyFile, KeyOrigin, Keyring},
    sled_store::SledStore,
};

/// The key file's name inside the data dir.
pub const KEY_FILE_NAME: &str = "tokend.keys";
/// Where a running server records how many records each key seals.
pub const KEY_USAGE_FILE_NAME: &str = "tokend.keys.usage";
/// How often a running server looks for a rotated key file.
pub const KEY_FILE_POLL: Duration = Duration::from_secs(5);

/// What `DATA_DIR/tokend.keys.usage` holds, written after each
/// re-encryption pass. Counts on old keys can only fall after a keyring
/// swap: the store seals every write landing after it with the new key.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct KeyUsage {
    pub active: u32,
    /// Records per key id.
    pub records: BTreeMap<u32, usize>,
    pub at_unix_ms: i64,
}

/// Keys as `serve` loads them.
pub struct LoadedKeys {
    pub keyring: Keyring,
    /// The key file, when keys come from one, so rotations can be picked up.
    pub path: Option<PathBuf>,
    /// A key file made because none was found: not on disk yet (see
    /// [`UnsavedKeyFile`]).
    pub unsaved: Option<UnsavedKeyFile>,
}

/// A key file made in memory because none was at its path. It is written
/// only once the store has accepted its key ([`UnsavedKeyFile::save`]): a
/// store whose records another key sealed refuses it, and then nothing is
/// left on disk that a later start would take for the right key file.
pub struct UnsavedKeyFile {
    file: KeyFile,
    path: PathBuf,
}

impl UnsavedKeyFile {
    /// Writes the key file (mode 0600), before anything is sealed with it.
    pub fn save(self) -> Result<(), KeyError> {
        self.file.save(&self.path)?;
        tracing::warn!(
            path = %self.path.display(),
            "created a new encryption key file (mode 0600); back it up: without it the stored tokens cannot be read"
        );
        Ok(())
    }
}

/// The keyring from `env_keys` (the `TOKEND_KEYS` JSON) if given, else from
/// the key file. A missing key file is made in memory, not yet written
/// (`LoadedKeys::unsaved`): the store decides first whether a new key may
/// be used at all.
pub fn load_keyring(
    env_keys: Option<&str>,
    key_file: Option<PathBuf>,
    data_dir: &Path,
) -> Result<LoadedKeys, KeyError> {
    if let Some(json) = env_keys {
        let keys = KeyFile::parse(json.as_bytes())?
            .keyring()?
            .with_origin(KeyOrigin::Env);
        tracing::info!(
            active_key = keys.active_key_id(),
            "encryption keys from TOKEND_KEYS"
        );
        return Ok(LoadedKeys {
            keyring: keys,
            path: None,
            unsaved: None,
        });
    }
    let path = key_file.unwrap_or_else(|| data_dir.join(KEY_FILE_NAME));
    if !path.exists() {
        let file = KeyFile::generate();
        let keyring = file
            .keyring()?
            .with_origin(KeyOrigin::NewFile(path.clone()));
        return Ok(LoadedKeys {
            keyring,
            path: Some(path.clone()),
            unsaved: Some(UnsavedKeyFile { file, path }),
        });
    }
    let keys = KeyFile::load(&path)?
        .keyring()?
        .with_origin(KeyOrigin::File(path.clone()));
    tracing::info!(path = %path.display(), active_key = keys.active_key_id(), "encryption keys loaded");
    Ok(LoadedKeys {
        keyring: keys,
        path: Some(path),
        unsaved: None,
    })
}

/// What one re-encryption pass did and left.
pub struct Pass {
    /// Records re-sealed with the active key by this pass.
    pub reencrypted: usize,
    /// Records per key after it.
    pub usage: KeyUsage,
}

/// Re-seals records still on an old key (one pass: records already on the
/// active key are skipped inside), logs whether old keys can go, and writes
/// the usage file `keys retire` reads while the server runs (when keys come
/// from a file). `None` when the pass or the count failed (logged).
pub async fn reencrypt(
    store: &SledStore,
    key_file: Option<&Path>,
    data_dir: &Path,
) -> Option<Pass> {
    let active = store.active_key_id();
    if store.key_ids() == [active] {
        // Only the active key: nothing to re-seal and nothing to retire,
        // and the count comes from the index, not a pass over every record.
        let total = match crate::Store::census(store).await {
            Ok(census) => census.iter().map(|(_, _, n)| n as usize).sum(),
            Err(e) => {
                tracing::error!(error = %e, "cannot count records");
                return None;
            }
        };
        let usage = KeyUsage {
            active,
            records: BTreeMap::from([(active, total)]),
            at_unix_ms: tokend_core::Clock::system().now().unix_millis(),
        };
        if key_file.is_some() {
            write_usage(&usage, data_dir);
        }
        return Some(Pass {
            reencrypted: 0,
            usage,
        });
    }
    let reencrypted = match store.reencrypt().await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(records = n, "re-encryption pass finished");
            }
            n
        }
        Err(e) => {
            tracing::error!(error = %e, "re-encryption failed; old keys are still needed");
            return None;
        }
    };
    let mut records = BTreeMap::new();
    for key_id in store.key_ids() {
        match store.records_on_key(key_id).await {
            Ok(n) => {
                records.insert(key_id, n);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot count records per key");
                return None;
            }
        }
    }
    let on_old: usize = records
        .iter()
        .filter(|(id, _)| **id != active)
        .map(|(_, n)| n)
        .sum();
    if on_old == 0 {
        tracing::info!(
            "no record uses an old key; old keys can be retired (tokend keys retire KEY_ID)"
        );
    } else {
        tracing::warn!(
            records = on_old,
            "records still use an old key; do not retire old keys yet"
        );
    }
    let usage = KeyUsage {
        active,
        records,
        at_unix_ms: tokend_core::Clock::system().now().unix_millis(),
    };
    if key_file.is_some() {
        write_usage(&usage, data_dir);
    }
    Some(Pass { reencrypted, usage })
}

fn write_usage(usage: &KeyUsage, data_dir: &Path) {
    let target = data_dir.join(KEY_USAGE_FILE_NAME);
    let tmp = data_dir.join(format!("{KEY_USAGE_FILE_NAME}.tmp"));
    let written = serde_json::to_vec_pretty(usage)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = written {
        tracing::error!(error = %e, path = %target.display(), "cannot write the key usage file");
    }
}

/// Polls the key file and applies a rotation online, until `stop` resolves.
pub async fn watch_key_file(
    path: PathBuf,
    data_dir: PathBuf,
    store: SledStore,
    on_pass: impl Fn(&Pass),
    stop: impl Future<Output = ()>,
) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEY_FILE_POLL) => {}
            _ = &mut stop => return,
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match KeyFile::load(&path).and_then(|f| f.keyring()) {
            Ok(keys) => {
                let keys = keys.with_origin(KeyOrigin::File(path.clone()));
                let active = keys.active_key_id();
                if let Err(e) = store.set_keyring(keys).await {
                    tracing::error!(error = %e, "key file changed but the store refuses its keys; keeping the current keys");
                    continue;
                }
                tracing::info!(active_key = active, "key file changed; switched keys");
                if let Some(pass) = reencrypt(&store, Some(&path), &data_dir).await {
                    on_pass(&pass);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "key file changed but cannot be used; keeping the current keys")
            }
        }
    }
}

/// Why a key cannot be retired.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("no usable key file at {path}: {source}")]
    NoKeyFile { path: String, source: KeyError },
    #[error(
        "no embedded database in {0}: keys can be retired only where tokend counts the records on them (with a PostgreSQL store, keep old keys: there is no re-encryption pass there yet)"
    )]
    NoDatabase(String),
    #[error("key {0} is the active key; rotate first (tokend keys rotate)")]
    Active(u32),
    #[error("key {key_id} is not in {path}")]
    Unknown { key_id: u32, path: String },
    #[error(
        "the database is in use and {0} is missing or unreadable; wait for the server's re-encryption pass"
    )]
    NoUsageReport(String),
    #[error("the running server has not switched to key {0} yet; try again in a few seconds")]
    NotSwitched(u32),
    #[error("refusing to retire key {key_id}: records still use it{}", .count.map(|n| format!(" ({n})")).unwrap_or_default())]
    InUse { key_id: u32, count: Option<usize> },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// Removes `key_id` from the key file at `path` once no record of the
/// store in `data_dir` uses it. With the server stopped, counts directly;
/// while it runs (the database is locked), trusts its last usage report,
/// which only ever overstates old keys' use.
pub async fn retire(key_id: u32, path: &Path, data_dir: &Path) -> Result<(), RetireError> {
    let mut file = KeyFile::load(path).map_err(|source| RetireError::NoKeyFile {
        path: path.display().to_string(),
        source,
    })?;
    if file.active == key_id {
        return Err(RetireError::Active(key_id));
    }
    if !file.keys.iter().any(|k| k.id == key_id) {
        return Err(RetireError::Unknown {
            key_id,
            path: path.display().to_string(),
        });
    }
    // Never count on a store this would create: an empty one counts no
    // records on any key, and a PostgreSQL replica's data dir holds no
    // records at all.
    if !data_dir.join("db").exists() {
        return Err(RetireError::NoDatabase(data_dir.display().to_string()));
    }
    let in_use = match SledStore::try_open(data_dir, file.keyring()?) {
        Ok(store) => Some(store.records_on_key(key_id).await?),
        Err(_) => {
            let usage_path = data_dir.join(KEY_USAGE_FILE_NAME);
            let usage: KeyUsage = std::fs::read(&usage_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| RetireError::NoUsageReport(usage_path.display().to_string()))?;
            if usage.active != file.active {
                return Err(RetireError::NotSwitched(file.active));
            }
            usage.records.get(&key_id).copied()
        }
    };
    if in_use != Some(0) {
        return Err(RetireError::InUse {
            key_id,
            count: in_use,
        });
    }
    file.keys.retain(|k| k.id != key_id);
    file.keyring()?;
    file.save(path)?;
    Ok(())
}

/// Adds a new key to the file at `path` and makes it active; returns its id.
pub fn rotate(path: &Path) -> Result<u32, KeyError> {
    let mut file = KeyFile::load(path)?;
    let id = file.rotate();
    file.keyring()?;
    file.save(path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store as _;

    /// Guards: `keys retire` against a data dir without the embedded
    /// database (a PostgreSQL replica's, or a mistyped path) is refused and
    /// creates nothing; it would otherwise count zero records on every key
    /// and retire one the database still needs.
    #[tokio::test]
    async fn retire_refuses_a_data_dir_without_its_database() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = dir.path().join(KEY_FILE_NAME);
        load_or_create_key_file(&keys).expect("key file");
        let old = rotate(&keys).expect("rotate") - 1;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let refused = retire(old, &keys, &data).await;
        assert!(
            matches!(refused, Err(RetireError::NoDatabase(_))),
            "{refused:?}"
        );
        assert_eq!(std::fs::read_dir(&data).expect("read").count(), 0);
        assert_eq!(KeyFile::load(&keys).expect("load").keys.len(), 2);
    }

    #[tokio::test]
    async fn retire_removes_a_key_no_record_uses_any_more() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = dir.path().join(KEY_FILE_NAME);
        let data = dir.path().join("data");
        load_or_create_key_file(&keys).expect("key file");
        {
            let store = SledStore::open(
                &data,
                KeyFile::load(&keys)
                    .and_then(|f| f.keyring())
                    .expect("keys"),
            )
            .expect("store");
            store
                .put(&crate::conformance::record("k", 1), None, None)
                .await
                .expect("put");
            let new = rotate(&keys).expect("rotate");
            assert!(
                matches!(
                    retire(new - 1, &keys, &data).await,
                    Err(RetireError::NoUsageReport(_))
                ),
                "the store is open: only a usage report would do"
            );
            store
                .set_keyring(
                    KeyFile::load(&keys)
                        .and_then(|f| f.keyring())
                        .expect("keys"),
                )
                .await
                .expect("switched");
            assert_eq!(store.reencrypt().await.expect("reencrypt"), 1);
        }
        let old = KeyFile::load(&keys).expect("load").active - 1;
        retire(old, &keys, &data).await.expect("retired");
        assert_eq!(KeyFile::load(&keys).expect("load").keys.len(), 1);
    }
}
