//! Issue 26, items 6, 7 and 13: the CLI tells the truth. One JSON shape (the
//! proto3 mapping) in every `--json` output, the reconnect cause shown,
//! `tokend sandbox` documents its client and listens where `--listen`
//! says, and an explicit connection id is never rewritten.

use tonic::Code;

use crate::{
    cli::{stdout, tokend},
    harness::{TestServer, bad_fields, import_request},
};

/// Every key of a JSON value, recursively.
fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn no_snake_case(v: &serde_json::Value, what: &str) {
    let mut all = Vec::new();
    keys(v, &mut all);
    let snake: Vec<_> = all.iter().filter(|k| k.contains('_')).collect();
    assert!(snake.is_empty(), "{what}: snake_case keys {snake:?} in {v}");
}

/// `connections list/show --json`, `events --json`, `watch --json` and the
/// errors all speak the proto3 JSON mapping, and agree on the status and
/// cause of a revoked connection; text output shows the cause. Before: the
/// listing printed `"connection_id"`, `"status":"reconnect_required"` and
/// no cause at all, while `events --json` printed `connectionId` and
/// `CONNECTION_STATUS_RECONNECT_REQUIRED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_is_the_proto3_mapping_and_shows_the_cause() {
    let server = TestServer::start().await;
    server.import("rev", "acct-rev", 1800).await;
    server.sandbox.revoke_account("acct-rev");
    let out = tokend(&server, &["token", "refresh", "rev", "--json"]).await;
    assert_eq!(out.status.code(), Some(4), "reconnect required");
    let err: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
    assert_eq!(err["error"]["exitCode"], 4, "{err}");
    no_snake_case(&err, "error");

    let out = tokend(&server, &["connections", "list", "--json"]).await;
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let c = &listed[0];
    assert_eq!(c["connectionId"], "rev", "{listed}");
    assert_eq!(
        c["status"], "CONNECTION_STATUS_RECONNECT_REQUIRED",
        "{listed}"
    );
    assert_eq!(c["reconnectCause"], "RECONNECT_CAUSE_REVOKED", "{listed}");
    assert_eq!(c["lastError"]["code"], "invalid_grant", "{listed}");
    no_snake_case(&listed, "connections list");

    let out = tokend(&server, &["connections", "show", "rev", "--json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(&shown, c, "show and list print one shape");

    // Text: the status as the error reason names it, and the cause.
    let out = tokend(&server, &["connections", "show", "rev"]).await;
    let text = stdout(&out);
    assert!(text.contains("status:      RECONNECT_REQUIRED"), "{text}");
    assert!(text.contains("cause:       REVOKED"), "{text}");

    // The event feed: the same mapping, the same values.
    let out = tokend(&server, &["events", "--json"]).await;
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let event = lines
        .iter()
        .find(|e| e["eventType"] == "EVENT_TYPE_RECONNECT_REQUIRED")
        .unwrap_or_else(|| panic!("no reconnect event in {lines:?}"));
    assert_eq!(event["cause"], "RECONNECT_CAUSE_REVOKED");
    assert_eq!(event["connection"]["status"], c["status"]);
    assert_eq!(event["connection"]["connectionId"], c["connectionId"]);
    for line in &lines {
        no_snake_case(line, "events");
    }
    let out = tokend(&server, &["events", "--type", "reconnect_required"]).await;
    assert!(stdout(&out).contains("cause=REVOKED"), "{}", stdout(&out));

    // token get/refresh, install and delete: lowerCamelCase too.
    server.import("ok", "acct-ok", 1800).await;
    let out = tokend(&server, &["token", "get", "ok", "--json"]).await;
    let token: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(token["connectionId"], "ok");
    assert_eq!(token["version"], "1");
    no_snake_case(&token, "token get");
    let out = tokend(&server, &["token", "refresh", "ok", "--json"]).await;
    let refreshed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(refreshed["refreshed"], true);
    assert!(refreshed.get("accessToken").is_none(), "{refreshed}");
    no_snake_case(&refreshed, "token refresh");
    let out = tokend(&server, &["connections", "delete", "ok", "--json"]).await;
    let deleted: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(deleted["connectionId"], "ok");
}

/// `tokend sandbox --help` names the client id and secret, and each
/// listen flag once: before, it listed `--listen` and `--sandbox-listen`,
/// both defaulting to 127.0.0.1:50052, and ignored the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_sandbox_documents_its_client_and_listens_where_told() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["sandbox", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("sandbox-client"), "{help}");
    assert!(help.contains("sandbox-secret"), "{help}");
    assert_eq!(help.matches("127.0.0.1:50052").count(), 2, "{help}");
    assert!(help.contains("--listen"), "{help}");
    assert!(!help.contains("--sandbox-listen <"), "{help}");

    // The old spelling still works, and means the sandbox's address.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["sandbox", "--sandbox-listen", &addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/.well-known/oauth-authorization-server");
    let mut up = false;
    for _ in 0..100 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(up, "the sandbox did not listen on {addr}");
}

/// An explicit connection id outside the alphabet is refused, naming the
/// field; a derived one replaces what the alphabet lacks (the account id
/// itself stays as given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_ids_are_refused_derived_ids_are_rewritten() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let issued = server.sandbox.issue_tokens("u@example.com", &["crm"]);
    let err = client
        .install(import_request(
            "u@example.com",
            "u@example.com",
            &issued,
            1800,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(bad_fields(&err), vec!["connection_id".to_owned()]);
    let derived = client
        .install(import_request("", "u@example.com", &issued, 1800))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(derived.connection_id, "sandbox-u_example.com");
    assert_eq!(derived.account_id, "u@example.com");
}
