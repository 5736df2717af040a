//! Shutdown, one sequence with a deadline at every wait: health turns
//! NOT_SERVING and the engine's token is cancelled (`server.rs`'s signal),
//! open calls drain ([`drain_calls`]), the engine flushes pending grants and
//! joins its tasks ([`tokend_engine::Engine::shutdown`], within its grace),
//! then the writers are joined ([`join_writer`]). A hung disk or a provider
//! that never answers makes a wait run out, never the whole shutdown hang.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// How long the audit writer may take to write what is queued once the
/// server is gone: a disk that takes longer is hung, and the process exits
/// without those lines.
pub const WRITER_DEADLINE: Duration = Duration::from_secs(5);

/// Serves until `serving` ends; once `cancel` fires, waits at most `grace`
/// for the open calls to finish, then `cut_off`s the rest (closes their
/// connections: a refresh they wait for is engine-owned, so dropping its
/// caller cannot cut it short).
pub async fn drain_calls<E>(
    serving: impl Future<Output = Result<(), E>>,
    cancel: &CancellationToken,
    grace: Duration,
    cut_off: impl FnOnce() -> usize,
) -> Result<(), E> {
    let deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving => served,
        () = deadline => {
            let connections = cut_off();
            tracing::error!(
                grace_secs = grace.as_secs_f64(),
                connections,
                "calls still open at the end of the shutdown grace: their connections are closed"
            );
            Ok(())
        }
    }
}

/// Joins a writer thread (`join` blocks) within `deadline`; past it the
/// thread is left to the process's exit.
pub async fn join_writer(
    name: &'static str,
    join: impl FnOnce() + Send + 'static,
    deadline: Duration,
) {
    let joined = tokio::task::spawn_blocking(join);
    if tokio::time::timeout(deadline, joined).await.is_err() {
        tracing::error!(
            writer = name,
            deadline_secs = deadline.as_secs_f64(),
            "the writer did not finish within its shutdown deadline (a hung disk?): left behind"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: a call that never ends cannot hold shutdown past the
    /// grace once shutdown has begun; before it, serving goes on.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_ends_is_cut_off_at_the_grace() {
        let cancel = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            trigger.cancel();
        });
        let cut = std::sync::atomic::AtomicBool::new(false);
        let served: Result<(), ()> = drain_calls(
            std::future::pending(),
            &cancel,
            Duration::from_secs(3),
            || {
                cut.store(true, std::sync::atomic::Ordering::Relaxed);
                1
            },
        )
        .await;
        assert!(served.is_ok());
        assert!(cut.into_inner(), "the open calls were cut off");
        assert_eq!(started.elapsed(), Duration::from_secs(63));
    }

    /// Real time: a paused clock does not advance while a blocking thread
    /// runs.
    #[tokio::test]
    async fn a_writer_that_never_ends_is_left_behind_at_its_deadline() {
        let (_hold, blocked) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        join_writer(
            "test",
            move || {
                let _ = blocked.recv_timeout(Duration::from_secs(3));
            },
            Duration::from_millis(200),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
