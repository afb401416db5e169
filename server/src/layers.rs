//! Tower middleware for the gRPC server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument as _;

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
        let method = req.uri().path().to_owned();
        let span = tracing::info_span!("rpc", method = %method);
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
