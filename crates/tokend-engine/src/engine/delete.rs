//! Deleting a connection: compare-and-swap on what was read (an unreadable
//! record only with `force`), then the grant revoked at the provider when
//! it asks for that.

use std::sync::Arc;

use tokend_core::{Connection, ConnectionId};
use tokend_store::{Expected, StoreError};

use super::{Engine, install};
use crate::{error::EngineError, hub::EventKind};

impl Engine {
    /// With `revoke_on_delete`, revokes a deleted connection's grant at the
    /// provider (RFC 7009), in an engine-owned task: the refresh token (which
    /// ends the grant), else the access token. Best effort: the connection is
    /// gone from tokend either way; a failure is logged.
    fn revoke_deleted(&self, record: Arc<Connection>) {
        let Some(provider) = self.providers.get(&record.provider) else {
            return;
        };
        if !provider.request.revoke_on_delete {
            return;
        }
        let provider = Arc::clone(provider);
        let endpoint = Arc::clone(&self.endpoint);
        self.tasks.spawn(async move {
            let provider = match provider.for_connection(&record.params) {
                Ok(p) => p.into_owned(),
                Err(reason) => {
                    tracing::warn!(connection_id = %record.id, reason, "cannot revoke a deleted connection's grant");
                    return;
                }
            };
            let (token, hint) = match &record.tokens.refresh_token {
                Some(rt) => (rt, "refresh_token"),
                None => (&record.tokens.access_token, "access_token"),
            };
            match endpoint.revoke(&provider, token, hint).await {
                Ok(()) => {
                    tracing::info!(connection_id = %record.id, provider = %provider.name, hint, "deleted connection's grant revoked at the provider")
                }
                Err(e) => {
                    tracing::warn!(connection_id = %record.id, provider = %provider.name, error_class = e.class.as_str(), code = %e.code, "revoking a deleted connection's grant failed")
                }
            }
        });
    }

    /// Deletes a connection by compare-and-swap on what was read, including
    /// a record that cannot be decoded when `force` says so; watchers get a
    /// DELETED event.
    pub async fn delete(&self, id: &ConnectionId, force: bool) -> Result<(), EngineError> {
        for _ in 0..5 {
            let (expected, existing) = match self.store.get(id).await {
                Ok(Some(record)) => (
                    Expected::Record {
                        incarnation: record.incarnation,
                        revision: record.revision,
                    },
                    Some(record),
                ),
                Ok(None) => return Err(EngineError::NotFound(id.clone())),
                Err(StoreError::Corrupt { .. }) => {
                    install::refuse_unreadable(id, force)?;
                    (Expected::Unreadable, None)
                }
                Err(e) => return Err(e.into()),
            };
            match self.store.delete(id, expected).await {
                Ok(true) => {
                    self.slots.remove(id);
                    self.scheduler.unschedule(id);
                    tracing::info!(connection_id = %id, unreadable = existing.is_none(), "connection deleted");
                    if let Some(record) = existing {
                        let record = Arc::new(record);
                        self.publish(EventKind::Deleted, &record);
                        self.revoke_deleted(record);
                    }
                    return Ok(());
                }
                Ok(false) => return Err(EngineError::NotFound(id.clone())),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Contended(id.clone()))
    }
}
