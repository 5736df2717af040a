//! The workspace's layout (issue 27, "a house you can see"), checked on
//! the sources themselves:
//!
//! (a) no import cycle among the top-level modules of any crate;
//! (b) no module takes through the crate root (`crate::Name`,
//!     `super::Name` out of a top-level module) a name the root does not
//!     define itself: a re-export of a sibling's item is for the crate's
//!     users, a module names the module that defines it;
//! (c) no `.rs` file under crates/, src/, tests/ or benches/ is over
//!     [`MAX_LINES`] lines;
//! (d) ARCHITECTURE.md's code map names every module file of every crate
//!     and of the binary, and every `.rs` file it names exists
//!     (`code_map.rs`).
//!
//! Each crate's module tree is followed from its root (`lib.rs`,
//! `main.rs`) through its `mod` declarations, parsed with `syn`; modules
//! and items under `#[cfg(test)]` are left out. The graph's arrows come
//! from `use` trees, paths in code and the paths inside macro calls that
//! start at `crate::`, `self::` or `super::` and end in another top-level
//! module (a re-export of the root counts as an arrow to the module it
//! re-exports from).

mod code_map;
mod modules;

use std::{
    fs,
    path::{Path, PathBuf},
};

use modules::{analyse, cycles, describe, read_crate};

/// The longest a source file may be.
const MAX_LINES: usize = 600;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `path` relative to the workspace, with `/` separators.
fn relative(path: &Path) -> String {
    let rel = path.strip_prefix(workspace()).unwrap_or(path);
    rel.to_string_lossy().replace('\\', "/")
}

/// The root file of every crate of the workspace.
fn crate_roots() -> Vec<PathBuf> {
    let mut dirs = vec![workspace().to_path_buf()];
    let mut members: Vec<_> = fs::read_dir(workspace().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    members.sort();
    dirs.extend(members);
    let mut roots = Vec::new();
    for dir in dirs {
        for root in ["src/lib.rs", "src/main.rs"] {
            if dir.join(root).exists() {
                roots.push(dir.join(root));
            }
        }
        if let Ok(bins) = fs::read_dir(dir.join("src/bin")) {
            let mut bins: Vec<_> = bins.map(|e| e.expect("an entry").path()).collect();
            bins.sort();
            roots.extend(
                bins.into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "rs")),
            );
        }
    }
    roots
}

#[test]
fn no_crate_has_an_import_cycle_among_its_modules() {
    let mut problems = Vec::new();
    for root in crate_roots() {
        let krate = read_crate(&root);
        let (arrows, _) = analyse(&krate);
        let name = relative(&root);
        for component in cycles(&krate.modules, &arrows) {
            problems.push(format!("{name}: a cycle {}", describe(&component, &arrows)));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_module_takes_a_siblings_item_through_the_crate_root() {
    let mut problems = Vec::new();
    for root in crate_roots() {
        let (_, via_root) = analyse(&read_crate(&root));
        for (place, name) in via_root {
            problems.push(format!(
                "{place}: takes `{name}` through the crate root, which does not define it: \
                 name the module that does"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("an entry").path();
        let name = path.file_name().expect("a name").to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for dir in ["crates", "src", "tests", "benches"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let lines = fs::read_to_string(&file)
            .expect("a source file")
            .lines()
            .count();
        let name = relative(&file);
        if lines > MAX_LINES {
            problems.push(format!("{name}: {lines} lines, over {MAX_LINES}: split it"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn architecture() -> String {
    fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

#[test]
fn the_code_map_names_every_module() {
    let problems = code_map::problems(&architecture(), workspace());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The check itself: a module whose every mention is renamed is reported
/// missing, the new name stale, and a crate whose paragraph lost its
/// heading is reported too.
#[test]
fn the_code_map_check_reports_missing_and_stale_entries() {
    let doc = architecture();
    let module = code_map::some_top_level_module(workspace());
    let name = module.rsplit('/').next().expect("a file name");
    let renamed = name.replace(".rs", "_gone.rs");
    let doc = doc
        .replace(name, &renamed)
        .replacen("**`crates/", "**`crate/", 1);
    let problems = code_map::problems(&doc, workspace()).join("\n");
    assert!(
        problems.contains(&format!("{module}: not in the code map")),
        "{module} not reported:\n{problems}"
    );
    assert!(
        problems.contains(&format!("{renamed}`, which is not in")),
        "{renamed} not reported:\n{problems}"
    );
    assert!(
        problems.contains("the code map has no paragraph starting with **`crates/"),
        "the lost heading not reported:\n{problems}"
    );
}
