//! The singleflight: at most one task per key doing a piece of work, shared
//! by every caller that asks while it runs, and detached from them.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio_util::task::TaskTracker;

/// How a flight's task ended, when it did not return a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The task panicked: a bug, reported as INTERNAL.
    Panicked,
    /// The runtime dropped the task (shutdown).
    Cancelled,
}

/// What joining a flight yields: the task's result, or how it died.
pub(crate) type Landing<T> = Result<T, Ended>;

type SharedFlight<T> = Shared<BoxFuture<'static, Landing<T>>>;

/// The running flight with its generation, so only its own task clears it.
type Current<T> = Arc<Mutex<Option<(u64, SharedFlight<T>)>>>;

/// One slot's flight: empty, or the running task's shared result.
///
/// The work runs as a spawned task, not as a future polled by the first
/// caller: a caller that goes away (deadline, reset stream) cannot cancel a
/// refresh halfway through, after the provider has rotated the token.
pub(crate) struct Singleflight<T: Clone + Send + Sync + 'static> {
    current: Current<T>,
    generation: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> Default for Singleflight<T> {
    fn default() -> Self {
        Self {
            current: Arc::new(Mutex::new(None)),
            generation: AtomicU64::new(0),
        }
    }
}

/// Clears the flight when its task ends, however it ends (returning,
/// panicking, or being dropped), so a dead flight never stays attached.
struct ClearOnDrop<T: Clone + Send + Sync + 'static> {
    current: Current<T>,
    generation: u64,
}

impl<T: Clone + Send + Sync + 'static> Drop for ClearOnDrop<T> {
    fn drop(&mut self) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|(g, _)| *g == self.generation) {
            *current = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single assignments: a poisoned value is intact.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Clone + Send + Sync + 'static> Singleflight<T> {
    /// Joins the running flight, or asks `start` for one. `start` runs under
    /// the flight lock and may answer without work (`Err(value)`: something
    /// finished just before), or hand back the future to run as a task on
    /// `tasks`.
    pub(crate) fn join_or_start<F>(
        &self,
        tasks: &TaskTracker,
        start: impl FnOnce() -> Result<F, T>,
    ) -> BoxFuture<'static, Landing<T>>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut current = lock(&self.current);
        if let Some((_, flight)) = current.as_ref() {
            return flight.clone().boxed();
        }
        let work = match start() {
            Ok(work) => work,
            Err(ready) => return futures::future::ready(Ok(ready)).boxed(),
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let clear = ClearOnDrop {
            current: Arc::clone(&self.current),
            generation,
        };
        let handle = tasks.spawn(async move {
            let _clear = clear;
            work.await
        });
        let shared = async move {
            handle.await.map_err(|e| {
                if e.is_panic() {
                    Ended::Panicked
                } else {
                    Ended::Cancelled
                }
            })
        }
        .boxed()
        .shared();
        *current = Some((generation, shared.clone()));
        shared.boxed()
    }

    /// Whether a flight is running.
    pub(crate) fn is_running(&self) -> bool {
        lock(&self.current).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, time::Duration};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_task() {
        let flight = Singleflight::<u32>::default();
        let tasks = TaskTracker::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let joins: Vec<_> = (0..100)
            .map(|_| {
                let runs = Arc::clone(&runs);
                flight.join_or_start(&tasks, move || {
                    Ok::<_, u32>(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        7
                    })
                })
            })
            .collect();
        for j in futures::future::join_all(joins).await {
            assert_eq!(j, Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!flight.is_running(), "cleared when the task ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_going_away_does_not_cancel_the_work() {
        let flight = Singleflight::<u32>::default();
        let tasks = TaskTracker::new();
        let done = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&done);
        let join = flight.join_or_start(&tasks, move || {
            Ok::<_, u32>(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                d.fetch_add(1, Ordering::SeqCst);
                1
            })
        });
        drop(join);
        tasks.close();
        tasks.wait().await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_and_cleared() {
        let flight = Singleflight::<u32>::default();
        let tasks = TaskTracker::new();
        let landing = flight
            .join_or_start(&tasks, || {
                Ok::<_, u32>(async {
                    panic!("bug in a refresh");
                })
            })
            .await;
        assert_eq!(landing, Err(Ended::Panicked));
        assert!(!flight.is_running());
        // The next caller starts a new flight.
        let landing = flight
            .join_or_start(&tasks, || Ok::<_, u32>(async { 2 }))
            .await;
        assert_eq!(landing, Ok(2));
    }

    #[tokio::test]
    async fn start_may_answer_without_work() {
        let flight = Singleflight::<u32>::default();
        let tasks = TaskTracker::new();
        let landing = flight
            .join_or_start(&tasks, || Err::<std::future::Ready<u32>, _>(5))
            .await;
        assert_eq!(landing, Ok(5));
        assert!(!flight.is_running());
    }
}
