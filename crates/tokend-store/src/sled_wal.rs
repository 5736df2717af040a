//! The sled store's write-ahead log of puts: each put's sealed record is
//! appended to a file of its own, in the caller's poll before the put goes
//! to the writer thread, fdatasync'd by a blocking thread while sled takes
//! the put, and replayed at open.
//!
//! Why: a strict provider kills the old refresh token as it answers, and
//! the new one is lost if the process dies before it is on disk. Through
//! sled alone, a put waits for the writer thread to finish the batch it is
//! flushing, then for its own batch's flush: measured under the chaos load
//! (`tokend_refresh_window_seconds`), 3.3 ms on average in a release build
//! at 1,000 refreshes/s, and 23 ms in a debug build on a loaded machine,
//! against 0.24 ms and 1 ms for the append here.
//!
//! Here the grant is safe from a SIGKILL once its append returns (the page
//! cache outlives the process), and from a power cut once either the
//! fdatasync or sled's flush is over; the put goes on through sled as
//! before: callers still hear of a put only once sled has flushed it, so
//! nothing else changes.
//!
//! A replayed entry is an ordinary put (same revision, fence and event
//! checks): one whose put landed, or lost to another write, is refused and
//! dropped. Only updates are logged (a refreshed grant always is one): an
//! update replayed after a delete, or after a re-creation (a new
//! incarnation), is refused too, where a create would bring a deleted
//! connection back. Segments roll over at [`SEGMENT_BYTES`] and are
//! deleted once every put they hold is settled (flushed by sled, or
//! refused); the ones found at open are deleted once replayed and flushed.
//!
//! A frame: `TKW1`, the payload's length (u32 LE), its FNV-1a 64 (u64 LE),
//! the payload: the key's length (u32 LE) and the key, the expected
//! revision and the fence (each a presence byte and a u64 LE), then the
//! sealed record. A frame cut off by a crash, or damaged, ends its segment.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

const MAGIC: &[u8; 4] = b"TKW1";
const HEADER: usize = 4 + 4 + 8;
/// A segment rolls over past this size (some fifty puts): a crash leaves
/// little to replay, as segments go once their puts settle.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 10;
/// No record is anywhere near this; a length above it is damage.
const MAX_PAYLOAD: usize = 16 << 20;

/// One put, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Vec<u8>,
    pub expected: Option<u64>,
    pub fence: Option<u64>,
    /// The record, sealed (`codec::encode`): no secret in plaintext.
    pub record: Vec<u8>,
}

/// Which segment holds an appended entry, to settle it.
#[derive(Debug)]
pub(crate) struct Ticket(u64);

struct Segments {
    /// The segment appended to.
    active: u64,
    file: Arc<File>,
    bytes: u64,
    /// Entries appended and not yet settled, per segment.
    outstanding: BTreeMap<u64, usize>,
}

/// The log of one store.
pub(crate) struct WriteAhead {
    dir: PathBuf,
    segments: Mutex<Segments>,
}

/// What a crash left: entries to replay, oldest first, and the segments
/// holding them, deleted once the replay is flushed.
pub(crate) struct Leftover {
    pub entries: Vec<Entry>,
    files: Vec<PathBuf>,
}

