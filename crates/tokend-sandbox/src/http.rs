//! The axum router: the token endpoint, the protected `/api/me` resource and shared middleware.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::Dialect;
use crate::answer::{no_store, truncated_token_response};
use crate::control;
use crate::error::OAuthError;
use crate::form::{self, TokenForm};
use crate::secrets;
use crate::state::{FaultAction, Granted, Provider, Shared};

/// Token requests are a handful of short fields; 16 KiB leaves ample room and caps abuse.
const TOKEN_BODY_LIMIT: usize = 16 * 1024;
/// Control requests carry an account id and a scope list.
const CONTROL_BODY_LIMIT: usize = 64 * 1024;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) fn router(provider: Shared) -> Router {
    Router::new()
        .route(
            "/oauth/token",
            // The route-level limit overrides the router-wide one below.
            post(token).layer(DefaultBodyLimit::max(TOKEN_BODY_LIMIT)),
        )
        .route(
            "/oauth/revoke",
            post(revoke).layer(DefaultBodyLimit::max(TOKEN_BODY_LIMIT)),
        )
        .route("/api/me", get(api_me))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route(
            "/oauth/register",
            post(register).layer(DefaultBodyLimit::max(TOKEN_BODY_LIMIT)),
        )
        .merge(control::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(CONTROL_BODY_LIMIT))
        // Outermost, so every response (404s, 405s and rejections included) gets an id.
        .layer(middleware::map_response(add_request_id))
        .with_state(provider)
}

async fn add_request_id(mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(&secrets::uuid_like()) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not_found" })),
    )
        .into_response()
}

/// `POST /oauth/token`.
///
/// The body is taken as a `Result` so that an oversized or unreadable body is answered with an
/// OAuth error in the configured dialect instead of axum's plain-text rejection.
async fn token(
    State(provider): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<crate::client_auth::PeerCert>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let dialect = provider.dialect();
    let trace_parent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let mut lost = None;
    if let Some(fault) = provider.begin_token_request(trace_parent) {
        tracing::debug!(?fault, "sandbox: serving injected fault");
        if let FaultAction::LostAnswer { answer, hang } = fault {
            lost = Some((answer, hang));
        }
        let received = body.as_ref().map(|b| b.as_ref()).unwrap_or_default();
        if let Some(response) = apply_fault(dialect, fault, &headers, received).await {
            return response;
        }
    }
    let line = peer.1.clone();
    let handled = handle_token(&provider, peer, &uri, &headers, body);
    if let Some((answer, hang)) = lost {
        // The request took effect (a refresh rotated, a code was spent);
        // only its answer is lost.
        provider.record_lost_answer(handled.is_ok());
        return crate::lost::serve(dialect, answer, hang, &line).await;
    }
    match handled {
        Ok(granted) => token_response(dialect, &granted),
        Err(err) => {
            tracing::debug!(
                error = ?err.code,
                description = err.description,
                "sandbox: token request rejected"
            );
            err.into_response(dialect)
        }
    }
}

fn handle_token(
    provider: &Provider,
    peer: crate::client_auth::PeerCert,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Granted, OAuthError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => OAuthError::invalid_request_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is too large",
        ),
        _ => OAuthError::invalid_request("request body could not be read"),
    })?;
    let form = match provider.dialect() {
        // Notion takes a JSON body, and its client authenticates with HTTP Basic only.
        Dialect::Notion => {
            if headers.get(header::AUTHORIZATION).is_none() {
                return Err(OAuthError::invalid_client(
                    "HTTP Basic client authentication is required",
                ));
            }
            TokenForm::parse_json(headers, &body)?
        }
        _ => TokenForm::parse(headers, &body)?,
    };

    provider.record_request(crate::SeenRequest {
        params: form.redacted(),
        query: form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        headers: headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        basic_auth: headers.get(header::AUTHORIZATION).is_some(),
    });
    let public = headers.get(header::AUTHORIZATION).is_none()
        && form.get("client_secret").is_none()
        && form
            .get("client_id")
            .is_some_and(|id| provider.is_public_client(id));
    if let Some(assertion) = form.get("client_assertion") {
        authenticate_assertion(provider, uri, headers, &form, assertion)?;
    } else if headers.get(header::AUTHORIZATION).is_none()
        && form.get("client_secret").is_none()
        && form.get("client_id").is_some_and(|id| {
            secrets::constant_time_eq(id.as_bytes(), provider.client_id().as_bytes())
        })
        && provider.tls_client_matches(peer.0)
    {
        // RFC 8705 §2.1: the certificate the TLS handshake verified is the
        // client's credential.
    } else if provider.wants_credentials_in_both() {
        let (Some(basic), Some(id), Some(secret)) = (
            headers.get(header::AUTHORIZATION),
            form.get("client_id"),
            form.get("client_secret"),
        ) else {
            return Err(OAuthError::invalid_client(
                "client credentials are required in HTTP Basic and in the body",
            ));
        };
        let (basic_id, basic_secret) = form::parse_basic(basic.as_bytes())?;
        if !provider.authenticate(basic_id.as_bytes(), basic_secret.as_bytes())
            || !provider.authenticate(id.as_bytes(), secret.as_bytes())
        {
            return Err(OAuthError::invalid_client("client authentication failed"));
        }
    } else if !public {
        let client = form::client_credentials(headers, &form)?;
        if !provider.authenticate(client.id.as_bytes(), client.secret.as_bytes()) {
            return Err(OAuthError::invalid_client("client authentication failed"));
        }
    }

    match form.get("grant_type") {
        Some("authorization_code") => {
            let code = form.require("code", "code is required")?;
            Ok(provider.redeem_code(code, form.get("redirect_uri"), form.get("code_verifier"))?)
        }
        Some("refresh_token") => {
            // Anything else HubSpot-style clients send along (redirect_uri, scope) is ignored.
            let refresh_token = form.require("refresh_token", "refresh_token is required")?;
            Ok(provider.refresh(refresh_token)?)
        }
        Some("client_credentials") => Ok(provider.client_credentials(form.get("scope"))),
        Some("fb_exchange_token") => {
            let token = form.require("fb_exchange_token", "fb_exchange_token is required")?;
            Ok(provider.exchange_access_token(token)?)
        }
        _ => Err(OAuthError::unsupported_grant_type()),
    }
}

