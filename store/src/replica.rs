//! Reads from a streaming replica, with read-your-writes. Reads that may be served by the
//! replica (Recall, GetMemory, ListMemories, History: [`PgStore::read_conn`]) go there only when
//! it has replayed everything this process wrote for the caller's tenant, and is at most
//! `max_lag` behind the primary; every other read, and every write, goes to the primary.
//!
//! How it knows: every [`CHECK_EVERY`], a task reads the primary's WAL position, then asks the
//! replica whether it has replayed past it; when it has, everything committed before the first
//! read is on the replica ("caught up as of" that instant). A write's use-case marks its tenant
//! ([`PgStore::wrote`]) after it commits; the tenant's reads then stay on the primary until the
//! replica is caught up as of a later instant — usually the next check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// How often the replica's progress is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Tenants' last writes kept past this many are pruned of the ones the replica has caught up on.
const WRITES_KEPT: usize = 100_000;

/// Where to read from: a replica and what is known of its progress.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) pool: PgPool,
    max_lag: Duration,
    /// When the replica was last seen to hold everything the primary had committed.
    caught_up: Mutex<Option<Instant>>,
    /// Each tenant's last write through this process.
    written: Mutex<HashMap<Uuid, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replica {
    /// A replica over `pool`, and the task that follows its progress (it ends with the store).
    pub(crate) fn start(pool: PgPool, primary: PgPool, max_lag: Duration) -> Arc<Self> {
        let replica = Arc::new(Replica {
            pool,
            max_lag,
            caught_up: Mutex::new(None),
            written: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Replica> = Arc::downgrade(&replica);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(replica) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = replica.check(&primary).await {
                    tracing::debug!(error = %e, "checking the read replica's progress failed");
                }
                replica.publish_lag();
            }
        });
        replica
    }

    /// Whether a read of `tenant`'s may go to the replica now.
    pub(crate) fn serves(&self, tenant: Uuid) -> bool {
        let Some(caught_up) = *lock(&self.caught_up) else {
            return false;
        };
        caught_up.elapsed() <= self.max_lag
            && lock(&self.written)
                .get(&tenant)
                .is_none_or(|w| *w < caught_up)
    }

    /// Records that `tenant`'s data changed through this process just now.
    pub(crate) fn wrote(&self, tenant: Uuid) {
        let now = Instant::now();
        let caught_up = *lock(&self.caught_up);
        let mut written = lock(&self.written);
        if written.len() > WRITES_KEPT {
            written.retain(|_, w| caught_up.is_none_or(|c| *w >= c));
        }
        written.insert(tenant, now);
    }

    /// One check: the primary's WAL position, then whether the replica has replayed past it.
    /// (A `read_url` that names a primary, not a replica, is always caught up.)
    async fn check(&self, primary: &PgPool) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let position: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(primary)
            .await?;
        let replayed: bool = sqlx::query_scalar(
            "SELECT NOT pg_is_in_recovery() OR coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)",
        )
        .bind(position)
        .fetch_one(&self.pool)
        .await?;
        if replayed {
            *lock(&self.caught_up) = Some(started);
        }
        Ok(())
    }

    /// `memoire_replica_lag_seconds`: how long ago the replica was last known caught up.
    fn publish_lag(&self) {
        let lag = lock(&self.caught_up).map_or(f64::INFINITY, |c| c.elapsed().as_secs_f64());
        metrics::gauge!("memoire_replica_lag_seconds").set(lag);
    }
}
