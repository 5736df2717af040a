//! What `/readyz` answers: ready means the store answers now (one cheap
//! round trip, `event_bounds`, within [`PROBE_TIMEOUT`]), its writer is
//! alive (`Store::broken`), this process's keys open the records (no key
//! the store records is one they lack: `Store::unheld_keys`, which on a
//! fleet catches a key another replica recorded and this one was never
//! given), and the server is not shutting down. A probe's answer is kept
//! for [`CACHE_FOR`], and probes
//! arriving while one runs wait for it, so no number of probes costs the
//! store more than one round trip a second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokend_store::Store;

/// How long the store's round trip may take before the server is not ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one probe's answer is served to later probes.
pub const CACHE_FOR: Duration = Duration::from_millis(1000);

/// The cached readiness of one store.
pub(crate) struct Readiness {
    store: Arc<dyn Store>,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Readiness {
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// `Ok`, or why the store is not ready (no secret: store errors carry
    /// none).
    pub(crate) async fn check(&self) -> Result<(), String> {
        if let Some(why) = self.store.broken().borrow().clone() {
            return Err(format!("store failed: {why}"));
        }
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return answer.clone();
        }
        let probe = async {
            self.store.event_bounds().await?;
            self.store.unheld_keys().await
        };
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(unheld)) if unheld.is_empty() => Ok(()),
            Ok(Ok(unheld)) => Err(format!(
                "keys missing: the store records key(s) {unheld:?}, which this process's keys do not hold, so records sealed with them cannot be opened here; give it the fleet's keys"
            )),
            Ok(Err(e)) => Err(format!("store unavailable: {e}")),
            Err(_) => Err(format!(
                "store unavailable: no answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use tokend_store::{
        MemoryStore,
        fault::{Fault, FaultStore, Op},
    };

    use super::*;

    #[tokio::test]
    async fn a_store_that_does_not_answer_is_not_ready_and_probes_are_cached() {
        let faults = Arc::new(FaultStore::new(MemoryStore::new()));
        let readiness = Readiness::new(faults.clone());
        assert_eq!(readiness.check().await, Ok(()));
        faults.arm_always(Op::EventBounds, Fault::Hang);
        // Cached: the hang is not seen for a second.
        assert_eq!(readiness.check().await, Ok(()));
        tokio::time::sleep(CACHE_FOR).await;
        let started = Instant::now();
        assert!(readiness.check().await.is_err());
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_millis(500));
        faults.heal();
        tokio::time::sleep(CACHE_FOR).await;
        assert_eq!(readiness.check().await, Ok(()));
    }
}
