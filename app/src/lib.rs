//! Mémoire's composition root: configuration → providers → store → use-cases → the gRPC server
//! and the worker. The two binaries (`memoire-server`, `memoire-worker`) are thin `main`s over
//! this crate; tests call [`serve`] in-process on `127.0.0.1:0`.
//!
//! - [`serve`] / [`run_server`]: the server process — gRPC, the HTTP [`ops`] endpoint and, with
//!   `worker_embedded`, the worker, all stopped by one shutdown future.
//! - `ui`: the Memory Inspector and gRPC-Web on the HTTP port (`ui_enabled`).
//! - [`run_worker`]: the worker process on its own.
//! - `settings`: each part's settings built from the one [`Config`]; [`providers`]: the
//!   embedder, extractor and summarizer it names.
//! - [`init_tracing`], [`shutdown_signal`]: process bootstrap.
//! - [`transfer`]: the `export` and `import` subcommands.

pub mod ops;
pub mod providers;
mod settings;
mod telemetry;
pub mod transfer;
mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use memoire_store::{ConsciousCache, PgSettings, PgStore, RedisCache, ReplicaSettings};
use memoire_usecases::{Authenticator, QueryEmbedder, RateLimiter, UseCases};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use memoire_config::{Config, Flags};
pub use settings::{limits, server_settings, usecase_settings, worker_settings};
pub use telemetry::{Telemetry, init_tracing};

/// The server process's two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// HTTP: metrics and health.
    pub http: TcpListener,
}

/// Binds `addr`, with an error that names the setting.
async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} (`{key}`, MEMOIRE_{}): is another process using it?",
            key.to_uppercase()
        )
    })
}

impl Listeners {
    /// Binds the configured addresses, with an error that names the setting.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Listeners {
            grpc: bind(config.grpc_addr, "grpc_addr").await?,
            http: bind(config.http_addr, "http_addr").await?,
        })
    }
}

