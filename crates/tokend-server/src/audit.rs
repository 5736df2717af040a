//! The audit log: one JSON line per RPC (who, what, which connection,
//! outcome, when), appended by a dedicated thread. Never holds a token.
//!
//! A flood cannot be turned against the disk: unvalidated fields are cut
//! to 128 bytes, and a refusal repeated by the same caller from the same
//! address for the same connection within one interval is written once,
//! then once more at the end of the interval with the count (`repeated`).
//! Each distinct connection a caller is refused is named at least once.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::{BufWriter, Write},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokend_core::Timestamp;

/// One audited call, or the count of a repeated refusal.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    /// When, by tokend's clock: RFC 3339 in UTC with milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub ts: Timestamp,
    /// The caller's identity name.
    pub caller: String,
    pub rpc: &'static str,
    pub connection_id: Option<String>,
    /// `ok` or the gRPC code name.
    pub outcome: String,
    /// The ErrorInfo reason, when the call failed.
    pub reason: Option<String>,
    /// The client's address, for calls refused before a caller was known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// On an interval's summary line: how many more times this refusal was
    /// made since its first line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
}

fn rfc3339<S: serde::Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ts))
}

/// `2026-11-24T07:08:20.223Z`.
pub fn format_rfc3339(ts: Timestamp) -> String {
    let nanos = i128::from(ts.unix_millis()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ts.unix_millis().to_string())
}

/// How often repeated refusals are summed up.
pub const AGGREGATION_INTERVAL: Duration = Duration::from_secs(10);

/// How often the writer thread wakes to write what was queued. Callers
/// never wake it: at 30,000 calls a second, a wake per record cost a
/// context switch per call on a 2-core machine.
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// Records the queue holds between two writes: 100 ms of 40,000 calls/s.
const QUEUE: usize = 4096;

pub use tokend_config::audit::AuditOptions;

/// Distinct refusals tracked per interval; past that, refusals are only
/// counted in one overflow line.
const MAX_TRACKED: usize = 4096;

/// What makes two refusals "the same". The targeted connection is part
/// of it: a probe of another tenant's connections leaves one line per
/// connection probed, not one for the first.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    caller: String,
    peer: Option<IpAddr>,
    rpc: &'static str,
    connection_id: Option<String>,
    outcome: String,
    reason: Option<String>,
}

/// The refusals of the current interval.
#[derive(Default)]
struct Window {
    /// Each refusal seen, with how often it repeated after its first line.
    repeats: HashMap<Key, u64>,
    /// Refusals not itemised because `repeats` was full.
    overflow: u64,
}

struct Shared {
    tx: mpsc::SyncSender<AuditRecord>,
    window: Arc<Mutex<Window>>,
    /// Records the full queue could not take.
    dropped: Arc<AtomicU64>,
    /// The same, never reset: `/metrics`.
    dropped_total: prometheus_client::metrics::counter::Counter,
}

/// Appends audit records without blocking the async runtime: a bounded
/// channel to a writer thread that flushes after every batch.
#[derive(Clone)]
pub struct AuditLog {
    shared: Option<Arc<Shared>>,
}

impl AuditLog {
    /// No audit log.
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// Records dropped because the writer's queue was full, since start.
    pub fn dropped_total(&self) -> prometheus_client::metrics::counter::Counter {
        self.shared
            .as_ref()
            .map(|s| s.dropped_total.clone())
            .unwrap_or_default()
    }

    /// Appends to `path` (created 0600 if absent; opened in append mode, so
    /// existing lines are never rewritten). The writer thread ends once every
    /// clone of the log is dropped; join it with [`AuditWriter::join`].
    pub fn open(path: &Path, options: &AuditOptions) -> std::io::Result<(Self, AuditWriter)> {
        Self::open_with(
            path,
            options,
            AGGREGATION_INTERVAL,
            tokend_core::Clock::system(),
        )
    }

