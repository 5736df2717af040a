//! `tokend check-config`'s reading of a config file: every problem in one
//! run, each with its `file:line:col`. A TOML syntax error stops the parse
//! (one per run, necessarily); every key the schema refuses (unknown, of the
//! wrong type) is collected by blanking its line and parsing again; every
//! semantic problem (`FileConfig::problems`: ranges, missing environment
//! variables and secret files, identities, TLS) is located at the key it
//! names.

use std::path::Path;

use crate::config::FileConfig;

/// At most this many schema errors are collected from one file.
const MAX_SCHEMA_ERRORS: usize = 100;

/// Parses `text`, collecting every schema error: `Ok` with the config, or
/// every problem, each `path:line:col: ...`.
pub fn parse_all(text: &str, path: &Path) -> Result<FileConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut current = text.to_owned();
    let mut blanked: Vec<usize> = Vec::new();
    let mut blanked_keys: Vec<String> = Vec::new();
    for _ in 0..MAX_SCHEMA_ERRORS {
        match FileConfig::parse(&current, path) {
            Ok(file) if problems.is_empty() => return Ok(file),
            Ok(_) => return Err(problems),
            Err(e) => {
                let message = e.to_string();
                // A required key we blanked: our making, not the file's.
                if blanked_keys
                    .iter()
                    .any(|k| message.contains(&format!("missing field `{k}`")))
                {
                    return Err(problems);
                }
                problems.push(message.clone());
                // A syntax error ends the parse: nothing after it is known.
                if current.parse::<toml::Table>().is_err() {
                    return Err(problems);
                }
                let Some(lines) = error_lines(&current, &e) else {
                    return Err(problems);
                };
                if lines.iter().any(|l| blanked.contains(l)) {
                    return Err(problems);
                }
                // A value of the wrong type is replaced by one of the
                // expected type (the key stays, so no "missing field"
                // follows); an unknown key is blanked.
                let on_key_line = error_line(&e) == Some(lines[0] + 1);
                let next = match stand_in(&message).filter(|_| on_key_line) {
                    Some(value) => replace_value(&current, &lines, value),
                    None => {
                        if let Some(key) = key_of(&current, lines[0]) {
                            blanked_keys.push(key);
                        }
                        blank(&current, &lines)
                    }
                };
                // Blanking must leave valid TOML, or the errors after it
                // would be of our making.
                if next.parse::<toml::Table>().is_err() {
                    return Err(problems);
                }
                blanked.extend(&lines);
                current = next;
            }
        }
    }
    Err(problems)
}

/// The lines (0-based) of the key-value pair an error points at, if it
/// points at one (not at a table header or a whole table).
fn error_lines(text: &str, e: &crate::config::ConfigError) -> Option<Vec<usize>> {
    let crate::config::ConfigError::Parse { message, .. } = e else {
        return None;
    };
    // `LINE:COL: ...` as `locate` writes it.
    let line: usize = message.split(':').next()?.trim().parse().ok()?;
    let all: Vec<&str> = text.lines().collect();
    // The key the error is in: its own line, or the nearest above it when
    // it points inside a value spanning lines.
    let mut index = line.checked_sub(1)?;
    loop {
        let t = all.get(index)?.trim_start();
        if t.starts_with('[') {
            return None;
        }
        if looks_like_key(t) {
            break;
        }
        index = index.checked_sub(1)?;
    }
    // A value spanning lines (an array, a multi-line string) goes with it:
    // up to the next line that starts a key or a table.
    let mut lines = vec![index];
    for (i, l) in text.lines().enumerate().skip(index + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('[') || t.starts_with('#') || looks_like_key(t) {
            break;
        }
        lines.push(i);
    }
    Some(lines)
}

/// The line (1-based) a parse error points at.
fn error_line(e: &crate::config::ConfigError) -> Option<usize> {
    match e {
        crate::config::ConfigError::Parse { message, .. } => {
            message.split(':').next()?.trim().parse().ok()
        }
        _ => None,
    }
}

/// The key on line `index` (0-based).
fn key_of(text: &str, index: usize) -> Option<String> {
    let line = text.lines().nth(index)?;
    Some(line.split_once('=')?.0.trim().trim_matches('"').to_owned())
}

/// A value of the type an `invalid type` error expected, if it is plain.
fn stand_in(message: &str) -> Option<&'static str> {
    let expected = message
        .split("invalid type:")
        .nth(1)?
        .split("expected")
        .nth(1)?;
    let expected = expected.trim();
    if expected.starts_with("a string") {
        Some("\"\"")
    } else if expected.starts_with("a boolean") {
        Some("false")
    } else if expected.starts_with('u') || expected.starts_with('i') {
        Some("1")
    } else if expected.starts_with("a sequence") {
        Some("[]")
    } else {
        None
    }
}

