//! The operations endpoint every Mémoire process serves over HTTP: Prometheus `/metrics`,
//! liveness `/healthz` (the process answers) and readiness `/readyz` (its dependencies answer),
//! and the process-wide metrics recorder behind it.

use std::future::Future;
use std::sync::OnceLock;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Latency buckets, in seconds: 0.25 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Similarity-score buckets (the resolver's thresholds fall on bucket edges).
const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// The process-wide Prometheus recorder's handle (installed on first use; several servers in one
/// test process share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("memoire_resolver_score".into()),
                        SCORE_BUCKETS,
                    )
                });
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "histogram buckets rejected; histograms render as summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
            }
            handle
        })
        .clone()
}

/// Serves `/metrics`, `/healthz` and `/readyz`, and the routes of `extra`, until `shutdown`
/// completes. `ready` answers whether the process can do its work (Postgres answers); each
/// scrape of `/metrics` asks it too, as `memoire_postgres_up` (1 or 0), so an outage shows
/// without traffic.
pub async fn serve<R, Fut>(
    listener: TcpListener,
    ready: R,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    R: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let handle = metrics_handle();
    let probe = ready.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (handle, probe) = (handle.clone(), probe.clone());
                async move {
                    let up = probe().await;
                    metrics::gauge!("memoire_postgres_up").set(if up { 1.0 } else { 0.0 });
                    handle.run_upkeep();
                    handle.render()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready().await {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "postgres unavailable\n")
                    }
                }
            }),
        )
        .merge(extra);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
