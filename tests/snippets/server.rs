//! The quickstart server the snippets talk to: `tokend serve --sandbox`
//! with its data in the work dir's `./tokend-data`, on free ports, and the
//! blocks running in the background beside it.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::extract::Block;

pub struct Server {
    pub grpc: SocketAddr,
    pub sandbox: SocketAddr,
    child: Child,
    log: PathBuf,
    bg: Vec<(Block, Child, PathBuf)>,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

impl Server {
    /// Starts a server on a fresh `work/tokend-data`; with `install`, also
    /// the connections `sandbox-portal-123` and `sandbox-acme`.
    pub fn start(work: &Path, install: bool) -> Result<Server, String> {
        let data = work.join("tokend-data");
        let _ = std::fs::remove_dir_all(&data);
        let (grpc, sandbox) = (free_addr(), free_addr());
        let log = work.join("tokend.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["serve", "--sandbox", "--admin-listen", "off"])
            .args(["--listen", &grpc.to_string()])
            .args(["--sandbox-listen", &sandbox.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .current_dir(work)
            .env_remove("TOKEND_CONFIG")
            .env_remove("TOKEND_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("tokend serve: {e}"))?;
        let mut server = Server {
            grpc,
            sandbox,
            child,
            log,
            bg: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(grpc).is_err() || TcpStream::connect(sandbox).is_err() {
            if Instant::now() > deadline || matches!(server.child.try_wait(), Ok(Some(_))) {
                return Err(server.log_text());
            }
            // A plain #[test] thread, no async runtime to block.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
        if install {
            for account in ["portal-123", "acme"] {
                server.install(account)?;
            }
        }
        Ok(server)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Installs `sandbox-ACCOUNT` the way the walkthrough does.
    fn install(&self, account: &str) -> Result<(), String> {
        let script = format!(
            "set -eo pipefail\n\
             CODE=$(curl -sf -XPOST {sb}/sandbox/codes -H 'content-type: application/json' \
             -d '{{\"account_id\":\"{account}\",\"scopes\":[\"crm\"]}}' | sed 's/.*\"code\":\"\\([^\"]*\\)\".*/\\1/')\n\
             '{bin}' install --endpoint http://{grpc} --provider sandbox --code \"$CODE\"\n",
            sb = self.sandbox,
            grpc = self.grpc,
            bin = env!("CARGO_BIN_EXE_tokend"),
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "installing sandbox-{account} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The snippet with the documented addresses replaced by this server's.
    pub fn substitute(&self, code: &str) -> String {
        let (g, s) = (self.grpc.to_string(), self.sandbox.to_string());
        code.replace("127.0.0.1:50051", &g)
            .replace("localhost:50051", &g)
            .replace("127.0.0.1:50052", &s)
            .replace("localhost:50052", &s)
    }

    /// Starts `command` in the background, its output in a file. It leads a
    /// process group of its own, so that dropping the server ends the
    /// block's children too (a `bash -c` block's `tokend events --follow`).
    pub fn background(&mut self, block: &Block, mut command: Command) -> Result<(), String> {
        let out = self.log.with_file_name(format!("bg-{}.out", self.bg.len()));
        let file = std::fs::File::create(&out).map_err(|e| e.to_string())?;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.bg.push((block.clone(), child, out));
        Ok(())
    }

    /// Background blocks that failed (exited non-zero) so far.
    pub fn take_bg_failures(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        self.bg
            .retain_mut(|(block, child, out)| match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    let text = std::fs::read_to_string(&*out).unwrap_or_default();
                    failures.push(format!(
                        "{}: background block exited {status}\n--- snippet\n{}--- output\n{text}",
                        block.place, block.code
                    ));
                    false
                }
                _ => true,
            });
        failures
    }
}

impl Server {
    /// Stops the server and every background block's process group, then
    /// names each block that still has a process alive a second later.
    pub fn stop(mut self) -> Vec<String> {
        let bg = std::mem::take(&mut self.bg);
        for (_, child, _) in &bg {
            kill_group(child);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut left = Vec::new();
        for (block, mut child, _) in bg {
            let _ = child.kill();
            let _ = child.wait();
            while group_alive(&child) && Instant::now() < deadline {
                #[allow(clippy::disallowed_methods)] // a plain thread, no runtime here
                std::thread::sleep(Duration::from_millis(20));
            }
            if group_alive(&child) {
                left.push(format!(
                    "{}: a process of this background block outlived its server",
                    block.place
                ));
            }
        }
        left
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.bg {
            kill_group(child);
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ends the process group that `child` was made to lead (see
/// [`Server::background`]), even after the child itself exited: its group
/// lives on while any member does. Never this test's own group.
fn kill_group(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: getpgrp and kill take plain integers and touch no memory.
    unsafe {
        if pid > 1 && libc::getpgrp() != pid {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Whether any process of the group `child` led is still running: a live
/// (not zombie) entry in /proc whose process group is the child's pid.
fn group_alive(child: &Child) -> bool {
    let group = child.id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // After the command name's closing parenthesis: state, ppid, pgrp.
        let mut rest = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let (state, pgrp) = (rest.next(), rest.nth(1));
        pgrp == Some(group.as_str()) && !matches!(state, Some("Z" | "X"))
    })
}
