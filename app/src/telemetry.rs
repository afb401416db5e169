//! Logs and traces: the process's `tracing` subscriber — log lines on stderr under the `log`
//! filter and, when `otlp_endpoint` is set, Mémoire's spans exported over OTLP/gRPC to an
//! OpenTelemetry collector. Nothing is sent anywhere unless that setting names a collector.

use std::time::Duration;

use memoire_config::{Config, LogFormat};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How long one export to the collector may take before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The process's trace export (none without `otlp_endpoint`). [`Telemetry::shutdown`] sends
/// what is still buffered; call it before the process exits.
#[derive(Debug, Default)]
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.0.is_some()
    }

    /// Sends the spans still buffered to the collector now (tests and benches).
    pub fn flush(&self) {
        if let Some(p) = &self.0
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }

    /// Sends the spans still buffered and stops exporting.
    pub fn shutdown(self) {
        if let Some(p) = self.0
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "stopping the trace export failed");
        }
    }
}

/// Installs the global `tracing` subscriber: the `log` filter (overridden by `RUST_LOG` when set),
/// text or JSON lines on stderr, and the OTLP export of `memoire*` spans when `otlp_endpoint` is
/// set (as `service`; sampled at `otlp_sample_ratio`, and always when the caller's
/// `traceparent` says its trace is sampled). Call once per process, inside the Tokio runtime;
/// a second call (tests) keeps the first subscriber and exports nothing.
pub fn init_tracing(config: &Config, service: &str) -> Telemetry {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.log).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match config.log_format {
        LogFormat::Text => lines
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    let (provider, failed) = match &config.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => match tracer_provider(endpoint, config.otlp_sample_ratio, service) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
    };
    // One filter for both: per-layer filters (a filter on each of the two layers) lost spans
    // of concurrent futures, so the `log` filter also decides which spans are traced.
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_owned())));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init()
        .is_ok();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are off: the OTLP exporter could not be built");
    }
    match provider {
        Some(p) if installed => {
            tracing::info!(endpoint = ?config.otlp_endpoint, ratio = config.otlp_sample_ratio, "exporting traces over OTLP");
            Telemetry(Some(p))
        }
        _ => Telemetry(None),
    }
}

fn tracer_provider(
    endpoint: &str,
    ratio: f64,
    service: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource)
        .build())
}
