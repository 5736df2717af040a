//! Hostile inputs to every RPC, refused without hurting the server.

use super::*;

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
