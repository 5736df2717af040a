//! ARCHITECTURE.md's code map against the tree, both ways.
//!
//! Forward: every module file of every package (each crate under crates/
//! and the root package's `src/`) is named in that package's paragraph of
//! the "## Code map" section: its file name (`sealing.rs`, or a longer
//! path ending in it, `crypto/keys.rs`) or, for a file inside a module
//! directory, that directory (`` `feed/` ``). `lib.rs`, `main.rs`, `mod.rs`
//! and test files (`tests.rs`, `*_tests.rs`, anything under a `tests/`
//! directory) are left out. A crate's paragraph starts with
//! ``**`crates/NAME`**``, the binary's with [`BINARY`]; it runs to the next
//! line that starts with `**`.
//!
//! Backward: every `.rs` file the section names in backticks exists: some
//! file under crates/, src/, tests/ or benches/, or the root `build.rs`,
//! has a path ending in what is written. A bare file name in a package's
//! paragraph must be that package's (so a file that moved to another crate
//! leaves no entry behind that another crate's same-named file keeps
//! true); another package's file is named by a path.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use super::{relative, rust_files};

/// The heading of the section checked.
const SECTION: &str = "## Code map";

/// How the root package's paragraph starts.
const BINARY: &str = "**root package `tokend`**";

/// One package: where its paragraph starts, and its directory.
struct Package {
    header: String,
    dir: PathBuf,
}

/// The workspace's packages: the crates under crates/, then the binary.
fn packages(workspace: &Path) -> Vec<Package> {
    let mut dirs: Vec<_> = fs::read_dir(workspace.join("crates"))
        .expect("crates/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    let mut packages: Vec<_> = dirs
        .into_iter()
        .map(|dir| Package {
            header: format!(
                "**`crates/{}`**",
                dir.file_name().expect("a name").to_string_lossy()
            ),
            dir,
        })
        .collect();
    packages.push(Package {
        header: BINARY.to_owned(),
        dir: workspace.to_path_buf(),
    });
    packages
}

/// A test file, by the layout's conventions.
fn is_test_file(path_in_src: &str) -> bool {
    let mut components: Vec<&str> = path_in_src.split('/').collect();
    let name = components.pop().unwrap_or_default();
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || components.iter().any(|c| *c == "tests" || *c == "test")
}

/// The module files of the package in `dir`, relative to the workspace.
fn module_files(dir: &Path) -> Vec<String> {
    let src = dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules: Vec<_> = files
        .iter()
        .filter(|file| {
            let in_src = file.strip_prefix(&src).expect("under src/");
            let in_src = in_src.to_string_lossy().replace('\\', "/");
            let name = file.file_name().expect("a name").to_string_lossy();
            !matches!(&*name, "lib.rs" | "main.rs" | "mod.rs") && !is_test_file(&in_src)
        })
        .map(|file| relative(file))
        .collect();
    modules.sort();
    modules
}

/// The "## Code map" section: from its heading to the next `## `.
fn section(doc: &str) -> Option<&str> {
    let start = doc.find(&format!("\n{SECTION}\n"))? + 1;
    let rest = &doc[start + SECTION.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + SECTION.len() + i + 1);
    Some(&doc[start..end])
}

/// The paragraph of `section` whose first line starts with `header`: up to
/// the next line that starts with `**`.
fn paragraph<'a>(section: &'a str, header: &str) -> Option<&'a str> {
    let start = if section.starts_with(header) {
        0
    } else {
        section.find(&format!("\n{header}"))? + 1
    };
    let rest = &section[start + header.len()..];
    let end = rest
        .find("\n**")
        .map_or(section.len(), |i| start + header.len() + i + 1);
    Some(&section[start..end])
}

/// What is written in backticks in `text`, split into path-like words
/// (letters, digits, `_`, `-`, `.` and `/`; and `*`, so a pattern such as
/// `*_tests.rs` stays one word, which names no file).
fn backticked_words(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| {
            span.split(|c: char| !(c.is_ascii_alphanumeric() || "_-./*".contains(c)))
                .map(|word| word.trim_start_matches("./"))
                .filter(|word| !word.is_empty())
        })
        .collect()
}

