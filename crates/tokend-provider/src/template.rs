//! URL templates: `{name}` placeholders filled per connection, and the rules
//! that keep a caller's value from choosing the host a secret is sent to.
//!
//! The rule (issue 24, item 1): a per-connection value never decides the
//! registrable domain of a URL that receives a secret. A placeholder in a
//! host is either one DNS label left of a fixed registrable domain
//! (`{subdomain}.zendesk.com`), or a parameter whose values the provider
//! lists (Zoho's `dc`). The registrable domain is the ICANN public suffix
//! plus one label, from the Public Suffix List (the `psl` crate).
//! Placeholders in a path or a query are percent-encoded.

use std::collections::BTreeMap;

/// Longest connection parameter value (a DNS name's length).
pub const MAX_PARAM_LEN: usize = 253;

/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Whether `value` may fill a placeholder: 1 to 253 letters, digits, `-`
/// and `.`, starting and ending with a letter or digit, no `..`.
pub fn valid_param_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PARAM_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !value.contains("..")
}

/// Whether `value` is one DNS label: 1 to 63 letters, digits and `-`,
/// starting and ending with a letter or digit. No dot, so it cannot reach
/// past the label its placeholder stands in.
pub fn valid_label(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Where a placeholder of a URL template sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlPlace {
    /// In the host: a single label, or a listed value.
    Host,
    /// In the path: percent-encoded.
    Path,
    /// In the query: percent-encoded.
    Query,
}

/// A text with `{name}` placeholders, each filled from a connection
/// parameter. As a URL, a value fills a host label or is percent-encoded in
/// the path or query, so no value can change the URL's scheme, host
/// boundary or path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlTemplate {
    template: String,
    names: Vec<String>,
    /// Each placeholder: its name and the byte offset of its `{`.
    slots: Vec<(String, usize)>,
}

/// Everything but unreserved characters (RFC 3986 §2.3) is encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` percent-encoded for a path segment or a query: it cannot add a
/// `/`, `?`, `#`, `&` or `=`, nor a `%` that decodes to one.
pub fn encode_component(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, COMPONENT).to_string()
}

