//! Retention: the background task that prunes the event log by age and
//! count.

use std::sync::Arc;

use tokend_core::Clock;
use tokend_store::Store;
use tokio_util::sync::CancellationToken;

use super::EventSettings;

/// Prunes at start and then every `prune_interval` until `cancel`.
pub(super) async fn prune_periodically(
    store: Arc<dyn Store>,
    settings: EventSettings,
    clock: Clock,
    cancel: CancellationToken,
) {
    loop {
        let older_than = clock.now().saturating_sub(settings.retention);
        match store.prune_events(older_than, settings.max_events).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "event log pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the event log failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(settings.prune_interval) => {}
        }
    }
}
