//! The sled store's single writer: every change (records with their
//! events, leases, cursors, pruning) runs on one thread, which then flushes
//! once for all the changes it took together (group commit).
//!
//! Why one thread: appending a record change and its events atomically
//! needs a sled transaction across trees, which takes sled's global
//! concurrency-control write lock; and a sled flush holds the read side of
//! that lock for its whole fsync. With every writer flushing on its own,
//! each transaction queued behind other writers' fsyncs (measured: refresh
//! throughput 0.68x of the same store without events). Here no fsync is in
//! flight while a transaction runs, and one fsync covers every change of a
//! batch.

use std::sync::{Arc, mpsc};

use crate::StoreError;

/// What runs once the batch is over, with the outcome of the batch's flush
/// (`None`: the batch needed none).
pub(crate) type Completion = Box<dyn FnOnce(Option<Result<(), StoreError>>) + Send>;

/// A change: runs on the writer thread and says whether it needs the
/// flush before its caller may go on.
pub(crate) type Work<I> = Box<dyn FnOnce(&I) -> (bool, Completion) + Send>;

/// One change and the store it applies to.
pub(crate) struct Job<I> {
    pub inner: Arc<I>,
    pub work: Work<I>,
}

/// What the writer thread needs of the store to flush.
pub(crate) trait Flush: Send + Sync + 'static {
    /// Flushes; on success, publishes what the flush made durable.
    fn flush_and_publish(&self) -> Result<(), StoreError>;

    /// Whether changes applied earlier still wait for a successful flush
    /// (an earlier one failed): the next batch flushes again, even with
    /// nothing of its own to flush.
    fn unflushed(&self) -> bool;
}

/// Most changes taken into one batch.
pub(crate) const MAX_BATCH: usize = 1024;

/// The panic a change raises to kill the writer thread, for tests of what
/// the server does when it dies (`SledStore::kill_writer`). Any other
/// panic in a change fails that change alone.
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) struct Die;

/// Starts the writer thread, taking at most `max_batch` changes per flush
/// (1: a flush per write, for benchmarks); it ends when every sender is
/// gone. If it dies instead (a panic outside a change: in sled's flush),
/// `on_death` is told: every later write fails, and the store must say so.
pub(crate) fn start<I: Flush>(
    max_batch: usize,
    on_death: impl FnOnce(&str) + Send + 'static,
) -> mpsc::Sender<Job<I>> {
    let (tx, rx) = mpsc::channel::<Job<I>>();
    let max_batch = max_batch.max(1);
    std::thread::Builder::new()
        .name("tokend-sled-writer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(rx, max_batch)));
            if ran.is_err() {
                on_death("the store's writer thread panicked; nothing can be written any more");
            }
        })
        .expect("the sled writer thread starts");
    tx
}

/// Applies each batch, flushes it once, then tells every caller of the
/// batch, refused ones included: a change refused because of another one
/// not yet flushed (a compare-and-swap that lost) is reported only once
/// what it lost to is durable, so that no caller acts on state a crash
/// could still undo.
fn run<I: Flush>(rx: mpsc::Receiver<Job<I>>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let flusher = Arc::clone(&jobs[0].inner);
        let mut done = Vec::with_capacity(jobs.len());
        let mut needs_flush = false;
        for Job { inner, work } in jobs {
            // A change that panics fails alone (its caller gets an error
            // when its reply is dropped); the writer goes on.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&inner))) {
                Ok((flush, completion)) => {
                    needs_flush |= flush;
                    done.push(completion);
                }
                #[cfg(any(test, feature = "fault-injection"))]
                Err(payload) if payload.is::<Die>() => std::panic::resume_unwind(payload),
                Err(_) => {}
            }
        }
        let flushed = (needs_flush || flusher.unflushed()).then(|| flusher.flush_and_publish());
        // Every store reference is let go before its caller hears back, so
        // a caller that drops the store and reopens its directory finds it
        // unlocked.
        drop(flusher);
        for completion in done {
            completion(flushed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Flush for Counting {
        fn flush_and_publish(&self) -> Result<(), StoreError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn unflushed(&self) -> bool {
            false
        }
    }

    fn job(
        inner: &Arc<Counting>,
        flush: bool,
        panic: bool,
    ) -> (
        Job<Counting>,
        mpsc::Receiver<Option<Result<(), StoreError>>>,
    ) {
        let (tx, rx) = mpsc::channel();
        let work: Work<Counting> = Box::new(move |_| {
            assert!(!panic, "a change that panics");
            let completion: Completion = Box::new(move |r| {
                let _ = tx.send(r);
            });
            (flush, completion)
        });
        (
            Job {
                inner: Arc::clone(inner),
                work,
            },
            rx,
        )
    }

    #[test]
    fn a_panicking_change_fails_alone_and_the_writer_goes_on() {
        let inner = Arc::new(Counting::default());
        let writer = start::<Counting>(MAX_BATCH, |_| {});
        let (bad, bad_reply) = job(&inner, true, true);
        writer.send(bad).unwrap();
        assert!(bad_reply.recv().is_err(), "its caller hears of the failure");
        let (good, good_reply) = job(&inner, true, false);
        writer.send(good).unwrap();
        assert!(good_reply.recv().unwrap().unwrap().is_ok());
        assert!(
            inner.0.load(Ordering::SeqCst) >= 1,
            "flushed for the good one"
        );
    }

    /// Issue 25, item 9: a writer thread that dies is reported (the store
    /// then says it is broken, and the server stops), and no write is taken
    /// after it.
    #[test]
    fn a_writer_that_dies_says_so() {
        let (told_tx, told) = mpsc::channel();
        let writer = start::<Counting>(MAX_BATCH, move |why| {
            let _ = told_tx.send(why.to_owned());
        });
        let inner = Arc::new(Counting::default());
        let die: Work<Counting> = Box::new(|_| std::panic::panic_any(Die));
        writer
            .send(Job {
                inner: Arc::clone(&inner),
                work: die,
            })
            .unwrap();
        assert!(told.recv().unwrap().contains("writer thread"));
        let (after, _) = job(&inner, true, false);
        assert!(writer.send(after).is_err(), "nothing is taken any more");
    }
}
