//! Each RPC's happy path and error codes.

use tokend_proto::v1 as pb;
use tonic::Code;

use crate::harness::{
    Client, TestServer, background_off, bad_fields, connection, force, get, import_request,
    metadata, reason,
};

// ---- helpers ------------------------------------------------------------

/// Asserts `err` is INVALID_ARGUMENT naming `field` in its BadRequest and
/// ErrorInfo details.
#[track_caller]
fn assert_invalid(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bad_fields(err), [field], "{err:?}");
    assert_eq!(reason(err), "INVALID_ARGUMENT", "{err:?}");
    assert_eq!(metadata(err, "field").as_deref(), Some(field), "{err:?}");
}

/// Asserts `err` is NOT_FOUND with reason CONNECTION_NOT_FOUND for `id`.
#[track_caller]
fn assert_not_found(err: &tonic::Status, id: &str) {
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(reason(err), "CONNECTION_NOT_FOUND", "{err:?}");
    assert_eq!(
        metadata(err, "connection_id").as_deref(),
        Some(id),
        "{err:?}"
    );
}

/// Unix seconds by tokend's own clock type (the only sanctioned "now").
fn now_unix() -> i64 {
    tokend_core::Clock::system().now().unix_millis() / 1000
}

async fn token(client: &mut Client, id: &str) -> pb::AccessToken {
    client
        .get_token(get(id))
        .await
        .unwrap_or_else(|e| panic!("GetToken {id}: {e:?}"))
        .into_inner()
        .token
        .expect("token")
}

