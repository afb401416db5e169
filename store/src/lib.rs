//! Postgres storage for Mémoire (sqlx + pgvector).
//!
//! - [`PgStore`]: the handle the server and worker share (a connection pool and a clock).
//! - `memories`: Teach (through the resolver), corrections, Forget, reads and history — every
//!   write in one transaction, every query filtered by tenant.
//! - `episodes`: Ingest, and the durable extraction/embedding queue the episodes table forms.
//! - `maintenance`: the periodic jobs (optimize, decay, reflect, retention, re-embed).
//! - `tenants`: tenants, API keys (hashed), stats.
//! - `transfer`: export and import as JSON Lines.
//! - `schema`: migrations and the per-model vector indexes.
//! - `recall`: BM25 and vector candidates for Recall, hydrated as of a time.
//! - `access`: Recall's access statistics, written behind the replies in batches.
//! - `cache`: Redis (fred) as a best-effort cache.
//! - `ratelimit`: the rate limits every replica shares, decided by one Lua script in Redis.
//! - `conscious`: the working memory (essential memories, recent turns), built from Postgres and
//!   kept in Redis under generation keys that every write bumps.
//! - `error`: sqlx errors classified by SQLSTATE into the domain error.

mod access;
mod bm25;
mod cache;
mod conscious;
mod episodes;
mod error;
mod maintenance;
mod memories;
mod ratelimit;
mod recall;
mod replica;
mod rows;
mod schema;
mod tenants;
mod transfer;
mod ttl;
mod vectors;

use std::sync::Arc;
use std::time::Duration;

use memoire_core::Result;
use memoire_core::clock::{Clock, SystemClock};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, SqlSafeStr, Transaction};
use uuid::Uuid;

pub use cache::RedisCache;
pub use conscious::{
    CacheTicket, ConsciousCache, ConsciousSettings, ConsciousSource, ConsciousView,
};
pub use episodes::{
    Applied, BACKLOG_TTL, EPISODES_CHANNEL, EmbedClaim, Failure, PendingEpisode, QueueDepths,
    RetryPolicy, ScopeClaim,
};
pub use error::db_error;
pub use maintenance::{JobLock, JobOutput, JobScope, VectorClaim, VectorTable};
pub use memories::Correction;
pub use recall::{SearchSettings, record_stage};
pub use schema::vector_index_name;
pub use tenants::{NewApiKey, PRINCIPAL_TTL, TenantUpdate, hash_secret};
pub use transfer::{ExportScope, FORMAT_VERSION, ImportCounts, Importer};

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
    /// Whether each connection handed out is scoped to its caller's tenant for row-level
    /// security (off: every connection sees every tenant, and isolation rests on the queries).
    pub row_level_security: bool,
    /// A streaming replica for reads, if any.
    pub replica: Option<ReplicaSettings>,
}

/// A read replica: where, and how far behind it may be and still be read.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// `postgres://…` of the replica (a hot standby of the primary).
    pub url: String,
    /// A replica last known caught up longer ago than this is not read from.
    pub max_lag: Duration,
}

/// The setting the row-level security policies read (migration 0014).
pub const TENANT_SETTING: &str = "memoire.tenant";

/// Whose rows a connection may touch: the row-level security policies (migration 0014) admit a
/// row only when its tenant is the connection's `memoire.tenant` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// One tenant's.
    Tenant(Uuid),
    /// Every tenant's: the worker's queue, the periodic jobs, key lookup, the bootstrap admin.
    All,
}

impl Rows {
    /// The value of `memoire.tenant` (a UUID's canonical text, or `*`: nothing to quote).
    pub fn setting(self) -> String {
        match self {
            Rows::Tenant(t) => t.to_string(),
            Rows::All => "*".to_owned(),
        }
    }
}

impl From<Uuid> for Rows {
    fn from(t: Uuid) -> Self {
        Rows::Tenant(t)
    }
}

impl From<Option<Uuid>> for Rows {
    /// `None`: every tenant (the bootstrap admin's view).
    fn from(t: Option<Uuid>) -> Self {
        t.map_or(Rows::All, Rows::Tenant)
    }
}

