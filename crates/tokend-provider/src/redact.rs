//! Strips every secret a token request carried from the text a provider
//! sends back, in whatever encoding the provider echoed it.
//!
//! A provider's error text is kept (in `last_error`, events, webhooks, the
//! console), so a secret it echoes must not survive in any form:
//! - Encodings that can be undone in place are undone before matching, with
//!   each decoded byte mapped back to the bytes it came from: JSON escapes
//!   (`\"`, `\/`, `\u00e9`, surrogate pairs), percent-encoding with any
//!   safe set and either hex case (form, `quote_plus`, `encodeURIComponent`,
//!   RFC 3986), and `+` for a space; up to two layers deep (JSON inside
//!   percent-encoding, double percent-encoding...).
//! - Encodings that cannot are matched as encoded: the hex of the bytes and
//!   base64 and base64url (padded or not) of each secret, and of the HTTP
//!   Basic pair `id:secret` (raw and form-encoded, as RFC 6749 §2.3.1 sends
//!   it).
//! - Matching ignores ASCII case (lowercase hex, and over-redaction is
//!   harmless) and works on windows: any run of at least [`window`] bytes
//!   that occurs in a secret (in a matched form) is cut, so half a secret,
//!   or a secret cut short by the provider, is redacted too.
//!
//! The window is 8 bytes, or half the secret when that is shorter (a secret
//! under 16 bytes), but never under 4: a window of a random secret is then
//! at least ~41 bits that ordinary words do not happen to spell, and a
//! fragment shorter than it discloses less than half of any secret of 16
//! bytes or more. Secrets under 4 bytes are not redacted at all: matching
//! them would eat ordinary words, and they protect nothing.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use secrecy::zeroize::{Zeroize, Zeroizing};

/// What replaces each redacted run.
pub(crate) const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are not matched.
const MIN_SECRET: usize = 4;
/// The longest window: see the module documentation.
const MAX_WINDOW: usize = 8;

/// Text past this many bytes is not scanned (nor shown): the cost of a
/// scan stays bounded whatever a provider sends.
const MAX_SCANNED: usize = 2048;
/// When text is cut at [`MAX_SCANNED`], the last bytes before the cut are
/// dropped too, so a secret cut in two by it is never shown in part: a
/// window's worth of decoded bytes spans at most this many original ones
/// (`\uXXXX\uXXXX` for each of [`MAX_WINDOW`] bytes is 96).
const CUT_MARGIN: usize = 128;

/// The window for a secret of `len` bytes.
pub(crate) fn window(len: usize) -> usize {
    len.div_ceil(2).clamp(MIN_SECRET, MAX_WINDOW)
}

/// The secrets one request carried, and what to strip from any text the
/// answer brings. The tables are built on the first redaction only: a
/// request that succeeds pays for a few copies, not for the tables.
#[derive(Default)]
pub(crate) struct Redactor {
    secrets: Vec<Zeroizing<String>>,
    /// HTTP Basic `(client_id, secret)`, when the request sent it.
    basic: Option<(String, Zeroizing<String>)>,
    tables: OnceLock<Tables>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

/// Lowercased windows of every matched form of every secret, by length.
struct Tables {
    windows: HashMap<usize, HashSet<Box<[u8]>>>,
}

/// The windows are pieces of secrets: wiped when dropped, like the secrets.
impl Drop for Tables {
    fn drop(&mut self) {
        for (_, set) in self.windows.drain() {
            for mut piece in set {
                piece.zeroize();
            }
        }
    }
}

impl Redactor {
    /// A redactor for `secrets` (as sent, before any encoding).
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        Redactor {
            secrets: secrets
                .into_iter()
                .filter(|s| s.len() >= MIN_SECRET)
                .map(|s| Zeroizing::new(s.to_owned()))
                .collect(),
            basic: None,
            tables: OnceLock::new(),
        }
    }

    /// Adds one more secret.
    pub(crate) fn push(&mut self, secret: &str) {
        if secret.len() >= MIN_SECRET {
            self.secrets.push(Zeroizing::new(secret.to_owned()));
            self.tables = OnceLock::new();
        }
    }

    /// Notes that the request sent `client_id:secret` as HTTP Basic
    /// credentials (the secret is also redacted on its own).
    pub(crate) fn basic(&mut self, client_id: &str, secret: &str) {
        self.push(secret);
        self.basic = Some((client_id.to_owned(), Zeroizing::new(secret.to_owned())));
        self.tables = OnceLock::new();
    }

    fn tables(&self) -> &Tables {
        self.tables.get_or_init(|| {
            let mut windows: HashMap<usize, HashSet<Box<[u8]>>> = HashMap::new();
            let mut add = |form: &[u8], w: usize| {
                let set = windows.entry(w).or_default();
                for piece in form.windows(w) {
                    set.insert(piece.to_ascii_lowercase().into_boxed_slice());
                }
            };
            for secret in &self.secrets {
                let w = window(secret.len());
                add(secret.as_bytes(), w);
                // Hex: the same number of the secret's bytes.
                add(&hex(secret.as_bytes()), 2 * w);
                for form in base64_forms(secret.as_bytes()) {
                    add(&form, w);
                }
            }
            if let Some((id, secret)) = &self.basic {
                // The pair as RFC 6749 §2.3.1 sends it, and as many clients
                // do (unencoded); its base64 forms only: the raw pair would
                // redact the client id, which is no secret.
                let pairs = [
                    format!(
                        "{}:{}",
                        crate::form::form_encode(id),
                        crate::form::form_encode(secret)
                    ),
                    format!("{id}:{}", secret.as_str()),
                ];
                for pair in pairs {
                    let pair = Zeroizing::new(pair);
                    for form in base64_forms(pair.as_bytes()) {
                        add(&form, MAX_WINDOW);
                    }
                }
            }
            Tables { windows }
        })
    }

