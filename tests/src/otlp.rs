//! An OpenTelemetry collector in the test process: a tonic server implementing the OTLP trace
//! service that keeps every span it receives, with the name of the service that sent it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::trace::v1::Span;

/// One received span: the service that sent it (its `service.name`), and the span.
#[derive(Debug, Clone)]
pub struct Received {
    /// The sender's `service.name`.
    pub service: String,
    /// The span.
    pub span: Span,
}

/// The collector; clones share what it received.
#[derive(Debug, Clone, Default)]
pub struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves a new collector on a loopback port; its address for `otlp_endpoint` is
    /// `http://{addr}`.
    pub async fn start() -> std::io::Result<(Collector, SocketAddr)> {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok((collector, addr))
    }

    /// What it has received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
