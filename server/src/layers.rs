//! Tower middleware for the gRPC server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A call's metadata, read by the W3C trace-context propagator.
struct Metadata<'a>(&'a http::HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The RPC paths the server serves: `memoire.v1`'s (from the descriptors it is built from),
/// health and reflection.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message as _;
        let mut known: std::collections::HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let set = prost_types::FileDescriptorSet::decode(memoire_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        known
    });

/// A metric's `method` label: the path of a method the server has, else `unknown` — a client
/// calling made-up paths must not mint a label per path.
fn method_label(path: &str) -> &str {
    if KNOWN_METHODS.contains(path) {
        path
    } else {
        "unknown"
    }
}

/// Records `memoire_rpc_requests_total{method,code}` and `memoire_rpc_duration_seconds{method}`
/// for every RPC, inside a tracing span named after the method.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
}

/// The gRPC status of a response: from its headers for errors (trailers-only responses); a
/// response without one in its headers carries its status in the trailers, which for unary
/// calls means it succeeded.
fn grpc_code<B>(res: &http::Response<B>) -> &'static str {
    let code = res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path()).to_owned();
        // Traced as `memoire.v1.MemoryService/Recall` (OpenTelemetry's name for an RPC span),
        // under the caller's span when its W3C `traceparent` came with the call.
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            otel.name = method.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
        );
        let parent = TraceContextPropagator::new().extract(&Metadata(req.headers()));
        // Without a trace exporter there is nothing to attach the parent to: that is fine.
        let _ = span.set_parent(parent);
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await;
                let code = match &res {
                    Ok(r) => grpc_code(r),
                    Err(_) => "INTERNAL",
                };
                let elapsed = started.elapsed();
                metrics::counter!("memoire_rpc_requests_total", "method" => method.clone(), "code" => code).increment(1);
                metrics::histogram!("memoire_rpc_duration_seconds", "method" => method).record(elapsed.as_secs_f64());
                tracing::debug!(code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "rpc done");
                res
            }
            .instrument(span),
        )
    }
}

/// Ends a call that runs longer than the request timeout with `CANCELLED` ("Timeout expired"),
/// as tonic's server does on the gRPC port: the same deadline for gRPC-Web calls.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    timeout: std::time::Duration,
}

impl DeadlineLayer {
    /// Calls end after `timeout`.
    pub fn new(timeout: std::time::Duration) -> Self {
        DeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: std::time::Duration,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let (fut, timeout) = (self.inner.call(req), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(res) => res,
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_label_only_the_methods_the_server_has() {
        assert_eq!(
            method_label("/memoire.v1.MemoryService/Recall"),
            "/memoire.v1.MemoryService/Recall"
        );
        assert_eq!(
            method_label("/memoire.v1.AdminService/GetStats"),
            "/memoire.v1.AdminService/GetStats"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/memoire.v1.MemoryService/Nope"), "unknown");
        assert_eq!(method_label("/x/y"), "unknown");
    }
}
