//! A second 401: raised as StillUnauthorized by default, handed over with
//! `Second401::Return`, in the reqwest middleware and the tower layer; a
//! POST's single 401 comes back unreplayed.

use std::sync::atomic::Ordering;

use http_body_util::{BodyExt as _, Full};
use tokend_client::{
    Error, Second401,
    layer::TokendAuthLayer,
    middleware::{MiddlewareErrorExt as _, TokendAuth},
};
use tower::{Service as _, ServiceBuilder, ServiceExt as _};

use crate::broker::{Broker, refusing_api};

#[tokio::test]
async fn reqwest_middleware_raises_by_default_and_returns_when_asked() {
    let broker = Broker::start().await;
    let tokend = broker.client().await;
    broker.import(&tokend, "mw", "acct-mw").await;
    let (url, hits) = refusing_api().await;
    let http = |second: Option<Second401>| {
        let mut auth = TokendAuth::new(tokend.clone(), "mw");
        if let Some(second) = second {
            auth = auth.second_401(second);
        }
        reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(auth)
            .build()
    };

    let err = http(None).get(&url).send().await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 2, "sent, then replayed once");
    assert!(
        matches!(err.tokend(), Some(Error::StillUnauthorized { connection_id, status: 401 }) if connection_id == "mw"),
        "{err}"
    );
    let token = tokend.token("mw").await.unwrap();
    {
        use secrecy::ExposeSecret as _;
        assert!(!err.to_string().contains(token.access_token.expose_secret()));
    }

    let response = http(Some(Second401::Return))
        .get(&url)
        .send()
        .await
        .expect("the second 401 handed over");
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "refused");
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    // A POST is not replayed: its one 401 comes back, whatever the option.
    let response = http(None).post(&url).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(hits.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn tower_layer_raises_by_default_and_returns_when_asked() {
    let broker = Broker::start().await;
    let tokend = broker.client().await;
    broker.import(&tokend, "tw", "acct-tw").await;
    let (url, hits) = refusing_api().await;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let get = || {
        http::Request::get(&url)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };

    let mut raising = ServiceBuilder::new()
        .layer(TokendAuthLayer::new(tokend.clone(), "tw"))
        .service(hyper.clone());
    let err = raising
        .ready()
        .await
        .unwrap()
        .call(get())
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(
        matches!(err.tokend(), Some(Error::StillUnauthorized { connection_id, status: 401 }) if connection_id == "tw"),
        "{err}"
    );

    let mut returning = ServiceBuilder::new()
        .layer(TokendAuthLayer::new(tokend.clone(), "tw").second_401(Second401::Return))
        .service(hyper);
    let response = returning
        .ready()
        .await
        .unwrap()
        .call(get())
        .await
        .expect("the second 401 handed over");
    assert_eq!(response.status(), 401);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"refused");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}
