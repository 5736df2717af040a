//! The audit log: one JSON line per RPC (who, what, which connection,
//! outcome, when), appended by a dedicated thread. Never holds a token.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::Path,
    sync::mpsc,
};

use serde::Serialize;
use tokend_core::Timestamp;

/// One audited call.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds by tokend's clock.
    pub ts: i64,
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
}

/// Appends audit records without blocking the async runtime: a bounded
/// channel to a writer thread that flushes after every batch.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::SyncSender<AuditRecord>>,
}

impl AuditLog {
    /// No audit log.
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Appends to `path` (created 0600 if absent; opened in append mode, so
    /// existing lines are never rewritten). The writer thread ends once every
    /// clone of the log is dropped; join it with [`AuditWriter::join`].
    pub fn open(path: &Path) -> std::io::Result<(Self, AuditWriter)> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        let (tx, rx) = mpsc::sync_channel::<AuditRecord>(4096);
        let thread = std::thread::Builder::new()
            .name("tokend-audit".into())
            .spawn(move || {
                let mut out = BufWriter::new(file);
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    for record in batch {
                        if let Ok(line) = serde_json::to_string(&record) {
                            let _ = writeln!(out, "{line}");
                        }
                    }
                    if let Err(e) = out.flush() {
                        tracing::error!(error = %e, "writing the audit log failed");
                    }
                }
            })?;
        Ok((Self { tx: Some(tx) }, AuditWriter { thread }))
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
        if self.tx.is_none() {
            return;
        }
        let (outcome, reason) = match result {
            Ok(()) => ("ok".to_owned(), None),
            Err((code, reason)) => (code.to_owned(), Some(reason)),
        };
        let record = AuditRecord {
            ts: at.unix_millis(),
            caller: caller.to_owned(),
            rpc,
            connection_id: connection_id.map(bounded),
            outcome,
            reason,
            peer: None,
        };
        self.send(record);
    }

    /// Records a call refused before it reached a service (bad or missing
    /// credentials, the caller's rate limit): who it claimed to be, from
    /// where, and why.
    pub fn refusal(
        &self,
        at: Timestamp,
        caller: &str,
        peer: Option<std::net::SocketAddr>,
        status: &tonic::Status,
    ) {
        if self.tx.is_none() {
            return;
        }
        let reason = tonic_types::StatusExt::get_details_error_info(status)
            .map(|i| i.reason)
            .unwrap_or_default();
        self.send(AuditRecord {
            ts: at.unix_millis(),
            caller: bounded(caller),
            rpc: "-",
            connection_id: None,
            outcome: crate::service::code_name(status.code()).to_owned(),
            reason: Some(reason),
            peer: peer.map(|p| p.to_string()),
        });
    }

    fn send(&self, record: AuditRecord) {
        let Some(tx) = &self.tx else { return };
        let rpc = record.rpc;
        if tx.try_send(record).is_err() {
            tracing::error!(rpc, "audit log queue full or closed; a record was dropped");
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
mod tests {
    use super::*;

    /// Issue 10, item 2. Invariant: an audit line's size does not grow
    /// with what a caller sends.
    #[test]
    fn unvalidated_fields_are_cut_and_marked() {
        assert_eq!(bounded("sandbox-1"), "sandbox-1");
        let long = "x".repeat(64 * 1024);
        let cut = bounded(&long);
        assert!(cut.len() < 200, "{}", cut.len());
        assert!(cut.ends_with(&format!("[{} bytes cut]", 64 * 1024 - 128)));
        let multibyte = "é".repeat(100);
        assert!(bounded(&multibyte).starts_with(&"é".repeat(64)));
    }
}
