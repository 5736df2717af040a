//! The README's test command (`scripts/test`) on a machine that lacks the
//! tools: it stops at once and names each missing tool and how to install
//! it, instead of letting 14 minutes of tests fail one binary at a time.

use std::{os::unix::fs::symlink, path::Path, process::Command};

/// A PATH holding only what the script itself runs: no apt-get, no
/// chromium, no python3, no promtool.
fn bare_path(dir: &Path) {
    for tool in ["bash", "dirname", "id", "ls", "sed", "head", "env"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is not in /usr/bin or /bin"));
        symlink(found, dir.join(tool)).expect("symlink");
    }
}

/// Runs `scripts/test --tools` with nothing but `bin` on PATH and an empty
/// venv location; `no_install` sets `TOKEND_TEST_NO_INSTALL`.
fn tools_check(bin: &Path, home: &Path, no_install: bool) -> (Option<i32>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(bin.join("bash"));
    command
        .arg(root.join("scripts/test"))
        .arg("--tools")
        .env_clear()
        .env("PATH", bin)
        .env("HOME", home)
        .env("TOKEND_TEST_VENV", home.join("venv"));
    if no_install {
        command.env("TOKEND_TEST_NO_INSTALL", "1");
    }
    let out = command.output().expect("run scripts/test");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Invariant: a fresh machine where the tools cannot be installed gets a
/// loud failure naming every missing tool, never a silent skip or a pass.
#[test]
fn the_test_command_names_every_tool_it_cannot_install() {
    let bin = tempfile::tempdir().expect("tempdir");
    bare_path(bin.path());
    let home = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = tools_check(bin.path(), home.path(), false);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    for named in [
        "chromium: sudo apt-get install -y chromium",
        "promtool: sudo apt-get install -y prometheus",
        "python3: sudo apt-get install -y python3",
        "podman: sudo apt-get install -y podman",
        "mmdebstrap: sudo apt-get install -y mmdebstrap",
        "standardwebhooks",
    ] {
        assert!(stderr.contains(named), "{named:?} not named in: {stderr}");
    }

    // Told to install nothing, it says what is missing and goes on, so the
    // tests that need those tools fail by name (here: --tools stops).
    let (code, stderr) = tools_check(bin.path(), home.path(), true);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("chromium: sudo apt-get install -y chromium"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the tests that need them will fail"),
        "{stderr}"
    );
}
