//! Key rotation progress: the active key, how many records each key still
//! seals, and how many a re-encryption pass has moved to the active key.
//!
//! The binary owns key files and the re-encryption passes (sled only); it
//! records each pass here, and the server registers these with the rest.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tokend_store::crypto::keys::Pass;

/// A key id: a handful per deployment, so a bounded label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    pub key_id: u32,
}

/// Shared handles: clones update the same series.
#[derive(Clone, Debug, Default)]
pub struct KeyRotationMetrics {
    active: Gauge,
    sealed: Family<KeyLabel, Gauge>,
    on_old_keys: Gauge,
    reencrypted: Counter,
    last_pass: Gauge,
}

impl KeyRotationMetrics {
    /// The key new writes are sealed with (known before any pass).
    pub fn set_active(&self, key_id: u32) {
        self.active.set(i64::from(key_id));
    }

    /// What a re-encryption pass did and left.
    pub fn record(&self, pass: &Pass) {
        self.set_active(pass.usage.active);
        // A retired key leaves the file: its series goes with it.
        self.sealed.clear();
        let mut old = 0usize;
        for (&key_id, &n) in &pass.usage.records {
            self.sealed
                .get_or_create(&KeyLabel { key_id })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            if key_id != pass.usage.active {
                old = old.saturating_add(n);
            }
        }
        self.on_old_keys.set(i64::try_from(old).unwrap_or(i64::MAX));
        self.reencrypted
            .inc_by(u64::try_from(pass.reencrypted).unwrap_or(u64::MAX));
        self.last_pass.set(pass.usage.at_unix_ms / 1000);
    }

    pub(super) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "tokend_encryption_active_key",
            "Id of the key new writes are sealed with",
            self.active.clone(),
        );
        registry.register(
            "tokend_encryption_sealed_records",
            "Records with a field sealed by each key, as of the last re-encryption pass",
            self.sealed.clone(),
        );
        registry.register(
            "tokend_encryption_records_on_old_keys",
            "Records still sealed (in part) by a key other than the active one; 0 when a rotation is complete",
            self.on_old_keys.clone(),
        );
        registry.register(
            "tokend_encryption_reencrypted_records",
            "Records re-sealed with the active key by re-encryption passes",
            self.reencrypted.clone(),
        );
        registry.register(
            "tokend_encryption_last_pass_timestamp_seconds",
            "When the last re-encryption pass ended (Unix time)",
            self.last_pass.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokend_store::crypto::keys::{KeyUsage, Pass};

    use super::KeyRotationMetrics;

    fn pass(active: u32, records: &[(u32, usize)], reencrypted: usize) -> Pass {
        Pass {
            reencrypted,
            usage: KeyUsage {
                active,
                records: records.iter().copied().collect::<BTreeMap<_, _>>(),
                at_unix_ms: 1_700_000_000_000,
            },
        }
    }

    fn text(m: &KeyRotationMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn a_rotation_shows_its_progress_and_a_retired_key_disappears() {
        let m = KeyRotationMetrics::default();
        m.set_active(1);
        m.record(&pass(2, &[(1, 3), (2, 7)], 0));
        let t = text(&m);
        assert!(t.contains("tokend_encryption_active_key 2"), "{t}");
        assert!(
            t.contains("tokend_encryption_sealed_records{key_id=\"1\"} 3"),
            "{t}"
        );
        assert!(t.contains("tokend_encryption_records_on_old_keys 3"), "{t}");
        m.record(&pass(2, &[(2, 10)], 3));
        let t = text(&m);
        assert!(!t.contains("key_id=\"1\""), "{t}");
        assert!(t.contains("tokend_encryption_records_on_old_keys 0"), "{t}");
        assert!(
            t.contains("tokend_encryption_reencrypted_records_total 3"),
            "{t}"
        );
        assert!(
            t.contains("tokend_encryption_last_pass_timestamp_seconds 1700000000"),
            "{t}"
        );
    }
}
