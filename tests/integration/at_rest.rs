//! Encryption at rest, end to end: after a full run no token the broker ever
//! saw appears anywhere under the data dir.

use std::path::Path;

use tokend_proto::v1 as pb;

use crate::harness::{TestServer, force, get};

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.extend(std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_token_appears_in_any_file_under_the_data_dir() {
    let mut server = TestServer::start().await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let (_, issued) = server
            .import(&format!("vault-{i}"), &format!("acct-vault-{i}"), 1800)
            .await;
        seen.push(issued.access_token);
        seen.push(issued.refresh_token);
    }
    let code = server.sandbox.issue_code("acct-code", &["crm"], None, None);
    seen.push(code.clone());
    let mut client = server.client().await;
    client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "vault-code".into(),
            account_id: String::new(),
            grant: Some(pb::install_request::Grant::AuthorizationCode(
                pb::AuthorizationCode {
                    code,
                    redirect_uri: String::new(),
                    code_verifier: String::new(),
                },
            )),
            replace: false,
            params: Default::default(),
            force: false,
        })
        .await
        .expect("code install");
    for i in 0..3 {
        for _ in 0..3 {
            let t = client
                .force_refresh(force(&format!("vault-{i}")))
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap();
            seen.push(t.access_token);
        }
    }
    let t = client
        .get_token(get("vault-code"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    seen.push(t.access_token);

    // Restart (the store reads its encrypted records back), then stop so
    // every file is flushed and closed before the scan.
    server.restart().await;
    let t = server
        .client()
        .await
        .get_token(get("vault-0"))
        .await
        .expect("tokens decrypt after a restart")
        .into_inner()
        .token
        .unwrap();
    assert!(t.access_token.starts_with("sbx_at_"));
    seen.push(t.access_token);
    server.stop().await;

    let bytes = all_bytes(&server.data_path());
    assert!(contains(&bytes, "vault-1"), "the scan reads the database");
    for secret in &seen {
        assert!(
            !contains(&bytes, secret),
            "a token was found in plaintext under the data dir"
        );
    }
}