    /// [`AuditLog::open`], summing repeated refusals every `interval` and
    /// stamping the sums with `clock`.
    pub fn open_with(
        path: &Path,
        options: &AuditOptions,
        interval: Duration,
        clock: tokend_core::Clock,
    ) -> std::io::Result<(Self, AuditWriter)> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        let (tx, rx) = mpsc::sync_channel::<AuditRecord>(QUEUE);
        let shared = Arc::new(Shared {
            tx,
            window: Arc::default(),
            dropped: Arc::default(),
            dropped_total: Default::default(),
        });
        let writer = Writer {
            out: BufWriter::new(file),
            path: path.to_owned(),
            written,
            options: options.clone(),
            stdout: options.stdout.then(std::io::stdout),
            window: Arc::clone(&shared.window),
            dropped: Arc::clone(&shared.dropped),
            interval,
            clock,
        };
        let thread = std::thread::Builder::new()
            .name("tokend-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Self {
                shared: Some(shared),
            },
            AuditWriter { thread },
        ))
    }

    /// Records one call.
    pub fn record(
        &self,
        at: Timestamp,
        caller: &str,
        rpc: &'static str,
        connection_id: Option<&str>,
        result: Result<(), (&str, String)>,
    ) {
        if self.shared.is_none() {
            return;
        }
        let (outcome, reason) = match result {
            Ok(()) => ("ok".to_owned(), None),
            Err((code, reason)) => (code.to_owned(), Some(reason)),
        };
        let record = AuditRecord {
            ts: at,
            caller: caller.to_owned(),
            rpc,
            connection_id: connection_id.map(bounded),
            outcome,
            reason,
            peer: None,
            repeated: None,
        };
        self.send(record, None);
    }

    /// Records a call refused before it reached a service (bad or missing
    /// credentials, the caller's rate limit, an undecodable or oversized
    /// request, a transport bound): who it claimed to be, from where, and
    /// why.
    pub fn refusal(
        &self,
        at: Timestamp,
        caller: &str,
        rpc: &'static str,
        peer: Option<SocketAddr>,
        status: &tonic::Status,
    ) {
        if self.shared.is_none() {
            return;
        }
        let reason = tonic_types::StatusExt::get_details_error_info(status)
            .map(|i| i.reason)
            .unwrap_or_default();
        self.send(
            AuditRecord {
                ts: at,
                caller: bounded(caller),
                rpc,
                connection_id: None,
                outcome: crate::error::code_name(status.code()).to_owned(),
                reason: Some(reason),
                peer: peer.map(|p| p.to_string()),
                repeated: None,
            },
            peer.map(|p| p.ip()),
        );
    }

    /// Records a request refused on the admin listener (a failed or
    /// rate-limited console login, a console request naming another host),
    /// where no gRPC status exists: `outcome` is the gRPC code name that
    /// would say it, `reason` the refusal's reason. Grouped and counted like
    /// every refusal.
    pub fn admin_refusal(
        &self,
        at: Timestamp,
        caller: &str,
        peer: SocketAddr,
        outcome: &'static str,
        reason: &'static str,
    ) {
        if self.shared.is_none() {
            return;
        }
        self.send(
            AuditRecord {
                ts: at,
                caller: bounded(caller),
                rpc: "console",
                connection_id: None,
                outcome: outcome.to_owned(),
                reason: Some(reason.to_owned()),
                peer: Some(peer.to_string()),
                repeated: None,
            },
            Some(peer.ip()),
        );
    }

    /// Queues `record`, unless it repeats a refusal already written in this
    /// interval: then it is only counted.
    fn send(&self, record: AuditRecord, peer: Option<IpAddr>) {
        let Some(shared) = &self.shared else { return };
        if record.outcome != "ok" {
            let key = Key {
                caller: record.caller.clone(),
                peer,
                rpc: record.rpc,
                connection_id: record.connection_id.clone(),
                outcome: record.outcome.clone(),
                reason: record.reason.clone(),
            };
            let mut window = shared.window.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = window.repeats.get_mut(&key) {
                *count += 1;
                return;
            }
            if window.repeats.len() >= MAX_TRACKED {
                window.overflow += 1;
                return;
            }
            window.repeats.insert(key, 0);
        }
        if shared.tx.try_send(record).is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            shared.dropped_total.inc();
        }
    }
}

/// Longest unvalidated field written as is; longer ones are cut here.
const MAX_LOGGED_FIELD: usize = 128;

