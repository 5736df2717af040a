//! DeleteConnection: forgetting a connection, and a reinstall after.

use super::*;

#[tokio::test]
async fn delete_forgets_the_connection_and_a_reinstall_creates_it_again() {
    let server = TestServer::start().await;
    let (_, issued) = server.import("doomed", "acct-doomed", 1800).await;
    server.import("bystander", "acct-by", 1800).await;
    let mut client = server.client().await;
    token(&mut client, "doomed").await; // cached in memory too

    client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "doomed".into(),
            force: false,
        })
        .await
        .expect("delete");

    let err = client.get_token(get("doomed")).await.unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "doomed".into(),
        })
        .await
        .unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client.force_refresh(force("doomed")).await.unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "doomed".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_not_found(&err, "doomed");
    let err = client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "no such id".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_invalid(&err, "connection_id");
    let listed = client
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&listed), ["bystander"]);

    // The very same install request again is a new connection, not a replay
    // of the deleted one.
    let again = client
        .install(import_request("doomed", "acct-doomed", &issued, 1800))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created);
    assert!(!again.replayed);
    assert_eq!(again.connection.unwrap().version, 1);
    assert_eq!(
        token(&mut client, "doomed").await.access_token,
        issued.access_token
    );
    token(&mut client, "bystander").await;
}
