//! The HTTP sender: one signed POST per delivery, https only (plain http
//! only to loopback), no redirects, bounded in time and in how much of the
//! answer is read. The URL comes from the operator's config, never from a
//! request.

use std::time::Duration;

use reqwest::{StatusCode, Url, header};

use crate::sign::{Secret, sign};

/// Limits of every delivery.
#[derive(Clone, Debug)]
pub struct SenderSettings {
    pub connect_timeout: Duration,
    /// The whole request, answer included.
    pub timeout: Duration,
    /// How much of an answer is read; the rest is dropped unread.
    pub max_response_bytes: usize,
}

impl Default for SenderSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// One message to one endpoint.
pub struct Delivery<'a> {
    pub url: &'a Url,
    pub secret: &'a Secret,
    /// `webhook-id`: the same on every attempt, so receivers can drop
    /// duplicates.
    pub id: &'a str,
    /// `webhook-timestamp`, unix seconds, of this attempt.
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// How an attempt went.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// Anything else. `error` is for operators and never holds the URL's
    /// query or credentials.
    Failed {
        error: String,
        /// The endpoint's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
}

/// Sends deliveries. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    max_response_bytes: usize,
}

impl Sender {
    pub fn new(settings: &SenderSettings) -> Result<Sender, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            // A redirect would send signed events somewhere the operator
            // did not configure.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokend-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {}", e.without_url()))?;
        Ok(Sender {
            http,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    pub async fn send(&self, d: Delivery<'_>) -> Outcome {
        let signature = sign(d.secret, d.id, d.timestamp, d.body);
        let sent = self
            .http
            .post(d.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", d.id)
            .header("webhook-timestamp", d.timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return Outcome::Failed {
                    error: format!("{kind}: {}", error_chain(&e.without_url())),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), d.timestamp);
        // Read (and drop) at most the cap, so the connection can be reused
        // and a huge answer costs nothing.
        let mut read = 0;
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Outcome::Delivered
        } else {
            Outcome::Failed {
                error: describe(status),
                retry_after,
            }
        }
    }
}

fn describe(status: StatusCode) -> String {
    if status.is_redirection() {
        format!("http {} (redirects are not followed)", status.as_u16())
    } else {
        format!("http {}", status.as_u16())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After` in seconds or as an HTTP date (`now`: unix seconds).
fn retry_after(headers: &header::HeaderMap, now: i64) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

/// A webhook URL as the config gives it: https, or plain http to a
/// loopback host only.
pub fn check_url(raw: &str) -> Result<Url, String> {
    let url: Url = raw.parse().map_err(|e| format!("invalid url: {e}"))?;
    let loopback = url.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(
            "url must be https:// (plain http:// is allowed to loopback only): events would cross the network unencrypted"
                .into(),
        ),
        other => Err(format!("url scheme {other}:// is not http(s)")),
    }
}

/// The URL as shown to operators: scheme, host, port and path; no
/// credentials, no query.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_to_loopback() {
        assert!(check_url("https://hooks.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:9000/x").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://[::1]:80/x").is_ok());
        assert!(
            check_url("http://hooks.example.com/x")
                .unwrap_err()
                .contains("https")
        );
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
        let url = check_url("https://user:pw@hooks.example.com/x?token=abc").unwrap();
        assert_eq!(redacted(&url), "https://hooks.example.com/x");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        let now = 1_445_412_000; // 2015-10-21T07:20:00Z
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(480)));
        assert_eq!(
            retry_after(&h, now + 3600),
            Some(Duration::ZERO),
            "a past date"
        );
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
