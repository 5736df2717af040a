//! Finds the fenced code blocks of a Markdown file and how each is marked:
//! the info string's words after the language (`sh run`, `toml check-config`,
//! ...), or an `<!-- norun: REASON -->` comment on the line before the fence.

use std::path::Path;

/// How the runner treats a block.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Run it (shell, Python, TypeScript, Go or Rust) against a live server.
    Run,
    /// A TOML config fragment: `tokend check-config` must find nothing wrong
    /// but secrets and files this machine does not have.
    CheckConfig,
    /// A file the user writes and a later block uses: `Cargo.toml`
    /// dependencies, a `go.mod`.
    Deps,
    /// Not run, for the reason given.
    NoRun(String),
}

/// One fenced block.
#[derive(Debug, Clone)]
pub struct Block {
    /// `README.md:123` (the line of the opening fence, 1-based).
    pub place: String,
    pub lang: String,
    pub mode: Mode,
    /// Attributes after the mode word: `fresh`, `cont`, `bg`,
    /// `exit=N`, `in-checkout`.
    pub attrs: Vec<String>,
    pub code: String,
}

impl Block {
    pub fn has(&self, attr: &str) -> bool {
        self.attrs.iter().any(|a| a == attr)
    }

    /// The value of `key=value`, if given.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Every fenced block of `text` (the file `name`), or the problems: a block
/// with no marking, an unknown mode word, a `norun` with no reason, an
/// unclosed fence.
pub fn blocks(name: &str, text: &str) -> Result<Vec<Block>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some(info) = line.trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let place = format!("{name}:{}", i + 1);
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("").to_owned();
        let rest: Vec<String> = words.map(str::to_owned).collect();
        let mut code = String::new();
        let mut j = i + 1;
        while j < lines.len() && lines[j].trim_start() != "```" {
            let l = lines[j];
            code.push_str(
                l.get(indent.min(l.len() - l.trim_start().len())..)
                    .unwrap_or(l),
            );
            code.push('\n');
            j += 1;
        }
        if j == lines.len() {
            problems.push(format!("{place}: the fence is never closed"));
            break;
        }
        let norun = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- norun:"))
            .and_then(|r| r.strip_suffix("-->"))
            .map(|r| r.trim().to_owned());
        let mode = match (rest.first().map(String::as_str), norun) {
            (Some("run"), None) => Some(Mode::Run),
            (Some("check-config"), None) => Some(Mode::CheckConfig),
            (Some("deps"), None) => Some(Mode::Deps),
            (None, Some(reason)) if !reason.is_empty() => Some(Mode::NoRun(reason)),
            (None, Some(_)) => {
                problems.push(format!("{place}: `<!-- norun: -->` without a reason"));
                None
            }
            (None, None) => {
                problems.push(format!(
                    "{place}: a ```{lang} block with no marking: add `run`, `check-config` or \
                     `deps` after the language, or `<!-- norun: REASON -->` on the line before"
                ));
                None
            }
            (Some(word), norun) => {
                problems.push(format!(
                    "{place}: unknown marking `{word}`{}",
                    if norun.is_some() {
                        " (and a norun comment too)"
                    } else {
                        ""
                    }
                ));
                None
            }
        };
        if let Some(mode) = mode {
            out.push(Block {
                place,
                lang,
                mode,
                attrs: rest.into_iter().skip(1).collect(),
                code,
            });
        }
        i = j + 1;
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The Markdown files whose snippets are run: README.md, every docs/*.md
/// and every clients/*/README.md, relative to `root`.
pub fn files(root: &Path) -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut clients: Vec<String> = std::fs::read_dir(root.join("clients"))
        .expect("clients/ is readable")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("README.md").is_file())
        .map(|e| format!("clients/{}/README.md", e.file_name().to_string_lossy()))
        .collect();
    clients.sort();
    files.extend(clients);
    files
}

#[test]
fn marks_are_read_and_unmarked_blocks_refused() {
    let text = "x\n```sh run fresh exit=69\necho hi\n```\n<!-- norun: needs a collector -->\n\
                ```sh\nOTEL=1 tokend serve\n```\n```toml\na = 1\n```\n";
    let problems = blocks("R.md", text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("R.md:9:"), "{problems:?}");
    let ok = blocks("R.md", &text.replace("```toml", "```toml check-config")).unwrap();
    assert_eq!(ok.len(), 3);
    assert_eq!(ok[0].mode, Mode::Run);
    assert!(ok[0].has("fresh"));
    assert_eq!(ok[0].value("exit"), Some("69"));
    assert_eq!(ok[0].code, "echo hi\n");
    assert_eq!(ok[1].mode, Mode::NoRun("needs a collector".into()));
    assert_eq!(ok[2].mode, Mode::CheckConfig);
}
