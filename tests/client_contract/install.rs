//! `Install`, the client's own install type: a connection installed with it
//! serves tokens, a re-install replaces it, a misused builder is refused
//! before any call.

use std::time::Duration;

use secrecy::ExposeSecret as _;
use tokend_client::{Error, Install};

use crate::broker::Broker;

#[tokio::test]
async fn install_takes_the_clients_own_type() {
    let broker = Broker::start().await;
    let tokend = broker.client().await;
    let issued = broker.sandbox.issue_tokens("acct-inst", &["crm"]);
    let installed = tokend
        .install(
            Install::new("sandbox")
                .connection_id("inst")
                .account_id("acct-inst")
                .access_token(issued.access_token.clone())
                .refresh_token(issued.refresh_token.clone())
                .expires_in(Duration::from_secs(1800))
                .scopes(["crm"]),
        )
        .await
        .expect("installed");
    assert!(installed.created && !installed.replayed);
    assert_eq!(installed.connection.connection_id, "inst");
    assert_eq!(installed.connection.account_id, "acct-inst");
    let token = tokend.token("inst").await.unwrap();
    assert_eq!(token.access_token.expose_secret(), issued.access_token);

    // A new grant for the same account replaces the old one, and the
    // client stops serving the old token from its cache.
    let again = broker.sandbox.issue_tokens("acct-inst", &["crm"]);
    let replaced = tokend
        .install(
            Install::new("sandbox")
                .connection_id("inst")
                .account_id("acct-inst")
                .access_token(again.access_token.clone())
                .refresh_token(again.refresh_token.clone())
                .expires_in(Duration::from_secs(1800)),
        )
        .await
        .expect("replaced");
    assert!(!replaced.created);
    let token = tokend.token("inst").await.unwrap();
    assert_eq!(token.access_token.expose_secret(), again.access_token);

    let e = tokend
        .install(Install::new("sandbox").refresh_token("only-a-refresh-token"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { field, .. } if field == "grant"),
        "{e:?}"
    );
    assert!(!e.to_string().contains("only-a-refresh-token"));
}
