//! The read-only web console on the admin listener: the connections table
//! (searched by id prefix, filtered by provider and status, paged on the
//! server), each connection's page with its recent events, provider health
//! and a chart of the last hour's refreshes. Server-rendered HTML (maud), no
//! script at all. It never shows a token: records are rendered from their
//! metadata only (`ConnectionMeta`-like fields, never `tokens.*_token`).
//!
//! Who may look: with identities configured, an `admin` identity, its API
//! key given as the password of HTTP Basic authentication (any user name)
//! or as `x-api-key`, with failed logins rate limited and audited; open,
//! only a loopback peer that names this listener as a loopback host
//! (`gate.rs`).

mod gate;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{Html, IntoResponse, Response},
};
use base64::Engine as _;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use tokend_core::{Connection, ConnectionId, ProviderName, Status, Timestamp};
use tokend_store::ListQuery;

use tokend_engine::{Engine, feed::Feed, metrics::Metrics};

use crate::{audit::AuditLog, auth::Authenticator, auth::Permission};

pub(crate) use gate::Gate;

/// Rows per page.
const PAGE: usize = 50;

/// What the console reads.
#[derive(Clone)]
pub(crate) struct Console {
    pub engine: Arc<Engine>,
    pub feed: Arc<Feed>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    /// Where failed and refused logins are written.
    pub audit: AuditLog,
    /// The login limiter and the listener's port.
    pub gate: Arc<Gate>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    q: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    after: String,
}

impl Console {
    /// Whether this request may see the console; if not, the answer.
    fn admit(&self, headers: &HeaderMap, uri: &Uri, peer: SocketAddr) -> Result<(), Response> {
        let now = self.engine.now();
        if self.auth.is_open() {
            if !peer.ip().is_loopback() {
                return Err(refused());
            }
            if !self.gate.names_loopback(headers, uri) {
                self.audit.admin_refusal(
                    now,
                    "local",
                    peer,
                    "PERMISSION_DENIED",
                    "CONSOLE_HOST_REFUSED",
                );
                return Err(misdirected());
            }
            return Ok(());
        }
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| basic_password(headers));
        // No key: the browser has not asked its user yet. Not a login.
        let Some(key) = key else {
            return Err(refused());
        };
        if let Some(wait) = self.gate.wait(peer) {
            self.audit.admin_refusal(
                now,
                "unauthenticated",
                peer,
                "RESOURCE_EXHAUSTED",
                "CONSOLE_LOGIN_RATE_LIMITED",
            );
            return Err(too_many(wait));
        }
        match self.auth.caller_for_key(&key) {
            Some(c) if c.may_everywhere(Permission::Admin) => Ok(()),
            Some(c) => {
                self.gate.failed(peer);
                self.audit.admin_refusal(
                    now,
                    &c.name,
                    peer,
                    "PERMISSION_DENIED",
                    "CONSOLE_NOT_ADMIN",
                );
                Err(refused())
            }
            None => {
                self.gate.failed(peer);
                self.audit.admin_refusal(
                    now,
                    "unauthenticated",
                    peer,
                    "UNAUTHENTICATED",
                    "CONSOLE_LOGIN_FAILED",
                );
                Err(refused())
            }
        }
    }
}

/// The password of `Authorization: Basic`, which carries the API key.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, key)| key.to_owned())
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"tokend\", charset=\"UTF-8\"",
        )],
        "an admin API key is needed (as the password)\n",
    )
        .into_response()
}

/// Too many failed logins from this address, or from everywhere.
fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.max(1).to_string())],
        "too many failed logins; retry later\n",
    )
        .into_response()
}

