//! Postgres storage for Mémoire (sqlx + pgvector).
//!
//! - [`PgStore`]: the handle the server and worker share (a connection pool and a clock).
//! - `memories`: Teach (through the resolver), corrections, Forget, reads and history — every
//!   write in one transaction, every query filtered by tenant.
//! - `episodes`: Ingest, and the durable extraction/embedding queue the episodes table forms.
//! - `maintenance`: the periodic jobs (optimize, decay, reflect, retention, re-embed).
//! - `tenants`: tenants, API keys (hashed), stats.
//! - `schema`: migrations and the per-model vector indexes.
//! - `recall`: BM25 and vector candidates for Recall, hydrated as of a time.
//! - `cache`: Redis (fred) as a best-effort cache.
//! - `conscious`: the working memory (essential memories, recent turns), built from Postgres and
//!   kept in Redis under generation keys that every write bumps.
//! - `error`: sqlx errors classified by SQLSTATE into the domain error.

mod cache;
mod conscious;
mod episodes;
mod error;
mod maintenance;
mod memories;
mod recall;
mod rows;
mod schema;
mod tenants;

use std::sync::Arc;
use std::time::Duration;

use memoire_core::clock::{Clock, SystemClock};
use memoire_core::embed::Embedder;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use cache::RedisCache;
pub use conscious::{ConsciousSettings, ConsciousSource, ConsciousView};
pub use episodes::{
    Applied, EPISODES_CHANNEL, Failure, PendingEpisode, QueueDepths, RetryPolicy, ScopeClaim,
};
pub use error::db_error;
pub use maintenance::JobScope;
pub use recall::{RecallQuery, VectorSettings};
pub use schema::vector_index_name;
pub use tenants::{NewApiKey, TenantUpdate, hash_secret};

/// Stores `vectors` (of `model`) for the rows `ids` of `table` (`memories` or `episodes`).
pub(crate) async fn write_vectors(
    conn: &mut sqlx::PgConnection,
    table: &str,
    ids: &[uuid::Uuid],
    vectors: &[pgvector::Vector],
    model: &str,
) -> memoire_core::Result<()> {
    let sql = format!(
        "UPDATE {table} x SET embedding = t.v, embedding_model = $3 \
         FROM unnest($1::uuid[], $2::vector[]) AS t(id, v) WHERE x.id = t.id"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .bind(vectors)
        .bind(model)
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Connection settings for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing with `UNAVAILABLE`.
    pub acquire_timeout: Duration,
    /// `hnsw.ef_search` for every connection (approximate vector search).
    pub hnsw_ef_search: u32,
}

/// The Postgres store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    embedder: Option<Arc<dyn Embedder>>,
    stats_cache: Arc<recall::StatsCache>,
    conscious: Option<conscious::ConsciousCache>,
}

impl PgStore {
    /// Connects a pool. Fails (with the server's address, never its password) when Postgres is
    /// unreachable.
    pub async fn connect(settings: &PgSettings) -> memoire_core::Result<Self> {
        let options: PgConnectOptions = settings.url.parse().map_err(|e| {
            memoire_core::Error::invalid("database_url", format!("cannot be parsed: {e}"))
        })?;
        // Iterative index scans (pgvector >= 0.8) keep scanning the HNSW graph until enough rows
        // pass the tenant/user filter, instead of returning fewer than asked.
        let options = options.options([
            ("hnsw.iterative_scan", "relaxed_order".to_owned()),
            ("hnsw.ef_search", settings.hnsw_ef_search.to_string()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool, with the system clock.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            pool,
            clock: Arc::new(SystemClock),
            embedder: None,
            stats_cache: Arc::default(),
            conscious: None,
        }
    }

    /// The same store with another clock (tests move time with [`memoire_core::clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same store embedding what it writes with `embedder` (Teach, corrections).
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// The same store keeping Conscious working memory in `redis` (and invalidating it on
    /// every write that changes it).
    pub fn with_conscious(mut self, redis: RedisCache) -> Self {
        self.conscious = Some(conscious::ConsciousCache::new(redis));
        self
    }

    /// The embedder, when one is set.
    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.embedder.as_ref()
    }

    /// The store's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Now, by the store's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The pool, for health checks and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Vectors for `texts` with the configured embedder, one per text, and its model id
    /// (`None` without an embedder).
    pub(crate) async fn embed_texts(
        &self,
        texts: &[String],
    ) -> memoire_core::Result<Option<(Vec<pgvector::Vector>, String)>> {
        let Some(embedder) = &self.embedder else {
            return Ok(None);
        };
        if texts.is_empty() {
            return Ok(Some((Vec::new(), embedder.model_id().to_owned())));
        }
        let vectors = embedder.embed(texts).await?;
        if vectors.len() != texts.len() {
            return Err(memoire_core::Error::Provider(format!(
                "the embedder returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(Some((
            vectors.into_iter().map(pgvector::Vector::from).collect(),
            embedder.model_id().to_owned(),
        )))
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> memoire_core::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