impl Leftover {
    /// The replay is durable: the old segments go.
    pub(crate) fn done(self) -> io::Result<()> {
        for file in self.files {
            std::fs::remove_file(file)?;
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.wal"))
}

/// Creates segment `n`; its name is durable once `dir` is synced.
fn create_segment(dir: &Path, n: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An entry written to the log (safe from a crash of the process), not
/// yet on disk.
pub(crate) struct Written {
    ticket: Ticket,
    file: Arc<File>,
    /// The entry opened a segment, whose name must reach the disk too.
    new_segment: bool,
    /// When the put began, for the window's steps.
    started: Instant,
}

impl Written {
    pub(crate) fn timed_from(self, started: Instant) -> Self {
        Written { started, ..self }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Blocking: makes the entry durable (fdatasync). On failure the entry
    /// is settled: the put is then as safe as sled makes it.
    pub(crate) fn sync(self, log: &WriteAhead) -> io::Result<Ticket> {
        let synced = if self.new_segment {
            sync_dir(&log.dir)
        } else {
            Ok(())
        }
        .and_then(|()| self.file.sync_data());
        match synced {
            Ok(()) => Ok(self.ticket),
            Err(e) => {
                log.settle(self.ticket);
                Err(e)
            }
        }
    }
}

impl WriteAhead {
    /// Opens the log in `dir` (created if need be), returning what an
    /// earlier run left in it.
    pub(crate) fn open(dir: &Path) -> io::Result<(Self, Leftover)> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let n = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = n {
                found.push((n, path));
            }
        }
        found.sort();
        let mut entries = Vec::new();
        for (_, path) in &found {
            entries.extend(decode_all(&std::fs::read(path)?));
        }
        let active = found.last().map_or(1, |(n, _)| n + 1);
        let file = create_segment(dir, active)?;
        sync_dir(dir)?;
        let log = WriteAhead {
            dir: dir.to_owned(),
            segments: Mutex::new(Segments {
                active,
                file: Arc::new(file),
                bytes: 0,
                outstanding: BTreeMap::new(),
            }),
        };
        let files = found.into_iter().map(|(_, p)| p).collect();
        Ok((log, Leftover { entries, files }))
    }

    fn segments(&self) -> MutexGuard<'_, Segments> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entry` in one write, without syncing: from then on it
    /// survives a crash of the process (the page cache outlives it); see
    /// [`Written::sync`] for a power cut. A write of a kilobyte or two to
    /// the page cache: the caller may run it on the async runtime, in the
    /// very poll that read the provider's answer.
    pub(crate) fn write(&self, entry: &Entry) -> io::Result<Written> {
        let frame = encode(entry);
        let mut s = self.segments();
        let new_segment = s.bytes >= SEGMENT_BYTES;
        if new_segment {
            let next = s.active + 1;
            s.file = Arc::new(create_segment(&self.dir, next)?);
            s.active = next;
            s.bytes = 0;
            self.remove_settled(&mut s);
        }
        // One write, under the lock: frames never interleave.
        (&*s.file).write_all(&frame)?;
        s.bytes += frame.len() as u64;
        let active = s.active;
        *s.outstanding.entry(active).or_default() += 1;
        Ok(Written {
            ticket: Ticket(active),
            file: Arc::clone(&s.file),
            new_segment,
            started: Instant::now(),
        })
    }

    /// Writes and syncs `entry`.
    #[cfg(test)]
    fn append(&self, entry: &Entry) -> io::Result<Ticket> {
        self.write(entry)?.sync(self)
    }

    /// The put logged under `ticket` no longer needs the log (sled has it
    /// flushed, or refused it for good).
    pub(crate) fn settle(&self, ticket: Ticket) {
        let mut s = self.segments();
        if let Some(n) = s.outstanding.get_mut(&ticket.0) {
            *n = n.saturating_sub(1);
        }
        self.remove_settled(&mut s);
    }

    /// Deletes the segments before the active one with nothing left to
    /// settle.
    fn remove_settled(&self, s: &mut Segments) {
        let active = s.active;
        let done: Vec<u64> = s
            .outstanding
            .iter()
            .filter(|(n, left)| **n < active && **left == 0)
            .map(|(n, _)| *n)
            .collect();
        for n in done {
            s.outstanding.remove(&n);
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, n)) {
                tracing::warn!(segment = n, error = %e, "cannot remove a settled write-ahead segment");
            }
        }
    }

    /// How many segment files the log holds now.
    #[cfg(test)]
    pub(crate) fn segment_files(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|d| d.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    }
}

