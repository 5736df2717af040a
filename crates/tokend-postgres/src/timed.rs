//! Client-side time limits on every store call: a database connection that
//! went silent (a dead peer, a route that drops packets) gets no answer and
//! no error, and no server-side `statement_timeout` can end the wait. Each
//! call gets [`PgOptions::call_timeout`](crate::PgOptions::call_timeout);
//! past it the call fails, and the pooled connection it held is closed
//! instead of being handed to the next call.

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::Timestamp;
use tokend_store::{BoxFuture, Op, StoreError};

use crate::{PgError, PostgresStore};

/// A pooled connection that is detached from the pool and closed, not given
/// back, when the call using it was abandoned at its time limit: its socket
/// may be dead, and the next call must not wait on it too.
pub(crate) struct Pooled {
    client: Option<deadpool_postgres::Client>,
    abandoned: Arc<AtomicBool>,
}

impl Pooled {
    pub(crate) async fn get(
        pool: &deadpool_postgres::Pool,
        abandoned: &Arc<AtomicBool>,
    ) -> Result<Pooled, PgError> {
        Ok(Pooled {
            client: Some(pool.get().await?),
            abandoned: Arc::clone(abandoned),
        })
    }
}

impl Deref for Pooled {
    type Target = deadpool_postgres::Client;

    fn deref(&self) -> &Self::Target {
        // Set from construction until drop.
        self.client
            .as_ref()
            .expect("pooled client present until drop")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.client
            .as_mut()
            .expect("pooled client present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.abandoned.load(Ordering::SeqCst)
            && let Some(client) = self.client.take()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Runs `call` for at most `limit`. Past it, `abandoned` is set before the
/// call is dropped, so the connection it held is closed (see [`Pooled`]).
pub(crate) async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    abandoned: &AtomicBool,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut call = std::pin::pin!(call);
    match tokio::time::timeout(limit, call.as_mut()).await {
        Ok(result) => result,
        Err(_) => {
            abandoned.store(true, Ordering::SeqCst);
            tracing::warn!(
                call = what,
                limit_ms = limit.as_millis() as u64,
                "database call got no answer in time; closing its connection"
            );
            Err(PgError::Db(format!(
                "{what}: no answer from the database within {} ms",
                limit.as_millis()
            ))
            .into())
        }
    }
}

/// The store's calls without the time limit (`store.rs`), for one call:
/// its connections carry this call's `abandoned` flag.
pub struct Untimed {
    store: PostgresStore,
    abandoned: Arc<AtomicBool>,
}

impl Deref for Untimed {
    type Target = PostgresStore;

    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

impl Untimed {
    pub(crate) async fn client(&self) -> Result<Pooled, StoreError> {
        Ok(Pooled::get(&self.store.inner.pool, &self.abandoned).await?)
    }
}

/// Every call of [`Untimed`]'s `Store`, within the time limit: each call
/// gets an `Untimed` of its own, whose connections the limit closes.
#[async_trait]
impl tokend_store::StoreWrapper for PostgresStore {
    type Target = Untimed;
    type Inner<'a> = Box<Untimed>;

    fn inner(&self) -> Box<Untimed> {
        Box::new(Untimed {
            store: self.clone(),
            abandoned: Arc::default(),
        })
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        untimed: &'a Box<Untimed>,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(bounded(
            op.name(),
            self.inner.call_timeout,
            &untimed.abandoned,
            call,
        ))
    }

    /// The database's clock (`clock.rs`), not `Store`'s default (none).
    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        let untimed = tokend_store::StoreWrapper::inner(self);
        let call = Box::pin(untimed.fleet_now());
        self.around(Op::FleetClock, &untimed, call).await
    }
}
