//! The Mémoire gRPC server: `memoire.v1.MemoryService` and `memoire.v1.AdminService` over the
//! use-cases, with gRPC health and reflection (v1 and v1alpha).
//!
//! - [`Api`]: the services, served on the gRPC port ([`Api::serve`]) and, for browsers, as
//!   gRPC-Web on the HTTP port ([`Api::web`]); [`serve`]: the gRPC port alone, on a given listener until the shutdown future completes (tests bind
//!   `127.0.0.1:0`; the composition root, `memoire-app`, builds the use-cases and calls this).
//! - `rpc::memory`, `rpc::admin`: one adapter of a few lines per RPC.
//! - `convert`: proto ⇄ domain, every request conversion in one place per service;
//!   `error`: domain error → gRPC status; `auth`: the layer that resolves the caller.
//! - `layers`: tower middleware (metrics and tracing).

mod auth;
mod convert;
mod error;
mod layers;
mod rpc {
    pub mod admin;
    pub mod memory;
}

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use memoire_core::validate::Limits;
use memoire_proto::v1::admin_service_server::AdminServiceServer;
use memoire_proto::v1::memory_service_server::MemoryServiceServer;
use memoire_usecases::{Authenticator, UseCases};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::ServiceExt as _;
use tower::limit::GlobalConcurrencyLimitLayer;

pub use rpc::admin::AdminSvc;
pub use rpc::memory::MemorySvc;

/// Recall's defaults for what a request leaves unset.
#[derive(Debug, Clone, Copy)]
pub struct RecallDefaults {
    /// Items.
    pub default_k: usize,
    /// Token budget.
    pub default_token_budget: usize,
}

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Input limits.
    pub limits: Limits,
    /// Recall's defaults.
    pub recall: RecallDefaults,
    /// Server-side deadline of one RPC.
    pub request_timeout: Duration,
    /// RPCs served at once; more wait.
    pub max_concurrent_requests: usize,
    /// Largest request message.
    pub max_request_bytes: usize,
    /// The key page tokens are sealed with (`None`: a random one, valid for this process).
    pub page_token_secret: Option<String>,
    /// TLS on the gRPC port (`None`: plaintext).
    pub tls: Option<TlsFiles>,
}

/// The PEM files the gRPC port serves TLS with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
    /// CA certificates whose client certificates are required (mTLS); `None`: no client
    /// certificates.
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// tonic's TLS configuration, from the files (each error names its file).
    fn server_config(&self) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// What every RPC adapter shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The use-cases.
    pub uc: UseCases,
    /// Input limits.
    pub limits: Limits,
    /// Recall's defaults.
    pub recall: RecallDefaults,
    /// Seals and opens page tokens.
    pub page_key: convert::PageKey,
    /// Server-side deadline of one RPC: a call's own waits (`wait_timeout`) end before it.
    pub request_timeout: Duration,
}

impl AppState {
    /// How long a call may wait for extraction: what it asked for, ended a second before the
    /// request timeout so that it can still reply (documented on `wait_timeout`).
    pub fn extraction_wait(&self, asked: Duration) -> Duration {
        asked.min(self.request_timeout.saturating_sub(Duration::from_secs(1)))
    }
}

/// Accepted gRPC connections with TCP_NODELAY: without it, a response's small HTTP/2 frames wait
/// for the peer's delayed ACK (~40 ms per call on Linux). Keepalive finds dead peers.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// The `memoire.v1` services and the state and middleware they share, built once per process
/// and served on two ports: gRPC ([`Api::serve`]) and gRPC-Web for browsers ([`Api::web`]). The
/// two share the concurrency limit, the page-token key and the caches behind the use-cases.
#[derive(Clone)]
pub struct Api {
    state: AppState,
    auth: auth::AuthLayer,
    settings: ServerSettings,
    in_flight: Arc<Semaphore>,
}

impl Api {
    /// The services over `uc`, resolving callers with `auth`.
    pub fn new(uc: UseCases, auth: Authenticator, settings: ServerSettings) -> Self {
        let limiter = uc.limiter().clone();
        let state = AppState {
            uc,
            limits: settings.limits.clone(),
            recall: settings.recall,
            page_key: convert::PageKey::new(settings.page_token_secret.as_deref()),
            request_timeout: settings.request_timeout,
        };
        Api {
            state,
            auth: auth::AuthLayer::new(auth, limiter),
            in_flight: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            settings,
        }
    }

