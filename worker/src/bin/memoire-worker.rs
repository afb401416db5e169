//! `memoire-worker`: the background worker on its own, for scaling it apart from the server
//! (which runs one in-process by default, `worker_embedded`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use memoire_config::{Config, Flags};
use memoire_store::{PgSettings, PgStore};

/// Mémoire's background worker.
#[derive(Debug, Parser)]
#[command(name = "memoire-worker", version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memoire-worker: {e}");
            return ExitCode::from(2);
        }
    };
    memoire_config::init_tracing(&config);
    let store = match PgStore::connect(&PgSettings {
        url: config.database_url.clone(),
        max_connections: (config.worker_concurrency as u32 * 2 + 4).min(64),
        acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
        hnsw_ef_search: config.recall_hnsw_ef_search,
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, database = %memoire_config::redact_url(&config.database_url), "cannot connect to postgres");
            return ExitCode::FAILURE;
        }
    };
    let built = memoire_worker::providers::embedder(&config)
        .and_then(|e| Ok((e, memoire_worker::providers::extractor(&config)?)));
    let (embedder, extractor) = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start the worker");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.worker_http_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, addr = %config.worker_http_addr, "cannot listen on worker_http_addr (MEMOIRE_WORKER_HTTP_ADDR)");
            return ExitCode::FAILURE;
        }
    };
    // One shutdown signal stops the worker first (in-flight episodes finish), then the endpoint.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ops = {
        let store = store.clone();
        tokio::spawn(memoire_config::ops::serve(
            listener,
            move || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            },
            stopped(stop_rx.clone()),
        ))
    };
    tracing::info!(http = %config.worker_http_addr, "memoire-worker serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        memoire_config::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let settings = memoire_worker::providers::settings(&config);
    // Extraction changes what Conscious shows: the worker invalidates it too.
    let cache =
        match memoire_store::RedisCache::connect(&config.redis_url, Duration::from_secs(1)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "bad redis_url");
                return ExitCode::FAILURE;
            }
        };
    memoire_worker::run(
        store.with_embedder(embedder).with_conscious(cache),
        extractor,
        settings,
        stopped(stop_rx),
    )
    .await;
    let _ = ops.await;
    ExitCode::SUCCESS
}
