//! OAuth error responses of the token endpoint, rendered in the configured dialect (RFC 6749,
//! HubSpot, Slack, GitHub, Notion).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Dialect;
use crate::secrets;

/// Which grant an `invalid_grant` rejection concerns (HubSpot words the two differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantKind {
    Refresh,
    Code,
}

/// A rejected grant. The description is static text: it never echoes what the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrantError {
    pub kind: GrantKind,
    pub description: &'static str,
}

/// The kinds of failure the token endpoint reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant(GrantKind),
    UnsupportedGrantType,
    /// A server-side failure served with this HTTP status (from a `Status` fault).
    ServerError(StatusCode),
    RateLimited {
        retry_after_secs: u64,
    },
    /// The grant stands, but the user must act first: consent again, or sign in
    /// interactively.
    UserAction {
        consent: bool,
    },
}

/// A token-endpoint error. `description` is static text so no token or secret can leak into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub description: &'static str,
}

impl OAuthError {
    pub(crate) fn invalid_request(description: &'static str) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            status: StatusCode::BAD_REQUEST,
            description,
        }
    }

    /// `invalid_request` with a status other than 400 (413 for an oversized body, 415 for JSON...).
    pub(crate) fn invalid_request_with(status: StatusCode, description: &'static str) -> Self {
        Self {
            status,
            ..Self::invalid_request(description)
        }
    }

    /// RFC 6749 §5.2: client authentication failures answer 401.
    pub(crate) fn invalid_client(description: &'static str) -> Self {
        Self {
            code: ErrorCode::InvalidClient,
            status: StatusCode::UNAUTHORIZED,
            description,
        }
    }

    pub(crate) fn unsupported_grant_type() -> Self {
        Self {
            code: ErrorCode::UnsupportedGrantType,
            status: StatusCode::BAD_REQUEST,
            description: "grant_type must be authorization_code, refresh_token or client_credentials",
        }
    }

    pub(crate) fn server_error(status: StatusCode) -> Self {
        Self {
            code: ErrorCode::ServerError(status),
            status,
            description: "the authorization server failed to handle the request",
        }
    }

    pub(crate) fn user_action(consent: bool) -> Self {
        Self {
            code: ErrorCode::UserAction { consent },
            status: StatusCode::BAD_REQUEST,
            description: if consent {
                "the user or administrator has not consented to use the application"
            } else {
                "the user must sign in interactively (multi-factor authentication)"
            },
        }
    }

    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            code: ErrorCode::RateLimited { retry_after_secs },
            status: StatusCode::TOO_MANY_REQUESTS,
            description: "too many token requests; retry later",
        }
    }

    /// The RFC 6749 `error` value.
    fn rfc6749_code(&self) -> &'static str {
        match self.code {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant(_) => "invalid_grant",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::ServerError(_) => "server_error",
            // RFC 6749 has no rate-limit code; `temporarily_unavailable` is its registered
            // transient-failure code, so generic clients classify it as retryable.
            ErrorCode::RateLimited { .. } => "temporarily_unavailable",
            ErrorCode::UserAction { consent: true } => "consent_required",
            ErrorCode::UserAction { consent: false } => "interaction_required",
        }
    }

    /// Microsoft's `AADSTS` number for the failure.
    fn aadsts(&self) -> u32 {
        match self.code {
            ErrorCode::InvalidGrant(_) => 70008,
            ErrorCode::InvalidClient => 7_000_215,
            ErrorCode::UserAction { consent: true } => 65001,
            ErrorCode::UserAction { consent: false } => 50076,
            ErrorCode::UnsupportedGrantType => 70003,
            ErrorCode::InvalidRequest => 900_144,
            ErrorCode::ServerError(_) => 90033,
            ErrorCode::RateLimited { .. } => 90055,
        }
    }

    /// HubSpot's `status` and `category` values.
    fn hubspot_status_and_category(&self) -> (&'static str, &'static str) {
        match self.code {
            ErrorCode::InvalidRequest => ("BAD_REQUEST", "VALIDATION_ERROR"),
            ErrorCode::InvalidClient => ("BAD_CLIENT_ID", "INVALID_AUTHENTICATION"),
            ErrorCode::InvalidGrant(GrantKind::Refresh) => {
                ("BAD_REFRESH_TOKEN", "INVALID_AUTHENTICATION")
            }
            ErrorCode::InvalidGrant(GrantKind::Code) => ("BAD_AUTH_CODE", "INVALID_AUTHENTICATION"),
            ErrorCode::UnsupportedGrantType => ("BAD_GRANT_TYPE", "VALIDATION_ERROR"),
            ErrorCode::ServerError(_) => ("INTERNAL_ERROR", "INTERNAL_ERROR"),
            ErrorCode::RateLimited { .. } => ("RATE_LIMITS", "RATE_LIMITS"),
            ErrorCode::UserAction { .. } => ("BAD_REFRESH_TOKEN", "INVALID_AUTHENTICATION"),
        }
    }

    /// Slack's `error` value. Slack answers 200 for every refusal.
    fn slack_code(&self) -> &'static str {
        match self.code {
            ErrorCode::InvalidRequest => "invalid_arguments",
            ErrorCode::InvalidClient => "invalid_client_id",
            ErrorCode::InvalidGrant(GrantKind::Refresh) => "invalid_refresh_token",
            ErrorCode::InvalidGrant(GrantKind::Code) => "invalid_code",
            ErrorCode::UnsupportedGrantType => "invalid_grant_type",
            ErrorCode::ServerError(_) => "fatal_error",
            ErrorCode::RateLimited { .. } => "ratelimited",
            ErrorCode::UserAction { .. } => "invalid_refresh_token",
        }
    }

    /// GitHub's `error` value.
    fn github_code(&self) -> &'static str {
        match self.code {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "incorrect_client_credentials",
            ErrorCode::InvalidGrant(GrantKind::Refresh) => "bad_refresh_token",
            ErrorCode::InvalidGrant(GrantKind::Code) => "bad_verification_code",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::ServerError(_) => "server_error",
            ErrorCode::RateLimited { .. } => "rate_limited",
            ErrorCode::UserAction { .. } => "bad_refresh_token",
        }
    }

    /// The HTTP status a dialect answers with: Slack and GitHub refuse with 200, and keep
    /// 429 and server errors; Zoho refuses a grant with 200 and throttles with 400.
    fn status_in(&self, dialect: Dialect) -> StatusCode {
        match (dialect, self.code) {
            (Dialect::Zoho | Dialect::Facebook, ErrorCode::RateLimited { .. }) => {
                StatusCode::BAD_REQUEST
            }
            (Dialect::Zoho, ErrorCode::InvalidGrant(_)) => StatusCode::OK,
            (_, ErrorCode::RateLimited { .. } | ErrorCode::ServerError(_)) => self.status,
            (Dialect::Slack | Dialect::Github, _) => StatusCode::OK,
            _ => self.status,
        }
    }

    pub(crate) fn into_response(self, dialect: Dialect) -> Response {
        let status = self.status_in(dialect);
        let mut response = match dialect {
            Dialect::Slack => (
                status,
                Json(serde_json::json!({ "ok": false, "error": self.slack_code() })),
            )
                .into_response(),
            Dialect::Github => (
                status,
                Json(serde_json::json!({
                    "error": self.github_code(),
                    "error_description": self.description,
                    "error_uri": "https://docs.github.com/apps/troubleshooting",
                })),
            )
                .into_response(),
            Dialect::Facebook => {
                let (code, subcode) = match self.code {
                    ErrorCode::InvalidGrant(_) | ErrorCode::UserAction { .. } => (190, 463),
                    ErrorCode::InvalidClient => (101, 0),
                    ErrorCode::RateLimited { .. } => (4, 0),
                    ErrorCode::ServerError(_) => (2, 0),
                    ErrorCode::InvalidRequest | ErrorCode::UnsupportedGrantType => (100, 0),
                };
                (
                    status,
                    Json(serde_json::json!({
                        "error": {
                            "message": self.description,
                            "type": "OAuthException",
                            "code": code,
                            "error_subcode": subcode,
                            "fbtrace_id": secrets::uuid_like(),
                        }
                    })),
                )
                    .into_response()
            }
            Dialect::Zoho => match self.code {
                ErrorCode::RateLimited { .. } => (
                    status,
                    Json(serde_json::json!({
                        "error": "Access Denied",
                        "error_description": "You have made too many requests continuously. Please try again after some time.",
                        "status": "failure",
                    })),
                )
                    .into_response(),
                ErrorCode::InvalidGrant(_) => {
                    (status, Json(serde_json::json!({ "error": "invalid_code" }))).into_response()
                }
                _ => (
                    status,
                    Json(serde_json::json!({
                        "error": self.rfc6749_code(),
                        "error_description": self.description,
                    })),
                )
                    .into_response(),
            },
            Dialect::Microsoft => {
                // Consent reads as invalid_grant with AADSTS65001; MFA has its own code.
                let error = match self.code {
                    ErrorCode::UserAction { consent: true } => "invalid_grant",
                    _ => self.rfc6749_code(),
                };
                (
                    status,
                    Json(serde_json::json!({
                        "error": error,
                        "error_description": format!("AADSTS{}: {}", self.aadsts(), self.description),
                        "error_codes": [self.aadsts()],
                        "trace_id": secrets::uuid_like(),
                        "correlation_id": secrets::uuid_like(),
                    })),
                )
                    .into_response()
            }
            Dialect::Rfc6749 | Dialect::Notion | Dialect::Salesforce => (
                self.status,
                Json(Rfc6749Body {
                    error: self.rfc6749_code(),
                    error_description: self.description,
                }),
            )
                .into_response(),
            Dialect::Hubspot => {
                let (status, category) = self.hubspot_status_and_category();
                (
                    self.status,
                    Json(HubspotBody {
                        status,
                        message: self.description,
                        correlation_id: secrets::uuid_like(),
                        category,
                    }),
                )
                    .into_response()
            }
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self.code {
            // RFC 6749 §5.2 asks for a challenge naming the scheme the client may use.
            ErrorCode::InvalidClient if status == StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tokend-sandbox\""),
                );
            }
            // Zoho says when to come back in no header.
            ErrorCode::RateLimited { retry_after_secs }
                if !matches!(dialect, Dialect::Zoho | Dialect::Facebook) =>
            {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

impl From<GrantError> for OAuthError {
    fn from(err: GrantError) -> Self {
        Self {
            code: ErrorCode::InvalidGrant(err.kind),
            status: StatusCode::BAD_REQUEST,
            description: err.description,
        }
    }
}

#[derive(Serialize)]
struct Rfc6749Body {
    error: &'static str,
    error_description: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HubspotBody {
    status: &'static str,
    message: &'static str,
    correlation_id: String,
    category: &'static str,
}
