//! Tests of `auth.rs`.

use super::*;

fn identity(grants: Vec<Grant>) -> IdentityConfig {
    IdentityConfig {
        name: "svc".into(),
        api_key_sha256: Some(sha256_hex(b"key")),
        cert_sha256: None,
        grants,
        requests_per_second: 2,
        max_watch_streams: 1,
    }
}

fn id(s: &str) -> ConnectionId {
    ConnectionId::new(s).unwrap()
}

/// check-config lists every identity's every problem, not the first.
#[test]
fn every_identity_problem_is_listed() {
    let bare = IdentityConfig {
        name: "bare".into(),
        api_key_sha256: None,
        grants: Vec::new(),
        ..identity(Vec::new())
    };
    let grant = || Grant {
        permissions: vec![Permission::Tokens],
        connections: vec!["*".into()],
    };
    let twin = IdentityConfig {
        name: "twin".into(),
        cert_sha256: Some("zz".into()),
        ..identity(vec![grant()])
    };
    let first = IdentityConfig {
        name: "first".into(),
        ..identity(vec![grant()])
    };
    let problems: Vec<String> = check_identities(&[first, bare, twin.clone()])
        .iter()
        .map(ToString::to_string)
        .collect();
    let joined = problems.join("\n");
    assert_eq!(problems.len(), 4, "{joined}");
    for (who, what) in [
        ("bare", "set api_key_sha256 or cert_sha256"),
        ("bare", "has no grants"),
        ("twin", "api key shared"),
        ("twin", "cert_sha256 must be 64 hex digits"),
    ] {
        assert!(
            problems.iter().any(|p| p.contains(who) && p.contains(what)),
            "{who}: {what} missing from:\n{joined}"
        );
    }
    let limits = tokend_config::limits::Limits::default();
    assert!(Authenticator::new(&[twin], &limits).is_err());
}

#[test]
fn grants_are_permission_and_prefix_scoped() {
    let caller = Caller::new(
        &identity(vec![
            Grant {
                permissions: vec![Permission::Tokens],
                connections: vec!["tenant-a-".into()],
            },
            Grant {
                permissions: vec![Permission::Install],
                connections: vec!["tenant-a-new-*".into()],
            },
            Grant {
                permissions: vec![Permission::Admin],
                connections: vec!["sandbox-a".into()],
            },
        ]),
        4,
    );
    // Issue 10, item 8: whole ids, or prefixes that say so.
    assert!(caller.may(Permission::Admin, Some(&id("sandbox-a"))));
    assert!(!caller.may(Permission::Tokens, Some(&id("sandbox-ab9"))));
    assert!(!caller.may(Permission::Install, Some(&id("tenant-a-newer"))));
    assert!(caller.may(Permission::Tokens, Some(&id("tenant-a-1"))));
    assert!(!caller.may(Permission::Tokens, Some(&id("tenant-b-1"))));
    assert!(!caller.may(Permission::Install, Some(&id("tenant-a-1"))));
    assert!(caller.may(Permission::Install, Some(&id("tenant-a-new-9"))));
    assert!(!caller.may(Permission::Admin, Some(&id("tenant-a-1"))));
    let admin = Caller::new(
        &identity(vec![Grant {
            permissions: vec![Permission::Admin],
            connections: vec!["*".into()],
        }]),
        4,
    );
    assert!(admin.may(Permission::Tokens, Some(&id("anything"))));
    assert!(admin.may(Permission::Install, None));
}

#[test]
fn watch_slots_are_bounded_and_freed() {
    let caller = Arc::new(Caller::new(
        &identity(vec![Grant {
            permissions: vec![Permission::Tokens],
            connections: vec!["*".into()],
        }]),
        4,
    ));
    let slot = caller.open_watch_stream().unwrap();
    assert!(caller.open_watch_stream().is_err());
    drop(slot);
    assert!(caller.open_watch_stream().is_ok());
}