/// An open console asked for by another host name (DNS rebinding).
fn misdirected() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this console answers only to localhost, 127.0.0.1 or [::1] with its own port\n",
    )
        .into_response()
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tokend" }
                style { (STYLE) }
            }
            body {
                header { a href="/" { "tokend" } " console" }
                main { (body) }
            }
        }
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}\
header{background:#1f2933;color:#fff;padding:10px 16px;font-weight:600}\
header a{color:#fff;text-decoration:none}main{padding:16px}\
table{border-collapse:collapse;width:100%;margin:8px 0 16px}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e4e7eb}\
th{background:#f5f7fa}.reconnect_required{color:#b42318;font-weight:600}\
.active{color:#067647}.err{color:#b42318}form{margin:8px 0}\
input,select{margin-right:8px}dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}\
dt{color:#52606d}";

/// Seconds from `now` to `at`, as people say it.
fn until(at: Timestamp, now: Timestamp) -> String {
    if at <= now {
        return "expired".into();
    }
    let s = at.duration_since(now).as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn when(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "—".into(), crate::convert::rfc3339)
}

/// `GET /`: providers, the last hour, and the connections table.
pub(crate) async fn index(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    if let Err(refusal) = console.admit(&headers, &uri, peer) {
        return refusal;
    }
    let engine = &console.engine;
    let now = engine.now();
    let query = ListQuery {
        after: ConnectionId::new(filters.after.as_str()).ok(),
        limit: PAGE + 1,
        provider: ProviderName::new(filters.provider.as_str()).ok(),
        status: Status::parse(&filters.status),
        prefix: (!filters.q.is_empty()).then(|| filters.q.clone()),
    };
    let mut rows = match engine.list(&query).await {
        Ok(rows) => rows,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot list: {e}\n"),
            )
                .into_response();
        }
    };
    let more = rows.len() > PAGE;
    rows.truncate(PAGE);
    let providers: Vec<ProviderName> = engine.provider_names().cloned().collect();
    let (chart, totals) = {
        let history = console.metrics.history();
        (
            history.last_hour(now.unix_millis()),
            history.by_provider.clone(),
        )
    };
    let next = rows.last().filter(|_| more).map(|c| {
        format!(
            "/?q={}&provider={}&status={}&after={}",
            urlencode(&filters.q),
            urlencode(&filters.provider),
            urlencode(&filters.status),
            urlencode(c.id.as_str())
        )
    });
    let body = html! {
        h2 { "Providers" }
        table #providers {
            tr { th { "provider" } th { "refreshes ok / failed (since start)" } th { "success rate" } th { "breaker" } }
            @for p in &providers {
                @let (ok, failed) = totals.get(p.as_str()).copied().unwrap_or((0, 0));
                @let trouble = engine.provider_trouble(p);
                tr {
                    td { (p.as_str()) }
                    td { (ok) " / " (failed) }
                    td { @if ok + failed == 0 { "—" } @else { (format!("{:.1} %", 100.0 * ok as f64 / (ok + failed) as f64)) } }
                    td {
                        @match &trouble {
                            Some(e) => span.err { "open: " (e.code) " (" (e.class.as_str()) ")" },
                            None => "closed",
                        }
                    }
                }
            }
        }
        h2 { "Refreshes, last hour" }
        (bars(&chart))
        h2 { "Connections" }
        form method="get" action="/" {
            input type="search" name="q" placeholder="id starts with" value=(filters.q);
            select name="provider" {
                option value="" { "any provider" }
                @for p in &providers {
                    option value=(p.as_str()) selected[filters.provider == p.as_str()] { (p.as_str()) }
                }
            }
            select name="status" {
                option value="" { "any status" }
                option value="active" selected[filters.status == "active"] { "active" }
                option value="reconnect_required" selected[filters.status == "reconnect_required"] { "reconnect required" }
            }
            button type="submit" { "Filter" }
        }
        table #connections {
            tr { th { "connection" } th { "provider" } th { "status" } th { "token expires in" } th { "last refresh" } th { "next refresh" } th { "last error" } }
            @for c in &rows {
                tr {
                    td { a href=(format!("/connections/{}", urlencode(c.id.as_str()))) { (c.id.as_str()) } }
                    td { (c.provider.as_str()) }
                    td class=(c.status.as_str()) { (c.status.as_str()) }
                    td { (until(c.tokens.expires_at, now)) }
                    td { (when(c.last_refresh_at)) }
                    td { (when(engine.next_due(&c.id))) }
                    td { @if let Some(e) = &c.last_error { span.err { (e.code) } } }
                }
            }
        }
        @if rows.is_empty() { p { "No connection matches." } }
        @if let Some(next) = next { p { a #next href=(next) { "Next page →" } } }
    };
    Html(page("Connections", body).into_string()).into_response()
}

/// `GET /connections/{id}`: one connection and its recent events.
pub(crate) async fn connection(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = console.admit(&headers, &uri, peer) {
        return refusal;
    }
    let Ok(id) = ConnectionId::new(id.as_str()) else {
        return (StatusCode::BAD_REQUEST, "not a connection id\n").into_response();
    };
    let engine = &console.engine;
    let record: Arc<Connection> = match engine.cached(&id).await {
        Ok(c) => c,
        Err(_) => return (StatusCode::NOT_FOUND, "no such connection\n").into_response(),
    };
    let now = engine.now();
    let events = console.feed.recent_for(id.as_str(), 20);
    let body = html! {
        h2 { (record.id.as_str()) }
        dl #details {
            dt { "provider" } dd { (record.provider.as_str()) }
            dt { "account" } dd { (record.account_id) }
            dt { "status" } dd class=(record.status.as_str()) { (record.status.as_str()) }
            @if let Some(cause) = record.reconnect_cause { dt { "reconnect cause" } dd { (cause.as_str()) } }
            dt { "token version" } dd { (record.version) }
            dt { "scopes" } dd { (record.tokens.scopes.join(" ")) }
            dt { "token expires" } dd { (crate::convert::rfc3339(record.tokens.expires_at)) " (" (until(record.tokens.expires_at, now)) ")" }
            dt { "last refresh" } dd { (when(record.last_refresh_at)) }
            dt { "next refresh" } dd { (when(engine.next_due(&record.id))) }
            @if let Some(e) = &record.last_error {
                dt { "last error" }
                dd.err {
                    (e.code) " — " (e.class.as_str())
                    @if let Some(s) = e.http_status { " — HTTP " (s) }
                    @if let Some(c) = &e.correlation_id { " — provider correlation id " code { (c) } }
                    br; (e.message) " (" (crate::convert::rfc3339(e.at)) ")"
                }
            }
        }
        h3 { "Recent events" }
        table #events {
            tr { th { "#" } th { "event" } th { "at" } th { "cause" } }
            @for e in &events {
                tr {
                    td { (e.seq) }
                    td { (e.kind.as_str()) }
                    td { (crate::convert::rfc3339(e.at)) }
                    td { @if let Some(c) = e.cause { (c.as_str()) } }
                }
            }
        }
        @if events.is_empty() { p { "No recent event in memory." } }
    };
    Html(page(record.id.as_str(), body).into_string()).into_response()
}

/// The last hour as inline SVG bars: successes up, failures down.
fn bars(minutes: &[(u64, u64)]) -> Markup {
    let peak = minutes
        .iter()
        .map(|(a, b)| (*a).max(*b))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (w, half) = (8.0, 40.0);
    html! {
        svg #chart width=(minutes.len() as f64 * w) height=(half * 2.0 + 2.0) role="img" aria-label="refreshes per minute, last hour: successes above the line, failures below" {
            line x1="0" y1=(half) x2=(minutes.len() as f64 * w) y2=(half) stroke="#9aa5b1" {}
            @for (i, (ok, failed)) in minutes.iter().enumerate() {
                @let x = i as f64 * w;
                @let up = half * (*ok as f64) / peak;
                @let down = half * (*failed as f64) / peak;
                rect x=(x) y=(half - up) width=(w - 1.0) height=(up) fill="#12b76a" {}
                rect x=(x) y=(half) width=(w - 1.0) height=(down) fill="#f04438" {}
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
