//! Issue 25, item 5 with real processes: a `tokend serve` restarted without
//! the key file its records were sealed with refuses to start, names the
//! file it expected, and leaves no new key file behind.

use std::{
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use tokend_proto::v1 as pb;

use crate::process::Served;

/// Waits for `child` to exit, at most `limit`; a child still running then
/// is killed and reported as `None` (it started serving).
async fn exited_within(mut child: Child, limit: Duration) -> Option<Output> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Invariant: a restart without its key file refuses to start (exit code
/// non-zero, a message naming the key file expected and the key its
/// records need) instead of making a fresh key, sealing new installs with
/// it and overwriting the records it cannot read; it writes no key file, so
/// putting the old one back serves every connection as before. Before,
/// the restart created a new key file and served, every record
/// `DATA_LOSS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_its_key_file_refuses_naming_the_file() {
    let mut served = Served::start(&[]).await;
    let issued = served.install("kept", 3600).await;
    served.kill();
    let key_file = served.data_dir().join("tokend.keys");
    let saved = served.dir.path().join("tokend.keys.backup");
    std::fs::rename(&key_file, &saved).expect("move the key file away");

    let child = served
        .serve_command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokend serve");
    let out = exited_within(child, Duration::from_secs(30))
        .await
        .expect("tokend served without the key file that sealed its records");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&key_file.display().to_string()),
        "names the key file: {stderr}"
    );
    assert!(stderr.contains("sealed with key 1"), "{stderr}");
    assert!(!key_file.exists(), "no new key file was left behind");

    // The right key file back: the connection serves its token.
    std::fs::rename(&saved, &key_file).expect("put it back");
    let mut child = served
        .serve_command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tokend serve");
    let mut client = served.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match client
            .get_token(pb::GetTokenRequest {
                connection_id: "kept".into(),
                min_ttl_seconds: 0,
            })
            .await
        {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                assert!(Instant::now() < deadline, "not serving: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        token.token.expect("token").access_token,
        issued.access_token
    );
    let _ = child.kill();
    let _ = child.wait();
}
