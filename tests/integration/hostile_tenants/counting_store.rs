//! A `Store` wrapper for the narrow-listing test (issue 24, item 6): it
//! counts the records listings return and delegates everything else.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokend_core::Connection;
use tokend_store::{ListQuery, SledStore, Store, StoreError};

/// A store that counts the records its listings return (what the server
/// reads and decrypts to answer ListConnections) and delegates the rest.
pub struct CountingStore {
    pub inner: Arc<SledStore>,
    pub listed: AtomicU64,
}

#[tonic::async_trait]
impl tokend_store::StoreWrapper for CountingStore {
    type Target = SledStore;
    type Inner<'a> = &'a SledStore;

    fn inner(&self) -> &SledStore {
        &self.inner
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let page = self.inner.list(query).await?;
        self.listed.fetch_add(page.len() as u64, Ordering::Relaxed);
        Ok(page)
    }
}