/// The Postgres store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Whether connections are scoped per call (row-level security on); otherwise each sees
    /// every tenant from its start.
    scoped: bool,
    /// The read replica, when one is configured.
    replica: Option<Arc<replica::Replica>>,
    clock: Arc<dyn Clock>,
    stats_cache: Arc<recall::StatsCache>,
    vectors: Arc<vectors::VectorCache>,
    principals: Arc<tenants::PrincipalCache>,
    backlogs: Arc<episodes::BacklogCache>,
    access: Arc<access::AccessLog>,
}

impl PgStore {
    /// Connects a pool. Fails (with the server's address, never its password) when Postgres is
    /// unreachable.
    pub async fn connect(settings: &PgSettings) -> memoire_core::Result<Self> {
        let pool = Self::pool_options(settings)
            .connect_with(Self::options(settings, "database_url", &settings.url)?)
            .await
            .map_err(db_error)?;
        // The replica connects on first use: one that is down, or has not replayed a new
        // database yet, does not keep the server from starting (reads go to the primary).
        let replica = match &settings.replica {
            Some(r) => {
                let options = Self::options(settings, "database_read_url", &r.url)?;
                let replica = Self::pool_options(settings).connect_lazy_with(options);
                Some(replica::Replica::start(replica, pool.clone(), r.max_lag))
            }
            None => None,
        };
        Ok(PgStore {
            scoped: settings.row_level_security,
            replica,
            ..Self::from_pool(pool)
        })
    }

