//! Conscious working memory, the storage side: the user's essential memories and the session's
//! recent turns read from Postgres, and the Redis entries they are kept in (the use-case in
//! `memoire-usecases` decides when to read, rebuild and invalidate).
//!
//! Freshness without a read-then-check race: each user+namespace has a *generation* counter in
//! Redis, and a cached entry lives under a key that names the generation it was built at. Every
//! write that changes what Conscious shows (teach, correct, forget, extraction, ingest, the
//! maintenance jobs) increments the generation after it commits and before it replies, so the
//! next read looks for a key that does not exist yet and rebuilds from Postgres. A reader that
//! raced a writer stores its result under the old generation, where nobody looks. Purge also
//! deletes the keys themselves.
//!
//! A process that could not reach Redis to increment a generation remembers it and, as soon as
//! Redis answers again, increments the global epoch that every key also names — so an outage
//! never lets an entry from before it be served. Redis down or slow: reads are rebuilt from
//! Postgres (the reply says so), never an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use memoire_core::Result;
use memoire_core::model::{Memory, Scope};
use memoire_core::recall::EpisodeHit;
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::rows::{EPISODE_COLUMNS, EpisodeRow, MEMORY_COLUMNS, MemoryRow, convert_all};
use crate::{PgStore, RedisCache, db_error};

/// The global epoch key (see the module docs).
const EPOCH_KEY: &str = "memoire:conscious:epoch";

/// What a Conscious call returns, before packing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsciousView {
    /// Essential memories, most important first.
    pub essential: Vec<Memory>,
    /// The session's recent turns, oldest first.
    pub recent: Vec<EpisodeHit>,
}

/// Which store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsciousSource {
    /// The Redis working-memory cache.
    Redis,
    /// Postgres (Redis cold, unreachable, or just invalidated).
    Postgres,
}

/// Conscious settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsciousSettings {
    /// Most essential memories per user and namespace.
    pub max_essential: usize,
    /// Most recent turns of the session.
    pub recent_turns: usize,
    /// Turns older than this are no longer "recent".
    pub session_ttl: Duration,
    /// How long a cached entry lives in Redis.
    pub cache_ttl: Duration,
    /// Memories whose confidence decayed below this are left out (the decay floor).
    pub min_confidence: f32,
}

/// The Redis side: generations, entries, purge.
#[derive(Debug, Clone)]
pub struct ConsciousCache {
    redis: RedisCache,
    missed: Arc<AtomicBool>,
}

fn scope_base(tenant: Uuid, user: &str, namespace: &str) -> String {
    // Hashed: user ids and namespaces may hold characters that SCAN patterns treat specially.
    let h = Sha256::digest(format!("{user}\0{namespace}").as_bytes());
    format!("memoire:{tenant}:conscious:{}", hex::encode(&h[..12]))
}

fn session_part(session: Option<&str>) -> String {
    session
        .map(|s| hex::encode(&Sha256::digest(s.as_bytes())[..8]))
        .unwrap_or_else(|| "-".into())
}

/// Where a rebuilt entry goes (the generation read before Postgres was).
#[derive(Debug, Clone)]
pub struct CacheTicket(String);

impl ConsciousCache {
    /// Conscious entries in `redis`.
    pub fn new(redis: RedisCache) -> Self {
        ConsciousCache {
            redis,
            missed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// After an outage in which this process missed an invalidation: retire every entry.
    async fn heal(&self) {
        if self.missed.load(Ordering::Relaxed)
            && self.redis.is_connected()
            && self.redis.incr(EPOCH_KEY).await.is_some()
        {
            self.missed.store(false, Ordering::Relaxed);
            tracing::info!("redis is back: retired conscious entries cached before the outage");
        }
    }

    /// Marks the scope changed: the next read rebuilds it.
    pub async fn invalidate(&self, tenant: Uuid, user: &str, namespace: &str) {
        self.heal().await;
        let key = format!("{}:gen", scope_base(tenant, user, namespace));
        if self.redis.incr(&key).await.is_none() {
            self.missed.store(true, Ordering::Relaxed);
            metrics::counter!("memoire_conscious_invalidations_missed_total").increment(1);
        }
    }

    /// Invalidates the scope and deletes its entries (purge: content must leave Redis).
    pub async fn purge(&self, tenant: Uuid, user: &str, namespace: &str) {
        self.invalidate(tenant, user, namespace).await;
        let pattern = format!("{}:e*", scope_base(tenant, user, namespace));
        if self.redis.delete_matching(&pattern).await.is_none() {
            // Unreachable entries only; the epoch bump on reconnect retires them from reads,
            // and their TTL removes them.
            self.missed.store(true, Ordering::Relaxed);
        }
    }

    /// The cached view, or the ticket to store a rebuilt one under (`None`: Redis unusable).
    pub async fn get(
        &self,
        scope: &Scope,
        session: Option<&str>,
    ) -> (Option<ConsciousView>, Option<CacheTicket>) {
        self.heal().await;
        let base = scope_base(scope.tenant_id, &scope.user_id, &scope.namespace);
        let Some(versions) = self
            .redis
            .get_all(&[EPOCH_KEY.to_owned(), format!("{base}:gen")])
            .await
        else {
            return (None, None);
        };
        let n = |i: usize| {
            versions
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "0".into())
        };
        let key = format!("{base}:e{}:g{}:{}", n(0), n(1), session_part(session));
        let view = self
            .redis
            .get(&key)
            .await
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        (view, Some(CacheTicket(key)))
    }

    /// Stores a rebuilt view under `ticket`.
    pub async fn put(&self, ticket: CacheTicket, view: &ConsciousView, ttl: Duration) {
        if let Ok(bytes) = serde_json::to_vec(view) {
            self.redis.set(&ticket.0, bytes, ttl).await;
        }
    }
}

impl PgStore {
    /// A user+namespace's working memory (and the session's recent turns), read from Postgres.
    pub async fn conscious_view(
        &self,
        scope: &Scope,
        session: Option<&str>,
        settings: &ConsciousSettings,
        now: DateTime<Utc>,
    ) -> Result<ConsciousView> {
        // One connection for both reads: scoping it costs a round trip.
        let mut conn = self.conn(scope.tenant_id).await?;
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND user_id = $2 \
             AND namespace = $3 AND status = 'active' AND essential \
             AND (expires_at IS NULL OR expires_at > $4) AND confidence >= $6 \
             ORDER BY pinned DESC, (kind = 'rule') DESC, importance DESC, updated_at DESC, id \
             LIMIT $5"
        );
        let rows: Vec<MemoryRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(scope.tenant_id)
            .bind(&scope.user_id)
            .bind(&scope.namespace)
            .bind(now)
            .bind(settings.max_essential as i64)
            .bind(settings.min_confidence)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let essential = convert_all(rows)?;
        let recent = match session {
            None => Vec::new(),
            Some(session) => {
                let since = now - settings.session_ttl;
                let sql = format!(
                    "SELECT {EPISODE_COLUMNS} FROM episodes \
                     WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 AND session_id = $4 \
                       AND occurred_at > $5 \
                     ORDER BY occurred_at DESC, seq DESC LIMIT $6"
                );
                let mut rows: Vec<EpisodeRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(scope.tenant_id)
                    .bind(&scope.user_id)
                    .bind(&scope.namespace)
                    .bind(session)
                    .bind(since)
                    .bind(settings.recent_turns as i64)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?;
                rows.reverse();
                rows.into_iter()
                    .map(EpisodeHit::try_from)
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(ConsciousView { essential, recent })
    }
}
