//! Each SDK installed the way its README says, once per run, for the
//! snippets of its language: a Python venv with `clients/python` installed,
//! a Node project with the packed `@tokend/client` tarball, a Go module that
//! requires the SDK from the checkout (offline, from Debian's packages), and
//! a Rust crate with docs/sdks.md's `[dependencies]` lines. A missing tool
//! fails the test, naming it and how to install it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Runs `command`, panicking with its output when it fails or cannot start.
pub fn must(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Panics unless `tool` is on PATH, naming what installs it.
pub fn need(tool: &str, install: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "the snippet test needs `{tool}` on PATH and it is missing: {install}"
    );
}

/// A venv (kept in `target/snippets/venv`) with the Python SDK installed
/// as clients/python/README.md says, plus `build`; returns its bin dir.
pub fn python(root: &Path) -> PathBuf {
    need("python3", "apt-get install -y python3 python3-venv");
    let venv = root.join("target/snippets/venv");
    if !venv.join("bin/python").is_file() {
        must(
            "python3 -m venv (apt-get install -y python3-venv)",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        );
    }
    let pip = venv.join("bin/pip");
    must(
        "pip install ./clients/python[httpx,requests] build",
        Command::new(&pip)
            .current_dir(root)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(["./clients/python[httpx,requests]", "build"]),
    );
    // The same version number: reinstall so the checkout's code is what runs.
    must(
        "pip install --force-reinstall ./clients/python",
        Command::new(&pip).current_dir(root).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--force-reinstall",
            "--no-deps",
            "./clients/python",
        ]),
    );
    venv.join("bin")
}

/// `npm ci && npm pack` in clients/typescript, then a scratch project in
/// `dir` that `npm install`s the tarball; snippets run there as `.mjs`.
pub fn typescript(root: &Path, dir: &Path) {
    need("node", "apt-get install -y nodejs npm");
    need("npm", "apt-get install -y npm");
    let sdk = root.join("clients/typescript");
    must(
        "npm ci (clients/typescript)",
        Command::new("npm")
            .current_dir(&sdk)
            .args(["ci", "--no-audit", "--no-fund"]),
    );
    std::fs::create_dir_all(dir).expect("ts dir");
    let packed = must(
        "npm pack (clients/typescript)",
        Command::new("npm")
            .current_dir(&sdk)
            .args(["pack", "--silent", "--pack-destination"])
            .arg(dir),
    );
    let tarball = packed
        .lines()
        .rev()
        .find(|l| l.trim().ends_with(".tgz"))
        .unwrap_or_else(|| panic!("npm pack named no tarball:\n{packed}"))
        .trim()
        .to_owned();
    must(
        "npm init",
        Command::new("npm").current_dir(dir).args(["init", "-y"]),
    );
    must(
        "npm install the packed tarball",
        Command::new("npm")
            .current_dir(dir)
            .args(["install", "--no-audit", "--no-fund"])
            .arg(dir.join(tarball)),
    );
}

/// Checks that Go and Debian's Go packages that clients/go/README.md names
/// are installed (the offline route builds from them).
pub fn go() {
    need(
        "go",
        "apt-get install -y golang-go (and the packages clients/go/ci.sh installs)",
    );
    let gocode = Path::new("/usr/share/gocode/src");
    for module in [
        "google.golang.org/grpc",
        "google.golang.org/protobuf",
        "google.golang.org/genproto",
        "github.com/golang/protobuf",
    ] {
        assert!(
            gocode.join(module).join("go.mod").is_file(),
            "the snippet test needs Debian's Go sources of {module} in {}: apt-get install -y \
             golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev \
             golang-github-golang-protobuf-1-5-dev",
            gocode.display()
        );
    }
}

/// The cargo that runs this test.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| "cargo".into())
}
