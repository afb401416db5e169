//! The Mémoire gRPC server: `memoire.v1.MemoryService` and `memoire.v1.AdminService`, gRPC health
//! and reflection (v1 and v1alpha), Prometheus metrics and liveness over HTTP.
//!
//! - [`run`] / [`serve`]: start everything on given listeners and stop gracefully when the
//!   shutdown future completes (tests bind `127.0.0.1:0` and call these in-process).
//! - `rpc::memory`, `rpc::admin`: one small adapter per RPC.
//! - `convert`: proto ⇄ domain; `error`: domain error → gRPC status; `auth`: API keys.
//! - `layers`: tower middleware; `http`: `/metrics`, `/healthz`, `/readyz`.

mod auth;
mod convert;
mod embedding;
mod error;
mod http;
mod layers;
mod rpc {
    pub mod admin;
    pub mod memory;
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use memoire_core::recall::Weights;
use memoire_core::validate::Limits;
use memoire_proto::v1::admin_service_server::AdminServiceServer;
use memoire_proto::v1::memory_service_server::MemoryServiceServer;
use memoire_store::{PgSettings, PgStore, RedisCache, VectorSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

pub use auth::Authenticator;
pub use embedding::QueryEmbedder;
pub use memoire_config::{Config, Flags};
pub use rpc::admin::AdminSvc;
pub use rpc::memory::MemorySvc;

/// What Recall needs besides the store.
#[derive(Debug)]
pub struct RecallSettings {
    /// Embeds queries (through the Redis cache).
    pub embedder: QueryEmbedder,
    /// Fusion weights.
    pub weights: Weights,
    /// Vector search settings.
    pub vectors: VectorSettings,
    /// Items when the request does not say.
    pub default_k: usize,
    /// Token budget when the request does not say.
    pub default_token_budget: usize,
    /// Candidates per search side.
    pub candidates: usize,
    /// The decay floor: memories below it are left out.
    pub min_confidence: f32,
}

/// What every RPC adapter shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Postgres.
    pub store: PgStore,
    /// Resolves API keys.
    pub auth: Authenticator,
    /// Input limits.
    pub limits: Limits,
    /// Recall.
    pub recall: Arc<RecallSettings>,
    /// Conscious.
    pub conscious: memoire_store::ConsciousSettings,
    /// The maintenance jobs (RunMaintenance).
    pub jobs: Arc<memoire_worker::jobs::JobSettings>,
}

/// The two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// HTTP: metrics and health.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses, with an error that names the setting.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        async fn one(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
            TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot listen on {addr} (`{key}`, MEMOIRE_{}): is another process using it?",
                    key.to_uppercase()
                )
            })
        }
        Ok(Listeners {
            grpc: one(config.grpc_addr, "grpc_addr").await?,
            http: one(config.http_addr, "http_addr").await?,
        })
    }
}

/// Accepted gRPC connections with TCP_NODELAY: without it, a response's small HTTP/2 frames wait
/// for the peer's delayed ACK (~40 ms per call on Linux). Keepalive finds dead peers.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// The input limits of a configuration.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_content_bytes: config.max_content_bytes,
        max_batch_ids: config.max_batch_ids,
        max_batch_messages: config.max_batch_messages,
        max_page_size: config.max_page_size,
        max_query_bytes: config.max_query_bytes,
        max_k: config.max_k,
        max_token_budget: config.max_token_budget,
    }
}

/// Connects to Postgres and, when configured, applies migrations and creates the vector indexes.
pub async fn connect(config: &Config) -> anyhow::Result<PgStore> {
    let store = PgStore::connect(&PgSettings {
        url: config.database_url.clone(),
        max_connections: config.database_max_connections,
        acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
        hnsw_ef_search: config.recall_hnsw_ef_search,
    })
    .await
    .with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {} (`database_url`, MEMOIRE_DATABASE_URL); run scripts/setup.sh to install and start it",
            memoire_config::redact_url(&config.database_url)
        )
    })?;
    if config.migrate_on_start {
        migrate(config, &store).await?;
    }
    Ok(store)
}

/// Applies migrations and creates the vector indexes of the configured embedding model.
pub async fn migrate(config: &Config, store: &PgStore) -> anyhow::Result<()> {
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    store
        .ensure_vector_indexes(&config.embedding_model, config.embedding_dims)
        .await
        .context("creating the vector indexes")?;
    Ok(())
}

/// Checks the gRPC health of the server at `config.grpc_addr` (an unspecified listen address is
/// probed on loopback). Ok when it reports SERVING.
pub async fn probe(config: &Config) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut addr = config.grpc_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("health check failed")?
        .into_inner()
        .status;
    anyhow::ensure!(
        status == ServingStatus::Serving as i32,
        "not serving (status {status})"
    );
    Ok(())
}

/// Connects, migrates, and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = connect(&config).await?;
    serve(config, store, listeners, shutdown).await
}