impl UrlTemplate {
    /// `None` when `template` has no placeholder; an error for an unclosed
    /// or empty one, or one whose name is not `[a-z0-9_]`.
    pub fn parse(template: &str) -> Result<Option<UrlTemplate>, String> {
        let mut names = Vec::new();
        let mut slots = Vec::new();
        let mut at = 0;
        while let Some(open) = template[at..].find('{').map(|i| at + i) {
            let after = &template[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {template:?}"))?;
            let name = &after[..close];
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            {
                return Err(format!(
                    "placeholder {{{name}}} must be a name of a-z, 0-9 and _"
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
            slots.push((name.to_owned(), open));
            at = open + 1 + close + 1;
        }
        let rest = &template[at..];
        if rest.contains('}') || names.is_empty() && template.contains('}') {
            return Err(format!("unmatched }} in {template:?}"));
        }
        Ok((!names.is_empty()).then(|| UrlTemplate {
            template: template.to_owned(),
            names,
            slots,
        }))
    }

    /// The placeholders' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The text with every placeholder filled from `params`, as is: for
    /// values that are not URLs (form fields and headers, which their own
    /// encodings carry).
    pub fn fill(&self, params: &BTreeMap<String, String>) -> Result<String, String> {
        self.fill_with(params, |_, value| value.to_owned())
    }

    fn fill_with(
        &self,
        params: &BTreeMap<String, String>,
        encode: impl Fn(usize, &str) -> String,
    ) -> Result<String, String> {
        let mut text = String::with_capacity(self.template.len() + 32);
        let mut at = 0;
        for (name, open) in &self.slots {
            let value = params
                .get(name)
                .ok_or_else(|| format!("the connection has no parameter {name:?}"))?;
            if !valid_param_value(value) {
                return Err(format!("parameter {name:?} is not a hostname-safe value"));
            }
            text.push_str(&self.template[at..*open]);
            text.push_str(&encode(*open, value));
            at = open + name.len() + 2;
        }
        text.push_str(&self.template[at..]);
        Ok(text)
    }

    /// The parts of the template as a URL: `(host, path start)` byte ranges
    /// of the text as written, or why a placeholder sits where no value may
    /// go (the scheme, user info, port or fragment).
    fn layout(&self) -> Result<Layout, String> {
        let t = &self.template;
        let authority_start = t
            .find("://")
            .map(|i| i + 3)
            .ok_or_else(|| format!("{t:?} is not an absolute URL"))?;
        let authority_end = t[authority_start..]
            .find(['/', '?', '#'])
            .map_or(t.len(), |i| authority_start + i);
        let authority = &t[authority_start..authority_end];
        let query_start = t[authority_end..]
            .find(['?', '#'])
            .map(|i| authority_end + i);
        let fragment_start = t[authority_end..].find('#').map(|i| authority_end + i);
        // The host: after any user info, before any port.
        let host_start = authority
            .rfind('@')
            .map_or(authority_start, |i| authority_start + i + 1);
        let host_end = if t[host_start..authority_end].starts_with('[') {
            t[host_start..authority_end]
                .find(']')
                .map_or(authority_end, |i| host_start + i + 1)
        } else {
            t[host_start..authority_end]
                .find(':')
                .map_or(authority_end, |i| host_start + i)
        };
        for (name, open) in &self.slots {
            let open = *open;
            let fault = if open < authority_start {
                Some("the scheme")
            } else if open < host_start {
                Some("the user info")
            } else if open < host_end && t[host_start..].starts_with('[') {
                Some("an IP address")
            } else if open >= host_end && open < authority_end {
                Some("the port")
            } else if fragment_start.is_some_and(|f| open > f) {
                Some("the fragment")
            } else {
                None
            };
            if let Some(part) = fault {
                return Err(format!(
                    "placeholder {{{name}}} is in {part}: only the host, path and query take per-connection values"
                ));
            }
        }
        Ok(Layout {
            host: host_start..host_end,
            query: query_start.unwrap_or(t.len()),
        })
    }

    /// Where each placeholder sits, as a URL; an error for a placeholder in
    /// the scheme, user info, port or fragment.
    pub fn places(&self) -> Result<Vec<(&str, UrlPlace)>, String> {
        let layout = self.layout()?;
        Ok(self
            .slots
            .iter()
            .map(|(name, open)| (name.as_str(), layout.place(*open)))
            .collect())
    }

    /// The URL with every placeholder filled from `params`: a host value
    /// as is (the caller checked it: [`crate::ProviderConfig::check_param`]),
    /// a path or query value percent-encoded.
    pub fn render(&self, params: &BTreeMap<String, String>) -> Result<reqwest::Url, String> {
        let layout = self.layout()?;
        self.fill_with(params, |open, value| match layout.place(open) {
            UrlPlace::Host => value.to_owned(),
            UrlPlace::Path | UrlPlace::Query => encode_component(value),
        })?
        .parse()
        .map_err(|e| format!("the filled-in URL is invalid: {e}"))
    }

    /// Checks that no placeholder can choose the host's registrable domain:
    /// every placeholder in the host that `listed` does not know (a
    /// parameter without a list of values) must be left of a fixed
    /// registrable domain (`{subdomain}.zendesk.com`, not `{host}`,
    /// `auth.{tld}` or `{name}.co.uk`), and the host must be a name, not an
    /// address.
    pub fn check_host(&self, listed: impl Fn(&str) -> bool) -> Result<(), String> {
        let layout = self.layout()?;
        let host = &self.template[layout.host.clone()];
        if !host.contains('{') {
            return Ok(());
        }
        let labels: Vec<&str> = host.split('.').collect();
        // The rightmost label holding a placeholder without a list.
        let Some(last) = labels.iter().rposition(|label| {
            UrlTemplate::parse(label)
                .ok()
                .flatten()
                .is_some_and(|t| t.names().iter().any(|n| !listed(n)))
        }) else {
            return Ok(());
        };
        let name = UrlTemplate::parse(labels[last])
            .ok()
            .flatten()
            .and_then(|t| t.names().iter().rev().find(|n| !listed(n)).cloned())
            .unwrap_or_default();
        let suffix = labels[last + 1..].join(".");
        let refuse = |why: &str| {
            Err(format!(
                "placeholder {{{name}}} {why}: a value must never choose the domain secrets are sent to; put it left of a fixed domain (https://{{{name}}}.example.com/...) or list its values in param_values.{name}"
            ))
        };
        if suffix.is_empty() {
            return refuse("is the end of the host");
        }
        if suffix.contains('{') {
            return refuse("is left of another placeholder");
        }
        if !suffix.split('.').all(valid_label) {
            return refuse(&format!("is left of {suffix:?}, which is not a DNS name"));
        }
        if suffix
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.bytes().any(|b| b.is_ascii_alphabetic()))
        {
            return refuse(&format!("is in an IP address ({host})"));
        }
        if !fixes_registrable_domain(&suffix) {
            return refuse(&format!(
                "is left of {suffix:?}, a public suffix anyone can register names under"
            ));
        }
        Ok(())
    }
}

/// The byte ranges of a URL template's parts.
struct Layout {
    host: std::ops::Range<usize>,
    /// Where the query (or fragment) starts: the end of the path.
    query: usize,
}

impl Layout {
    fn place(&self, open: usize) -> UrlPlace {
        if self.host.contains(&open) {
            UrlPlace::Host
        } else if open < self.query {
            UrlPlace::Path
        } else {
            UrlPlace::Query
        }
    }
}

/// Whether a host `x.suffix`, whatever the label `x`, has its registrable
/// domain inside `suffix`: `suffix` is longer than the ICANN public suffix
/// of `x.suffix` (`zendesk.com`, `myshopify.com`, `example.co.uk`), not a
/// public suffix anyone can register under (`com`, `co.uk`), nor the
/// parent of a wildcard one (`kawasaki.jp`, whose `*.kawasaki.jp` are
/// all public suffixes). Suffixes of the list's private section
/// (`myshopify.com`, `github.io`) are their owners' domains: the owner is
/// the provider, the one a secret goes to.
pub fn fixes_registrable_domain(suffix: &str) -> bool {
    let suffix = suffix.to_ascii_lowercase();
    let labels = suffix.split('.').count();
    icann_suffix_labels(&format!("x.{suffix}")).is_some_and(|n| n < labels)
}

/// How many labels of `name` are its ICANN public suffix (an unknown top
/// level counts as one, per the list's `*` rule).
fn icann_suffix_labels(name: &str) -> Option<usize> {
    let mut query = name;
    loop {
        let suffix = psl::suffix(query.as_bytes())?;
        let text = std::str::from_utf8(suffix.as_bytes()).ok()?;
        if suffix.typ() != Some(psl::Type::Private) {
            return Some(text.split('.').count());
        }
        // A private-section suffix: the ICANN one is shorter.
        query = text.split_once('.')?.1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn template(text: &str) -> UrlTemplate {
        UrlTemplate::parse(text).unwrap().unwrap()
    }

    #[test]
    fn url_templates_parse_fill_and_refuse_injection() {
        assert_eq!(UrlTemplate::parse("https://x.example/t").unwrap(), None);
        let t = template("https://{subdomain}.zendesk.com/oauth/tokens?r={region}");
        assert_eq!(t.names(), ["subdomain", "region"]);
        let ok = params(&[("subdomain", "acme"), ("region", "eu-1")]);
        assert_eq!(
            t.render(&ok).unwrap().as_str(),
            "https://acme.zendesk.com/oauth/tokens?r=eu-1"
        );
        for bad in ["{", "x}", "{}", "{Sub}", "https://{a b}.x", "{a}}"] {
            assert!(UrlTemplate::parse(bad).is_err(), "{bad}");
        }
        let mut evil = ok.clone();
        evil.insert("subdomain".into(), "evil.com/x?".into());
        assert!(t.render(&evil).is_err());
        evil.remove("subdomain");
        assert!(t.render(&evil).is_err(), "a missing parameter");
        for ok in ["a", "acme", "my-shop", "127.0.0.1", "eu.acme"] {
            assert!(valid_param_value(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a@b",
            "a:1",
            "a b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!valid_param_value(bad), "{bad}");
        }
        for ok in ["a", "acme", "my-shop", "ACME", "0", &"a".repeat(63)] {
            assert!(valid_label(ok), "{ok}");
        }
        for bad in ["", "a.b", "-a", "a-", "eu.", "a%2eb", &"a".repeat(64)] {
            assert!(!valid_label(bad), "{bad}");
        }
    }

    /// Invariant: a value in a path or query is percent-encoded, so it
    /// cannot add a segment, a parameter or a fragment.
    #[test]
    fn path_and_query_placeholders_are_percent_encoded() {
        assert_eq!(
            encode_component("a/b?c=d&e#f%2e"),
            "a%2Fb%3Fc%3Dd%26e%23f%252e"
        );
        assert_eq!(encode_component("acme-1.eu_x~"), "acme-1.eu_x~");
        assert_eq!(encode_component("../x"), "..%2Fx");
        let t = template("https://login.example.com/{tenant}/token?v={v}");
        assert_eq!(
            t.places().unwrap(),
            [("tenant", UrlPlace::Path), ("v", UrlPlace::Query)]
        );
        let url = t
            .fill_with(&params(&[("tenant", "a.b"), ("v", "2")]), |_, v| {
                encode_component(&format!("{v}/../#x"))
            })
            .unwrap();
        assert_eq!(
            url,
            "https://login.example.com/a.b%2F..%2F%23x/token?v=2%2F..%2F%23x"
        );
        let url: reqwest::Url = url.parse().unwrap();
        assert_eq!(url.path(), "/a.b%2F..%2F%23x/token");
        assert_eq!(url.query(), Some("v=2%2F..%2F%23x"));
        assert_eq!(url.fragment(), None);
        assert_eq!(
            t.render(&params(&[("tenant", "contoso.example"), ("v", "2")]))
                .unwrap()
                .as_str(),
            "https://login.example.com/contoso.example/token?v=2"
        );
    }

    /// Invariant: a placeholder is allowed only in the host, path or query.
    #[test]
    fn placeholders_in_the_scheme_user_info_port_or_fragment_are_refused() {
        for bad in [
            "{scheme}://x.example.com/t",
            "https://{user}@x.example.com/t",
            "https://u:{pw}@x.example.com/t",
            "https://x.example.com:{port}/t",
            "https://[::{ip}]/t",
            "https://x.example.com/t#{frag}",
            "x.example.com/{path}",
        ] {
            assert!(template(bad).places().is_err(), "{bad}");
        }
        let t = template("http://{host}:8443/t");
        assert_eq!(t.places().unwrap(), [("host", UrlPlace::Host)]);
    }

    /// Invariant: a placeholder without a list of values cannot choose the
    /// host's registrable domain.
    #[test]
    fn host_placeholders_must_be_left_of_a_fixed_registrable_domain() {
        let none = |_: &str| false;
        for ok in [
            "https://{subdomain}.zendesk.com/oauth/tokens",
            "https://{shop}.myshopify.com/admin/oauth/access_token",
            "https://{tenant}.eu.auth0.com/oauth/token",
            "https://acme-{region}.example.co.uk/token",
            "https://{a}{b}.example.com/token",
            "https://login.example.com/{tenant}/token",
            "https://x.{sub}.example.com:8443/token",
        ] {
            template(ok)
                .check_host(none)
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "https://{host}/token",
            "http://{host}:8080/token",
            "https://auth.{tld}/token",
            "https://accounts.zoho.{dc}/oauth/v2/token",
            "https://{name}.co.uk/token",
            "https://{name}.com/token",
            "https://{name}.kawasaki.jp/token",
            "https://{sub}.zoho.{dc}/token",
            "https://{n}.0.0.1/token",
            "https://10.0.{n}.1/token",
            "https://{sub}.example.com./token",
        ] {
            match template(bad).check_host(none) {
                Err(e) => assert!(e.contains("param_values."), "{bad}: {e}"),
                Ok(()) => panic!("{bad} was accepted"),
            }
        }
        // A listed parameter may be anywhere in the host.
        let dc = |n: &str| n == "dc";
        template("https://accounts.zoho.{dc}/oauth/v2/token")
            .check_host(dc)
            .unwrap();
        template("https://{sub}.zoho.{dc}/token")
            .check_host(dc)
            .unwrap_err();
        template("https://{dc}.zoho.com/token")
            .check_host(dc)
            .unwrap();
    }

    #[test]
    fn registrable_domains_follow_the_icann_public_suffixes() {
        for yes in [
            "zendesk.com",
            "myshopify.com",
            "example.co.uk",
            "eu.auth0.com",
            "github.io",
            "EXAMPLE.COM",
            "example.notatld",
            "city.kawasaki.jp",
        ] {
            assert!(fixes_registrable_domain(yes), "{yes}");
        }
        for no in [
            "com",
            "co.uk",
            "com.au",
            "uk",
            "kawasaki.jp",
            "foo.kawasaki.jp",
            "notatld",
            "",
        ] {
            assert!(!fixes_registrable_domain(no), "{no}");
        }
    }
}
