//! A `Store` that counts and times every write of the store it wraps, by
//! operation and outcome (reads are the cache's business and stay uncounted).

use std::{sync::Arc, time::Instant};

use tokend_store::{BoxFuture, Op, Store, StoreError};

use super::{Metrics, OperationLabel, StoreLabels};

/// Wraps a store; see the module doc.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    fn record<T>(&self, operation: &str, started: Instant, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(StoreError::Fenced { .. }) => "fenced",
            Err(_) => "error",
        };
        self.metrics
            .store_operations
            .get_or_create(&StoreLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.metrics
            .store_duration
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The `operation` label of a counted write; `None` for a read, which
/// goes through uncounted.
fn counted(op: Op) -> Option<&'static str> {
    match op {
        Op::Put
        | Op::Delete
        | Op::AcquireLease
        | Op::ReleaseLease
        | Op::RenewLease
        | Op::SaveCursor => Some(op.name()),
        Op::ReplaceUnreadable => Some("replace"),
        _ => None,
    }
}

impl tokend_store::StoreWrapper for MeteredStore {
    type Target = dyn Store;
    type Inner<'a> = &'a dyn Store;

    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _: &'a &dyn Store,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let Some(operation) = counted(op) else {
            return call;
        };
        Box::pin(async move {
            let started = Instant::now();
            let result = call.await;
            self.record(operation, started, &result);
            result
        })
    }
}