/// Serves gRPC and HTTP on `listeners` with `store` until `shutdown` completes; then reports
/// NOT_SERVING, drains in-flight requests, and stops the embedded worker.
pub async fn serve(
    config: Config,
    store: PgStore,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dev_tenant = if config.dev_mode {
        let tenant = store
            .ensure_tenant("dev")
            .await
            .context("creating the dev tenant")?;
        tracing::warn!(tenant_id = %tenant.id, "dev_mode is on: requests without an API key act as the admin of tenant 'dev'; never use this in production");
        Some(tenant.id)
    } else {
        None
    };
    if config.admin_key.is_none() {
        tracing::warn!(
            "no bootstrap admin key (MEMOIRE_ADMIN_KEY): tenants cannot be created through the admin service"
        );
    }
    let embedder = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            memoire_providers::Tiktoken::warm_up();
            memoire_worker::providers::embedder(&config)
        })
        .await??
    };
    let cache = RedisCache::connect(&config.redis_url, Duration::from_secs(1)).await?;
    let store = store
        .with_embedder(embedder.clone())
        .with_conscious(cache.clone());
    let state = AppState {
        jobs: Arc::new(memoire_worker::providers::job_settings(&config)),
        conscious: memoire_store::ConsciousSettings {
            max_essential: config.conscious_max_essential,
            recent_turns: config.conscious_recent_turns,
            session_ttl: Duration::from_secs(config.conscious_session_ttl_secs),
            cache_ttl: Duration::from_secs(config.conscious_cache_ttl_secs),
            min_confidence: config.decay_floor,
        },
        auth: Authenticator::new(store.clone(), config.admin_key.as_deref(), dev_tenant),
        store: store.clone(),
        limits: limits(&config),
        recall: Arc::new(RecallSettings {
            embedder: QueryEmbedder::new(
                embedder.clone(),
                Some(cache),
                Duration::from_secs(config.query_cache_ttl_secs),
            ),
            weights: Weights {
                fusion: match config.recall_fusion {
                    memoire_config::Fusion::Weighted => memoire_core::recall::Fusion::Weighted,
                    memoire_config::Fusion::Rrf => memoire_core::recall::Fusion::Rrf,
                },
                subject: config.recall_subject_weight,
                text: config.recall_text_weight,
                vector: config.recall_vector_weight,
                rrf_k: config.recall_rrf_k,
                importance: config.recall_importance_weight,
                confidence: config.recall_confidence_weight,
                recency: config.recall_recency_weight,
                half_life_days: config.recall_recency_half_life_days,
            },
            vectors: VectorSettings {
                model: embedder.model_id().to_owned(),
                dims: config.embedding_dims,
                exact_search_max_scope: config.recall_exact_search_max_scope,
            },
            default_k: config.recall_default_k,
            default_token_budget: config.recall_default_token_budget,
            candidates: config.recall_candidates,
            min_confidence: config.decay_floor,
        }),
    };
    tracing::info!(embedding_model = %embedder.model_id(), dims = embedder.dims(), "embedding model ready");

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

    // One shutdown signal fans out to the gRPC server, the HTTP server and the worker.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let worker = if config.worker_embedded {
        let extractor = memoire_worker::providers::extractor(&config)?;
        // The worker embeds with one model call at a time: requests keep a core.
        let background = memoire_worker::providers::Background::wrap(embedder.clone(), 1);
        Some(tokio::spawn(memoire_worker::run(
            store.clone().with_embedder(background),
            extractor,
            memoire_worker::providers::settings(&config),
            stopped(stop_rx.clone()),
        )))
    } else {
        None
    };
    let http_addr = listeners.http.local_addr()?;
    let http = tokio::spawn(http::serve(
        listeners.http,
        store.clone(),
        stopped(stop_rx.clone()),
    ));

    let max = config.max_request_bytes;
    let memory =
        MemoryServiceServer::new(MemorySvc::new(state.clone())).max_decoding_message_size(max);
    let admin = AdminServiceServer::new(AdminSvc::new(state)).max_decoding_message_size(max);
    let grpc_addr = listeners.grpc.local_addr()?;
    tracing::info!(%grpc_addr, %http_addr, "memoire-server listening");

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
    let served = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .layer(
            ServiceBuilder::new()
                // Outermost, so that requests waiting for the concurrency limit are timed too.
                .layer(layers::MetricsLayer)
                // Bounds work in flight; excess requests wait instead of exhausting the pool.
                .layer(GlobalConcurrencyLimitLayer::new(
                    config.max_concurrent_requests,
                ))
                .into_inner(),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(memory)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming(listeners.grpc), drain)
        .await;

    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    if let Some(worker) = worker
        && tokio::time::timeout(grace, worker).await.is_err()
    {
        tracing::warn!("the worker did not stop within shutdown_grace_secs");
    }
    let _ = tokio::time::timeout(grace, http).await;
    served.context("gRPC server failed")?;
    tracing::info!("memoire-server stopped");
    Ok(())
}