/// Issue 24, install cap. Invariant: a caller has at most its cap of
/// installs running; a refusal is RESOURCE_EXHAUSTED with RetryInfo, and
/// each slot comes back when the install holding it ends.
#[test]
fn install_slots_are_bounded_and_freed() {
    let caller = Arc::new(Caller::new(
        &identity(vec![Grant {
            permissions: vec![Permission::Install],
            connections: vec!["*".into()],
        }]),
        2,
    ));
    let first = caller.start_install().unwrap();
    let _second = caller.start_install().unwrap();
    let refused = caller.start_install().err().expect("a third is refused");
    let status = refused.to_status();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        tonic_types::StatusExt::get_details_retry_info(&status).is_some(),
        "RetryInfo"
    );
    drop(first);
    assert!(
        caller.start_install().is_ok(),
        "a finished install frees its slot"
    );
    let open = Authenticator::new(
        &[],
        &tokend_config::limits::Limits {
            max_installs_per_caller: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let peer = open
        .local
        .as_ref()
        .unwrap()
        .caller(Some("127.0.0.1:5000".parse().unwrap()));
    let other = open
        .local
        .as_ref()
        .unwrap()
        .caller(Some("127.0.0.1:5001".parse().unwrap()));
    let _held = peer.start_install().unwrap();
    assert!(
        peer.start_install().is_err(),
        "open mode: per client connection"
    );
    assert!(
        other.start_install().is_ok(),
        "another client connection has its own"
    );
}

/// Issue 24, item 6. Invariant: a listing reaches exactly the prefixes
/// and ids of the grants that hold the permission; `*` reaches all.
#[test]
fn reach_is_the_grants_patterns_for_the_permission() {
    let caller = Caller::new(
        &identity(vec![
            Grant {
                permissions: vec![Permission::Tokens],
                connections: vec!["tenant-a-*".into(), "shared-1".into()],
            },
            Grant {
                permissions: vec![Permission::Install],
                connections: vec!["*".into()],
            },
            Grant {
                permissions: vec![Permission::Admin],
                connections: vec!["ops-".into()],
            },
        ]),
        4,
    );
    assert_eq!(
        caller.reach(Permission::Tokens),
        Reach::Only {
            prefixes: vec!["tenant-a-".into(), "ops-".into()],
            ids: vec!["shared-1".into()],
        }
    );
    assert_eq!(caller.reach(Permission::Install), Reach::All);
}

#[test]
fn identities_are_validated() {
    let mut bad = identity(vec![]);
    assert!(
        Authenticator::new(&[bad.clone()], &Default::default()).is_err(),
        "no grants"
    );
    bad.grants = vec![Grant {
        permissions: vec![Permission::Tokens],
        connections: vec!["*".into()],
    }];
    bad.api_key_sha256 = Some("not-hex".into());
    assert!(Authenticator::new(&[bad], &Default::default()).is_err());
    assert!(
        Authenticator::new(&[], &Default::default())
            .unwrap()
            .is_open()
    );
}

fn metadata(headers: &[(&'static str, &str)]) -> tonic::metadata::MetadataMap {
    let mut m = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        m.append(*k, v.parse().unwrap());
    }
    m
}

/// Issue 10, item 9. Invariant: one credential per call, the Bearer
/// scheme case-insensitive, and no header order deciding who calls.
#[test]
fn exactly_one_credential_is_accepted() {
    let key = |h: &[(&'static str, &str)]| presented_key(&metadata(h));
    assert_eq!(key(&[]), Ok(None));
    assert_eq!(key(&[("x-api-key", "k1")]), Ok(Some("k1".into())));
    assert_eq!(
        key(&[("authorization", "Bearer k1")]),
        Ok(Some("k1".into()))
    );
    assert_eq!(
        key(&[("authorization", "bearer  k1 ")]),
        Ok(Some("k1".into())),
        "RFC 7235: the scheme is case-insensitive"
    );
    for two in [
        vec![("x-api-key", "k1"), ("authorization", "Bearer k2")],
        vec![("x-api-key", "k1"), ("authorization", "Bearer k1")],
        vec![("x-api-key", "k1"), ("x-api-key", "k2")],
        vec![
            ("authorization", "Bearer k1"),
            ("authorization", "Bearer k2"),
        ],
    ] {
        let refused = key(&two).unwrap_err();
        assert!(
            refused.contains("exactly one credential"),
            "{two:?}: {refused}"
        );
    }
    assert!(key(&[("authorization", "Basic a2V5")]).is_err());
    assert!(key(&[("authorization", "Bearer")]).is_err(), "empty");
}

/// A request from `peer`, as the interceptor sees it.
fn from_peer(peer: &str) -> Request<()> {
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer.parse().unwrap()),
        });
    request
}

/// Issue 26, item 10. Invariants: an open-mode connection over its rate
/// is refused only while the server is contended; the refusal passes
/// the interceptor and is answered once the request is read
/// ([`caller`]), never before its body.
#[test]
fn open_rates_bind_only_under_contention_and_refuse_after_the_body() {
    let limits = tokend_config::limits::Limits {
        open_requests_per_second_per_peer: 1,
        max_pending_requests: 4,
        ..Default::default()
    };
    let open = Authenticator::new(&[], &limits).unwrap();
    let load = Load::new(&limits);
    open.share_load(Arc::clone(&load));
    let (audit, clock) = (
        crate::audit::AuditLog::disabled(),
        tokend_core::Clock::system(),
    );
    let pass = |peer: &str| {
        let request = open
            .intercept(from_peer(peer), &audit, &clock)
            .expect("a rate refusal is answered by the service, not here");
        caller(&request).map(|_| ())
    };
    for _ in 0..20 {
        assert!(pass("127.0.0.1:5000").is_ok(), "idle: no cap");
    }
    load.connection_active();
    load.connection_active();
    assert!(load.pending.try_take(2));
    let refused = pass("127.0.0.1:5000").expect_err("contended: over its rate");
    let status = refused.to_status();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_some());
    assert!(
        pass("127.0.0.1:5001").is_ok(),
        "another connection has its share"
    );
    load.pending.give_back(2);
    assert!(pass("127.0.0.1:5000").is_ok(), "contention over");
}

