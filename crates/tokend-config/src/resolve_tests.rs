//! `resolve` against what serve's start checked before issue 27, one bad
//! file at a time: the shared resolution refuses exactly the files one of
//! serve's former start-up steps refused, and more (those serve refused
//! only later, once listening was attempted).

use std::{net::SocketAddr, path::Path};

use super::{Outside, resolve};
use crate::FileConfig;

fn env(var: &str) -> Option<String> {
    (var == "SECRET").then(|| "s3cret".to_owned())
}

/// Whether serve's former start-up steps, each on its own, refused `file`.
fn serve_start_refuses(file: &FileConfig) -> bool {
    file.check_ranges().is_err()
        || file.providers(env).is_err()
        || file.limits().is_err()
        || file.audit_options().is_err()
        || file.cache_capacity().is_err()
        || file.refresh_concurrency().is_err()
        || file.events.resolve().is_err()
}

const PROVIDER: &str = "[providers.p]\ntoken_url = \"https://id.example.com/token\"\nclient_id = \"a\"\nclient_secret_env = \"SECRET\"\n";

#[test]
fn resolve_refuses_exactly_what_serve_refused_at_start() {
    let listen: SocketAddr = "127.0.0.1:50051".parse().unwrap();
    let cases: &[(&str, &str, bool)] = &[
        ("empty", "", false),
        ("a good provider", PROVIDER, false),
        ("a zero lease", "[store]\nrefresh_lease_secs = 0\n", true),
        (
            "a zero lease, postgres",
            "[store]\nkind = \"postgres\"\nrefresh_lease_secs = 0\n",
            true,
        ),
        ("a zero pool", "[store]\npool_size = 0\n", true),
        ("a tiny cache", "cache_capacity = 5\n", true),
        ("no refreshes", "refresh_concurrency = 0\n", true),
        ("a tiny audit file", "audit_max_bytes = 1\n", true),
        ("no events kept", "[events]\nmax_events = 0\n", true),
        ("a zero limit", "[limits]\nmax_connections = 0\n", true),
        (
            "an unset secret",
            "[providers.p]\ntoken_url = \"https://id.example.com/token\"\nclient_id = \"a\"\nclient_secret_env = \"UNSET\"\n",
            true,
        ),
        (
            "a zero http timeout",
            "[http]\nconnect_timeout_secs = 0\n",
            true,
        ),
    ];
    for (name, text, refused) in cases {
        let file = FileConfig::parse(text, Path::new("t.toml")).unwrap();
        let resolved = resolve(&file, listen, env, Outside::default());
        assert_eq!(
            serve_start_refuses(&file),
            *refused,
            "{name}: serve's former start"
        );
        assert_eq!(resolved.is_err(), *refused, "{name}: {resolved:?}");
    }
}

/// The sections resolved above this crate are refused through `outside`.
#[test]
fn outside_problems_are_refused_too() {
    let file = FileConfig::default();
    let listen: SocketAddr = "127.0.0.1:50051".parse().unwrap();
    let outside = Outside {
        webhooks: vec!["webhook \"h\": url must be https".to_owned()],
        store: Vec::new(),
    };
    let problems = resolve(&file, listen, env, outside).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
}
