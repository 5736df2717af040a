//! Server-wide watch-stream bounds: how many streams may be open over all
//! callers (`limits.max_watch_streams`), and what each one may buffer
//! (`limits.watch_buffer_bytes`, `limits.watch_stall_timeout_ms`).
//!
//! So the memory all watch streams hold is bounded whoever opens them:
//! at most `max_watch_streams` × (`watch_buffer_bytes` + what HTTP/2 holds
//! for one stream), and a stream whose client stops reading is cut off
//! after the stall timeout (see `outbox.rs`).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::outbox::OutboxBounds;
use tokend_config::limits::Limits;

use crate::error::ServiceError;

/// The watch-stream bounds every stream of this server shares.
#[derive(Clone)]
pub(crate) struct StreamBounds {
    open: Arc<AtomicUsize>,
    max: usize,
    pub(crate) outbox: OutboxBounds,
}

impl StreamBounds {
    pub(crate) fn new(limits: &Limits) -> Self {
        StreamBounds {
            open: Arc::new(AtomicUsize::new(0)),
            max: if limits.enforce {
                limits.max_watch_streams
            } else {
                usize::MAX
            },
            outbox: OutboxBounds {
                bytes: limits.watch_buffer_bytes,
                stall: limits.watch_stall_timeout,
            },
        }
    }

    /// Takes one of the server's watch-stream slots; dropping it frees it.
    pub(crate) fn open(&self) -> Result<ServerSlot, ServiceError> {
        let open = self.open.fetch_add(1, Ordering::SeqCst);
        if open >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(ServiceError::Overloaded {
                limit: "max_watch_streams",
            });
        }
        Ok(ServerSlot(Arc::clone(&self.open)))
    }
}

impl Default for StreamBounds {
    fn default() -> Self {
        Self::new(&Limits::default())
    }
}

/// One open watch stream, counted against `max_watch_streams`.
pub(crate) struct ServerSlot(Arc<AtomicUsize>);

impl Drop for ServerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: at most `max_watch_streams` slots are held at once, and
    /// a dropped one is free again.
    #[test]
    fn the_server_wide_cap_holds_and_frees() {
        let bounds = StreamBounds::new(&Limits {
            max_watch_streams: 2,
            ..Limits::default()
        });
        let a = bounds.open().unwrap();
        let _b = bounds.open().unwrap();
        let err = bounds.open().err().unwrap().to_status();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        drop(a);
        assert!(bounds.open().is_ok());
    }
}