    fn memory(&self) -> MemoryServiceServer<MemorySvc> {
        MemoryServiceServer::new(MemorySvc::new(self.state.clone()))
            .max_decoding_message_size(self.settings.max_request_bytes)
    }

    fn admin(&self) -> AdminServiceServer<AdminSvc> {
        AdminServiceServer::new(AdminSvc::new(self.state.clone()))
            .max_decoding_message_size(self.settings.max_request_bytes)
    }

    /// `memoire.v1` over gRPC-Web, for the HTTP port: what a browser can speak (HTTP/1.1, no
    /// trailers). Health and reflection stay on the gRPC port.
    pub fn web(&self) -> GrpcWeb {
        GrpcWeb {
            routes: tonic::service::Routes::new(self.memory()).add_service(self.admin()),
            api: self.clone(),
        }
    }

    /// Serves gRPC on `listener` until `shutdown` completes; then reports NOT_SERVING and drains
    /// in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<MemoryServiceServer<MemorySvc>>().await;
        health.set_serving::<AdminServiceServer<AdminSvc>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(memoire_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building reflection v1alpha")?;

        let (memory, admin) = (self.memory(), self.admin());
        let settings = &self.settings;
        let grpc_addr = listener.local_addr()?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &settings.tls {
            builder = builder.tls_config(tls.server_config()?).context(
                "the TLS certificate or key (tls_cert_path, tls_key_path) is not valid PEM",
            )?;
        }
        tracing::info!(
            %grpc_addr,
            tls = settings.tls.is_some(),
            client_certificates = settings.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "gRPC listening"
        );

        let drain = {
            let health = health.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: draining in-flight requests");
                health
                    .set_not_serving::<MemoryServiceServer<MemorySvc>>()
                    .await;
                health
                    .set_not_serving::<AdminServiceServer<AdminSvc>>()
                    .await;
            }
        };
        builder
            .timeout(settings.request_timeout)
            .layer(self.middleware())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(memory)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming(listener), drain)
            .await
            .context("gRPC server failed")
    }

    /// The middleware every call passes on either port, outermost first.
    fn middleware(
        &self,
    ) -> tower::layer::util::Stack<
        auth::AuthLayer,
        tower::layer::util::Stack<
            GlobalConcurrencyLimitLayer,
            tower::layer::util::Stack<layers::MetricsLayer, tower::layer::util::Identity>,
        >,
    > {
        ServiceBuilder::new()
            // Outermost, so that requests waiting for the concurrency limit are timed too.
            .layer(layers::MetricsLayer)
            // Bounds work in flight (both ports together); excess requests wait instead of
            // exhausting the pool.
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                self.in_flight.clone(),
            ))
            // Inside the limit: resolving a key reads Postgres.
            .layer(self.auth.clone())
            .into_inner()
    }
}

/// `memoire.v1` over gRPC-Web ([`Api::web`]): one call at a time through the same middleware
/// as the gRPC port, under the same request timeout.
#[derive(Clone)]
pub struct GrpcWeb {
    api: Api,
    routes: tonic::service::Routes,
}

impl GrpcWeb {
    /// Answers one gRPC-Web request (any other request gets tonic-web's refusal).
    pub async fn call<B>(&self, req: http::Request<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut req = req.map(tonic::body::Body::new);
        // A browser's call always carries a key, also in dev mode: a page the browser was
        // tricked into (DNS rebinding) has none.
        req.extensions_mut().insert(auth::KeyRequired);
        let service = ServiceBuilder::new()
            // Outermost: the rest sees the gRPC call the browser's gRPC-Web request stands for.
            .layer(tonic_web::GrpcWebLayer::new())
            // Around everything the call waits for, as tonic's timeout is on the gRPC port.
            .layer(layers::DeadlineLayer::new(
                self.api.settings.request_timeout,
            ))
            .layer(self.api.middleware())
            .service(self.routes.clone());
        match service.oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Serves gRPC on `listener` until `shutdown` completes; then reports NOT_SERVING and drains
/// in-flight requests.
pub async fn serve(
    uc: UseCases,
    auth: Authenticator,
    settings: ServerSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Api::new(uc, auth, settings).serve(listener, shutdown).await
}
