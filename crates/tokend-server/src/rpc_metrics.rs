//! Counts and times every gRPC call, whatever answers it (a service, the
//! interceptor's refusal, the edge's), as a tower layer outside them all.
//! The code is read from the response headers: an error is trailers-only
//! there, and a call with no `grpc-status` in its headers is one that
//! started answering (OK for a unary call; a stream's opening).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use prost::Message as _;
use tower::{Layer, Service};

use tokend_engine::metrics::{MethodLabel, Metrics, RpcLabels};

/// Adds [`RpcMetrics`] in front of the gRPC services.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    /// `/package.Service/Method` of every RPC served, to its method name
    /// (leaked once: a fixed, small set). Any other path is `other`, so a
    /// client cannot grow the label set.
    known: Arc<HashMap<String, &'static str>>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let mut known = HashMap::new();
        for set in [
            tokend_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        let name: &'static str =
                            Box::leak(method.name().to_owned().into_boxed_str());
                        known.insert(
                            format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                            name,
                        );
                    }
                }
            }
        }
        RpcMetricsLayer {
            metrics,
            known: Arc::new(known),
        }
    }

    fn method(&self, path: &str) -> &'static str {
        match self.known.get(path) {
            Some(name) => name,
            None if path.starts_with("/grpc.reflection.") => "ServerReflectionInfo",
            None => "other",
        }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B, R> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.layer.method(request.uri().path());
        let metrics = Arc::clone(&self.layer.metrics);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("ok", |c| crate::error::code_name(tonic::Code::from_i32(c))),
                Err(_) => "unavailable",
            };
            metrics
                .rpc_requests
                .get_or_create(&RpcLabels { method, code })
                .inc();
            metrics
                .rpc_duration
                .get_or_create(&MethodLabel { method })
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}