/// FNV-1a, 64 bits: finds a torn or damaged frame (not an attacker's: the
/// sealed record inside is authenticated on its own).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(entry: &Entry) -> Vec<u8> {
    let mut payload = Vec::with_capacity(entry.key.len() + entry.record.len() + 24);
    payload.extend_from_slice(&(entry.key.len() as u32).to_le_bytes());
    payload.extend_from_slice(&entry.key);
    for value in [entry.expected, entry.fence] {
        payload.push(u8::from(value.is_some()));
        payload.extend_from_slice(&value.unwrap_or(0).to_le_bytes());
    }
    payload.extend_from_slice(&entry.record);
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&checksum(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Reads `n` bytes off the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
}

fn take_u64(bytes: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?))
}

fn take_optional(bytes: &mut &[u8]) -> Option<Option<u64>> {
    let present = take(bytes, 1)?[0];
    let value = take_u64(bytes)?;
    match present {
        0 => Some(None),
        1 => Some(Some(value)),
        _ => None,
    }
}

fn decode_payload(mut payload: &[u8]) -> Option<Entry> {
    let key_len = take_u32(&mut payload)? as usize;
    let key = take(&mut payload, key_len)?.to_vec();
    let expected = take_optional(&mut payload)?;
    let fence = take_optional(&mut payload)?;
    Some(Entry {
        key,
        expected,
        fence,
        record: payload.to_vec(),
    })
}

/// Every whole frame of a segment, up to the first one that is not.
fn decode_all(mut bytes: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    loop {
        let frame = (|| {
            if take(&mut bytes, 4)? != MAGIC {
                return None;
            }
            let len = take_u32(&mut bytes)? as usize;
            let sum = take_u64(&mut bytes)?;
            if len > MAX_PAYLOAD {
                return None;
            }
            let payload = take(&mut bytes, len)?;
            if checksum(payload) != sum {
                return None;
            }
            decode_payload(payload)
        })();
        match frame {
            Some(entry) => out.push(entry),
            None => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        Entry {
            key: format!("conn-{i}").into_bytes(),
            expected: (i > 0).then_some(i),
            fence: Some(i * 2),
            record: vec![i as u8; 300],
        }
    }

    #[test]
    fn entries_survive_reopening_in_order_and_a_torn_tail_ends_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, left) = WriteAhead::open(dir.path()).unwrap();
            assert!(left.entries.is_empty());
            for i in 0..3 {
                log.append(&entry(i)).unwrap();
            }
        }
        // A crash in the middle of a fourth append.
        let segment = segment_path(dir.path(), 1);
        let mut torn = encode(&entry(3));
        torn.truncate(torn.len() - 7);
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let (log, left) = WriteAhead::open(dir.path()).unwrap();
        assert_eq!(left.entries, vec![entry(0), entry(1), entry(2)]);
        left.done().unwrap();
        assert_eq!(log.segment_files(), 1, "only the new active segment");
        let (_, left) = WriteAhead::open(dir.path()).unwrap();
        assert!(left.entries.is_empty());
    }

    #[test]
    fn a_segment_goes_once_every_put_in_it_is_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = WriteAhead::open(dir.path()).unwrap();
        let big = Entry {
            record: vec![7; SEGMENT_BYTES as usize],
            ..entry(1)
        };
        let first = log.append(&big).unwrap();
        let second = log.append(&entry(2)).unwrap();
        assert_eq!(log.segment_files(), 2, "rolled over");
        log.settle(second);
        assert_eq!(log.segment_files(), 2, "the first still holds a put");
        log.settle(first);
        assert_eq!(log.segment_files(), 1);
    }

    #[test]
    fn damage_never_panics() {
        let frame = encode(&entry(5));
        for cut in 0..frame.len() {
            assert!(decode_all(&frame[..cut]).is_empty());
        }
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x5a;
            assert!(decode_all(&bad).len() <= 1);
        }
        assert_eq!(decode_all(&frame), vec![entry(5)]);
    }
}
