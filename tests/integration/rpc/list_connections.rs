//! ListConnections: paging in id order, filters, bad page sizes and tokens.

use super::*;

#[tokio::test]
async fn list_connections_pages_in_id_order() {
    let server = TestServer::start().await;
    for id in ["page-c", "page-a", "page-e", "page-b", "page-d"] {
        server.import(id, &format!("acct-{id}"), 1800).await;
    }
    let mut client = server.client().await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = Vec::new();
    loop {
        let resp = client
            .list_connections(list(2, &page_token))
            .await
            .unwrap()
            .into_inner();
        pages.push(resp.connections.len());
        seen.extend(ids(&resp).into_iter().map(str::to_owned));
        if resp.next_page_token.is_empty() {
            break;
        }
        page_token = resp.next_page_token;
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, ["page-a", "page-b", "page-c", "page-d", "page-e"]);

    // An exact fit ends with an empty token, not an empty extra page.
    let all = client
        .list_connections(list(5, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.connections.len(), 5);
    assert!(all.next_page_token.is_empty());
    // page_size 0 means the default (100).
    let all = client
        .list_connections(list(0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.connections.len(), 5);
    assert!(all.next_page_token.is_empty());
    assert!(all.connections.iter().all(|c| c.provider == "sandbox"));
}

#[tokio::test]
async fn list_connections_filters_by_status_and_provider() {
    let server = TestServer::start().await;
    for i in 1..=3 {
        server
            .import(&format!("filter-{i}"), &format!("acct-filter-{i}"), 1800)
            .await;
    }
    let mut client = server.client().await;
    server.sandbox.revoke_account("acct-filter-2");
    let err = client.force_refresh(force("filter-2")).await.unwrap_err();
    assert_eq!(reason(&err), "RECONNECT_REQUIRED");

    let by_status = |status: pb::ConnectionStatus, page_size: i32, page_token: String| {
        pb::ListConnectionsRequest {
            page_size,
            page_token,
            status: status as i32,
            ..Default::default()
        }
    };
    let revoked = client
        .list_connections(by_status(
            pb::ConnectionStatus::ReconnectRequired,
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&revoked), ["filter-2"]);
    assert_eq!(
        revoked.connections[0].status,
        pb::ConnectionStatus::ReconnectRequired as i32
    );

    // Filter and pagination together: pages only hold matches.
    let first = client
        .list_connections(by_status(pb::ConnectionStatus::Active, 1, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&first), ["filter-1"]);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_connections(by_status(
            pb::ConnectionStatus::Active,
            1,
            first.next_page_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&second), ["filter-3"]);
    if !second.next_page_token.is_empty() {
        let third = client
            .list_connections(by_status(
                pb::ConnectionStatus::Active,
                1,
                second.next_page_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(third.connections.is_empty());
        assert!(third.next_page_token.is_empty());
    }

    let err = client
        .list_connections(pb::ListConnectionsRequest {
            status: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&err, "status");

    let by_provider = |provider: &str| pb::ListConnectionsRequest {
        provider: provider.into(),
        ..Default::default()
    };
    let sandbox = client
        .list_connections(by_provider("sandbox"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&sandbox), ["filter-1", "filter-2", "filter-3"]);
    let other = client
        .list_connections(by_provider("hubspot"))
        .await
        .unwrap()
        .into_inner();
    assert!(other.connections.is_empty());
    assert!(other.next_page_token.is_empty());
    for bad in ["bad provider", "hub.spot", &"p".repeat(65)] {
        let err = client.list_connections(by_provider(bad)).await.unwrap_err();
        assert_invalid(&err, "provider");
    }
}

#[tokio::test]
async fn list_connections_rejects_bad_page_size_and_token() {
    let server = TestServer::start().await;
    server.import("only", "acct-only", 1800).await;
    let mut client = server.client().await;
    for size in [-1, 1001, 5000, i32::MIN] {
        let err = client.list_connections(list(size, "")).await.unwrap_err();
        assert_invalid(&err, "page_size");
    }
    assert_eq!(
        client
            .list_connections(list(1000, ""))
            .await
            .unwrap()
            .into_inner()
            .connections
            .len(),
        1
    );
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    for token in [
        "garbage!!".to_owned(),
        "%%%".to_owned(),
        // Well-formed base64url, but not of a connection id.
        URL_SAFE_NO_PAD.encode(b"a b"),
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0xfd]),
        "A".repeat(10 * 1024),
    ] {
        let err = client.list_connections(list(10, &token)).await.unwrap_err();
        assert_invalid(&err, "page_token");
    }
}
