//! The small HTTP server beside gRPC (`memoire_config::ops`): `/metrics`, `/healthz`, and
//! `/readyz` answering whether Postgres does.

use std::future::Future;

use memoire_store::PgStore;
use tokio::net::TcpListener;

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: PgStore,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    memoire_config::ops::serve(
        listener,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
        shutdown,
    )
    .await
}