/// Whether `word` looks like a Rust file: a name of `[a-z0-9_]` and `.rs`,
/// maybe after a path.
fn is_rust_file(word: &str) -> bool {
    let name = word.rsplit('/').next().unwrap_or_default();
    name.strip_suffix(".rs").is_some_and(|stem| {
        !stem.is_empty()
            && stem
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Whether `path` is `tail` or ends in `/tail`.
fn ends_with_path(path: &str, tail: &str) -> bool {
    path == tail || path.ends_with(&format!("/{tail}"))
}

/// Whether `words` name `file` (relative to the workspace) of the package
/// whose `src/` is `src` (also relative): the file by a path that ends its
/// own, or a directory it is in, below `src/`, written as `dir/`.
fn names(words: &[&str], file: &str, src: &str) -> bool {
    if words
        .iter()
        .any(|w| is_rust_file(w) && ends_with_path(file, w))
    {
        return true;
    }
    let mut dir = file.rsplit_once('/').map_or("", |(d, _)| d);
    while dir.starts_with(&format!("{src}/")) {
        if words.iter().any(|w| {
            w.strip_suffix('/')
                .is_some_and(|w| !w.is_empty() && ends_with_path(dir, w))
        }) {
            return true;
        }
        dir = dir.rsplit_once('/').map_or("", |(d, _)| d);
    }
    false
}

/// Every `.rs` file a code-map entry may name, relative to the workspace.
fn workspace_rust_files(workspace: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["crates", "src", "tests", "benches"] {
        rust_files(&workspace.join(dir), &mut files);
    }
    if workspace.join("build.rs").exists() {
        files.push(workspace.join("build.rs"));
    }
    files.iter().map(|f| relative(f)).collect()
}

/// Every `.rs` file of the package in `dir`, relative to the workspace:
/// for a crate, all under its directory; for the root package, its `src/`,
/// `tests/`, `benches/` and `build.rs`.
fn package_rust_files(workspace: &Path, dir: &Path) -> Vec<String> {
    if dir != workspace {
        let mut files = Vec::new();
        rust_files(dir, &mut files);
        return files.iter().map(|f| relative(f)).collect();
    }
    workspace_rust_files(workspace)
        .into_iter()
        .filter(|f| !f.starts_with("crates/"))
        .collect()
}

/// Everything wrong between `doc` (ARCHITECTURE.md's text) and the
/// workspace: modules and crates the code map does not name, and `.rs`
/// files it names that do not exist.
pub(super) fn problems(doc: &str, workspace: &Path) -> Vec<String> {
    let Some(map) = section(doc) else {
        return vec![format!("ARCHITECTURE.md has no `{SECTION}` section")];
    };
    let mut problems = Vec::new();
    let existing = workspace_rust_files(workspace);
    for package in packages(workspace) {
        let Some(text) = paragraph(map, &package.header) else {
            problems.push(format!(
                "the code map has no paragraph starting with {} (at the start of a line)",
                package.header
            ));
            continue;
        };
        let words = backticked_words(text);
        let own = package_rust_files(workspace, &package.dir);
        for word in words.iter().filter(|w| is_rust_file(w) && !w.contains('/')) {
            let elsewhere = || existing.iter().any(|file| ends_with_path(file, word));
            if !own.iter().any(|file| ends_with_path(file, word)) && elsewhere() {
                problems.push(format!(
                    "the paragraph {} names `{word}`, which is not in that package: \
                     another's file is named by its path (`tokend-NAME/src/{word}`)",
                    package.header
                ));
            }
        }
        let src = relative(&package.dir.join("src"));
        for file in module_files(&package.dir) {
            if !names(&words, &file, &src) {
                let name = file.rsplit('/').next().unwrap_or_default();
                problems.push(format!(
                    "{file}: not in the code map: name `{name}` (or its module directory) \
                     in the paragraph {}, with what it holds",
                    package.header
                ));
            }
        }
    }
    let named: BTreeSet<&str> = backticked_words(map)
        .into_iter()
        .filter(|w| is_rust_file(w))
        .collect();
    for word in named {
        if !existing.iter().any(|file| ends_with_path(file, word)) {
            problems.push(format!(
                "ARCHITECTURE.md's code map names `{word}`, which is not in crates/, src/, \
                 tests/, benches/ or build.rs: a stale entry, correct or remove it"
            ));
        }
    }
    problems
}

/// A module file at the top of its package's `src/`, to take out of the
/// map in the check's own test: the last package's first that has one
/// (the binary's), so not the first crate's, whose heading the test takes
/// out.
pub(super) fn some_top_level_module(workspace: &Path) -> String {
    packages(workspace)
        .iter()
        .rev()
        .flat_map(|p| {
            let src = relative(&p.dir.join("src"));
            module_files(&p.dir)
                .into_iter()
                .filter(move |f| f.rsplit_once('/').is_some_and(|(d, _)| d == src))
        })
        .next()
        .expect("some module file at the top of a src/")
}
