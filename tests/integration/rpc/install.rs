//! Install: by import, by code (plain and PKCE), replays and idempotence,
//! malformed requests, and what an install may replace.

use super::*;

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
