//! What an atomic multi-tree write costs in sled 0.34, beside plain inserts,
//! with nothing of tokend around it: one thread writing, one flush per
//! group of changes (group commit), as the store's writer thread does.
//!
//! Each change is a ~600-byte record; "with event" adds a ~600-byte event
//! under the next sequence number (and, for transactions, the last-sequence
//! key), as the event log does.
//!
//! Run: `cargo bench -p tokend-store --bench sled_atomicity`

use std::time::Instant;

use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionalTree},
};

const CHANGES: usize = 20_000;
const RECORDS: usize = 64;

struct Trees {
    db: sled::Db,
    records: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
    _dir: tempfile::TempDir,
}

fn open() -> Trees {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(Some(1000))
        .open()
        .expect("sled opens");
    Trees {
        records: db.open_tree("records").expect("tree"),
        events: db.open_tree("events").expect("tree"),
        meta: db.open_tree("meta").expect("tree"),
        db,
        _dir: dir,
    }
}

fn record(i: usize) -> (Vec<u8>, Vec<u8>) {
    (
        format!("conn-{}", i % RECORDS).into_bytes(),
        vec![(i % 251) as u8; 600],
    )
}

fn event() -> Vec<u8> {
    vec![7; 600]
}

type TxResult = Result<(), ConflictableTransactionError<()>>;

fn in_tx(
    r: &TransactionalTree,
    e: &TransactionalTree,
    m: &TransactionalTree,
    i: usize,
) -> TxResult {
    let (key, value) = record(i);
    let seq = (i as u64).to_be_bytes();
    r.insert(key, value)?;
    e.insert(&seq, event())?;
    m.insert(b"last_seq", &seq)?;
    Ok(())
}

/// Microseconds per change for one way of writing, `group` changes per flush.
fn run(way: &str, group: usize) -> f64 {
    let t = open();
    let tx = || (&t.records, &t.events, &t.meta);
    let start = Instant::now();
    for first in (0..CHANGES).step_by(group) {
        let changes = first..first + group;
        match way {
            "plain insert, no event" => {
                for i in changes {
                    let (k, v) = record(i);
                    t.records.insert(k, v).expect("insert");
                }
            }
            "plain inserts, record + event (not atomic)" => {
                for i in changes {
                    let (k, v) = record(i);
                    t.records.insert(k, v).expect("insert");
                    t.events
                        .insert((i as u64).to_be_bytes(), event())
                        .expect("insert");
                }
            }
            "one 3-tree transaction per change" => {
                for i in changes {
                    tx().transaction(|(r, e, m)| in_tx(r, e, m, i))
                        .expect("transaction");
                }
            }
            "one 3-tree transaction per group" => {
                tx().transaction(|(r, e, m)| {
                    for i in changes.clone() {
                        in_tx(r, e, m, i)?;
                    }
                    Ok(())
                })
                .expect("transaction");
            }
            "one apply_batch per change (record + event in one tree)" => {
                for i in changes {
                    let (k, v) = record(i);
                    let mut batch = sled::Batch::default();
                    batch.insert([b"r/".as_slice(), &k].concat(), v);
                    let mut seq = b"e/".to_vec();
                    seq.extend_from_slice(&(i as u64).to_be_bytes());
                    batch.insert(seq, event());
                    t.records.apply_batch(batch).expect("batch");
                }
            }
            _ => unreachable!("unknown way"),
        }
        t.db.flush().expect("flush");
    }
    start.elapsed().as_secs_f64() * 1e6 / CHANGES as f64
}

fn main() {
    const WAYS: [&str; 5] = [
        "plain insert, no event",
        "plain inserts, record + event (not atomic)",
        "one 3-tree transaction per change",
        "one apply_batch per change (record + event in one tree)",
        "one 3-tree transaction per group",
    ];
    println!("## sled 0.34: atomic multi-tree writes vs plain inserts");
    println!();
    println!("| way of writing | changes per flush | µs per change | vs plain insert, no event |");
    println!("|---|---|---|---|");
    for group in [4, 16] {
        // Alternating rounds; the median of three for each way.
        let mut times = vec![Vec::new(); WAYS.len()];
        for _ in 0..3 {
            for (i, way) in WAYS.iter().enumerate() {
                times[i].push(run(way, group));
            }
        }
        let medians: Vec<f64> = times
            .into_iter()
            .map(|mut t| {
                t.sort_by(f64::total_cmp);
                t[1]
            })
            .collect();
        for (way, us) in WAYS.iter().zip(&medians) {
            println!("| {way} | {group} | {us:.1} | {:.2}x |", us / medians[0]);
        }
    }
}
