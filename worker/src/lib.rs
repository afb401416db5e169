//! Mémoire's background worker: the jobs that keep memories tidy.
//!
//! [`run`] loops until shutdown. Today it runs one job — the expiry sweep, which gives every
//! memory whose `expires_at` has passed an `expire` version (reads already hide such memories
//! from the moment they expire; the sweep makes it part of their history). Extraction, embedding
//! and the periodic jobs of PRODUCT.md §3 join here.

use std::future::Future;
use std::time::Duration;

use memoire_store::PgStore;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often the expiry sweep runs.
    pub expiry_sweep_interval: Duration,
}

/// How many memories one sweep transaction expires; small batches keep locks short.
const EXPIRY_BATCH: i64 = 500;

/// Expires every memory past its expiry time, in batches. Returns how many.
pub async fn sweep_expired(store: &PgStore) -> memoire_core::Result<u64> {
    let mut total = 0;
    loop {
        let n = store.expire_due(EXPIRY_BATCH).await?;
        total += n;
        if n < EXPIRY_BATCH as u64 {
            break;
        }
    }
    if total > 0 {
        metrics::counter!("memoire_memories_expired_total").increment(total);
        tracing::info!(count = total, "expired memories");
    }
    Ok(total)
}

/// Runs the worker's jobs until `shutdown` completes. A failing job is logged and retried on the
/// next tick; it never stops the worker.
pub async fn run(store: PgStore, settings: WorkerSettings, shutdown: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(settings.expiry_sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    tracing::info!(expiry_sweep_interval = ?settings.expiry_sweep_interval, "worker started");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if let Err(e) = sweep_expired(&store).await {
                    metrics::counter!("memoire_job_failures_total", "job" => "expiry").increment(1);
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
        }
    }
    tracing::info!("worker stopped");
}
