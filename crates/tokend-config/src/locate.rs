//! `tokend check-config`'s reading of a config file: every problem in one
//! run, each with its `file:line:col`. A TOML syntax error stops the parse
//! (one per run, necessarily); every key the schema refuses (unknown, of the
//! wrong type) is collected by blanking its line and parsing again; every
//! semantic problem (`FileConfig::located_problems`: ranges, missing
//! environment variables and secret files, identities, TLS; every problem
//! of a table, not its first) is placed at the key path it carries, found
//! in the parsed document's spans.

use std::path::Path;

use crate::{
    error::{ConfigError, Problem},
    file::FileConfig,
};

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
fn error_lines(text: &str, e: &ConfigError) -> Option<Vec<usize>> {
    let ConfigError::Parse { message, .. } = e else {
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
fn error_line(e: &ConfigError) -> Option<usize> {
    match e {
        ConfigError::Parse { message, .. } => message.split(':').next()?.trim().parse().ok(),
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

/// The problems a resolver joined with "; " (every range it refused), one
/// each; a "; " inside one problem's own sentence stays.
pub fn split_joined(problem: &str) -> Vec<String> {
    let starts_one = |part: &str| {
        ["identity ", "provider ", "webhook "]
            .iter()
            .any(|p| part.starts_with(p))
            || part.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c))
            })
    };
    let mut out: Vec<String> = Vec::new();
    for part in problem.split("; ") {
        match out.last_mut() {
            Some(last) if !starts_one(part) => {
                last.push_str("; ");
                last.push_str(part);
            }
            _ => out.push(part.to_owned()),
        }
    }
    out
}

/// `problem` prefixed with `path:line:col:` of the key it is about, found
/// by walking the parsed document's spans: the key itself, else the
/// deepest table on its path that the file has, else `path:` alone.
pub fn locate(text: &str, path: &Path, problem: &Problem) -> String {
    match place(text, &problem.key) {
        Some((line, column)) => format!("{}:{line}:{column}: {}", path.display(), problem.message),
        None => format!("{}: {}", path.display(), problem.message),
    }
}

/// Where (1-based line and column) the file writes `key`, or the deepest
/// part of it the file has.
fn place(text: &str, key: &[String]) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let document = DeTable::parse(text).ok()?;
    let mut at: Option<std::ops::Range<usize>> = None;
    let mut value: &DeValue<'_> = &DeValue::Table(document.into_inner());
    for segment in key {
        let next = match value {
            DeValue::Table(table) => table
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == segment.as_str())
                .map(|(k, v)| (k.span(), v)),
            DeValue::Array(array) => segment
                .parse::<usize>()
                .ok()
                .and_then(|i| array.get(i))
                .map(|v| (v.span(), v)),
            _ => None,
        };
        let Some((span, next)) = next else { break };
        at = Some(span);
        value = next.get_ref();
    }
    let start = at?.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, column))
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

    /// Issue 26, item 8: every problem of one provider table, not the
    /// first, each at its key's `line:col` found by the document's spans
    /// (an indented key, a dotted subtable, an array entry), and a key
    /// the file lacks at its table.
    #[test]
    fn every_problem_of_one_table_is_located_at_its_key() {
        let text = "cache_capacity = 5\n[store]\npool_size = 0\n[providers.hub]\ntoken_url = \"https://h.example/{x}\"\nclient_id = \"x\"\n  client_secret_env = \"I26_UNIT_NOPE\"\nmin_refresh_interval_secs = 999999999\nrefresh_buffer_secs = 999999999\n[providers.hub.headers]\nHost = \"h\"\n[[identities]]\nname = \"a\"\ngrants = []\n[[identities]]\nname = \"svc\"\ngrants = []\nrequests_per_second = 0\n";
        let path = Path::new("t.toml");
        let file = FileConfig::parse(text, path).unwrap();
        let problems = file.located_problems("127.0.0.1:1".parse().unwrap(), |_| None, Vec::new());
        let lines: Vec<String> = problems.iter().map(|p| locate(text, path, p)).collect();
        let all = lines.join("\n");
        for (place, words) in [
            (
                "t.toml:7:3: ",
                "client_secret_env: environment variable I26_UNIT_NOPE",
            ),
            ("t.toml:8:1: ", "min_refresh_interval_secs = 999999999"),
            ("t.toml:9:1: ", "refresh_buffer_secs = 999999999"),
            (
                "t.toml:11:1: ",
                "headers.Host: tokend sets this header itself",
            ),
            ("t.toml:1:1: ", "cache_capacity = 5"),
            ("t.toml:3:1: ", "store.pool_size = 0"),
            ("t.toml:18:1: ", "identity svc: requests_per_second = 0"),
        ] {
            let found: Vec<&String> = lines.iter().filter(|l| l.contains(words)).collect();
            assert_eq!(found.len(), 1, "{words} once in:\n{all}");
            assert!(
                found[0].starts_with(place),
                "{place} for {words} in:\n{all}"
            );
        }
        // A key the file lacks: at the deepest table it has.
        let missing = Problem {
            key: vec!["providers".into(), "hub".into(), "revocation_url".into()],
            message: "m".into(),
        };
        assert_eq!(locate(text, path, &missing), "t.toml:4:12: m");
        let nowhere = Problem {
            key: vec![],
            message: "something else".into(),
        };
        assert_eq!(locate(text, path, &nowhere), "t.toml: something else");
    }

    /// The locator goes by the key path, not by words: a message naming
    /// another table's key is still placed at its own.
    #[test]
    fn the_place_is_the_key_path_not_the_wording() {
        let text = "[store]\npool_size = 1\n[providers.a]\nclient_id = \"x\"\npool_size = 2\n";
        let at = |key: &[&str]| {
            let key = key.iter().map(|k| (*k).to_owned()).collect();
            let problem = Problem {
                key,
                message: "store.pool_size is wrong".into(),
            };
            locate(text, Path::new("t"), &problem)
        };
        assert!(at(&["providers", "a", "pool_size"]).starts_with("t:5:1: "));
        assert!(at(&["store", "pool_size"]).starts_with("t:2:1: "));
    }
}
