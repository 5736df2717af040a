//! What token answers share: the headers that keep them out of caches, and
//! the 200 cut off mid-stream that the `MalformedBody` and lost-answer
//! faults serve.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

/// What a `MalformedBody` fault serves: a token response cut off mid-stream (no secret in it).
const TRUNCATED_TOKEN_RESPONSE: &str = r#"{"token_type":"bearer","expires_in":1800,"access_tok"#;

/// RFC 6749 §5.1: responses carrying tokens must not be cached.
pub(crate) fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A 200 token response cut off mid-stream (no secret in it).
pub(crate) fn truncated_token_response() -> Response {
    let mut response = Response::new(Body::from(TRUNCATED_TOKEN_RESPONSE));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(response.headers_mut());
    response
}