/// Connects to Postgres with `max_connections` (and to the read replica, when configured and
/// `reads` are served) and, when configured, applies migrations and creates the vector indexes.
async fn connect_with(
    config: &Config,
    max_connections: u32,
    reads: bool,
) -> anyhow::Result<PgStore> {
    let replica = match (&config.database_read_url, reads) {
        (Some(url), true) => Some(ReplicaSettings {
            url: url.clone(),
            max_lag: Duration::from_millis(config.database_read_max_lag_ms),
        }),
        _ => None,
    };
    let store = PgStore::connect(&PgSettings {
        url: config.database_url.clone(),
        max_connections,
        acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
        hnsw_ef_search: config.recall_hnsw_ef_search,
        row_level_security: config.database_row_level_security,
        replica,
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

/// Connects to Postgres and, when configured, applies migrations and creates the vector indexes.
pub async fn connect(config: &Config) -> anyhow::Result<PgStore> {
    connect_with(config, config.database_max_connections, true).await
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
    anyhow::ensure!(
        config.tls_cert_path.is_none(),
        "the probe speaks plaintext gRPC and this server serves TLS; probe the HTTP health \
         endpoint instead (http://{}/readyz)",
        config.http_addr
    );
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

/// The use-cases of `config` over `store`: the configured embedder (loaded off the runtime),
/// Redis for the query-embedding cache and Conscious.
pub async fn usecases(config: &Config, store: PgStore) -> anyhow::Result<UseCases> {
    let embedder = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            memoire_providers::Tiktoken::warm_up();
            providers::embedder(&config)
        })
        .await??
    };
    let cache = RedisCache::connect(&config.redis_url, Duration::from_secs(1)).await?;
    let queries = QueryEmbedder::new(
        embedder.clone(),
        Some(cache.clone()),
        Duration::from_secs(config.query_cache_ttl_secs),
    );
    tracing::info!(embedding_model = %embedder.model_id(), dims = embedder.dims(), "embedding model ready");
    let settings = usecase_settings(
        config,
        embedder.model_id(),
        providers::summarizer(config),
        providers::chat_model(config)?,
    );
    Ok(UseCases::new(
        store,
        embedder,
        queries,
        Some(ConsciousCache::new(cache.clone())),
        RateLimiter::new(Some(cache)),
        settings,
    ))
}

/// Completes when the flag is set.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Connects, migrates, and serves until `shutdown` completes.
pub async fn run_server(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = connect(&config).await?;
    serve(config, store, listeners, shutdown).await
}

/// The server process over `store`: gRPC and HTTP on `listeners` and, with `worker_embedded`,
/// the worker, until `shutdown` completes; then gRPC drains, and the worker and HTTP stop.
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
    let uc = usecases(&config, store.clone()).await?;
    let auth = Authenticator::new(store.clone(), config.admin_key.as_deref(), dev_tenant);
    let flush_store = store.clone();

    // One shutdown signal fans out to the gRPC server, the HTTP server and the worker.
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = if config.worker_embedded {
        let extractor = providers::extractor(&config)?;
        // The worker embeds with one model call at a time: requests keep a core.
        let background = providers::Background::wrap(uc.embedder(), 1);
        Some(tokio::spawn(memoire_worker::run(
            uc.with_embedder(background),
            extractor,
            worker_settings(&config),
            stopped(stop_rx.clone()),
        )))
    } else {
        None
    };
    let api = memoire_server::Api::new(uc, auth, server_settings(&config));
    let http_addr = listeners.http.local_addr()?;
    let extra = if config.ui_enabled && config.tls_cert_path.is_some() {
        // The HTTP port is plaintext: serving the API there would bypass TLS and client
        // certificates.
        tracing::warn!(%http_addr, "the Inspector and gRPC-Web are off: the gRPC port serves TLS and the HTTP port is plaintext (ui_enabled applies without TLS only)");
        axum::Router::new()
    } else if config.ui_enabled {
        tracing::info!(%http_addr, "serving /metrics, /healthz, /readyz, the Inspector at /ui/ and gRPC-Web");
        ui::routes(api.web())
    } else {
        tracing::info!(%http_addr, "serving /metrics, /healthz, /readyz");
        axum::Router::new()
    };
    let http = tokio::spawn(ops::serve(
        listeners.http,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
        extra,
        stopped(stop_rx.clone()),
    ));
    let served = api.serve(listeners.grpc, shutdown).await;

    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    // No Recall runs any more: the access statistics still waiting for their batch are written
    // while the worker stops, within the same grace period (an unreachable Postgres does not
    // hold the exit).
    let flushed = tokio::time::timeout(grace, flush_store.flush_access());
    let worker_stopped = async {
        match worker {
            Some(worker) => tokio::time::timeout(grace, worker).await.is_ok(),
            None => true,
        }
    };
    let (flushed, worker_stopped) = tokio::join!(flushed, worker_stopped);
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "writing the last access statistics failed"),
        Err(_) => {
            tracing::warn!("the last access statistics were not written within shutdown_grace_secs")
        }
    }
    if !worker_stopped {
        tracing::warn!("the worker did not stop within shutdown_grace_secs");
    }
    let _ = tokio::time::timeout(grace, http).await;
    served?;
    tracing::info!("memoire-server stopped");
    Ok(())
}

/// The worker process: its own pool, providers and HTTP endpoint (`worker_http_addr`), until
/// `shutdown` completes (in-flight episodes finish first, then the endpoint stops).
pub async fn run_worker(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = connect_with(
        &Config {
            migrate_on_start: false,
            ..config.clone()
        },
        // Per user extracted: its claim and its work; then the notification listener, the
        // embedding batch, the sweep or gauges, and a scheduled job's lock and work.
        (config.worker_concurrency as u32 * 2 + 6).min(64),
        // The worker's reads feed its writes: all on the primary.
        false,
    )
    .await?;
    let uc = usecases(&config, store.clone()).await?;
    let extractor = providers::extractor(&config)?;
    let listener = bind(config.worker_http_addr, "worker_http_addr").await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ops = tokio::spawn(ops::serve(
        listener,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
        axum::Router::new(),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(http = %config.worker_http_addr, "memoire-worker serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    memoire_worker::run(uc, extractor, worker_settings(&config), stopped(stop_rx)).await;
    let _ = ops.await;
    Ok(())
}
/// A binary's start: its configuration from `flags` (an invalid one is printed, prefixed with
/// `binary`, and becomes exit code 2), then logs and traces (as service `binary`; call
/// [`Telemetry::shutdown`] before exiting).
pub fn start(binary: &str, flags: &Flags) -> Result<(Config, Telemetry), std::process::ExitCode> {
    let config = Config::load(flags).map_err(|e| {
        eprintln!("{binary}: {e}");
        std::process::ExitCode::from(2)
    })?;
    let telemetry = init_tracing(&config, binary);
    Ok((config, telemetry))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: the graceful-shutdown trigger of both binaries.
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that comes while the process is still starting (its HTTP port may already answer)
/// is a graceful shutdown too, not the default exit. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