/// `text` with the value of the key on `lines[0]` replaced by `value`, and
/// the rest of `lines` blanked.
fn replace_value(text: &str, lines: &[usize], value: &str) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| {
            let end = if l.ends_with('\n') { "\n" } else { "" };
            if Some(&i) == lines.first() {
                let key = l.split_once('=').map_or("", |(k, _)| k);
                format!("{key}= {value}{end}")
            } else if lines.contains(&i) {
                end.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect()
}

fn looks_like_key(line: &str) -> bool {
    line.split_once('=').is_some_and(|(k, _)| {
        let k = k.trim();
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
    })
}

/// `text` with `lines` turned into blank lines (line numbers are kept).
fn blank(text: &str, lines: &[usize]) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| {
            if lines.contains(&i) {
                if l.ends_with('\n') { "\n" } else { "" }
            } else {
                l
            }
        })
        .collect()
}

/// A key as written in the file: its table, the `name` of its array-table
/// entry if any, and where it is.
struct Entry {
    table: String,
    name: Option<String>,
    key: String,
    line: usize,
    column: usize,
}

fn entries(text: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut table = String::new();
    let mut name: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        let column = raw.len() - line.len() + 1;
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            table = header
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            name = None;
            out.push(Entry {
                table: table.clone(),
                name: None,
                key: String::new(),
                line: i + 1,
                column,
            });
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().trim_matches('"').to_owned();
            if key == "name" {
                name = Some(value.trim().trim_matches('"').to_owned());
                // The entries of this array table so far get its name.
                for e in out.iter_mut().rev() {
                    if e.table != table || e.name.is_some() {
                        break;
                    }
                    e.name = name.clone();
                }
            }
            out.push(Entry {
                table: table.clone(),
                name: name.clone(),
                key,
                line: i + 1,
                column,
            });
        }
    }
    out
}

/// `problem` prefixed with `path:line:col:` of the key it is about, when
/// the file has that key (else of its table, else `path:`).
pub fn locate_problem(text: &str, path: &Path, problem: &str) -> String {
    let entries = entries(text);
    // The scope a message names first: `provider NAME:`, `identity NAME:`,
    // `webhook "NAME":`.
    let unquote = |s: &str| s.trim_matches('"').to_owned();
    let (scope, rest): (Option<(String, Option<String>)>, &str) =
        if let Some(rest) = problem.strip_prefix("provider ") {
            let (name, rest) = rest.split_once(':').unwrap_or((rest, ""));
            (Some((format!("providers.{}", unquote(name)), None)), rest)
        } else if let Some(rest) = problem.strip_prefix("identity ") {
            let (name, rest) = rest.split_once(':').unwrap_or((rest, ""));
            (Some(("identities".into(), Some(unquote(name)))), rest)
        } else if let Some(rest) = problem.strip_prefix("webhook ") {
            let (name, rest) = rest.split_once(':').unwrap_or((rest, ""));
            (Some(("webhooks".into(), Some(unquote(name)))), rest)
        } else {
            (None, problem)
        };
    let in_scope = |e: &&Entry| match &scope {
        Some((table, name)) => &e.table == table && (name.is_none() || &e.name == name),
        None => true,
    };
    let found = rest
        .split(|c: char| c.is_whitespace() || "`:=,;()".contains(c))
        .filter(|w| !w.is_empty())
        .find_map(|word| {
            let (table, key) = match (&scope, word.rsplit_once('.')) {
                (None, Some((t, k))) => (Some(t), k),
                _ => (None, word),
            };
            entries
                .iter()
                .filter(in_scope)
                .find(|e| e.key == key && table.is_none_or(|t| e.table == t))
        })
        .or_else(|| scope.as_ref().and_then(|_| entries.iter().find(in_scope)));
    match found {
        Some(e) => format!("{}:{}:{}: {problem}", path.display(), e.line, e.column),
        None => format!("{}: {problem}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_error_is_listed_with_its_place() {
        let text = "refresh_concurency = 1\n[store]\npool_sise = 3\n[providers.hub]\npreset = \"hubspot\"\nclient_id = 5\nscopes = [\n  1,\n]\nclient_secret_env = \"NOPE\"\n";
        let problems = parse_all(text, Path::new("t.toml")).unwrap_err();
        let all = problems.join("\n");
        assert_eq!(problems.len(), 4, "{all}");
        for place in ["t.toml:1:1", "t.toml:3:1", "t.toml:6:13", "t.toml:8:3"] {
            assert!(all.contains(place), "{place} in {all}");
        }
    }

    #[test]
    fn semantic_problems_are_located_at_their_key() {
        let text = "cache_capacity = 5\n[store]\npool_size = 0\n[providers.hub]\nclient_id = \"x\"\n  client_secret_env = \"NOPE\"\n[[identities]]\nname = \"svc\"\nrequests_per_second = 0\n";
        let path = Path::new("t.toml");
        let at = |p: &str| locate_problem(text, path, p);
        assert!(at("cache_capacity = 5 is out of range").starts_with("t.toml:1:1: "));
        assert!(at("store.pool_size = 0 is out of range").starts_with("t.toml:3:1: "));
        assert!(
            at("provider hub: client_secret_env: environment variable NOPE is not set")
                .starts_with("t.toml:6:3: ")
        );
        assert!(at("identity svc: requests_per_second = 0").starts_with("t.toml:9:1: "));
        assert_eq!(at("something else"), "t.toml: something else");
    }
}
