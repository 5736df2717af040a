//! `/sandbox/*` control endpoints: drive the provider with curl, as the Rust handle does.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::echo::Echo;
use crate::state::Shared;
use crate::{Fault, LostAnswer};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/sandbox/codes", post(issue_code))
        .route("/sandbox/tokens", post(issue_tokens))
        .route("/sandbox/revoke", post(revoke))
        .route("/sandbox/faults", post(inject_fault).delete(clear_faults))
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/accounts/{account_id}/stats", get(account_stats))
}

/// A control-request failure, rendered as `{"error":"invalid_request","error_description":"..."}`.
struct ControlError {
    status: StatusCode,
    description: String,
}

impl ControlError {
    fn bad_request(description: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            description: description.to_owned(),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let body = json!({ "error": "invalid_request", "error_description": self.description });
        (self.status, Json(body)).into_response()
    }
}

/// Maps axum's JSON rejections (missing content type, syntax, wrong shape) to a JSON error,
/// keeping axum's status and its explanation, which names the offending field.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ControlError> {
    body.map(|Json(value)| value)
        .map_err(|rejection| ControlError {
            status: rejection.status(),
            description: rejection.body_text(),
        })
}

fn require_account(account_id: &str) -> Result<(), ControlError> {
    if account_id.is_empty() {
        Err(ControlError::bad_request("account_id must not be empty"))
    } else {
        Ok(())
    }
}

#[derive(Deserialize)]
struct CodeRequest {
    account_id: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    /// Optional S256 PKCE challenge, for trying the PKCE flow by hand.
    #[serde(default)]
    code_challenge: Option<String>,
}

async fn issue_code(
    State(provider): State<Shared>,
    body: Result<Json<CodeRequest>, JsonRejection>,
) -> Result<Response, ControlError> {
    let request = json_body(body)?;
    require_account(&request.account_id)?;
    let scopes: Vec<&str> = request.scopes.iter().map(String::as_str).collect();
    let code = provider.issue_code(
        &request.account_id,
        &scopes,
        request.redirect_uri.as_deref(),
        request.code_challenge.as_deref(),
    );
    Ok(Json(json!({ "code": code })).into_response())
}

#[derive(Deserialize)]
struct TokensRequest {
    account_id: String,
    #[serde(default)]
    scopes: Vec<String>,
}

async fn issue_tokens(
    State(provider): State<Shared>,
    body: Result<Json<TokensRequest>, JsonRejection>,
) -> Result<Response, ControlError> {
    let request = json_body(body)?;
    require_account(&request.account_id)?;
    let scopes: Vec<&str> = request.scopes.iter().map(String::as_str).collect();
    Ok(Json(provider.issue_tokens(&request.account_id, &scopes)).into_response())
}

#[derive(Deserialize)]
struct RevokeRequest {
    account_id: String,
}

async fn revoke(
    State(provider): State<Shared>,
    body: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<StatusCode, ControlError> {
    let request = json_body(body)?;
    provider.revoke_account_counted(&request.account_id);
    Ok(StatusCode::NO_CONTENT)
}

fn one() -> u32 {
    1
}

/// The JSON spelling of [`Fault`]; `count` defaults to 1.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum FaultRequest {
    Status {
        status: u16,
        #[serde(default = "one")]
        count: u32,
    },
    RateLimited {
        retry_after_secs: u64,
        #[serde(default = "one")]
        count: u32,
    },
    Latency {
        delay_ms: u64,
        #[serde(default = "one")]
        count: u32,
    },
    MalformedBody {
        #[serde(default = "one")]
        count: u32,
    },
    InvalidClient {
        #[serde(default = "one")]
        count: u32,
    },
    ConsentRequired {
        #[serde(default = "one")]
        count: u32,
    },
    InteractionRequired {
        #[serde(default = "one")]
        count: u32,
    },
    EchoSecrets {
        encoding: Echo,
        #[serde(default = "one")]
        count: u32,
    },
    /// `{"kind":"lost_answer","status":504,"hang_ms":20000,"count":1}`, or
    /// `"reset":true` in place of `status`: the request is handled, then its
    /// answer lost.
    LostAnswer {
        #[serde(default)]
        status: Option<u16>,
        #[serde(default)]
        reset: bool,
        #[serde(default)]
        hang_ms: u64,
        #[serde(default = "one")]
        count: u32,
    },
}

impl FaultRequest {
    fn into_fault(self) -> Result<Fault, &'static str> {
        Ok(match self {
            FaultRequest::Status { status, count } => {
                // From curl a typo is likelier than intent: only error statuses are accepted.
                if !(400..=599).contains(&status) {
                    return Err("status must be an HTTP error status (400-599)");
                }
                Fault::Status { status, count }
            }
            FaultRequest::RateLimited {
                retry_after_secs,
                count,
            } => Fault::RateLimited {
                retry_after_secs,
                count,
            },
            FaultRequest::Latency { delay_ms, count } => Fault::Latency {
                delay: Duration::from_millis(delay_ms),
                count,
            },
            FaultRequest::MalformedBody { count } => Fault::MalformedBody { count },
            FaultRequest::InvalidClient { count } => Fault::InvalidClient { count },
            FaultRequest::ConsentRequired { count } => Fault::ConsentRequired { count },
            FaultRequest::InteractionRequired { count } => Fault::InteractionRequired { count },
            FaultRequest::EchoSecrets { encoding, count } => Fault::EchoSecrets { encoding, count },
            FaultRequest::LostAnswer {
                status,
                reset,
                hang_ms,
                count,
            } => {
                let answer = match (status, reset) {
                    (None, true) => LostAnswer::Reset,
                    (Some(status), false) if status == 200 || (400..=599).contains(&status) => {
                        LostAnswer::Status(status)
                    }
                    (Some(_), false) => {
                        return Err(
                            "status must be 200 (a cut-off body) or an HTTP error status (400-599)",
                        );
                    }
                    _ => return Err(r#"give exactly one of "status" and "reset": true"#),
                };
                Fault::LostAnswer {
                    answer,
                    hang: Duration::from_millis(hang_ms),
                    count,
                }
            }
        })
    }
}

async fn inject_fault(
    State(provider): State<Shared>,
    body: Result<Json<FaultRequest>, JsonRejection>,
) -> Result<StatusCode, ControlError> {
    let fault = json_body(body)?
        .into_fault()
        .map_err(ControlError::bad_request)?;
    provider.inject(fault);
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(State(provider): State<Shared>) -> StatusCode {
    provider.clear_faults();
    StatusCode::NO_CONTENT
}

async fn stats(State(provider): State<Shared>) -> Response {
    Json(provider.stats()).into_response()
}

async fn account_stats(
    State(provider): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ControlError> {
    let Path(account_id) = path.map_err(|rejection| ControlError {
        status: rejection.status(),
        description: rejection.body_text(),
    })?;
    Ok(Json(provider.account_stats(&account_id)).into_response())
}
