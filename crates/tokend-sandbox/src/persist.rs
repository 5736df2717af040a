//! The sandbox's grants on disk, so `tokend serve --sandbox` survives a
//! restart as a real provider would: each account's revocation epoch and
//! each refresh token that can still be redeemed, by SHA-256 only (a copy
//! of the file redeems nothing). Access tokens and codes are short-lived
//! and not kept.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file's layout version.
const VERSION: u32 = 1;

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub version: u32,
    /// Account id → revocation epoch.
    pub accounts: BTreeMap<String, u64>,
    pub refresh_tokens: Vec<SavedRefresh>,
}

/// A redeemable refresh token, by hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedRefresh {
    pub sha256: String,
    pub account: String,
    pub scopes: Vec<String>,
    pub epoch: u64,
}

/// Hex SHA-256 of a token: the only form in which it is written.
pub(crate) fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the state, if the file exists.
pub(crate) fn load(path: &Path) -> std::io::Result<Option<Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if snapshot.version != VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: sandbox state version {} is not {VERSION}",
                path.display(),
                snapshot.version
            ),
        ));
    }
    Ok(Some(snapshot))
}

/// Writes the state durably: a temp file, flushed, renamed over the old.
pub(crate) fn save(path: &Path, mut snapshot: Snapshot) -> std::io::Result<()> {
    snapshot.version = VERSION;
    let tmp = temp_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(&serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}
