//! What the sled store may show: only changes a flush has made durable.
//!
//! sled applies a change in memory at once; the writer thread flushes a
//! batch of them later (`sled_commit.rs`). In between, a plain read would
//! see the change, and a reader could act on it (hand out the grant it
//! holds, defer to it and drop its own) although a crash would still undo
//! it. So the writer *marks* every record key before changing it, with the
//! number of the flush that will make the change durable, and publishes the
//! number of the last flush that succeeded (the durable watermark). A read
//! checks, after reading, whether the keys it read are marked beyond that
//! watermark, and if so waits for the flush before it answers: it then
//! answers with what it read, which is durable by then. Reads of unmarked
//! records (almost all of them) never wait.
//!
//! The order is what makes this sound: the mark is set before the change is
//! applied, and checked after the read. A read that saw the change therefore
//! sees its mark too, unless the flush has already cleared it.
//!
//! If the flush fails, the marks stay and waiting readers are told so; they
//! ask for another flush, which covers everything applied before it.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use tokio::sync::watch;

/// How the flushes went so far.
#[derive(Clone, Copy, Debug, Default)]
struct Flushed {
    /// The last flush that succeeded: every change marked with this number
    /// or a lower one is durable.
    durable: u64,
    /// The last flush that failed.
    failed: u64,
    /// The writer thread is gone: no flush will come.
    writer_gone: bool,
}

struct Marks {
    /// The number the next flush takes.
    next: u64,
    /// Record key → the flush that makes its newest change durable.
    dirty: HashMap<Vec<u8>, u64>,
}

/// What a wait for a flush ended with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    Durable,
    /// The flush failed; a later one may still succeed.
    FlushFailed,
    WriterGone,
}

/// The marks and the durable watermark of one sled store.
pub(crate) struct Durability {
    marks: Mutex<Marks>,
    flushed: watch::Sender<Flushed>,
    /// Why the store cannot write any more, once it cannot.
    broken: watch::Sender<Option<String>>,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            marks: Mutex::new(Marks {
                next: 1,
                dirty: HashMap::new(),
            }),
            flushed: watch::Sender::new(Flushed::default()),
            broken: watch::Sender::new(None),
        }
    }
}

impl Durability {
    fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before `key`'s record changes: the change is not durable until the
    /// next flush succeeds.
    pub(crate) fn mark(&self, key: &[u8]) {
        let mut marks = self.marks();
        let next = marks.next;
        marks.dirty.insert(key.to_vec(), next);
    }

    /// Whether some change still waits for a successful flush.
    pub(crate) fn any_marked(&self) -> bool {
        !self.marks().dirty.is_empty()
    }

    /// A flush begins: returns its number. Every change marked before this
    /// is covered by it.
    pub(crate) fn begin_flush(&self) -> u64 {
        let mut marks = self.marks();
        let n = marks.next;
        marks.next += 1;
        n
    }

    /// Flush `n` ended: on success its changes are durable and unmarked.
    pub(crate) fn end_flush(&self, n: u64, ok: bool) {
        if ok {
            self.marks().dirty.retain(|_, flush| *flush > n);
        }
        self.flushed.send_modify(|f| {
            if ok {
                f.durable = f.durable.max(n);
            } else {
                f.failed = f.failed.max(n);
            }
        });
    }

    /// After reading `key`'s record: the flush to wait for before answering
    /// with it, if its last change is not durable yet.
    pub(crate) fn pending(&self, key: &[u8]) -> Option<u64> {
        self.marks().dirty.get(key).copied()
    }

    /// After reading several records (a listing, the census): the flush
    /// that makes every change applied so far durable, if one is needed.
    pub(crate) fn pending_any(&self) -> Option<u64> {
        self.marks().dirty.values().copied().max()
    }

    /// Waits until flush `n` (or a later one) has succeeded, or failed, or
    /// the writer is gone.
    pub(crate) async fn wait(&self, n: u64) -> Waited {
        let mut rx = self.flushed.subscribe();
        let Ok(f) = rx
            .wait_for(|f| f.durable >= n || f.failed >= n || f.writer_gone)
            .await
            .map(|f| *f)
        else {
            return Waited::WriterGone;
        };
        if f.durable >= n {
            Waited::Durable
        } else if f.failed >= n {
            Waited::FlushFailed
        } else {
            Waited::WriterGone
        }
    }

    /// The writer thread died: nothing will be written or flushed again.
    /// Waiting readers are let go, and the store reports itself broken.
    pub(crate) fn writer_died(&self, why: &str) {
        self.broken.send_replace(Some(why.to_owned()));
        self.flushed.send_modify(|f| f.writer_gone = true);
    }

    /// Why the store cannot write any more (`None` while it can).
    pub(crate) fn broken(&self) -> watch::Receiver<Option<String>> {
        self.broken.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mark_lasts_until_a_flush_that_covers_it_succeeds() {
        let d = Durability::default();
        assert_eq!(d.pending(b"k"), None);
        d.mark(b"k");
        let first = d.begin_flush();
        assert_eq!(d.pending(b"k"), Some(first));
        // Changed again during the flush: the next flush covers that.
        d.mark(b"k");
        d.end_flush(first, true);
        assert_eq!(d.wait(first).await, Waited::Durable);
        let second = d.pending(b"k").expect("still marked");
        assert!(second > first);
        let n = d.begin_flush();
        d.end_flush(n, false);
        assert_eq!(d.wait(second).await, Waited::FlushFailed);
        assert!(d.any_marked(), "a failed flush clears nothing");
        let n = d.begin_flush();
        d.end_flush(n, true);
        assert_eq!(d.wait(second).await, Waited::Durable);
        assert!(!d.any_marked());
        assert_eq!(d.pending_any(), None);
    }

    #[tokio::test]
    async fn waiters_are_let_go_when_the_writer_dies() {
        let d = std::sync::Arc::new(Durability::default());
        d.mark(b"k");
        let n = d.pending(b"k").unwrap();
        let waiting = tokio::spawn({
            let d = std::sync::Arc::clone(&d);
            async move { d.wait(n).await }
        });
        tokio::task::yield_now().await;
        d.writer_died("test");
        assert_eq!(waiting.await.unwrap(), Waited::WriterGone);
        assert_eq!(d.broken().borrow().as_deref(), Some("test"));
    }
}
