//! UNAVAILABLE across RPCs: what failed, and when to retry.

use super::*;

/// Issue 11. Invariants: an UNAVAILABLE says what failed and never claims
/// no valid token is left when one is; a code exchange that fails
/// transiently carries RetryInfo like every other UNAVAILABLE.
#[tokio::test]
async fn unavailable_says_what_failed_and_when_to_retry() {
    let server = TestServer::start_with(background_off()).await;
    let mut client = server.client().await;
    let code = server.sandbox.issue_code("acct-u", &[], None, None);
    server.sandbox.inject(tokend_sandbox::Fault::Status {
        status: 503,
        count: 1,
    });
    let err = client
        .install(code_request("", "", &code, "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "PROVIDER_UNAVAILABLE");
    assert!(
        tonic_types::StatusExt::get_details_retry_info(&err).is_some(),
        "Install's UNAVAILABLE carries RetryInfo: {err:?}"
    );
    assert!(err.message().contains("retry after"), "{}", err.message());

    server.import("u-1", "acct-u1", 1800).await;
    server.sandbox.inject(tokend_sandbox::Fault::Status {
        status: 503,
        count: 1,
    });
    let err = client.force_refresh(force("u-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        !err.message().contains("no valid token"),
        "a valid token is left: {}",
        err.message()
    );
    assert!(
        err.message().contains("503") || err.message().contains("server_error"),
        "{}",
        err.message()
    );
    client
        .get_token(get("u-1"))
        .await
        .expect("the still-valid token is served");
}