    /// The connection options of `settings` for `url` (the setting `key`).
    fn options(
        settings: &PgSettings,
        key: &str,
        url: &str,
    ) -> memoire_core::Result<PgConnectOptions> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| memoire_core::Error::invalid(key, format!("cannot be parsed: {e}")))?;
        // Iterative index scans (pgvector >= 0.8) keep scanning the HNSW graph until enough rows
        // pass the tenant/user filter, instead of returning fewer than asked.
        let options = options.options([
            ("hnsw.iterative_scan", "relaxed_order".to_owned()),
            ("hnsw.ef_search", settings.hnsw_ef_search.to_string()),
        ]);
        // Without per-call scoping, every connection sees every tenant from its start.
        Ok(if settings.row_level_security {
            options
        } else {
            options.options([(TENANT_SETTING, Rows::All.setting())])
        })
    }

    /// A pool of `settings`' shape.
    fn pool_options(settings: &PgSettings) -> PgPoolOptions {
        // sqlx checks an idle connection with a round trip before it hands it out (and again
        // when it comes back). Scoped connections skip the first check: their first statement,
        // the scope's `SET`, is the check, and a connection that died idle is replaced there
        // (see `conn` and `begin`), so row-level security costs no round trip of its own.
        PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(!settings.row_level_security)
    }

    /// Wraps an existing pool, with the system clock, scoping each connection it hands out.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            pool,
            scoped: true,
            replica: None,
            clock: Arc::new(SystemClock),
            stats_cache: Arc::default(),
            vectors: Arc::default(),
            principals: Arc::default(),
            backlogs: Arc::default(),
            access: Arc::default(),
        }
    }

    /// The same store with another clock (tests move time with [`memoire_core::clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Now, by the store's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The pool, for health checks and LISTEN. Its connections carry no row scope of their own:
    /// what they may read depends on who used them last, so store code takes connections from
    /// [`Self::conn`] and [`Self::begin`] only.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection that sees `rows` (one tenant's, or all) under row-level security.
    pub(crate) async fn conn(&self, rows: impl Into<Rows>) -> Result<PoolConnection<Postgres>> {
        self.conn_from(&self.pool, rows.into()).await
    }

    /// A connection for a read of `tenant`'s that a read replica may serve: the replica's when
    /// it holds every write this process made for the tenant and is not too far behind (see
    /// `replica.rs`), else the primary's — also when the replica does not answer.
    pub(crate) async fn read_conn(&self, tenant: Uuid) -> Result<PoolConnection<Postgres>> {
        let Some(replica) = &self.replica else {
            return self.conn(tenant).await;
        };
        if replica.serves(tenant) {
            match self.conn_from(&replica.pool, Rows::Tenant(tenant)).await {
                Ok(conn) => {
                    metrics::counter!("memoire_db_reads_total", "target" => "replica").increment(1);
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the read replica failed; reading from the primary")
                }
            }
        }
        metrics::counter!("memoire_db_reads_total", "target" => "primary").increment(1);
        self.conn(tenant).await
    }

    /// A second connection for a read of `tenant`'s, from the pool [`Self::read_conn`] would
    /// pick, if one is idle now — `None` rather than waiting. For work that can also run on a
    /// connection the caller already holds: a caller that held one and waited for another could
    /// wait for ever once every connection is held by such callers.
    pub(crate) async fn idle_read_conn(&self, tenant: Uuid) -> Option<PoolConnection<Postgres>> {
        let (pool, target) = match &self.replica {
            Some(replica) if replica.serves(tenant) => (&replica.pool, "replica"),
            _ => (&self.pool, "primary"),
        };
        let Some(mut conn) = pool.try_acquire() else {
            // None idle. The pool grows only when a caller waits, and these callers never do:
            // when there is room, a task opens one for the next caller (it holds nothing else,
            // so its wait cannot be part of a cycle).
            if pool.size() < pool.options().get_max_connections() {
                let pool = pool.clone();
                tokio::spawn(async move { drop(pool.acquire().await) });
            }
            return None;
        };
        // A connection that fails here is broken: dropped, the pool replaces it.
        self.scope(&mut conn, Rows::Tenant(tenant)).await.ok()?;
        metrics::counter!("memoire_db_reads_total", "target" => target).increment(1);
        Some(conn)
    }

    /// Records that `tenant`'s data changed (after the write committed): its reads stay on the
    /// primary until a read replica has replayed the change.
    pub fn wrote(&self, tenant: Uuid) {
        if let Some(r) = &self.replica {
            r.wrote(tenant);
        }
    }

    async fn conn_from(&self, pool: &PgPool, rows: Rows) -> Result<PoolConnection<Postgres>> {
        let mut broken = 0;
        loop {
            let mut conn = pool.acquire().await.map_err(db_error)?;
            match self.scope(&mut conn, rows).await {
                Ok(()) => return Ok(conn),
                Err(e) => replace_broken(pool, e, &mut broken)?,
            }
        }
    }

    /// Makes a connection just taken from a pool see `rows` (one round trip), when connections
    /// are scoped; unscoped ones see every tenant from their start.
    async fn scope(&self, conn: &mut PgConnection, rows: Rows) -> sqlx::Result<()> {
        if !self.scoped {
            return Ok(());
        }
        let set = format!("SET {TENANT_SETTING} = '{}'", rows.setting());
        sqlx::raw_sql(AssertSqlSafe(set)).execute(conn).await?;
        Ok(())
    }

    /// A transaction that sees `rows`: the setting is local to it, sent with its BEGIN.
    pub(crate) async fn begin(
        &self,
        rows: impl Into<Rows>,
    ) -> Result<Transaction<'static, Postgres>> {
        let rows = rows.into();
        if !self.scoped {
            return self.pool.begin().await.map_err(db_error);
        }
        let begin = format!("BEGIN; SET LOCAL {TENANT_SETTING} = '{}'", rows.setting());
        let mut broken = 0;
        loop {
            let conn = self.pool.acquire().await.map_err(db_error)?;
            match Transaction::begin(conn, Some(AssertSqlSafe(begin.clone()).into_sql_str())).await
            {
                Ok(tx) => return Ok(tx),
                Err(e) => replace_broken(&self.pool, e, &mut broken)?,
            }
        }
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> memoire_core::Result<()> {
        // Taking a connection is the check: a scoped one's `SET` (or, unscoped, sqlx's own
        // check of an idle one) is a round trip that replaces a connection that died idle.
        self.conn(Rows::All).await?;
        Ok(())
    }
}

/// After a scoped connection's first statement failed with `e`: when the connection had
/// died while idle (Postgres restarted, a proxy dropped it), it is closed as it goes back
/// (sqlx checks it then) and another is taken, as sqlx's own check before handing one out
/// would have done; otherwise, or after every pooled connection has failed so, `e` is the
/// answer.
fn replace_broken(pool: &PgPool, e: sqlx::Error, broken: &mut u32) -> Result<()> {
    let dead = match &e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now; connection exceptions.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    };
    *broken += 1;
    if dead && *broken <= pool.options().get_max_connections() {
        tracing::debug!(error = %e, "a pooled connection had died; taking another");
        return Ok(());
    }
    Err(db_error(e))
}
