//! One test per encoding a provider may echo a secret in, and the words
//! redaction must leave alone.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::*;

/// A refresh token with every character the encodings treat differently:
/// `/ + = ~ * ' ( ) !`, a quote, a backslash, a space-free non-ASCII run.
const RT: &str = "rt/Ünï+cøde=~*'()!\"\\-5f3aK9xQ2mZ7";
const CLIENT_ID: &str = "client-42";
/// A client secret with a space and a colon (Basic must encode both).
const CS: &str = "cs s3cr3t:Zq8/Lp+Wn4=Vb6";

fn redactor() -> Redactor {
    let mut r = Redactor::new([RT]);
    r.basic(CLIENT_ID, CS);
    r
}

/// Percent-encodes every byte not in `safe` (and not ASCII alphanumeric);
/// a space as `+` when `plus`; hex digits in `upper` case or not.
fn percent(s: &str, safe: &str, plus: bool, upper: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || safe.as_bytes().contains(&b) {
            out.push(b as char);
        } else if plus && b == b' ' {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Every character but ASCII letters and digits as `\uXXXX` (UTF-16, so
/// non-BMP characters as surrogate pairs), as Python's `json.dumps` with
/// `ensure_ascii` and more.
fn json_u_escaped(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fn hex(s: &str, upper: bool) -> String {
    s.bytes()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Asserts `form` is redacted when echoed inside ordinary words, which stay.
fn assert_redacted(what: &str, form: &str) {
    let text = format!("invalid_grant: the token {form} is unknown");
    let out = redactor().redact(&text);
    assert_eq!(
        out, "invalid_grant: the token [redacted] is unknown",
        "{what}: {form}"
    );
}

#[test]
fn raw_secrets() {
    assert_redacted("raw refresh token", RT);
    assert_redacted("raw client secret", CS);
}

#[test]
fn form_encoded_as_on_the_wire() {
    // application/x-www-form-urlencoded (WHATWG): `*-._` kept, space `+`.
    assert_redacted("form", &percent(RT, "*-._", true, true));
    assert_redacted("form", &percent(CS, "*-._", true, true));
}

#[test]
fn python_quote_plus_and_quote() {
    assert_redacted("quote_plus", &percent(RT, "_.-~", true, true));
    assert_redacted("quote_plus", &percent(CS, "_.-~", true, true));
    assert_redacted("quote", &percent(CS, "_.-~/", false, true));
}

#[test]
fn encode_uri_component() {
    assert_redacted("encodeURIComponent", &percent(RT, "-_.!~*'()", false, true));
    assert_redacted("encodeURIComponent", &percent(CS, "-_.!~*'()", false, true));
}

#[test]
fn percent_encoding_of_every_byte_in_either_case() {
    assert_redacted("upper", &percent(RT, "", false, true));
    assert_redacted("lower", &percent(RT, "", false, false));
    assert_redacted("lower", &percent(CS, "", false, false));
    // And twice over.
    assert_redacted(
        "double",
        &percent(&percent(CS, "", false, true), "", false, true),
    );
}

#[test]
fn hex_of_the_bytes() {
    assert_redacted("hex lower", &hex(RT, false));
    assert_redacted("hex upper", &hex(RT, true));
    assert_redacted("hex upper", &hex(CS, true));
}

#[test]
fn base64_and_base64url() {
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        assert_redacted("base64", &engine.encode(RT));
        assert_redacted("base64", &engine.encode(CS));
    }
}

#[test]
fn basic_credentials_as_sent_and_as_many_clients_send_them() {
    let wire = format!(
        "{}:{}",
        crate::form::form_encode(CLIENT_ID),
        crate::form::form_encode(CS)
    );
    assert_redacted("Basic, RFC 6749", &STANDARD.encode(&wire));
    assert_redacted("Basic, RFC 6749", &URL_SAFE_NO_PAD.encode(&wire));
    assert_redacted(
        "Basic, unencoded",
        &STANDARD.encode(format!("{CLIENT_ID}:{CS}")),
    );
    // The decoded pair: the secret part goes, the client id stays.
    let out = redactor().redact(&format!("bad credentials {CLIENT_ID}:{CS}"));
    assert_eq!(out, format!("bad credentials {CLIENT_ID}:[redacted]"));
}

#[test]
fn json_escaped() {
    let serde = serde_json::to_string(RT).unwrap();
    assert_redacted("serde_json", &serde[1..serde.len() - 1]);
    assert_redacted("\\u escapes", &json_u_escaped(RT));
    assert_redacted("\\u escapes", &json_u_escaped(CS));
    assert_redacted("\\/", &CS.replace('/', "\\/"));
    // JSON inside percent-encoding.
    assert_redacted("both", &percent(&json_u_escaped(RT), "", false, false));
}

#[test]
fn halves_and_fragments() {
    let chars: Vec<char> = RT.chars().collect();
    let half = chars.len() / 2;
    let first: String = chars[..half].iter().collect();
    let second: String = chars[half..].iter().collect();
    assert_redacted("first half", &first);
    assert_redacted("second half", &second);
    let middle: String = chars[5..15].iter().collect();
    assert_redacted("ten from the middle", &middle);
    assert_redacted("half, form-encoded", &percent(&second, "*-._", true, true));
    assert_redacted("upper case", &CS.to_uppercase());
}

/// Invariant: what is not a secret's window survives: words, codes, and
/// fragments shorter than the window.
#[test]
fn ordinary_text_is_left_alone() {
    let r = redactor();
    for text in [
        "invalid_grant",
        "The refresh token has expired or was revoked.",
        "AADSTS70008: The provided authorization code or refresh token has expired",
        "client client-42 is not authorised (correlation 7f3e-11aa)",
        "rt/Ün",
        "cs s3cr",
    ] {
        assert_eq!(r.redact(text), text);
    }
}

#[test]
fn short_secrets_use_half_windows_and_tiny_ones_none() {
    assert_eq!(window(40), 8);
    assert_eq!(window(16), 8);
    assert_eq!(window(10), 5);
    assert_eq!(window(6), 4);
    let r = Redactor::new(["abc", "0123456789"]);
    assert_eq!(r.redact("abc 01234 56789"), "abc [redacted] [redacted]");
    assert_eq!(r.redact("0123"), "0123");
}

/// Invariant: scanning is bounded, and a secret cut in two by the bound is
/// never shown in part.
#[test]
fn long_text_is_cut_before_a_secret_can_straddle_the_cut() {
    let r = redactor();
    for pad in 1840..2050 {
        let text = format!(
            "{}{}{}",
            "x".repeat(pad),
            percent(CS, "", false, true),
            "y".repeat(4000)
        );
        let out = r.redact(&text);
        assert!(out.ends_with('…'), "{pad}");
        assert!(out.len() <= MAX_SCANNED + REDACTED.len() + 3, "{pad}");
        let rest = out.trim_end_matches('…').replace(REDACTED, "");
        assert!(rest.bytes().all(|b| b == b'x' || b == b'y'), "{pad}: {out}");
    }
}

#[test]
fn odd_input_does_not_panic() {
    let r = redactor();
    for text in [
        "%",
        "%z",
        "%4",
        "\\",
        "\\u",
        "\\ud800",
        "\\ud800\\u0041",
        "é%C3",
        "+++",
    ] {
        let _ = r.redact(text);
    }
    assert_eq!(Redactor::default().redact("plain"), "plain");
}
