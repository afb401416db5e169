//! Recall's access statistics (how often and when recall returned a memory), written behind the
//! replies and in batches: what recalls record while a batch waits or is written goes into the
//! next one, merged per memory (hits added, the latest time kept), and each batch is one
//! statement for every tenant. So a busy server writes `memory_access` a few times a second
//! instead of once per Recall (the statement, its round trips and a new row version per memory
//! returned each time), and an idle one as soon as [`FLUSH_DELAY`] has passed.
//!
//! A graceful shutdown writes what is pending ([`PgStore::flush_access`]); what is recorded and
//! not yet written is lost if the process dies (at most [`FLUSH_DELAY`] plus one write's worth):
//! these are statistics, as the spawned per-Recall writes before them were, not data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use memoire_core::Result;

use crate::{PgStore, Rows, db_error};

/// How long a batch gathers before it is written: the first recall's statistics wait this long
/// at most (plus the write before them, if one is running).
const FLUSH_DELAY: Duration = Duration::from_millis(50);

/// The statistics recorded and not yet written, and whether a writer is at work.
#[derive(Debug, Default)]
pub(crate) struct AccessLog {
    state: Mutex<State>,
}

/// A memory's access statistics to add: (tenant, memory) and (hits, the latest access).
type Access = ((Uuid, Uuid), (i64, DateTime<Utc>));

#[derive(Debug, Default)]
struct State {
    /// Per (tenant, memory): hits and the latest access.
    pending: HashMap<(Uuid, Uuid), (i64, DateTime<Utc>)>,
    writing: bool,
}

impl AccessLog {
    /// Adds `ids`' hits; true when no writer is at work and the caller must start one.
    fn record(&self, tenant: Uuid, ids: &[Uuid], at: DateTime<Utc>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            let entry = state.pending.entry((tenant, *id)).or_insert((0, at));
            entry.0 += 1;
            entry.1 = entry.1.max(at);
        }
        !std::mem::replace(&mut state.writing, true)
    }

    /// The next batch; empty (and the writer done) when nothing is left.
    fn take(&self) -> Vec<Access> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let batch: Vec<_> = std::mem::take(&mut state.pending).into_iter().collect();
        if batch.is_empty() {
            state.writing = false;
        }
        batch
    }
}

impl PgStore {
    /// Records that recall returned these memories of `tenant`'s (last access time, count), to
    /// be written to `memory_access` in the next batch (never in the memories' own rows,
    /// migration 0008). Returns at once; a write that fails is logged and its batch dropped.
    pub fn touch_memories(&self, tenant: Uuid, ids: &[Uuid]) {
        if ids.is_empty() || !self.access.record(tenant, ids, self.clock.now()) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_DELAY).await;
                let batch = store.access.take();
                if batch.is_empty() {
                    return;
                }
                if let Err(e) = store.write_access(&batch).await {
                    tracing::warn!(error = %e, memories = batch.len(), "updating access statistics failed");
                }
            }
        });
    }

    /// Writes what is recorded and not yet written, now (at shutdown, once no Recall runs).
    pub async fn flush_access(&self) -> Result<()> {
        loop {
            let batch = self.access.take();
            if batch.is_empty() {
                return Ok(());
            }
            self.write_access(&batch).await?;
        }
    }

    /// One batch, for the memories that still exist (one may have been deleted since it was
    /// recalled). The statement writes them in memory id order, so that two writers (two
    /// replicas) cannot deadlock.
    async fn write_access(&self, batch: &[Access]) -> Result<()> {
        let (mut tenants, mut ids, mut hits, mut at) = (vec![], vec![], vec![], vec![]);
        for ((tenant, id), (n, last)) in batch {
            tenants.push(*tenant);
            ids.push(*id);
            hits.push(*n);
            at.push(*last);
        }
        sqlx::query(
            "INSERT INTO memory_access (memory_id, last_accessed_at, hits) \
             SELECT m.id, x.at, x.hits \
             FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::timestamptz[]) AS x(tenant_id, id, hits, at) \
             JOIN memories m ON m.tenant_id = x.tenant_id AND m.id = x.id \
             ORDER BY m.id \
             ON CONFLICT (memory_id) DO UPDATE SET \
               last_accessed_at = GREATEST(memory_access.last_accessed_at, EXCLUDED.last_accessed_at), \
               hits = memory_access.hits + EXCLUDED.hits",
        )
        .bind(&tenants)
        .bind(&ids)
        .bind(&hits)
        .bind(&at)
        .execute(&mut *self.conn(Rows::All).await?)
        .await
        .map_err(db_error)?;
        metrics::counter!("memoire_access_batches_total").increment(1);
        Ok(())
    }
}