    /// `text` with every run that matches a secret, in any form above,
    /// replaced by [`REDACTED`]. Text past [`MAX_SCANNED`] bytes is dropped
    /// (with a margin before the cut) and marked `…`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let (text, cut) = if text.len() > MAX_SCANNED {
            (&text[..floor_char_boundary(text, MAX_SCANNED)], true)
        } else {
            (text, false)
        };
        let shown = if cut {
            floor_char_boundary(text, text.len() - CUT_MARGIN)
        } else {
            text.len()
        };
        if self.secrets.is_empty() && self.basic.is_none() {
            let mut out = text[..shown].to_owned();
            if cut {
                out.push('…');
            }
            return out;
        }
        let tables = self.tables();
        let mut covered = vec![false; text.len()];
        for layer in layers(text.as_bytes()) {
            let lower = layer.bytes.to_ascii_lowercase();
            for (&w, set) in &tables.windows {
                if lower.len() < w {
                    continue;
                }
                for i in 0..=lower.len() - w {
                    if set.contains(&lower[i..i + w]) {
                        let (start, end) = (layer.spans[i].0, layer.spans[i + w - 1].1);
                        covered[start..end].iter_mut().for_each(|c| *c = true);
                    }
                }
            }
        }
        let mut out = String::with_capacity(shown);
        let mut in_run = false;
        for (i, c) in text[..shown].char_indices() {
            if covered[i..i + c.len_utf8()].iter().any(|&c| c) {
                if !in_run {
                    out.push_str(REDACTED);
                    in_run = true;
                }
            } else {
                in_run = false;
                out.push(c);
            }
        }
        if cut {
            out.push('…');
        }
        out
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    Zeroizing::new(
        bytes
            .iter()
            .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
            .collect(),
    )
}

/// Base64 and base64url, padded: the unpadded forms are their prefixes,
/// which the windows match.
fn base64_forms(bytes: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    [STANDARD, URL_SAFE]
        .iter()
        .map(|engine| Zeroizing::new(engine.encode(bytes).into_bytes()))
        .collect()
}

/// Text as bytes, each mapped to the span of the original text it was
/// decoded from.
struct Layer {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

/// The text itself and what it decodes to, up to two layers deep.
fn layers(text: &[u8]) -> Vec<Layer> {
    let original = Layer {
        bytes: text.to_vec(),
        spans: (0..text.len()).map(|i| (i, i + 1)).collect(),
    };
    let mut all = vec![original];
    let mut from = 0;
    for _ in 0..2 {
        let end = all.len();
        for i in from..end {
            let decoded: Vec<Layer> = [
                json_unescape(&all[i]),
                percent_decode(&all[i], false),
                percent_decode(&all[i], true),
            ]
            .into_iter()
            .flatten()
            .collect();
            all.extend(decoded);
        }
        from = end;
    }
    all
}

fn hex_value(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// `%XX` (either case) decoded, and `+` as a space when `plus`; `None` when
/// there is nothing to decode.
fn percent_decode(layer: &Layer, plus: bool) -> Option<Layer> {
    let b = &layer.bytes;
    if !b.iter().any(|&c| c == b'%' || (plus && c == b'+')) {
        return None;
    }
    let mut out = Layer {
        bytes: Vec::with_capacity(b.len()),
        spans: Vec::with_capacity(b.len()),
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_value(b[i + 1]), hex_value(b[i + 2]))
        {
            out.bytes.push((h * 16 + l) as u8);
            out.spans.push((layer.spans[i].0, layer.spans[i + 2].1));
            i += 3;
            continue;
        }
        out.bytes
            .push(if plus && b[i] == b'+' { b' ' } else { b[i] });
        out.spans.push(layer.spans[i]);
        i += 1;
    }
    Some(out)
}

/// JSON string escapes decoded (`\uXXXX`, with surrogate pairs; `\/`,
/// `\"`...); `None` when there is no backslash.
fn json_unescape(layer: &Layer) -> Option<Layer> {
    let b = &layer.bytes;
    if !b.contains(&b'\\') {
        return None;
    }
    let mut out = Layer {
        bytes: Vec::with_capacity(b.len()),
        spans: Vec::with_capacity(b.len()),
    };
    let u16_at = |i: usize| -> Option<u32> {
        if i + 6 <= b.len() && b[i] == b'\\' && b[i + 1] == b'u' {
            b[i + 2..i + 6]
                .iter()
                .try_fold(0u32, |acc, &c| Some(acc * 16 + hex_value(c)?))
        } else {
            None
        }
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let simple = match b[i + 1] {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(0x08),
                b'f' => Some(0x0c),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                _ => None,
            };
            if let Some(c) = simple {
                out.bytes.push(c);
                out.spans.push((layer.spans[i].0, layer.spans[i + 1].1));
                i += 2;
                continue;
            }
            if let Some(unit) = u16_at(i) {
                let (c, len) = match unit {
                    0xD800..=0xDBFF => match u16_at(i + 6) {
                        Some(low @ 0xDC00..=0xDFFF) => (
                            char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)),
                            12,
                        ),
                        _ => (None, 6),
                    },
                    _ => (char::from_u32(unit), 6),
                };
                let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut utf8 = [0u8; 4];
                let span = (layer.spans[i].0, layer.spans[i + len - 1].1);
                for &byte in c.encode_utf8(&mut utf8).as_bytes() {
                    out.bytes.push(byte);
                    out.spans.push(span);
                }
                i += len;
                continue;
            }
        }
        out.bytes.push(b[i]);
        out.spans.push(layer.spans[i]);
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