/// Issue 26, item 10. Invariant: an unauthenticated request is not
/// answered by the interceptor, before its body: it passes marked
/// [`Refused`] with UNAUTHENTICATED and the unauthenticated message
/// cap, and with no caller attached, so the service refuses it too.
#[test]
fn an_unauthenticated_request_is_marked_not_answered() {
    let limits = tokend_config::limits::Limits {
        max_unauthenticated_message_bytes: 2048,
        ..Default::default()
    };
    let grant = Grant {
        permissions: vec![Permission::Tokens],
        connections: vec!["*".into()],
    };
    let auth = Authenticator::new(&[identity(vec![grant])], &limits).unwrap();
    let (audit, clock) = (
        crate::audit::AuditLog::disabled(),
        tokend_core::Clock::system(),
    );
    let mut request = from_peer("10.0.0.1:5000");
    request
        .metadata_mut()
        .insert("x-api-key", "wrong".parse().unwrap());
    for request in [from_peer("10.0.0.1:5000"), request] {
        let passed = auth
            .intercept(request, &audit, &clock)
            .expect("answered after the body, not here");
        let refused = passed.extensions().get::<Refused>().expect("marked");
        assert_eq!(refused.status.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.max_message, 2048);
        let err = caller(&passed).expect_err("no caller attached");
        assert_eq!(err.to_status().code(), tonic::Code::Unauthenticated);
    }
}

#[test]
fn the_stack_digest_is_the_usual_lowercase_hex() {
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    assert_eq!(
        super::sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
