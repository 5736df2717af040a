//! The test: echoed secrets appear nowhere, in any encoding.

use super::*;

/// Guards: a provider that echoes the secrets it was sent, in any common
/// encoding (raw, form, quote_plus, encodeURIComponent, percent-encoding in
/// either case, hex in either case, base64, base64url, JSON \u escapes,
/// half of each, the request as received), gets none of them repeated by
/// tokend anywhere: GetConnection, ListConnections, watch events, the event
/// feed, webhooks, the console, RPC statuses, the log, the data dir. And a
/// tokend whose every non-loopback request goes to a catch-all proxy sends
/// it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_appear_nowhere_in_any_encoding() {
    let proxy = CatchAllProxy::start().await;
    let sandbox = Sandbox::start(SandboxConfig {
        client_secret: CLIENT_SECRET.into(),
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let client_id = sandbox.config().client_id.clone();
    let (webhook, deliveries) = webhook_receiver().await;
    let served = Served::start(&sandbox, webhook, &proxy).await;
    let mut client = served.client();
    let mut seen = Seen::default();
    let watched = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));

    let mut secrets = vec![("the client secret".to_string(), CLIENT_SECRET.to_string())];
    for (i, echo) in Echo::ALL.into_iter().enumerate() {
        secrets.push((format!("refresh token {i}"), refresh_token(i)));
        secrets.push((format!("code {i}"), code(i)));
        secrets.push((format!("verifier {i}"), verifier(i)));
        let id = format!("echo-{i:02}");
        client
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: id.clone(),
                account_id: format!("acct-{i:02}"),
                grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                    access_token: format!("at-{i:02}-access-token"),
                    refresh_token: refresh_token(i),
                    expires_in_seconds: 3600,
                    scopes: vec![],
                    token_type: String::new(),
                })),
                replace: false,
                params: Default::default(),
                force: false,
            })
            .await
            .expect("import");
        // The connection's own watch, from before its refresh fails.
        let mut stream = client
            .watch_connection(pb::WatchConnectionRequest {
                connection_id: id.clone(),
            })
            .await
            .expect("watch")
            .into_inner();
        let keep = watched.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                keep.lock().unwrap().push(event.encode_to_vec());
            }
        });

        sandbox.inject(Fault::EchoSecrets {
            encoding: echo,
            count: 1,
        });
        let refused = client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: id.clone(),
                rejected: None,
            })
            .await
            .expect_err("the provider refused");
        seen.add(
            format!("status of ForceRefresh {id}"),
            status_bytes(&refused),
        );

        sandbox.inject(Fault::EchoSecrets {
            encoding: echo,
            count: 1,
        });
        let refused = client
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: format!("code-{i:02}"),
                account_id: format!("acct-code-{i:02}"),
                grant: Some(pb::install_request::Grant::AuthorizationCode(
                    pb::AuthorizationCode {
                        code: code(i),
                        redirect_uri: "http://127.0.0.1/callback".into(),
                        code_verifier: verifier(i),
                    },
                )),
                replace: false,
                params: Default::default(),
                force: false,
            })
            .await
            .expect_err("the provider refused");
        seen.add(
            format!("status of Install code-{i:02}"),
            status_bytes(&refused),
        );
    }
    let echoes = Echo::ALL.len();
    assert_eq!(
        sandbox.stats().faults_served,
        2 * echoes as u64,
        "every request met an echo"
    );

    // GetConnection and ListConnections.
    let mut with_error = 0;
    for i in 0..echoes {
        let got = client
            .get_connection(pb::GetConnectionRequest {
                connection_id: format!("echo-{i:02}"),
            })
            .await
            .expect("get")
            .into_inner();
        let error = got
            .connection
            .as_ref()
            .and_then(|c| c.last_error.clone())
            .expect("the failure is kept");
        if i == 0 {
            eprintln!("last_error after an echo: {error:?}");
        }
        with_error += 1;
        seen.add(format!("GetConnection echo-{i:02}"), got.encode_to_vec());
    }
    assert_eq!(with_error, echoes);
    let listed = client
        .list_connections(pb::ListConnectionsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    seen.add("ListConnections", listed.encode_to_vec());

    // The event feed, replayed from the oldest event.
    let mut feed = client
        .watch_connections(pb::WatchConnectionsRequest {
            filter: None,
            resume_after: String::new(),
            from_oldest: true,
        })
        .await
        .expect("feed")
        .into_inner();
    let mut failed_events = HashSet::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_secs(3), feed.message()).await
    {
        if event
            .connection
            .as_ref()
            .is_some_and(|c| c.last_error.is_some())
        {
            failed_events.insert(event.connection_id.clone());
        }
        seen.add("event feed", event.encode_to_vec());
    }
    assert!(
        failed_events.len() >= echoes,
        "the feed carries every failure: {failed_events:?}"
    );
    for event in watched.lock().unwrap().iter() {
        seen.add("WatchConnection", event.clone());
    }
    assert!(
        seen.text("WatchConnection").contains("echo"),
        "the watch streams saw the failures"
    );

    // The webhook deliveries of those events.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<String> = deliveries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter(|v| v["connection"]["lastError"].is_object())
            .filter_map(|v| v["connectionId"].as_str().map(str::to_owned))
            .collect();
        if delivered.len() >= echoes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks delivered failures of {delivered:?} only\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for body in deliveries.lock().unwrap().iter() {
        let value: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        let mut strings = String::new();
        json_strings(&value, &mut strings);
        seen.add("webhook delivery", strings);
        seen.add("webhook delivery (as sent)", body.clone());
    }

    // The console: the table and each connection's page.
    let http = reqwest::Client::new();
    let admin = served.admin;
    let mut pages = vec![format!("http://{admin}/")];
    pages.extend((0..echoes).map(|i| format!("http://{admin}/connections/echo-{i:02}")));
    for url in pages {
        let page = http.get(&url).send().await.expect("console");
        assert_eq!(page.status(), 200, "{url}");
        let html = page.text().await.unwrap();
        seen.add(format!("console {url}"), html_unescape(&html));
    }
    assert!(seen.text("console").contains("[redacted]"));

    // The log, and every file tokend wrote.
    seen.add("tokend's log", served.log());
    let mut files = Vec::new();
    files_under(&served.dir.path().join("data"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        seen.add(
            format!("{}", file.display()),
            std::fs::read(&file).unwrap_or_default(),
        );
    }

    let needles = Needles::new(&secrets, &client_id);
    let mut leaks = Vec::new();
    for (place, bytes) in &seen.places {
        for what in needles.found(bytes) {
            leaks.push(format!("{place}: {what}"));
        }
    }
    let places = seen.places.len();
    let bytes: usize = seen.places.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "searched {places} places ({bytes} bytes) for {} secrets in {} encodings: {} found",
        secrets.len(),
        Echo::ALL.len() - 1,
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "secrets echoed back:\n{}",
        leaks.join("\n")
    );
    // The echo's `error_uri` named provider.example: never followed.
    assert_eq!(proxy.reached("provider.example"), Vec::<String>::new());
    assert_eq!(
        proxy.seen(),
        Vec::<String>::new(),
        "no connection left for any other host"
    );
}