fn list(page_size: i32, page_token: &str) -> pb::ListConnectionsRequest {
    pb::ListConnectionsRequest {
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

fn ids(resp: &pb::ListConnectionsResponse) -> Vec<&str> {
    resp.connections
        .iter()
        .map(|c| c.connection_id.as_str())
        .collect()
}

fn code_request(
    connection_id: &str,
    account_id: &str,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> pb::InstallRequest {
    pb::InstallRequest {
        provider: "sandbox".into(),
        connection_id: connection_id.into(),
        account_id: account_id.into(),
        grant: Some(pb::install_request::Grant::AuthorizationCode(
            pb::AuthorizationCode {
                code: code.into(),
                redirect_uri: redirect_uri.into(),
                code_verifier: code_verifier.into(),
            },
        )),
        replace: false,
        params: Default::default(),
        force: false,
    }
}

/// The import grant of a request, for tests that mangle one field.
fn import_grant(req: &mut pb::InstallRequest) -> &mut pb::TokenImport {
    match req.grant.as_mut() {
        Some(pb::install_request::Grant::TokenImport(t)) => t,
        _ => unreachable!("an import request"),
    }
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
fn pkce_s256(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

const VERIFIER: &str = "tokend-integration-pkce-verifier-0123456789-abcdefghij";
const REDIRECT: &str = "https://app.example.com/oauth/callback";

// ---- Install ------------------------------------------------------------

#[tokio::test]
async fn install_by_import_derives_the_id_and_never_returns_a_secret() {
    let server = TestServer::start().await;
    let issued = server
        .sandbox
        .issue_tokens("portal-7", &["crm.objects.contacts.read", "oauth"]);
    let mut client = server.client().await;
    let before = now_unix();
    let resp = client
        .install(import_request("", "portal-7", &issued, 1800))
        .await
        .expect("install")
        .into_inner();
    let shown = format!("{resp:?}");
    assert!(!shown.contains(&issued.access_token), "{shown}");
    assert!(!shown.contains(&issued.refresh_token), "{shown}");
    assert!(resp.created);
    assert!(!resp.replayed);
    let installed = resp.connection.expect("connection");
    assert_eq!(installed.connection_id, "sandbox-portal-7");
    assert_eq!(installed.version, 1);

    let c = connection(&mut client, "sandbox-portal-7").await;
    let shown = format!("{c:?}");
    assert!(!shown.contains(&issued.access_token), "{shown}");
    assert!(!shown.contains(&issued.refresh_token), "{shown}");
    assert_eq!(c.connection_id, "sandbox-portal-7");
    assert_eq!(c.provider, "sandbox");
    assert_eq!(c.account_id, "portal-7");
    assert_eq!(c.status, pb::ConnectionStatus::Active as i32);
    assert_eq!(c.version, 1);
    assert_eq!(c.scopes, ["crm.objects.contacts.read", "oauth"]);
    assert_eq!(c.token_type, "Bearer");
    let expires = c.access_token_expires_at.expect("expiry").seconds;
    assert!(
        (before + 1798..=now_unix() + 1801).contains(&expires),
        "expires_at {expires} vs now {before}"
    );
    let created = c.created_at.expect("created_at").seconds;
    assert!(
        (before - 2..=now_unix() + 2).contains(&created),
        "created_at {created}"
    );
    assert!(c.updated_at.is_some());
    assert!(c.last_refresh_at.is_none(), "never refreshed yet");
    assert!(c.last_error.is_none());
    // Renewed 5 minutes (the default buffer) before expiry.
    let next = c
        .next_refresh_at
        .expect("a background refresh is scheduled");
    assert!(
        (expires - 301..=expires - 299).contains(&next.seconds),
        "next_refresh_at {} vs expiry {expires}",
        next.seconds
    );
    // The listing shows the same, also without secrets.
    let listed = client
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&listed), ["sandbox-portal-7"]);
    assert!(!format!("{listed:?}").contains(&issued.access_token));
}

#[test]
fn pkce_helper_matches_rfc7636_appendix_b() {
    assert_eq!(
        pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[tokio::test]
async fn install_by_code_with_pkce_takes_the_account_from_the_provider() {
    let server = TestServer::start().await;
    let code = server.sandbox.issue_code(
        "hub-4242",
        &["crm.read", "crm.write"],
        Some(REDIRECT),
        Some(&pkce_s256(VERIFIER)),
    );
    let mut client = server.client().await;
    let resp = client
        .install(code_request("", "", &code, REDIRECT, VERIFIER))
        .await
        .expect("code exchange")
        .into_inner();
    assert!(resp.created);
    assert!(!resp.replayed);
    assert!(!format!("{resp:?}").contains(&code));
    let c = resp.connection.unwrap();
    assert_eq!(c.connection_id, "sandbox-hub-4242");
    assert_eq!(c.account_id, "hub-4242", "from the token response");
    assert_eq!(c.scopes, ["crm.read", "crm.write"]);
    assert_eq!(c.token_type, "Bearer");
    assert_eq!(c.version, 1);
    assert_eq!(c.status, pb::ConnectionStatus::Active as i32);
    assert_eq!(server.sandbox.stats().code_grants_ok, 1);

    let t = token(&mut client, "sandbox-hub-4242").await;
    assert!(server.sandbox.access_token_is_live(&t.access_token));
    assert_eq!(t.account_id, "hub-4242");
    assert_eq!(t.version, 1);
    assert!((1790..=1800).contains(&t.expires_in_seconds), "{t:?}");
    // The code exchange stored a refresh token that works.
    let r = client
        .force_refresh(force("sandbox-hub-4242"))
        .await
        .expect("refresh of a code-installed connection")
        .into_inner();
    assert!(r.refreshed);
    assert_eq!(
        server.sandbox.account_stats("hub-4242").refresh_grants_ok,
        1
    );
}

#[tokio::test]
async fn install_by_plain_code_with_explicit_id_and_a_retry_is_replayed() {
    let server = TestServer::start().await;
    let code = server
        .sandbox
        .issue_code("acct-plain", &["crm.read"], Some(REDIRECT), None);
    let mut client = server.client().await;
    let req = code_request("crm-main", "", &code, REDIRECT, "");
    let first = client
        .install(req.clone())
        .await
        .expect("install")
        .into_inner();
    assert!(first.created);
    let c = first.connection.unwrap();
    assert_eq!(c.connection_id, "crm-main");
    assert_eq!(c.account_id, "acct-plain");

    // The retry never reaches the provider with the single-use code again.
    let requests = server.sandbox.stats().token_requests;
    let again = client.install(req).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert!(!again.created);
    assert_eq!(again.connection.unwrap().version, c.version);
    assert_eq!(server.sandbox.stats().token_requests, requests);
    assert_eq!(server.sandbox.stats().invalid_grant, 0);
}

#[tokio::test]
async fn retried_code_install_without_ids_is_replayed() {
    // The usual onboarding call names neither id: the account comes from
    // the provider. A client retrying it after a lost reply must get the
    // install back, not a rejected (already used) code.
    let server = TestServer::start().await;
    let code = server.sandbox.issue_code(
        "acct-retry",
        &["crm.read"],
        Some(REDIRECT),
        Some(&pkce_s256(VERIFIER)),
    );
    let mut client = server.client().await;
    let req = code_request("", "", &code, REDIRECT, VERIFIER);
    let first = client
        .install(req.clone())
        .await
        .expect("install")
        .into_inner();
    assert!(first.created);
    let again = client
        .install(req)
        .await
        .expect("an identical retry is answered, not rejected")
        .into_inner();
    assert!(again.replayed);
    assert!(!again.created);
    let (a, b) = (first.connection.unwrap(), again.connection.unwrap());
    assert_eq!(a.connection_id, b.connection_id);
    assert_eq!(a.version, b.version);
}

#[tokio::test]
async fn install_is_idempotent_and_a_new_token_set_bumps_the_version() {
    let server = TestServer::start().await;
    let issued = server.sandbox.issue_tokens("acct-idem", &["crm"]);
    let req = import_request("idem", "acct-idem", &issued, 1800);
    let mut client = server.client().await;

    let first = client.install(req.clone()).await.unwrap().into_inner();
    assert!(first.created);
    assert!(!first.replayed);
    let v1 = first.connection.unwrap().version;
    assert_eq!(v1, 1);

    let second = client.install(req.clone()).await.unwrap().into_inner();
    assert!(second.replayed, "an identical retry");
    assert!(!second.created);
    assert_eq!(second.connection.unwrap().version, v1);
    assert_eq!(connection(&mut client, "idem").await.version, v1, "no bump");

    // A different token set for the same id replaces it.
    let newer = server.sandbox.issue_tokens("acct-idem", &["crm"]);
    let third = client
        .install(import_request("idem", "acct-idem", &newer, 1800))
        .await
        .unwrap()
        .into_inner();
    assert!(!third.created);
    assert!(!third.replayed);
    assert_eq!(third.connection.unwrap().version, v1 + 1);
    assert_eq!(
        token(&mut client, "idem").await.access_token,
        newer.access_token
    );

    // Retried after a refresh rotated the refresh token, the install is
    // still a replay: re-applying its dead refresh token would break the
    // connection under strict rotation.
    let retry_req = import_request("idem", "acct-idem", &newer, 1800);
    let refreshed = client
        .force_refresh(force("idem"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(refreshed.version, v1 + 2);
    let late = client.install(retry_req).await.unwrap().into_inner();
    assert!(late.replayed);
    assert_eq!(late.connection.unwrap().version, v1 + 2);
    client
        .force_refresh(force("idem"))
        .await
        .expect("the rotated refresh token is still the stored one");
    assert_eq!(server.sandbox.account_stats("acct-idem").invalid_grant, 0);
}

#[tokio::test]
async fn install_rejects_malformed_requests() {
    let server = TestServer::start().await;
    let issued = server.sandbox.issue_tokens("acct-bad", &["crm"]);
    let valid = import_request("bad-input", "acct-bad", &issued, 1800);
    let mut client = server.client().await;

    let mut cases: Vec<(&str, pb::InstallRequest)> = Vec::new();
    let mut r = valid.clone();
    r.provider = "hubspot".into();
    cases.push(("provider", r));
    let mut r = valid.clone();
    r.provider = String::new();
    cases.push(("provider", r));
    let mut r = valid.clone();
    r.provider = "not a provider!".into();
    cases.push(("provider", r));
    let mut r = valid.clone();
    r.grant = None;
    cases.push(("grant", r));
    let mut r = valid.clone();
    r.connection_id = "has spaces".into();
    cases.push(("connection_id", r));
    let mut r = valid.clone();
    r.connection_id = "c".repeat(200);
    cases.push(("connection_id", r));
    let mut r = valid.clone();
    r.connection_id = "-leading-dash".into();
    cases.push(("connection_id", r));
    let mut r = valid.clone();
    r.connection_id = String::new();
    r.account_id = String::new();
    cases.push(("account_id", r));
    let mut r = valid.clone();
    import_grant(&mut r).expires_in_seconds = -1;
    cases.push(("token_import.expires_in_seconds", r));
    let mut r = valid.clone();
    import_grant(&mut r).expires_in_seconds = i64::MAX;
    cases.push(("token_import.expires_in_seconds", r));
    let mut r = valid.clone();
    import_grant(&mut r).access_token = String::new();
    cases.push(("token_import.access_token", r));
    let mut r = valid.clone();
    import_grant(&mut r).scopes = vec!["has space".into()];
    cases.push(("token_import.scopes", r));
    let mut r = valid.clone();
    import_grant(&mut r).token_type = "Bearer token".into();
    cases.push(("token_import.token_type", r));
    cases.push((
        "authorization_code.code",
        code_request("code-empty", "", "", REDIRECT, ""),
    ));
    cases.push((
        "authorization_code.code_verifier",
        code_request("code-short", "", "some-code", REDIRECT, "too-short"),
    ));

    for (field, req) in cases {
        let err = client
            .install(req.clone())
            .await
            .expect_err(&format!("{field}: {req:?}"));
        assert_invalid(&err, field);
    }
    // Nothing was created by any of them, and the valid request still works.
    let listed = client
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.connections.is_empty(), "{listed:?}");
    assert!(client.install(valid).await.unwrap().into_inner().created);
    // An empty connection_id is fine for install: derived from the account.
    let other = server.sandbox.issue_tokens("acct-bad2", &["crm"]);
    let derived = client
        .install(import_request("", "acct-bad2", &other, 1800))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        derived.connection.unwrap().connection_id,
        "sandbox-acct-bad2"
    );
}

#[tokio::test]
async fn rejected_authorization_codes_are_invalid_argument_without_the_secret() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let challenge = pkce_s256(VERIFIER);

    // Used once, fine; used twice, rejected.
    let code = server.sandbox.issue_code("acct-used", &["crm"], None, None);
    client
        .install(code_request("used", "", &code, "", ""))
        .await
        .expect("first use");
    let unknown = "sbx_code_this-code-was-never-issued-0000".to_owned();
    let wrong_verifier_code =
        server
            .sandbox
            .issue_code("acct-pkce", &["crm"], Some(REDIRECT), Some(&challenge));
    let wrong_redirect_code =
        server
            .sandbox
            .issue_code("acct-redir", &["crm"], Some(REDIRECT), Some(&challenge));
    let wrong_verifier = "another-verifier-that-does-not-match-the-challenge-0000";
    let cases = [
        // A different id so the used code is not answered as a replay.
        (code_request("used-again", "", &code, "", ""), code.clone()),
        (
            code_request("unknown", "", &unknown, "", ""),
            unknown.clone(),
        ),
        (
            code_request("pkce", "", &wrong_verifier_code, REDIRECT, wrong_verifier),
            wrong_verifier.to_owned(),
        ),
        (
            code_request(
                "redir",
                "",
                &wrong_redirect_code,
                "https://evil.example.com/cb",
                VERIFIER,
            ),
            VERIFIER.to_owned(),
        ),
    ];
    for (req, secret) in cases {
        let err = client
            .install(req.clone())
            .await
            .expect_err(&format!("{req:?}"));
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(reason(&err), "AUTHORIZATION_CODE_REJECTED", "{err:?}");
        assert_eq!(
            metadata(&err, "provider_error").as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(bad_fields(&err), ["authorization_code.code"]);
        let shown = format!("{err:?}");
        assert!(!shown.contains(&secret), "the secret leaked: {shown}");
        let Some(pb::install_request::Grant::AuthorizationCode(c)) = &req.grant else {
            unreachable!()
        };
        assert!(!shown.contains(&c.code), "the code leaked: {shown}");
    }
    for id in ["used-again", "unknown", "pkce", "redir"] {
        let err = client.get_token(get(id)).await.unwrap_err();
        assert_not_found(&err, id);
    }
}

// ---- GetToken -----------------------------------------------------------

#[tokio::test]
async fn get_token_serves_the_installed_token() {
    let server = TestServer::start().await;
    let (installed, issued) = server.import("reader", "acct-reader", 1800).await;
    let mut client = server.client().await;
    let t = token(&mut client, "reader").await;
    assert_eq!(t.connection_id, "reader");
    assert_eq!(t.access_token, issued.access_token);
    assert!(server.sandbox.access_token_is_live(&t.access_token));
    assert_eq!(t.token_type, "Bearer");
    assert!((1795..=1800).contains(&t.expires_in_seconds), "{t:?}");
    assert_eq!(
        t.expires_at.unwrap(),
        installed.access_token_expires_at.unwrap()
    );
    assert_eq!(t.version, installed.version);
    assert_eq!(t.version, 1);
    assert_eq!(t.account_id, "acct-reader");
    assert_eq!(t.scopes, ["crm.objects.contacts.read"]);
}

#[tokio::test]
async fn get_token_rejects_bad_arguments_and_unknown_connections() {
    let server = TestServer::start().await;
    server.import("known", "acct-known", 1800).await;
    let mut client = server.client().await;

    for id in ["", "has space", "ü-nicode", "a/b", &"x".repeat(129)] {
        let err = client.get_token(get(id)).await.unwrap_err();
        assert_invalid(&err, "connection_id");
    }
    for ttl in [-1, i64::MIN, 24 * 3600 + 1, i64::MAX] {
        let err = client
            .get_token(pb::GetTokenRequest {
                connection_id: "known".into(),
                min_ttl_seconds: ttl,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "min_ttl_seconds");
    }
    let err = client.get_token(get("nobody")).await.unwrap_err();
    assert_not_found(&err, "nobody");
    let err = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_not_found(&err, "nobody");
    let err = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "not valid".into(),
        })
        .await
        .unwrap_err();
    assert_invalid(&err, "connection_id");
    let err = client.force_refresh(force("nobody")).await.unwrap_err();
    assert_not_found(&err, "nobody");
    // The known one is unaffected.
    token(&mut client, "known").await;
}

#[tokio::test]
async fn min_ttl_beyond_the_granted_lifetime_is_invalid_after_a_refresh() {
    let server = TestServer::start_with(background_off()).await;
    server.import("long-ttl", "acct-long", 1800).await;
    let mut client = server.client().await;
    // A refresh teaches tokend the provider's real lifetime: 1800 s.
    client.force_refresh(force("long-ttl")).await.unwrap();
    let calls = server.sandbox.account_stats("acct-long").refresh_requests;
    assert_eq!(calls, 1);

    for _ in 0..5 {
        let err = client
            .get_token(pb::GetTokenRequest {
                connection_id: "long-ttl".into(),
                min_ttl_seconds: 3600,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "min_ttl_seconds");
        assert!(err.message().contains("1800"), "{}", err.message());
    }
    assert_eq!(
        server.sandbox.account_stats("acct-long").refresh_requests,
        calls,
        "refused without refreshing on every call"
    );
    // Within the lifetime it is served.
    let t = client
        .get_token(pb::GetTokenRequest {
            connection_id: "long-ttl".into(),
            min_ttl_seconds: 1200,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(t.expires_in_seconds >= 1200);
}

#[tokio::test]
async fn min_ttl_decides_whether_a_read_refreshes() {
    let server = TestServer::start_with(background_off()).await;
    let (_, fresh) = server.import("fresh", "acct-fresh", 1800).await;
    let (_, short) = server.import("short", "acct-short", 1000).await;
    let mut client = server.client().await;

    // 1800 s left, 1000 s asked: served as is.
    let t = client
        .get_token(pb::GetTokenRequest {
            connection_id: "fresh".into(),
            min_ttl_seconds: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(t.access_token, fresh.access_token);
    assert_eq!(t.version, 1);
    assert_eq!(
        server.sandbox.account_stats("acct-fresh").refresh_requests,
        0
    );

    // 1000 s left, 1200 s asked: refreshed first.
    let t = client
        .get_token(pb::GetTokenRequest {
            connection_id: "short".into(),
            min_ttl_seconds: 1200,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_ne!(t.access_token, short.access_token);
    assert_eq!(t.version, 2);
    assert!(t.expires_in_seconds >= 1200, "{t:?}");
    assert_eq!(
        server.sandbox.account_stats("acct-short").refresh_requests,
        1
    );
    // ... and only once.
    let again = token(&mut client, "short").await;
    assert_eq!(again.access_token, t.access_token);
    assert_eq!(
        server.sandbox.account_stats("acct-short").refresh_requests,
        1
    );
}

// ---- ListConnections ----------------------------------------------------

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

// ---- DeleteConnection ---------------------------------------------------

#[tokio::test]
async fn delete_forgets_the_connection_and_a_reinstall_creates_it_again() {
    let server = TestServer::start().await;
    let (_, issued) = server.import("doomed", "acct-doomed", 1800).await;
    server.import("bystander", "acct-by", 1800).await;
    let mut client = server.client().await;
    token(&mut client, "doomed").await; // cached in memory too

    client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "doomed".into(),
            force: false,
        })
        .await
        .expect("delete");

    let err = client.get_token(get("doomed")).await.unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "doomed".into(),
        })
        .await
        .unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client.force_refresh(force("doomed")).await.unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "doomed".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "no such id".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_invalid(&err, "connection_id");
    let listed = client
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&listed), ["bystander"]);

    // The very same install request again is a new connection, not a replay
    // of the deleted one.
    let again = client
        .install(import_request("doomed", "acct-doomed", &issued, 1800))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created);
    assert!(!again.replayed);
    assert_eq!(again.connection.unwrap().version, 1);
    assert_eq!(
        token(&mut client, "doomed").await.access_token,
        issued.access_token
    );
    token(&mut client, "bystander").await;
}

// ---- hostile inputs -----------------------------------------------------

#[tokio::test]
async fn hostile_inputs_are_rejected_without_hurting_the_server() {
    let server = TestServer::start().await;
    let (_, survivor) = server.import("survivor", "acct-survivor", 1800).await;
    let mut client = server.client().await;

    let huge = "a".repeat(10 * 1024);
    let hostile_ids = [
        huge.as_str(),
        "caf\u{e9}",
        "\u{65e5}\u{672c}\u{8a9e}",
        "rocket-\u{1f680}",
        "nul\u{0}byte",
        "tab\there",
        "line\nbreak",
        "\u{202e}rtl-override",
        "../../etc/passwd",
        " padded ",
        "\u{feff}bom",
    ];
    for id in hostile_ids {
        let err = client.get_token(get(id)).await.unwrap_err();
        assert_invalid(&err, "connection_id");
        let err = client
            .get_connection(pb::GetConnectionRequest {
                connection_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "connection_id");
        let err = client.force_refresh(force(id)).await.unwrap_err();
        assert_invalid(&err, "connection_id");
        let err = client
            .delete_connection(pb::DeleteConnectionRequest {
                connection_id: id.into(),
                force: false,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "connection_id");
        let req = import_request(id, "acct-hostile", &survivor, 1800);
        let err = client.install(req).await.unwrap_err();
        assert_invalid(&err, "connection_id");
    }

    // Oversized and malformed secrets in an import.
    let issued = server.sandbox.issue_tokens("acct-hostile", &["crm"]);
    let base = import_request("hostile", "acct-hostile", &issued, 1800);
    let big_token = "t".repeat(9 * 1024);
    let spaced_secret = "secret-with a-space-5f3a9c";
    let mut cases: Vec<(&str, pb::InstallRequest, &str)> = Vec::new();
    let mut r = base.clone();
    import_grant(&mut r).access_token = big_token.clone();
    cases.push(("token_import.access_token", r, &big_token));
    let mut r = base.clone();
    import_grant(&mut r).access_token = spaced_secret.into();
    cases.push(("token_import.access_token", r, spaced_secret));
    let mut r = base.clone();
    import_grant(&mut r).access_token = "ctrl\u{7}token".into();
    cases.push(("token_import.access_token", r, "ctrl\u{7}token"));
    let mut r = base.clone();
    import_grant(&mut r).refresh_token = big_token.clone();
    cases.push(("token_import.refresh_token", r, &big_token));
    let mut r = base.clone();
    import_grant(&mut r).refresh_token = spaced_secret.into();
    cases.push(("token_import.refresh_token", r, spaced_secret));
    let mut r = base.clone();
    import_grant(&mut r).scopes = (0..201).map(|i| format!("s{i}")).collect();
    cases.push(("token_import.scopes", r, ""));
    let mut r = base.clone();
    import_grant(&mut r).scopes = vec!["x".repeat(257)];
    cases.push(("token_import.scopes", r, ""));
    let mut r = base.clone();
    r.account_id = "bell\u{7}".into();
    cases.push(("account_id", r, ""));
    let mut r = base.clone();
    r.account_id = "a".repeat(300);
    cases.push(("account_id", r, ""));
    // A long account id is fine, but not to derive an id from.
    let mut r = base.clone();
    r.connection_id = String::new();
    r.account_id = "a".repeat(200);
    cases.push(("account_id", r, ""));
    cases.push((
        "authorization_code.redirect_uri",
        code_request("hostile-code", "", "code", "https://x.example/\u{0}", ""),
        "",
    ));
    cases.push((
        "authorization_code.redirect_uri",
        code_request("hostile-code", "", "code", &huge, ""),
        "",
    ));
    cases.push((
        "authorization_code.code",
        code_request("hostile-code", "", &big_token, REDIRECT, ""),
        &big_token,
    ));
    for (field, req, secret) in cases {
        let err = client.install(req).await.unwrap_err();
        assert_invalid(&err, field);
        if !secret.is_empty() {
            assert!(
                !format!("{err:?}").contains(secret),
                "{field}: the rejected secret is echoed"
            );
        }
    }
    // Hostile but valid: unicode account ids are stored as given.
    let unicode = "Portal \u{dc}n\u{ef}c\u{f6}d\u{e9} \u{1f680}";
    let mut r = base.clone();
    r.connection_id = "unicode-account".into();
    r.account_id = unicode.into();
    let c = client.install(r).await.unwrap().into_inner();
    assert!(c.created);
    assert_eq!(
        connection(&mut client, "unicode-account").await.account_id,
        unicode
    );
    let derived = client
        .install(import_request("", unicode, &issued, 1800))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(derived.connection_id.starts_with("sandbox-"), "{derived:?}");
    assert_eq!(
        token(&mut client, &derived.connection_id).await.account_id,
        unicode
    );

    // After all that, the server serves normally.
    let t = token(&mut client, "survivor").await;
    assert_eq!(t.access_token, survivor.access_token);
    let (_, later) = server.import("later", "acct-later", 1800).await;
    assert_eq!(
        token(&mut client, "later").await.access_token,
        later.access_token
    );
}

/// Issue 10, item 7. Invariant: an install never silently replaces another
/// account's grant. Derived ids are not injective ("u@x.com" and "u_x.com"
/// both derive `sandbox-u_x.com`), so the second is refused; an explicit id
/// replaces another account only with `replace`.
#[tokio::test]
async fn an_install_never_silently_replaces_another_accounts_grant() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("u@x.com", &["crm"]);
    let installed = client
        .install(import_request("", "u@x.com", &first, 1800))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(installed.connection_id, "sandbox-u_x.com");

    let second = server.sandbox.issue_tokens("u_x.com", &["crm"]);
    let err = client
        .install(import_request("", "u_x.com", &second, 1800))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN");
    assert_eq!(metadata(&err, "account_id").as_deref(), Some("u@x.com"));
    let t = token(&mut client, "sandbox-u_x.com").await;
    assert_eq!(t.access_token, first.access_token, "the first grant stands");

    // An explicit id alone is not enough...
    let err = client
        .install(import_request("sandbox-u_x.com", "u_x.com", &second, 1800))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN");
    // ...`replace` without one is refused...
    let mut derived = import_request("", "u_x.com", &second, 1800);
    derived.replace = true;
    let err = client.install(derived).await.unwrap_err();
    assert_invalid(&err, "replace");
    // ...and both together replace, as asked.
    let mut explicit = import_request("sandbox-u_x.com", "u_x.com", &second, 1800);
    explicit.replace = true;
    client.install(explicit).await.unwrap();
    let t = token(&mut client, "sandbox-u_x.com").await;
    assert_eq!(t.access_token, second.access_token);
}

/// Issue 11. Invariant: an import that tokend could never renew and whose
/// lifetime is unknown is refused up front, naming the field, instead of
/// making a connection that is dead a second later; one with a lifetime
/// and no refresh token ends as "expired, no refresh token", never as
/// revoked by a provider that was never called.
#[tokio::test]
async fn an_import_without_refresh_token_needs_its_lifetime() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let issued = server.sandbox.issue_tokens("acct-at", &[]);
    let mut only_access = import_request("at-1", "acct-at", &issued, 0);
    if let Some(pb::install_request::Grant::TokenImport(t)) = only_access.grant.as_mut() {
        t.refresh_token.clear();
    }
    let err = client.install(only_access.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        crate::harness::bad_fields(&err),
        ["token_import.expires_in_seconds"]
    );
    assert!(
        client
            .get_connection(pb::GetConnectionRequest {
                connection_id: "at-1".into()
            })
            .await
            .is_err(),
        "nothing was created"
    );

    if let Some(pb::install_request::Grant::TokenImport(t)) = only_access.grant.as_mut() {
        t.expires_in_seconds = 1;
    }
    client
        .install(only_access)
        .await
        .expect("a lifetime makes it valid");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = client.get_token(get("at-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        crate::harness::metadata(&err, "cause").as_deref(),
        Some("NO_REFRESH_TOKEN")
    );
    let connection = crate::harness::connection(&mut client, "at-1").await;
    let last = connection.last_error.expect("last error");
    assert!(
        last.message.starts_with("expired, no refresh token"),
        "{}",
        last.message
    );
    assert_eq!(
        server.sandbox.account_stats("acct-at").refresh_requests,
        0,
        "no provider was called"
    );
}

/// Issue 11. Invariants: an UNAVAILABLE says what failed and never claims
/// no valid token is left when one is; a code exchange that fails
/// transiently carries RetryInfo like every other UNAVAILABLE.
#[tokio::test]
async fn unavailable_says_what_failed_and_when_to_retry() {
    let server = TestServer::start_with(background_off()).await;
    let mut client = server.client().await;
    let code = server.sandbox.issue_code("acct-u", &[], None, None);
    server.sandbox.inject(tokend_sandbox::Fault::Status {
        status: 503,
        count: 1,
    });
    let err = client
        .install(code_request("", "", &code, "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "PROVIDER_UNAVAILABLE");
    assert!(
        tonic_types::StatusExt::get_details_retry_info(&err).is_some(),
        "Install's UNAVAILABLE carries RetryInfo: {err:?}"
    );
    assert!(err.message().contains("retry after"), "{}", err.message());

    server.import("u-1", "acct-u1", 1800).await;
    server.sandbox.inject(tokend_sandbox::Fault::Status {
        status: 503,
        count: 1,
    });
    let err = client.force_refresh(force("u-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        !err.message().contains("no valid token"),
        "a valid token is left: {}",
        err.message()
    );
    assert!(
        err.message().contains("503") || err.message().contains("server_error"),
        "{}",
        err.message()
    );
    client
        .get_token(get("u-1"))
        .await
        .expect("the still-valid token is served");
}
