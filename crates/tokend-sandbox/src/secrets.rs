//! Random token and id generation, constant-time comparison and the PKCE S256 transform.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Prefix of access tokens, so leak scans can recognise them.
pub(crate) const ACCESS_PREFIX: &str = "sbx_at_";
/// Prefix of refresh tokens.
pub(crate) const REFRESH_PREFIX: &str = "sbx_rt_";
/// Prefix of authorization codes.
pub(crate) const CODE_PREFIX: &str = "sbx_code_";

/// 256 bits of entropy per credential: 43 URL-safe characters after the prefix.
const CREDENTIAL_BYTES: usize = 32;

/// A fresh random credential: `prefix` followed by base64url (no padding) of 32 random bytes.
///
/// `rand::rng()` is a thread-local CSPRNG seeded from the OS, so this is cheap (no syscall per
/// token) and safe to call from every request concurrently.
pub(crate) fn credential(prefix: &str) -> String {
    let mut bytes = [0u8; CREDENTIAL_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(prefix.len() + 44);
    out.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    out
}

/// A random id in the 8-4-4-4-12 hex layout of a version-4 UUID (request and correlation ids).
pub(crate) fn uuid_like() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Set the version (4) and variant (RFC 4122) bits so the id looks like what real providers emit.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Compares two byte strings without an early exit on the first difference, so response timing
/// does not reveal how much of a client secret or PKCE challenge was right. Lengths are not secret.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `BASE64URL-NOPAD(SHA256(verifier))`, the S256 code challenge of RFC 7636 §4.2.
pub(crate) fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_prefixed_url_safe_and_distinct() {
        let a = credential(ACCESS_PREFIX);
        let b = credential(ACCESS_PREFIX);
        assert_ne!(a, b);
        let body = a.strip_prefix(ACCESS_PREFIX).expect("prefix");
        assert_eq!(body.len(), 43);
        assert!(
            body.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn uuid_like_has_uuid_v4_shape() {
        let id = uuid_like();
        assert_eq!(id.len(), 36);
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'));
    }

    #[test]
    fn constant_time_eq_matches_plain_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
