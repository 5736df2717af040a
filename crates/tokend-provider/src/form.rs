//! `application/x-www-form-urlencoded` encoding of one component, as RFC
//! 6749 §2.3.1 asks for the client id and secret of HTTP Basic
//! authentication (and as the redactor looks for them in an echo).

/// Percent-encodes per `application/x-www-form-urlencoded`, as RFC 6749
/// §2.3.1 asks for Basic credentials.
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._*".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_for_basic_auth() {
        assert_eq!(form_encode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(form_encode("plain-id_1.x"), "plain-id_1.x");
    }
}