/// `raw` cut to [`MAX_LOGGED_FIELD`] bytes (on a character boundary) and
/// marked, so a caller cannot turn the audit log against the disk with
/// 64 KiB ids.
fn bounded(raw: &str) -> String {
    if raw.len() <= MAX_LOGGED_FIELD {
        return raw.to_owned();
    }
    let mut end = MAX_LOGGED_FIELD;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &raw[..end], raw.len() - end)
}

/// Opens `path` for appending, created 0600 if absent: existing lines are
/// never rewritten.
fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// `audit.log` → `audit.log.1`, `.1` → `.2`, …, the oldest past `keep`
/// removed.
fn rotated(path: &Path, n: usize) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    name.into()
}

/// The writer thread's state.
struct Writer {
    out: BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    /// Bytes in the current file.
    written: u64,
    options: AuditOptions,
    stdout: Option<std::io::Stdout>,
    window: Arc<Mutex<Window>>,
    dropped: Arc<AtomicU64>,
    interval: Duration,
    clock: tokend_core::Clock,
}

impl Writer {
    /// Every [`WRITE_EVERY`], writes what was queued, and the interval's
    /// summary at each tick, until the last `AuditLog` is dropped.
    fn run(mut self, rx: mpsc::Receiver<AuditRecord>) {
        let mut next_tick = Instant::now() + self.interval;
        loop {
            // A sleep, not a blocking receive: senders find no waiting
            // receiver to wake, so queuing a record is a few atomics.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(WRITE_EVERY.min(self.interval));
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(record) => self.write(&record),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                break;
            }
            if Instant::now() >= next_tick {
                self.summarise();
                next_tick = Instant::now() + self.interval;
            }
            self.flush();
        }
        // The last interval's counts, as the log closes.
        self.summarise();
        self.flush();
    }

    fn write(&mut self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_string(record) else {
            return;
        };
        line.push('\n');
        if let Some(out) = &mut self.stdout {
            let _ = out.write_all(line.as_bytes());
        }
        if self.written > 0 && self.written + line.len() as u64 > self.options.max_bytes {
            self.rotate();
        }
        if self.out.write_all(line.as_bytes()).is_ok() {
            self.written += line.len() as u64;
        }
    }

    /// Starts a new file; the full one becomes `.1`.
    fn rotate(&mut self) {
        self.flush();
        if self.options.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, self.options.keep));
            for n in (1..self.options.keep).rev() {
                let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
            }
            if let Err(e) = std::fs::rename(&self.path, rotated(&self.path, 1)) {
                tracing::error!(error = %e, path = %self.path.display(), "cannot rotate the audit log; appending to it");
                return;
            }
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.out = BufWriter::new(file);
                self.written = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot open a new audit log; appending to the rotated one")
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "writing the audit log failed");
        }
        if let Some(out) = &mut self.stdout {
            let _ = out.flush();
        }
    }

    /// Ends the interval: one line per refusal that repeated, with the
    /// count, and one for refusals too many to itemise.
    fn summarise(&mut self) {
        let window = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let ts = self.clock.now();
        for (key, count) in window.repeats {
            if count == 0 {
                continue;
            }
            self.write(&AuditRecord {
                ts,
                caller: key.caller,
                rpc: key.rpc,
                connection_id: key.connection_id,
                outcome: key.outcome,
                reason: key.reason,
                peer: key.peer.map(|p| p.to_string()),
                repeated: Some(count),
            });
        }
        if window.overflow > 0 {
            self.write(&AuditRecord {
                ts,
                caller: "-".into(),
                rpc: "-",
                connection_id: None,
                outcome: "refusals_not_itemised".into(),
                reason: None,
                peer: None,
                repeated: Some(window.overflow),
            });
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::error!(
                dropped,
                "the audit log queue was full; records were dropped"
            );
        }
    }
}

/// The audit log's writer thread, owned by whoever shuts the server down.
pub struct AuditWriter {
    thread: std::thread::JoinHandle<()>,
}

impl AuditWriter {
    /// Waits until every queued record is written. Call after the last
    /// `AuditLog` clone is dropped, or it waits for that.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the audit log writer panicked");
        }
    }
}

#[cfg(test)]
mod tests;
