//! Tests of `audit.rs`.

use super::*;

/// Issue 10, item 2. Invariant: an audit line's size does not grow
/// with what a caller sends.
#[test]
fn timestamps_are_rfc3339() {
    assert_eq!(
        format_rfc3339(Timestamp::from_unix_millis(1_795_504_100_223)),
        "2026-11-24T07:08:20.223Z"
    );
}

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

/// Issue 10, item 3. Invariant: a flood of one refusal costs two lines
/// per interval, and the counts add up to every refusal made.
#[test]
fn repeated_refusals_are_counted_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, writer) = AuditLog::open_with(
        &path,
        &AuditOptions::default(),
        Duration::from_secs(3600),
        tokend_core::Clock::system(),
    )
    .unwrap();
    let peer: SocketAddr = "10.0.0.7:4000".parse().unwrap();
    let status = crate::error::ServiceError::Unauthenticated("unknown api key").to_status();
    let now = Timestamp::from_unix_millis(1_000);
    for i in 0..10_000u16 {
        // A new connection per guess still counts as the same peer.
        let peer = SocketAddr::new(peer.ip(), 4000 + (i % 50));
        log.refusal(now, "unauthenticated", "-", Some(peer), &status);
    }
    log.refusal(
        now,
        "unauthenticated",
        "-",
        Some("10.0.0.8:1".parse().unwrap()),
        &status,
    );
    log.record(now, "svc", "GetToken", Some("c-1"), Ok(()));
    log.record(now, "svc", "GetToken", Some("c-1"), Ok(()));
    drop(log);
    writer.join();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    let from_7: u64 = lines
        .iter()
        .filter(|l| {
            l["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("10.0.0.7"))
        })
        .count() as u64;
    let repeated: u64 = lines.iter().filter_map(|l| l["repeated"].as_u64()).sum();
    assert_eq!(repeated, 9_999, "{text}");
    assert_eq!(from_7, 2, "a first line and a summary line: {text}");
    let ok = lines.iter().filter(|l| l["outcome"] == "ok").count();
    assert_eq!(ok, 2, "successful calls are never aggregated");
}

/// Issue 24, item 7. Invariant: refusals for different connections are
/// never folded together: each connection probed is named in its own
/// line, and repeats of one are counted on a summary line naming it.
#[test]
fn each_refused_connection_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, writer) = AuditLog::open_with(
        &path,
        &AuditOptions::default(),
        Duration::from_secs(3600),
        tokend_core::Clock::system(),
    )
    .unwrap();
    let now = Timestamp::from_unix_millis(1_000);
    let denied = || Err(("permission_denied", "PERMISSION_DENIED".to_owned()));
    for id in ["tenant-b-1", "tenant-b-2", "tenant-b-1", "tenant-b-1"] {
        log.record(now, "tenant-a", "GetToken", Some(id), denied());
    }
    drop(log);
    writer.join();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = |id: &str| {
        lines
            .iter()
            .filter(|l| l["connection_id"] == id && l["repeated"].is_null())
            .count()
    };
    assert_eq!(first("tenant-b-1"), 1, "{text}");
    assert_eq!(first("tenant-b-2"), 1, "{text}");
    let summary: Vec<_> = lines.iter().filter(|l| !l["repeated"].is_null()).collect();
    assert_eq!(summary.len(), 1, "{text}");
    assert_eq!(summary[0]["connection_id"], "tenant-b-1");
    assert_eq!(summary[0]["repeated"], 2);
}

/// Issue 15. Invariants: the file is rotated at `max_bytes` (a line
/// never split), `keep` rotated files are kept with the newest as `.1`,
/// and no line is lost or doubled in what is kept.
#[test]
fn the_file_rotates_by_size_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let options = AuditOptions {
        max_bytes: 2_000,
        keep: 2,
        stdout: false,
    };
    let (log, writer) = AuditLog::open_with(
        &path,
        &options,
        Duration::from_secs(3600),
        tokend_core::Clock::system(),
    )
    .unwrap();
    for i in 0..100 {
        log.record(
            Timestamp::from_unix_millis(1_000),
            "svc",
            "GetToken",
            Some(&format!("c-{i:03}")),
            Ok(()),
        );
    }
    drop(log);
    writer.join();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    assert!(!rotated(&path, 3).exists(), "only 2 rotated files kept");
    let mut ids = Vec::new();
    for file in [rotated(&path, 2), rotated(&path, 1), path.clone()] {
        let text = read(&file);
        assert!(text.len() as u64 <= options.max_bytes, "{}", file.display());
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(v["connection_id"].as_str().unwrap().to_owned());
        }
    }
    // The kept files hold the newest records, in order, without gaps.
    let first: usize = ids[0][2..].parse().unwrap();
    let expected: Vec<String> = (first..100).map(|i| format!("c-{i:03}")).collect();
    assert_eq!(ids, expected);
    assert!(first > 0, "something was rotated away");
}
