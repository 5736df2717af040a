//! Tests of the provider's state: persistence, faults, rotation,
//! revocation and sweeping.

use super::grants::spent;
use super::*;

fn provider() -> Provider {
    Provider::new(&SandboxConfig::default())
}

/// Issue 11. Invariant: a refresh token issued before a restart is
/// honoured after it, exactly once under strict rotation; a revocation
/// survives too; and no token is written in the clear.
#[test]
fn grants_survive_a_restart_without_plaintext_tokens() {
    let dir = std::env::temp_dir().join(format!("sbx-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = SandboxConfig {
        state_file: Some(dir.join("state.json")),
        ..SandboxConfig::default()
    };
    let before = Provider::load(&config, "http").unwrap();
    let kept = before.issue_tokens("acct-kept", &["crm"]);
    let revoked = before.issue_tokens("acct-gone", &[]);
    before.revoke_account("acct-gone");
    drop(before);

    let text = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(!text.contains(&kept.refresh_token), "{text}");
    let after = Provider::load(&config, "http").unwrap();
    let granted = after.refresh(&kept.refresh_token).expect("still valid");
    assert_eq!(&*granted.account_id, "acct-kept");
    assert!(after.refresh(&kept.refresh_token).is_err(), "rotated out");
    assert!(
        after.refresh(&revoked.refresh_token).is_err(),
        "still revoked"
    );
    // The rotated-in token survives the next restart.
    let next = granted.refresh_token.unwrap();
    drop(after);
    let again = Provider::load(&config, "http").unwrap();
    again.refresh(&next).expect("the new token survived too");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn faults_are_consumed_in_order_and_counted_down() {
    let p = provider();
    p.inject(Fault::Status {
        status: 503,
        count: 2,
    });
    p.inject(Fault::MalformedBody { count: 0 });
    p.inject(Fault::InvalidClient { count: 1 });
    assert_eq!(p.begin_token_request(None), Some(FaultAction::Status(503)));
    assert_eq!(p.begin_token_request(None), Some(FaultAction::Status(503)));
    assert_eq!(
        p.begin_token_request(None),
        Some(FaultAction::InvalidClient)
    );
    assert_eq!(p.begin_token_request(None), None);
    let stats = p.stats();
    assert_eq!((stats.token_requests, stats.faults_served), (4, 3));
}

#[test]
fn a_lost_answer_fault_is_taken_like_the_others_and_counted_apart() {
    let p = provider();
    p.inject(Fault::LostAnswer {
        answer: crate::LostAnswer::Reset,
        hang: Duration::from_millis(7),
        count: 2,
    });
    let lost = Some(FaultAction::LostAnswer {
        answer: crate::LostAnswer::Reset,
        hang: Duration::from_millis(7),
    });
    assert_eq!(p.begin_token_request(None), lost);
    assert_eq!(p.begin_token_request(None), lost);
    assert_eq!(p.begin_token_request(None), None);
    p.record_lost_answer(true);
    p.record_lost_answer(false);
    let stats = p.stats();
    assert_eq!(
        (
            stats.faults_served,
            stats.lost_answers,
            stats.lost_answers_granted
        ),
        (2, 2, 1)
    );
}

#[test]
fn strict_rotation_kills_the_presented_token() {
    let p = provider();
    let issued = p.issue_tokens("acct", &["a"]);
    let granted = p.refresh(&issued.refresh_token).expect("first refresh");
    let next = granted
        .refresh_token
        .expect("strict rotation returns a new token");
    assert_eq!(
        p.refresh(&issued.refresh_token).err(),
        Some(UNKNOWN_REFRESH)
    );
    assert!(p.refresh(&next).is_ok());
    let stats = p.account_stats("acct");
    assert_eq!(
        (
            stats.refresh_requests,
            stats.refresh_grants_ok,
            stats.invalid_grant
        ),
        (3, 2, 1)
    );
}

#[test]
fn grace_rotation_keeps_a_rotated_out_token_for_a_while() {
    let p = provider();
    p.set_rotation(Rotation::Grace(1));
    let issued = p.issue_tokens("acct", &["a"]);
    let granted = p.refresh(&issued.refresh_token).expect("first refresh");
    assert!(granted.refresh_token.is_some(), "grace rotation rotates");
    // Reused inside the grace: a fresh pair, and the grace does not restart.
    assert!(p.refresh(&issued.refresh_token).is_ok());
    let t0 = Instant::now();
    let grace = Rotation::Grace(30);
    assert!(!spent(None, t0, grace));
    assert!(!spent(Some(t0), t0 + Duration::from_secs(29), grace));
    assert!(
        spent(Some(t0), t0 + Duration::from_secs(30), grace),
        "dead once the grace has passed"
    );
    assert!(spent(Some(t0), t0, Rotation::Strict));
    p.revoke_account("acct");
    assert_eq!(
        p.refresh(&granted.refresh_token.unwrap()).err(),
        Some(UNKNOWN_REFRESH),
        "revocation ignores the grace"
    );
}

#[test]
fn revocation_is_per_epoch_and_reinstall_works() {
    let p = provider();
    let old = p.issue_tokens("acct", &[]);
    p.revoke_account("acct");
    assert!(!p.access_token_is_live(&old.access_token));
    assert!(p.refresh(&old.refresh_token).is_err());
    let new = p.issue_tokens("acct", &[]);
    assert!(p.access_token_is_live(&new.access_token));
    assert!(p.refresh(&new.refresh_token).is_ok());
}

#[test]
fn huge_lifetime_does_not_overflow() {
    let p = provider();
    p.set_access_token_lifetime(Duration::MAX);
    let issued = p.issue_tokens("acct", &[]);
    assert!(p.access_token_is_live(&issued.access_token));
    assert_eq!(issued.expires_in, u64::MAX);
}

#[test]
fn sweeping_drops_only_dead_access_tokens() {
    let p = provider();
    p.set_access_token_lifetime(Duration::ZERO);
    for _ in 0..SWEEP_MIN {
        p.issue_tokens("short", &[]);
    }
    p.set_access_token_lifetime(Duration::from_secs(60));
    let live = p.issue_tokens("long", &[]);
    let inner = p.lock();
    assert!(inner.access_tokens.len() < SWEEP_MIN);
    assert!(inner.access_tokens.contains_key(&live.access_token));
}
