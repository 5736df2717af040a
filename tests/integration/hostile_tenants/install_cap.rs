//! The install cap: abandoned installs are capped per caller, and the cap's
//! key is range-checked.

use super::*;

/// Established TCP connections to `port` on 127.0.0.1 from this process's
/// network namespace (tokend's sockets to the sandbox).
fn sockets_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "01"
                && fields[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// Issue 24, install cap. Invariant: a caller that abandons installs to a
/// provider that does not answer holds at most `max_installs_per_caller`
/// of them (and as many sockets); the rest are RESOURCE_EXHAUSTED with
/// RetryInfo. Another tenant still installs. The abandoned installs still
/// finish and persist their grants, and only then free their slots.
#[tokio::test]
async fn hostile_tenants_abandoned_installs_are_capped_per_caller() {
    const CAP: usize = 4;
    const BURST: usize = 40;
    let server = TestServer::start_with(Options {
        identities: vec![
            identity(
                "tenant-a",
                "key-a",
                &[Permission::Install, Permission::Tokens],
                &["tenant-a-*"],
            ),
            identity(
                "tenant-b",
                "key-b",
                &[Permission::Install, Permission::Tokens],
                &["tenant-b-*"],
            ),
        ],
        client_key: Some("key-a".into()),
        limits: Some(tokend_server::limits::Limits {
            max_installs_per_caller: CAP,
            ..Default::default()
        }),
        ..background_off()
    })
    .await;
    let port = server.sandbox.addr().port();
    // The provider holds every token request for 8 s.
    server.sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(8),
        count: BURST as u32,
    });
    let tenant_a = server.client_with_key(Some("key-a")).await;
    let calls = (0..BURST).map(|i| {
        let mut client = tenant_a.clone();
        let code = server
            .sandbox
            .issue_code(&format!("acct-a-{i}"), &["crm"], None, None);
        async move {
            let mut request = Request::new(code_request(
                &format!("tenant-a-{i}"),
                &format!("acct-a-{i}"),
                &code,
            ));
            // The caller gives up long before the provider answers.
            request.set_timeout(Duration::from_millis(500));
            client.install(request).await
        }
    });
    let results = futures::future::join_all(calls).await;
    let refused: Vec<&tonic::Status> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| e.code() == Code::ResourceExhausted)
        .collect();
    let sockets = sockets_to(port);
    eprintln!(
        "FIGURE install cap: {BURST} abandoned installs, cap {CAP}: {} refused, {sockets} sockets to the provider",
        refused.len()
    );
    assert_eq!(refused.len(), BURST - CAP, "{results:?}");
    for e in &refused {
        assert_eq!(reason(e), "TOO_MANY_INSTALLS");
        assert!(e.get_details_retry_info().is_some(), "RetryInfo: {e:?}");
    }
    assert!(sockets <= CAP + 1, "{sockets} sockets to the provider");
    // The abandoned ones still hold A's slots...
    let mut a = tenant_a.clone();
    let code = server.sandbox.issue_code("acct-a-x", &["crm"], None, None);
    let err = a
        .install(code_request("tenant-a-x", "acct-a-x", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "TOO_MANY_INSTALLS");
    // ...while tenant B is not locked out.
    server.sandbox.clear_faults();
    let mut b = server.client_with_key(Some("key-b")).await;
    let code_b = server.sandbox.issue_code("acct-b-1", &["crm"], None, None);
    b.install(code_request("tenant-b-1", "acct-b-1", &code_b))
        .await
        .expect("another tenant installs");
    // The abandoned installs finish: their grants are kept, then A's slots
    // are free again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let page = a
            .list_connections(pb::ListConnectionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        if page.connections.len() >= CAP || Instant::now() > deadline {
            break page.connections;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        finished.len(),
        CAP,
        "every admitted install persisted its grant"
    );
    let code = server.sandbox.issue_code("acct-a-y", &["crm"], None, None);
    let mut freed = false;
    for _ in 0..100 {
        match a
            .install(code_request("tenant-a-y", "acct-a-y", &code))
            .await
        {
            Ok(_) => {
                freed = true;
                break;
            }
            Err(e) if reason(&e) == "TOO_MANY_INSTALLS" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(freed, "the slots came back once the installs ended");
}

/// Issue 24, install cap. Invariant: `max_installs_per_caller` outside
/// 1..=10000 is refused, with the key named, by `check-config` and by
/// `serve` (which then never listens); a value inside it is accepted.
#[test]
fn hostile_tenants_the_install_cap_key_is_range_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tokend = |args: &[&str], config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("TOKEND_LISTEN")
            .output()
            .unwrap()
    };
    for bad in ["0", "10001"] {
        let config = dir.path().join(format!("bad-{bad}.toml"));
        std::fs::write(
            &config,
            format!("[limits]\nmax_installs_per_caller = {bad}\n"),
        )
        .unwrap();
        let out = tokend(&["check-config"], &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "limits.max_installs_per_caller = {bad} is out of range: allowed 1 to 10000"
            )),
            "{err}"
        );
        let data = dir.path().join(format!("data-{bad}"));
        let out = tokend(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &config,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve refuses {bad}: {err}");
        assert!(err.contains("limits.max_installs_per_caller"), "{err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[limits]\nmax_installs_per_caller = 64\n").unwrap();
    let out = tokend(&["check-config"], &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
