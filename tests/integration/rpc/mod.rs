//! Each RPC's happy path and error codes, a file per RPC; the helpers
//! they share are here.

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

mod delete_connection;
mod get_token;
mod hostile_inputs;
mod install;
mod list_connections;
mod unavailable;