/// RFC 7523 §3: a signed assertion in place of a secret, for the
/// registered client, addressed to this very endpoint.
fn authenticate_assertion(
    provider: &Provider,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    form: &TokenForm,
    assertion: &str,
) -> Result<(), OAuthError> {
    if form.get("client_assertion_type") != Some(crate::client_auth::ASSERTION_TYPE) {
        return Err(OAuthError::invalid_client(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    if headers.get(header::AUTHORIZATION).is_some() || form.get("client_secret").is_some() {
        return Err(OAuthError::invalid_request(
            "use one client authentication method",
        ));
    }
    let Some(verifier) = provider.assertion_verifier() else {
        return Err(OAuthError::invalid_client(
            "the client has no key registered for private_key_jwt",
        ));
    };
    if form
        .get("client_id")
        .is_some_and(|id| id != provider.client_id())
    {
        return Err(OAuthError::invalid_client("client authentication failed"));
    }
    let audience = format!("{}{}", origin(provider, uri, headers), uri.path());
    verifier.verify(assertion, provider.client_id(), &audience)
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    account_id: &'a str,
}

fn token_response(dialect: Dialect, granted: &Granted) -> Response {
    let body = TokenBody {
        access_token: &granted.access_token,
        refresh_token: granted.refresh_token.as_deref(),
        token_type: "bearer",
        expires_in: granted.expires_in,
        scope: granted.scopes.join(" "),
        account_id: &granted.account_id,
    };
    let mut response = match dialect {
        Dialect::Rfc6749 | Dialect::Hubspot | Dialect::Microsoft | Dialect::Zoho => {
            Json(body).into_response()
        }
        Dialect::Facebook => Json(serde_json::json!({
            "access_token": body.access_token,
            "token_type": "bearer",
            "expires_in": body.expires_in,
        }))
        .into_response(),
        Dialect::Salesforce => Json(serde_json::json!({
            "access_token": body.access_token,
            "refresh_token": body.refresh_token,
            "signature": "c2FuZGJveA==",
            "scope": body.scope,
            "instance_url": format!("https://{}.my.salesforce.com", body.account_id),
            "id": format!("https://login.salesforce.com/id/00D000000000001/{}", body.account_id),
            "token_type": "Bearer",
            "issued_at": "1700000000000",
        }))
        .into_response(),
        // A user token, as Slack gives it when only user scopes were granted.
        Dialect::Slack => Json(serde_json::json!({
            "ok": true,
            "app_id": "A0SANDBOX",
            "authed_user": {
                "id": format!("U{}", granted.account_id),
                "scope": body.scope,
                "access_token": body.access_token,
                "token_type": "user",
                "refresh_token": body.refresh_token,
                "expires_in": body.expires_in,
            },
            "team": { "id": body.account_id },
        }))
        .into_response(),
        Dialect::Github => Json(serde_json::json!({
            "access_token": body.access_token,
            "expires_in": body.expires_in,
            "refresh_token": body.refresh_token,
            "refresh_token_expires_in": 15_897_600,
            "scope": body.scope,
            "token_type": "bearer",
        }))
        .into_response(),
        Dialect::Notion => Json(serde_json::json!({
            "access_token": body.access_token,
            "token_type": "bearer",
            "refresh_token": body.refresh_token,
            "expires_in": body.expires_in,
            "bot_id": "sandbox-bot",
            "workspace_id": body.account_id,
            "workspace_name": "Sandbox",
        }))
        .into_response(),
    };
    no_store(response.headers_mut());
    response
}

/// Serves a fault's canned response, or for a latency fault waits and returns `None` so the
/// request is then handled normally.
async fn apply_fault(
    dialect: Dialect,
    fault: FaultAction,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let response = match fault {
        FaultAction::Latency(delay) => {
            tokio::time::sleep(delay).await;
            return None;
        }
        FaultAction::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            OAuthError::server_error(status).into_response(dialect)
        }
        FaultAction::RateLimited { retry_after_secs } => {
            OAuthError::rate_limited(retry_after_secs).into_response(dialect)
        }
        FaultAction::InvalidClient => {
            OAuthError::invalid_client("client authentication failed").into_response(dialect)
        }
        FaultAction::ConsentRequired => OAuthError::user_action(true).into_response(dialect),
        FaultAction::InteractionRequired => OAuthError::user_action(false).into_response(dialect),
        FaultAction::EchoSecrets(encoding) => crate::echo::response(encoding, headers, body),
        FaultAction::MalformedBody => truncated_token_response(),
        // Handled in `token`: the request is served first, then its answer lost.
        FaultAction::LostAnswer { .. } => return None,
    };
    Some(response)
}

/// `POST /oauth/revoke` (RFC 7009): the client authenticates as at the token endpoint;
/// any token, known or not, answers 200.
async fn revoke(
    State(provider): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let dialect = provider.dialect();
    let revoked = (|| {
        let body =
            body.map_err(|_| OAuthError::invalid_request("request body could not be read"))?;
        let form = TokenForm::parse(&headers, &body)?;
        let client = form::client_credentials(&headers, &form)?;
        if !provider.authenticate(client.id.as_bytes(), client.secret.as_bytes()) {
            return Err(OAuthError::invalid_client("client authentication failed"));
        }
        let token = form.require("token", "token is required")?;
        provider.revoke_token(token);
        Ok(())
    })();
    match revoked {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(dialect),
    }
}

/// This sandbox's origin as the client reached it (`http://127.0.0.1:PORT`):
/// its issuer, and the base of the audience its assertions must name.
fn origin(provider: &Provider, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str))
        .unwrap_or("127.0.0.1");
    format!("{}://{host}", provider.scheme())
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
async fn metadata(
    State(provider): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let issuer = origin(&provider, &uri, &headers);
    Json(serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "registration_endpoint": format!("{issuer}/oauth/register"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct Registration {
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    grant_types: Vec<String>,
    client_name: Option<String>,
}

/// `POST /oauth/register` (RFC 7591 §3): a new client, public or with a
/// secret, usable at the token endpoint from then on.
async fn register(State(provider): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let refuse = |code: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": code, "error_description": description })),
        )
            .into_response()
    };
    let Ok(body) = body else {
        return refuse("invalid_client_metadata", "the body could not be read");
    };
    let Ok(asked) = serde_json::from_slice::<Registration>(&body) else {
        return refuse("invalid_client_metadata", "the body is not client metadata");
    };
    let method = asked
        .token_endpoint_auth_method
        .as_deref()
        .unwrap_or("client_secret_basic");
    if !["client_secret_basic", "client_secret_post", "none"].contains(&method) {
        return refuse(
            "invalid_client_metadata",
            "token_endpoint_auth_method is not supported",
        );
    }
    if asked.grant_types.iter().any(|g| g == "authorization_code") && asked.redirect_uris.is_empty()
    {
        return refuse(
            "invalid_redirect_uri",
            "authorization_code clients need redirect_uris",
        );
    }
    let (client_id, client_secret) = provider.register_client(method != "none");
    let mut answer = serde_json::json!({
        "client_id": client_id,
        "client_id_issued_at": 0,
        "token_endpoint_auth_method": method,
        "redirect_uris": asked.redirect_uris,
        "grant_types": asked.grant_types,
        "client_name": asked.client_name,
    });
    if let Some(secret) = client_secret {
        answer["client_secret"] = secret.into();
        answer["client_secret_expires_at"] = 0.into();
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

#[derive(Serialize)]
struct MeBody<'a> {
    account_id: &'a str,
    scopes: &'a [String],
}

/// `GET /api/me` with `Authorization: Bearer <access token>` (RFC 6750 §2.1).
async fn api_me(State(provider): State<Shared>, headers: HeaderMap) -> Response {
    let Some(token) = bearer_token(&headers) else {
        provider.record_api_rejection();
        return invalid_token();
    };
    match provider.authorize_api_call(token) {
        Some((account_id, scopes)) => Json(MeBody {
            account_id: &account_id,
            scopes: &scopes,
        })
        .into_response(),
        None => invalid_token(),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn invalid_token() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": "invalid_token" })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}
