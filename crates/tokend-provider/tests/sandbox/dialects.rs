//! Dialects with quirks (refusals in 200 bodies, JSON request bodies), and
//! the separate refresh URL.

use super::*;

/// Issue 16. The dialects whose refusals come in HTTP 200 bodies (Slack,
/// GitHub) and Notion's JSON request body, each against the sandbox speaking
/// it: a refresh, a revocation (Revoked, never transient), a rate limit, a
/// server error and a client misconfiguration, each classified exactly.
#[tokio::test]
async fn dialects_with_quirks_classify_every_answer() {
    use tokend_provider::{RequestBody, ResponseShape};
    struct Case {
        sandbox: SandboxDialect,
        dialect: Dialect,
        auth: ClientAuth,
        body: RequestBody,
        token_path: &'static [&'static str],
        account_field: Option<&'static str>,
        revoked_code: &'static str,
        client_code: &'static str,
    }
    let cases = [
        Case {
            sandbox: SandboxDialect::Slack,
            dialect: Dialect::Slack,
            auth: ClientAuth::ClientSecretPost,
            body: RequestBody::Form,
            token_path: &["authed_user"],
            account_field: Some("team.id"),
            revoked_code: "invalid_refresh_token",
            client_code: "invalid_client_id",
        },
        Case {
            sandbox: SandboxDialect::Github,
            dialect: Dialect::Github,
            auth: ClientAuth::ClientSecretPost,
            body: RequestBody::Form,
            token_path: &[],
            account_field: None,
            revoked_code: "bad_refresh_token",
            client_code: "incorrect_client_credentials",
        },
        Case {
            sandbox: SandboxDialect::Notion,
            dialect: Dialect::Rfc6749,
            auth: ClientAuth::ClientSecretBasic,
            body: RequestBody::Json,
            token_path: &[],
            account_field: Some("workspace_id"),
            revoked_code: "invalid_grant",
            client_code: "invalid_client",
        },
    ];
    let c = client(Duration::from_secs(5));
    for case in cases {
        let name = format!("{:?}", case.sandbox);
        let sandbox = Sandbox::start(SandboxConfig {
            dialect: case.sandbox,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut cfg = config(&sandbox, case.auth, case.dialect);
        cfg.request.body = case.body;
        cfg.response = ResponseShape {
            token_path: case.token_path.iter().map(|s| (*s).to_owned()).collect(),
            metadata_fields: vec![],
        };
        cfg.account_id_field = case.account_field.map(str::to_owned);
        cfg.extra_params.clear();

        let issued = sandbox.issue_tokens("acct-1", &["read"]);
        let grant = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            sandbox.access_token_is_live(grant.tokens.access_token.expose_secret()),
            "{name}"
        );
        assert_eq!(grant.tokens.lifetime(), Duration::from_secs(1800), "{name}");
        assert_eq!(
            grant.account_id.as_deref(),
            case.account_field.map(|_| "acct-1"),
            "{name}"
        );
        let rotated = grant.tokens.refresh_token.expect("rotated");

        // The spent token is refused: Revoked, from a 200 body for Slack
        // and GitHub, never taken for a malformed (transient) grant.
        let e = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Revoked, case.revoked_code),
            "{name}"
        );
        assert!(e.salvage.is_none(), "{name}: a refusal is not a lost grant");
        assert!(!e.to_string().contains(&issued.refresh_token), "{name}");

        sandbox.inject(Fault::RateLimited {
            retry_after_secs: 3,
            count: 1,
        });
        let e = c.refresh(&cfg, &rotated).await.unwrap_err();
        assert_eq!(
            (e.class, e.retry_after),
            (ErrorClass::RateLimited, Some(Duration::from_secs(3))),
            "{name}"
        );
        sandbox.inject(Fault::Status {
            status: 502,
            count: 1,
        });
        let e = c.refresh(&cfg, &rotated).await.unwrap_err();
        assert_eq!(
            (e.class, e.http_status),
            (ErrorClass::Transient, Some(502)),
            "{name}"
        );
        sandbox.inject(Fault::InvalidClient { count: 1 });
        let e = c.refresh(&cfg, &rotated).await.unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::ClientMisconfigured, case.client_code),
            "{name}"
        );
        // Still good after all that.
        c.refresh(&cfg, &rotated)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Issue 16: a refresh goes to `refresh_url` when one is set; a code
/// exchange still goes to `token_url`.
#[tokio::test]
async fn refreshes_go_to_the_refresh_url() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut cfg = config(&sandbox, ClientAuth::ClientSecretBasic, Dialect::Rfc6749);
    cfg.request.refresh_url = Some(cfg.token_url.clone());
    // Nothing listens at the token URL now: only the refresh URL works.
    cfg.token_url = "http://127.0.0.1:9/oauth/token".parse().unwrap();
    let c = client(Duration::from_secs(5));
    let issued = sandbox.issue_tokens("acct", &[]);
    c.refresh(&cfg, &SecretString::from(issued.refresh_token))
        .await
        .expect("refreshed at refresh_url");
    let e = c
        .exchange_code(&cfg, &SecretString::from("code"), "", None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "connect_error", "a code exchange uses token_url");
}
