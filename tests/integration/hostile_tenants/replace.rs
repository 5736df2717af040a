//! Item 8: no silent replace; refused exchanges are revoked, not left live.

use super::*;

/// Issue 24, item 8. Invariants: an install naming an existing connection
/// id replaces its grant only when both name the same account, or with
/// `replace`; an account the request does not name counts as another one,
/// and such a code install is refused before the provider sees the code.
/// An identical retry is still answered idempotently, and a replacement
/// carries the new account label, not the old one.
#[tokio::test]
async fn hostile_tenants_an_install_without_replace_never_replaces_another_grant() {
    let server = TestServer::start_with(background_off()).await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("acct-a", &["crm"]);
    let original = import_request("conn-1", "acct-a", &first, 1800);
    client.install(original.clone()).await.unwrap();

    // Another grant, no account named: refused, the first grant stands.
    let other = server.sandbox.issue_tokens("acct-b", &["crm"]);
    let err = client
        .install(import_request("conn-1", "", &other, 1800))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN");
    let kept = connection(&mut client, "conn-1").await;
    assert_eq!((kept.version, kept.account_id.as_str()), (1, "acct-a"));
    let token = client.get_token(get("conn-1")).await.unwrap().into_inner();
    assert_eq!(token.token.unwrap().access_token, first.access_token);

    // A code install with no account is refused before the exchange: the
    // provider never sees the code, which stays redeemable.
    let requests = server.sandbox.stats().token_requests;
    let code = server.sandbox.issue_code("acct-b", &["crm"], None, None);
    let err = client
        .install(code_request("conn-1", "", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN");
    assert_eq!(
        server.sandbox.stats().token_requests,
        requests,
        "no exchange"
    );

    // An identical retry of the original is still a replay.
    let again = client.install(original).await.unwrap().into_inner();
    assert!(again.replayed);
    // The same, named account renews its own grant.
    let renewed = server.sandbox.issue_tokens("acct-a", &["crm"]);
    let out = client
        .install(import_request("conn-1", "acct-a", &renewed, 1800))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.connection.unwrap().version, 2);

    // `replace` replaces, and the label follows the new grant: the
    // provider's answer names acct-b.
    let mut replace = code_request("conn-1", "", &code);
    replace.replace = true;
    let out = client.install(replace).await.unwrap().into_inner();
    let replaced = out.connection.unwrap();
    assert_eq!(replaced.account_id, "acct-b");
    // An import naming no account replaces the label with none.
    let mut unnamed = import_request("conn-1", "", &other, 1800);
    unnamed.replace = true;
    let out = client.install(unnamed).await.unwrap().into_inner();
    assert_eq!(out.connection.unwrap().account_id, "", "no stale label");
}

/// A server whose sandbox provider has an RFC 7009 revocation endpoint.
async fn revoking_server() -> TestServer {
    TestServer::start_with(Options {
        provider_toml: Some(
            "preset = \"sandbox\"\nrevocation_url = \"http://127.0.0.1:SANDBOX_PORT/oauth/revoke\""
                .into(),
        ),
        ..background_off()
    })
    .await
}

/// Issue 24, item 8. Invariant: a grant bought by a code exchange and then
/// refused (the id the provider's answer derives is another account's) is
/// revoked at the provider, not left live with nobody holding it.
#[tokio::test]
async fn hostile_tenants_a_refused_exchange_is_revoked_not_left_live() {
    let server = revoking_server().await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("u@x.com", &["crm"]);
    client
        .install(import_request("", "u@x.com", &first, 1800))
        .await
        .unwrap();
    // "u_x.com" derives the same id; only the provider's answer says so.
    let code = server.sandbox.issue_code("u_x.com", &["crm"], None, None);
    let err = client
        .install(code_request("", "", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN", "{err:?}");
    let revoked = crate::harness::eventually(Duration::from_secs(10), || {
        server.sandbox.stats().revocations >= 1
    })
    .await;
    assert!(
        revoked,
        "the refused grant was revoked: {:?}",
        server.sandbox.stats()
    );
    let kept = client
        .get_token(get("sandbox-u_x.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.token.unwrap().access_token, first.access_token);
}

/// Issue 24, item 8. Invariant: a refused grant that may be the stored
/// grant's own user's (the stored record names no account) is dropped, not
/// revoked: a provider that revokes every token of a user and client at
/// once would otherwise end the connection the install was refused for.
#[tokio::test]
async fn hostile_tenants_a_refused_grant_of_an_unknown_account_is_not_revoked() {
    let server = revoking_server().await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("u@x.com", &["crm"]);
    client
        .install(import_request("sandbox-u_x.com", "", &first, 1800))
        .await
        .unwrap();
    let code = server.sandbox.issue_code("u_x.com", &["crm"], None, None);
    let err = client
        .install(code_request("", "", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN", "{err:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.sandbox.stats().revocations,
        0,
        "nothing revoked: {:?}",
        server.sandbox.stats()
    );
    let kept = client
        .get_token(get("sandbox-u_x.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.token.unwrap().access_token, first.access_token);
}
