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

/// What runs once the batch's flush (if any) is over, with its outcome.
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

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
}

/// Most changes taken into one batch.
pub(crate) const MAX_BATCH: usize = 1024;

/// Starts the writer thread, taking at most `max_batch` changes per flush
/// (1: a flush per write, for benchmarks); it ends when every sender is gone.
pub(crate) fn start<I: Flush>(max_batch: usize) -> mpsc::Sender<Job<I>> {
    let (tx, rx) = mpsc::channel::<Job<I>>();
    let max_batch = max_batch.max(1);
    std::thread::Builder::new()
        .name("tokend-sled-writer".into())
        .spawn(move || run(rx, max_batch))
        .expect("the sled writer thread starts");
    tx
}

fn run<I: Flush>(rx: mpsc::Receiver<Job<I>>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut waiting = Vec::with_capacity(jobs.len());
        let mut flusher: Option<Arc<I>> = None;
        for Job { inner, work } in jobs {
            // A change that panics fails alone (its caller gets an error
            // when its reply is dropped); the writer goes on.
            let Ok((needs_flush, completion)) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&inner)))
            else {
                drop(inner);
                continue;
            };
            // Every store reference is let go before its caller hears back,
            // so a caller that drops the store and reopens its directory
            // finds it unlocked.
            if needs_flush {
                flusher.get_or_insert(inner);
                waiting.push(completion);
            } else {
                drop(inner);
                completion(Ok(()));
            }
        }
        let flushed = match flusher {
            Some(inner) => inner.flush_and_publish(),
            None => Ok(()),
        };
        for completion in waiting {
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
    }

    fn job(
        inner: &Arc<Counting>,
        flush: bool,
        panic: bool,
    ) -> (Job<Counting>, mpsc::Receiver<Result<(), StoreError>>) {
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
        let writer = start::<Counting>(MAX_BATCH);
        let (bad, bad_reply) = job(&inner, true, true);
        writer.send(bad).unwrap();
        assert!(bad_reply.recv().is_err(), "its caller hears of the failure");
        let (good, good_reply) = job(&inner, true, false);
        writer.send(good).unwrap();
        assert!(good_reply.recv().unwrap().is_ok());
        assert!(
            inner.0.load(Ordering::SeqCst) >= 1,
            "flushed for the good one"
        );
    }
}
