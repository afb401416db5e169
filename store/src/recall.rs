//! Recall's candidates: BM25 full-text search and vector search over one user's scope, run
//! concurrently (on a connection each when the pool has one idle, see `search_table`), then
//! hydrated (as of a time, when asked). Fusion and packing are `core::recall`.
//!
//! BM25 (k1 = 1.2, b = 0.75, `bm25.rs`) uses real statistics, read from the postings tables of
//! migrations 0003 and 0017 (scope, lexeme → document, tf, length) with index-only scans:
//! document frequencies are the query terms' postings in the scope, N and the average document
//! length (in distinct lexemes) cover the whole scope (cached per scope for 5 minutes, with the
//! document frequencies of scopes of 1,000 documents or more).
//!
//! Vector search returns the true top-k of the caller's scope: scopes with at most
//! `exact_search_max_scope` vectors are searched exactly (the per-user index, then distances;
//! memories' from their narrow vector rows, `memory_vectors`, when the query allows);
//! larger ones use the model's partial HNSW index with pgvector's iterative scan, so that the
//! tenant/user filter does not starve the result (with sorts and JIT off, in a read-only
//! transaction opened while the query embeds: the planner's statistics may lag a burst of writes,
//! and then it would sort every distance).

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::future::Either;
use memoire_core::Result;
use memoire_core::command::RecallQuery;
use memoire_core::model::Memory;
use memoire_core::recall::{self, Candidate, EpisodeHit, Item};
use pgvector::Vector;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, QueryBuilder, SqlSafeStr, Transaction};
use uuid::Uuid;

use crate::bm25::{self, Corpus, DfCache, Postings, Terms};
use crate::episodes::session_turns;
use crate::rows::{
    EPISODE_COLUMNS, EpisodeRow, MEMORY_COLUMNS, MemoryRow, access_count, last_accessed,
};
use crate::vectors::{Filter, VectorCache};
use crate::{PgStore, db_error};

/// How long scope statistics are reused. They move slowly (BM25's N and average length, and the
/// exact-or-HNSW choice), and recomputing them scans the scope, so they are not refreshed often.
const STATS_TTL: Duration = Duration::from_secs(300);
/// Scopes smaller than this are counted on every recall: counting them is cheap, and their
/// statistics change fast relative to their size (a new user's first memories must be found at
/// once, not after the TTL).
const STATS_CACHE_MIN_DOCS: f64 = 1_000.0;

/// How the searches run.
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// The model id (vectors of other models are never compared).
    pub model: String,
    /// Its dimension.
    pub dims: u32,
    /// Scopes with up to this many vectors are searched exactly; larger ones through HNSW.
    pub exact_search_max_scope: u64,
    /// Scopes with up to this many documents get the exact full-text top; in larger ones, a
    /// query whose best documents the postings' heads cannot prove takes the heads' best
    /// (`bm25::best`) instead of scoring every posting.
    pub exact_text_max_scope: u64,
    /// The server keeps copies of the exactly searched scopes' vectors up to this many bytes
    /// (`crate::vectors`; 0: every exact search reads the vectors in Postgres).
    pub vector_cache_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
struct ScopeStats {
    docs: f64,
    avg_len: f64,
    vectors: u64,
}

impl ScopeStats {
    fn corpus(self) -> Corpus {
        Corpus {
            docs: self.docs,
            avg_len: self.avg_len,
        }
    }
}

/// Per-scope statistics, cached briefly (BM25's N and average length; the exact/HNSW choice),
/// the document frequencies of the large scopes' terms, and the speakers' names queries found.
#[derive(Debug)]
pub struct StatsCache {
    scopes: crate::ttl::TtlMap<String, ScopeStats>,
    dfs: DfCache,
    /// Per scope of turns, the speakers' names that its queries were found to name: a hint
    /// only, for whether a query may start embedding before its names are looked up.
    speakers: crate::ttl::TtlMap<String, Vec<String>>,
}

impl Default for StatsCache {
    fn default() -> Self {
        StatsCache {
            scopes: crate::ttl::TtlMap::new(STATS_TTL),
            dfs: DfCache::new(STATS_TTL),
            speakers: crate::ttl::TtlMap::new(STATS_TTL),
        }
    }
}

/// At most this many speakers' names are remembered per scope (the hint of
/// [`StatsCache::may_name_a_speaker`]).
const MAX_SPEAKERS_REMEMBERED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Memories,
    Episodes,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Memories => "memories",
            Table::Episodes => "episodes",
        }
    }

    /// Its BM25 postings.
    fn postings(self) -> Postings {
        match self {
            Table::Memories => Postings::Memories,
            Table::Episodes => Postings::Episodes,
        }
    }
}

/// Where [`push_scope`]'s rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// The table itself.
    Table,
    /// The documents of the `scored` CTE (`s.doc_id`), each by its primary key.
    Scored,
    /// Memories' narrow vector rows (migration 0019), for an exact vector search that
    /// [`reads_vectors_only`].
    Vectors,
}

/// Whether an exact vector search of memories for `q` can read `memory_vectors` instead of
/// `memories`: it filters on nothing those rows do not hold (they hold the scope, status,
/// expiry and confidence, not what [`has_filters`] looks for).
fn reads_vectors_only(table: Table, q: &RecallQuery) -> bool {
    table == Table::Memories && !has_filters(q)
}

/// Pushes `FROM <rows> m [version join] WHERE <scope and filters>` for `q`.
fn push_scope(
    b: &mut QueryBuilder<Postgres>,
    table: Table,
    q: &RecallQuery,
    now: DateTime<Utc>,
    rows: Rows,
) {
    match rows {
        // Each scored document by its primary key (fenced, so that stale statistics cannot turn
        // it into a scan of the scope per document).
        Rows::Scored => b.push(format!(
            " FROM scored s CROSS JOIN LATERAL (SELECT * FROM {} x WHERE x.id = s.doc_id OFFSET 0) m",
            table.name()
        )),
        Rows::Table => b.push(format!(" FROM {} m", table.name())),
        Rows::Vectors => b.push(" FROM memory_vectors m"),
    };
    let statuses: &[&str] = if q.include_superseded {
        &["active", "superseded"]
    } else {
        &["active"]
    };
    if let (Table::Memories, Some(as_of)) = (table, q.as_of) {
        // The memory as it was at `as_of`: its latest version written by then.
        b.push(
            " JOIN LATERAL (SELECT v.kind, v.tags, v.slot, v.status, v.expires_at FROM memory_versions v \
             WHERE v.memory_id = m.id AND v.created_at <= ",
        )
        .push_bind(as_of)
        .push(" ORDER BY v.version DESC LIMIT 1) v ON true");
    }
    b.push(" WHERE m.tenant_id = ")
        .push_bind(q.tenant_id)
        .push(" AND m.user_id = ")
        .push_bind(q.user_id.clone())
        .push(" AND m.namespace = ANY(")
        .push_bind(q.namespaces.clone())
        .push(")");
    match table {
        Table::Memories => {
            let (alias, at) = match q.as_of {
                // Forgotten memories stay forgotten in the past too.
                Some(as_of) => {
                    b.push(" AND m.status <> 'tombstoned'");
                    ("v", as_of)
                }
                None => ("m", now),
            };
            b.push(format!(" AND {alias}.status = ANY("))
                .push_bind(statuses)
                .push(")");
            b.push(format!(
                " AND ({alias}.expires_at IS NULL OR {alias}.expires_at > "
            ))
            .push_bind(at)
            .push(")");
            if !q.kinds.is_empty() {
                let kinds: Vec<&str> = q.kinds.iter().map(|k| k.as_str()).collect();
                b.push(format!(" AND {alias}.kind = ANY("))
                    .push_bind(kinds)
                    .push(")");
            }
            if !q.tags.is_empty() {
                b.push(format!(" AND {alias}.tags @> "))
                    .push_bind(q.tags.clone());
            }
            if let Some(slot) = &q.slot {
                b.push(format!(" AND {alias}.slot = "))
                    .push_bind(slot.clone());
            }
            if q.min_confidence > 0.0 {
                b.push(" AND m.confidence >= ").push_bind(q.min_confidence);
            }
            if let Some(t) = q.created_after {
                b.push(" AND m.created_at >= ").push_bind(t);
            }
            if let Some(t) = q.created_before {
                b.push(" AND m.created_at < ").push_bind(t);
            }
        }
        Table::Episodes => {
            if let Some(as_of) = q.as_of {
                b.push(" AND m.created_at <= ").push_bind(as_of);
            }
            if let Some(t) = q.created_after {
                b.push(" AND m.occurred_at >= ").push_bind(t);
            }
            if let Some(t) = q.created_before {
                b.push(" AND m.occurred_at < ").push_bind(t);
            }
        }
    }
}

fn scope_key(table: Table, q: &RecallQuery, model: &str) -> String {
    format!(
        "{}|{}|{}|{}|{model}",
        table.name(),
        q.tenant_id,
        q.user_id,
        q.namespaces.join(",")
    )
}

impl StatsCache {
    /// Whether any of `candidates` is a name that an earlier query of `q`'s scope was found to
    /// name (then the query waits for its names to be looked up before it embeds).
    fn may_name_a_speaker(&self, q: &RecallQuery, candidates: &[String]) -> bool {
        if candidates.is_empty() {
            return false;
        }
        let known = self
            .speakers
            .get(&scope_key(Table::Episodes, q, ""))
            .unwrap_or_default();
        candidates.iter().any(|c| known.contains(c))
    }

    /// Remembers that `names` are speakers in `q`'s scope.
    fn found_speakers(&self, q: &RecallQuery, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let key = scope_key(Table::Episodes, q, "");
        let mut known = self.speakers.get(&key).unwrap_or_default();
        let before = known.len();
        for n in names {
            if !known.contains(n) && known.len() < MAX_SPEAKERS_REMEMBERED {
                known.push(n.clone());
            }
        }
        if known.len() > before {
            self.speakers.put(key, known);
        }
    }

    async fn get(
        &self,
        conn: &mut PgConnection,
        table: Table,
        q: &RecallQuery,
        model: &str,
    ) -> Result<ScopeStats> {
        let key = scope_key(table, q, model);
        if let Some(stats) = self.scopes.get(&key) {
            return Ok(stats);
        }
        let sql = format!(
            "SELECT count(*)::float8, coalesce(avg(length(tsv)), 0)::float8, \
                    count(*) FILTER (WHERE embedding_model = $4) \
             FROM {} WHERE tenant_id = $1 AND user_id = $2 AND namespace = ANY($3)",
            table.name()
        );
        let (docs, avg_len, vectors): (f64, f64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(q.tenant_id)
            .bind(&q.user_id)
            .bind(&q.namespaces)
            .bind(model)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        let stats = ScopeStats {
            docs,
            avg_len,
            vectors: vectors.max(0) as u64,
        };
        if docs >= STATS_CACHE_MIN_DOCS {
            self.scopes.put(key, stats);
        }
        Ok(stats)
    }
}

/// Whether a query narrows memories by more than scope and status (then every scored document
/// must be checked, not only the best few).
fn has_filters(q: &RecallQuery) -> bool {
    !q.kinds.is_empty()
        || !q.tags.is_empty()
        || q.slot.is_some()
        || q.created_after.is_some()
        || q.created_before.is_some()
        || q.as_of.is_some()
}

/// The scope's best BM25 matches for `q` (filtered as it asks), with the query's terms.
async fn bm25(
    conn: &mut PgConnection,
    cache: &StatsCache,
    table: Table,
    q: &RecallQuery,
    stats: ScopeStats,
    exact_max_scope: u64,
    now: DateTime<Utc>,
) -> Result<(Vec<(Uuid, f32)>, Terms)> {
    let corpus = stats.corpus();
    // Without filters only expiry can still drop a document: the best few suffice.
    let pool = (!has_filters(q)).then_some(q.candidates * 4);
    let cache_dfs = stats.docs >= STATS_CACHE_MIN_DOCS;
    let (terms, best) = bm25::best(
        conn,
        &cache.dfs,
        table.postings(),
        q,
        corpus,
        cache_dfs,
        pool,
        stats.docs <= exact_max_scope as f64,
    )
    .await?;
    if terms.is_empty() || best.as_ref().is_some_and(|b| b.is_empty()) {
        return Ok((Vec::new(), terms));
    }
    let mut b = QueryBuilder::<Postgres>::new("WITH ");
    match best {
        Some(best) => {
            let (ids, scores): (Vec<Uuid>, Vec<f32>) = best.into_iter().unzip();
            b.push("scored AS (SELECT * FROM unnest(")
                .push_bind(ids)
                .push("::uuid[], ")
                .push_bind(scores)
                .push("::float4[]) s(doc_id, score))");
        }
        None => bm25::push_full_scan(&mut b, table.postings(), q, &terms, corpus, pool),
    }
    b.push(" SELECT m.id, s.score");
    push_scope(&mut b, table, q, now, Rows::Scored);
    b.push(" ORDER BY s.score DESC, m.id LIMIT ")
        .push_bind(q.candidates as i64);
    let hits = b
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok((hits, terms))
}

/// An episode's turns said just before and just after it in its session (by time, then by the
/// order of ingest), when there are.
type Adjacent = (Uuid, Option<Uuid>, Option<Uuid>);

/// The select-list expressions for the turns just before and just after the episode `alias`
/// (which must carry its tenant, user, namespace, session, time and seq): two index probes.
fn adjacent_turns(alias: &str) -> String {
    format!(
        "({}), ({})",
        session_turns(alias, "<", "DESC", "e.id", 1),
        session_turns(alias, ">", "ASC", "e.id", 1)
    )
}

/// Which of `candidates` (lowercase runs of the query's words, `core::recall::name_candidates`)
/// is the name of someone who speaks in `q`'s conversations: one index probe each (migration
/// 0016), stopping at their first turn, whatever the size of the history.
async fn speakers_named(
    conn: &mut PgConnection,
    q: &RecallQuery,
    candidates: &[String],
) -> Result<Vec<String>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT c FROM unnest($4::text[]) c WHERE EXISTS (SELECT 1 FROM episodes e \
         WHERE e.tenant_id = $1 AND e.user_id = $2 AND e.namespace = ANY($3) \
         AND e.name IS NOT NULL AND lower(e.name) = c)",
    )
    .bind(q.tenant_id)
    .bind(&q.user_id)
    .bind(&q.namespaces)
    .bind(candidates)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// The turns said just before and just after each episode of `ids`.
async fn neighbours(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Adjacent>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT c.id, {} FROM episodes c WHERE c.tenant_id = $1 AND c.id = ANY($2)",
        adjacent_turns("c")
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)
}

/// A nearest neighbour: its id, its similarity, and for a conversation turn the turns said just
/// before and after it.
type Near = (Uuid, f32, Option<Uuid>, Option<Uuid>);

/// The scope's `q.candidates` nearest neighbours of `vector`, with their similarity; with
/// `adjacent`, each episode's turns just before and after it too (in the same statement, so that
/// the neighbouring turns cost no round trip after the vector search).
#[allow(clippy::too_many_arguments)]
async fn nearest(
    conn: &mut PgConnection,
    cache: &VectorCache,
    table: Table,
    q: &RecallQuery,
    vector: &[f32],
    settings: &SearchSettings,
    stats: ScopeStats,
    now: DateTime<Utc>,
    adjacent: bool,
) -> Result<Vec<Near>> {
    if stats.vectors == 0 || vector.len() != settings.dims as usize {
        return Ok(Vec::new());
    }
    let dims = settings.dims;
    // The model id and dimension are literals so that the planner can match the partial
    // expression index (they were validated at start-up: no quotes).
    let model = settings.model.replace('\'', "");
    let exact = !approximate(stats, q, settings);
    if exact && reads_vectors_only(table, q) {
        let filter = Filter {
            model: &settings.model,
            dims: dims as usize,
            include_superseded: q.include_superseded,
            min_confidence: q.min_confidence,
            now,
            limit: q.candidates,
            budget: settings.vector_cache_bytes,
            vectors: stats.vectors,
        };
        if let Some(hits) = cache.nearest(conn, q, vector, &filter).await? {
            metrics::counter!("memoire_recall_vector_copies_total", "outcome" => "searched")
                .increment(1);
            return Ok(hits
                .into_iter()
                .map(|(id, s)| (id, s, None, None))
                .collect());
        }
    }
    let distance = if exact {
        // Not the indexed expression: the scope's rows, then every distance. They are memories'
        // narrow vector rows when the search filters on nothing else ([`reads_vectors_only`]).
        "m.embedding <=> ".to_owned()
    } else {
        format!("m.embedding::vector({dims}) <=> ")
    };
    let (outer, inner) = if adjacent {
        (
            format!("SELECT x.id, x.sim, {} FROM", adjacent_turns("x")),
            ", m.tenant_id, m.user_id, m.namespace, m.session_id, m.occurred_at, m.seq",
        )
    } else {
        (
            "SELECT x.id, x.sim, NULL::uuid, NULL::uuid FROM".to_owned(),
            "",
        )
    };
    let mut b = QueryBuilder::<Postgres>::new(outer);
    b.push(" (SELECT m.id");
    b.push(inner);
    b.push(", (1 - (");
    b.push(&distance)
        .push_bind(Vector::from(vector.to_vec()))
        .push(format!("::vector({dims})))::float4 AS sim"));
    let rows = if exact && reads_vectors_only(table, q) {
        Rows::Vectors
    } else {
        Rows::Table
    };
    push_scope(&mut b, table, q, now, rows);
    b.push(format!(" AND m.embedding_model = '{model}' ORDER BY "));
    if exact {
        // By the similarity already computed for the select list: one distance per row, not
        // two. Equal similarities (duplicates) straddling the cut are broken by id, whatever
        // order the scan (or a parallel plan's workers) returned them in.
        b.push("sim DESC, m.id");
    } else {
        // The HNSW index orders by the indexed expression's distance alone.
        b.push(&distance)
            .push_bind(Vector::from(vector.to_vec()))
            .push(format!("::vector({dims})"));
    }
    b.push(" LIMIT ");
    b.push_bind(q.candidates as i64);
    // Iterative scans may return neighbours slightly out of order: order them here.
    b.push(") x ORDER BY x.sim DESC, x.id");
    b.build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)
}

/// Whether `table`'s vector search for `q` goes through the HNSW index (else it is exact).
fn approximate(stats: ScopeStats, q: &RecallQuery, settings: &SearchSettings) -> bool {
    stats.vectors > settings.exact_search_max_scope && q.as_of.is_none()
}

/// What an approximate vector search runs in. The planner picks the HNSW index or the user's own
/// index and a sort of every distance by its estimate of the scope's rows, and after a burst of
/// writes, until the next ANALYZE, its statistics can say a 10k scope holds a handful (`make
/// bench-peer`: 15 ms a search instead of ~2). The scope was counted and is too large to sort:
/// without sorts, the index's order is the only plan left (the outer sort of at most
/// `candidates` rows is in every plan; hydration, which follows in the same transaction, sorts
/// nothing). A disabled sort still counts in the plan's cost, as 10^10, which would make Postgres
/// compile the statement with JIT (~140 ms): JIT goes too.
const FENCE: &str = "BEGIN READ ONLY; SET LOCAL enable_sort = off; SET LOCAL jit = off";

/// A table's connection for the rest of its chain: as taken, or inside the read-only
/// transaction of an approximate vector search ([`FENCE`]). That transaction is opened while the
/// query is still being embedded, and never committed: dropped, its ROLLBACK (all the same for a
/// read-only transaction) goes out with the check sqlx runs as the connection returns to the
/// pool, so that neither costs the reply a round trip.
enum Chain {
    Plain(PoolConnection<Postgres>),
    Fenced(Transaction<'static, Postgres>),
}

impl Chain {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Chain::Plain(c) => c,
            Chain::Fenced(tx) => tx,
        }
    }
}

/// Records how long one stage of Recall took, in `memoire_recall_stage_seconds{stage, table}`
/// (`table` is `memories`, `episodes`, or `all` for a stage over both): the profile the recall
/// bench and the evaluation print.
pub fn record_stage(stage: &'static str, table: &'static str, started: Instant) {
    metrics::histogram!("memoire_recall_stage_seconds", "stage" => stage, "table" => table)
        .record(started.elapsed().as_secs_f64());
}

/// Runs one stage of Recall over `table`: timed into `memoire_recall_stage_seconds`, and traced
/// as a span named after the stage (with the table as an attribute).
async fn staged<T>(stage: &'static str, table: Table, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let span = tracing::info_span!("recall_stage", otel.name = stage, table = table.name());
    let out = tracing::Instrument::instrument(work, span).await;
    record_stage(stage, table.name(), started);
    out
}

/// `conn` for the vector search and hydration: inside the read-only transaction of an
/// approximate search ([`FENCE`]) when `fenced`.
async fn chain(conn: PoolConnection<Postgres>, table: Table, fenced: bool) -> Result<Chain> {
    Ok(if fenced {
        Chain::Fenced(
            staged(
                "fence",
                table,
                Transaction::begin(conn, Some(FENCE.into_sql_str())),
            )
            .await
            .map_err(db_error)?,
        )
    } else {
        Chain::Plain(conn)
    })
}

/// `table`'s vector search on `conn` (inside [`FENCE`] when approximate, begun at once): the
/// query's vector, once embedded, and its nearest neighbours (none without a vector), with the
/// connection for the rest of the chain.
#[allow(clippy::too_many_arguments)]
async fn vector_hits(
    conn: PoolConnection<Postgres>,
    cache: &VectorCache,
    table: Table,
    q: &RecallQuery,
    vector: impl Future<Output = Option<Arc<[f32]>>>,
    vs: &SearchSettings,
    stats: ScopeStats,
    now: DateTime<Utc>,
) -> Result<(Chain, Option<Arc<[f32]>>, Vec<Near>)> {
    let mut chain = chain(conn, table, approximate(stats, q, vs)).await?;
    let waited = Instant::now();
    let vector = vector.await;
    // How long the vector search, ready, still waited for the query's embedding: the
    // embedding's share of the critical path.
    record_stage("embedding_wait", table.name(), waited);
    let near = match &vector {
        Some(v) => {
            let context = with_context(table, q);
            staged(
                "vector",
                table,
                nearest(chain.conn(), cache, table, q, v, vs, stats, now, context),
            )
            .await?
        }
        None => Vec::new(),
    };
    Ok((chain, vector, near))
}

/// The BM25 scores of the candidates `ids` the full-text search did not rank.
async fn score_texts(
    conn: &mut PgConnection,
    table: Table,
    q: &RecallQuery,
    terms: &Terms,
    stats: ScopeStats,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, f32)>> {
    staged("text_scores", table, async {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        bm25::scores_of(conn, table.postings(), q, terms, stats.corpus(), ids).await
    })
    .await
}

/// The rows of `ids` in `table`, with their vectors' similarity to `vector`.
async fn hydrate(
    conn: &mut PgConnection,
    table: Table,
    q: &RecallQuery,
    ids: &[Uuid],
    vector: Option<&[f32]>,
    vs: &SearchSettings,
) -> Result<Vec<(Item, Option<f32>)>> {
    staged("hydrate", table, async {
        match table {
            Table::Memories => hydrate_memories(conn, q, ids, vector, vs).await,
            Table::Episodes => hydrate_episodes(conn, q.tenant_id, ids, vector, vs).await,
        }
    })
    .await
}

/// Whether `table`'s candidates bring their neighbouring turns as context: conversation turns,
/// and not under a time filter (a neighbour may lie outside the window).
fn with_context(table: Table, q: &RecallQuery) -> bool {
    table == Table::Episodes
        && q.as_of.is_none()
        && q.created_after.is_none()
        && q.created_before.is_none()
}

fn ranked(hits: &[(Uuid, f32)]) -> HashMap<Uuid, (u32, f32)> {
    hits.iter()
        .enumerate()
        .map(|(i, (id, s))| (*id, (i as u32 + 1, *s)))
        .collect()
}

impl PgStore {
    /// Candidates for `q`: memories (and episodes when asked) found by full text or by vector,
    /// with their ranks and scores, hydrated as of `q.as_of` when given.
    ///
    /// The searches look for what is asked: when turns are searched, the names of the scope's
    /// speakers leave the text first (`core::recall::without_names`; ranking reads the query as
    /// asked). `embed` is given that text and embeds it: the full-text searches run meanwhile,
    /// and only the vector side waits for it (`None`: no vector search).
    ///
    /// A query that names no speaker its scope's queries were found to name starts embedding
    /// as asked while the names are looked up, and then the lookup costs the reply nothing; if
    /// it does name one after all, it is embedded again without the names and the first
    /// embedding is dropped (a query still waiting for a model pass leaves the queue). A query
    /// that may name a known speaker waits for the lookup, so that the model is not spent twice
    /// on the questions of a conversation, which mostly name its speakers.
    pub async fn recall_candidates<E, F>(
        &self,
        q: &RecallQuery,
        embed: E,
        vs: &SearchSettings,
    ) -> Result<Vec<Candidate>>
    where
        E: Fn(String) -> F,
        F: Future<Output = Result<Option<Vec<f32>>>>,
    {
        let now = self.clock.now();
        let tables: &[Table] = if q.include_episodes {
            &[Table::Memories, Table::Episodes]
        } else {
            &[Table::Memories]
        };
        // The names are looked up on the turns' connection, which their searches then use; the
        // other tables' connections are set up while the query embeds.
        let mut q = Cow::Borrowed(q);
        let mut turns_conn = None;
        let candidates = if q.include_episodes {
            recall::name_candidates(&q.text)
        } else {
            Vec::new()
        };
        let early = !self.stats_cache.may_name_a_speaker(&q, &candidates);
        let mut embedding = early.then(|| Box::pin(embed(q.text.clone())));
        // The embedding's outcome, when it came before the names.
        let mut embedded = None;
        if q.include_episodes {
            let lookup = Box::pin(async {
                let mut conn = self.read_conn(q.tenant_id).await?;
                let names = staged(
                    "speaker_names",
                    Table::Episodes,
                    speakers_named(&mut conn, &q, &candidates),
                )
                .await?;
                Ok::<_, memoire_core::Error>((conn, names))
            });
            // The embedding, when started, goes on beside the lookup.
            let (conn, names) = match embedding.as_mut() {
                Some(started) => match futures::future::select(lookup, started).await {
                    Either::Left((found, _)) => found,
                    Either::Right((out, lookup)) => {
                        embedded = Some(out);
                        lookup.await
                    }
                },
                None => lookup.await,
            }?;
            self.stats_cache.found_speakers(&q, &names);
            let searched = recall::without_names(&q.text, &names);
            if searched != q.text {
                q.to_mut().text = searched;
                embedding = None;
                embedded = None;
            }
            turns_conn = Some(conn);
        }
        let q = q.as_ref();
        // Both tables' vector searches wait for the same embedding; its failure is kept for the
        // reply, and the searches see no vector.
        let failed = OnceLock::new();
        let vector = async {
            let out = match (embedded, embedding) {
                (Some(out), _) => out,
                (None, Some(embedding)) => embedding.await,
                (None, None) => embed(q.text.clone()).await,
            };
            match out {
                Ok(vector) => vector.map(Arc::<[f32]>::from),
                Err(e) => {
                    let _ = failed.set(e);
                    None
                }
            }
        }
        .shared();
        // The tables are searched at once: each is a chain of round trips. The embedding is
        // awaited here too, so that it runs (and fails the Recall when it fails) whatever the
        // tables need.
        let (_, found) = tokio::join!(
            vector.clone(),
            futures::future::join_all(tables.iter().map(|t| {
                let conn = match t {
                    Table::Episodes => turns_conn.take(),
                    Table::Memories => None,
                };
                self.search_table(*t, conn, q, vector.clone(), vs, now)
            }))
        );
        drop(vector);
        if let Some(e) = failed.into_inner() {
            return Err(e);
        }
        let mut out = Vec::new();
        for f in found {
            out.extend(f?);
        }
        Ok(out)
    }

    /// One table's candidates. The scope's statistics, then the full-text search (with, for
    /// conversation turns ([`with_context`]), the neighbouring turns of what it found) and the
    /// vector search at once: the vector search on a second connection when the pool has one
    /// idle, waiting only for the query's embedding — else after the full text, on its
    /// connection, as the pool is busy. Then each candidate's other score and its row. The
    /// turns' chain runs on `conn` (where their speakers' names were looked up) when given.
    async fn search_table<V>(
        &self,
        table: Table,
        conn: Option<PoolConnection<Postgres>>,
        q: &RecallQuery,
        vector: V,
        vs: &SearchSettings,
        now: DateTime<Utc>,
    ) -> Result<Vec<Candidate>>
    where
        V: Future<Output = Option<Arc<[f32]>>> + Clone,
    {
        let mut conn = match conn {
            Some(conn) => conn,
            None => self.read_conn(q.tenant_id).await?,
        };
        let stats = staged(
            "scope_stats",
            table,
            self.stats_cache.get(&mut conn, table, q, &vs.model),
        )
        .await?;
        let context = with_context(table, q);
        let (text, beside) =
            tokio::join!(self.text_hits(&mut conn, table, q, stats, vs, now), async {
                // Nothing to search by vector: no second connection.
                if stats.vectors == 0 {
                    return None;
                }
                let second = self.idle_read_conn(q.tenant_id).await?;
                Some(
                    vector_hits(
                        second,
                        &self.vectors,
                        table,
                        q,
                        vector.clone(),
                        vs,
                        stats,
                        now,
                    )
                    .await,
                )
            });
        let (hits, terms, text_adjacent) = text?;
        // Fewer than the pool: every matching document is in it, and the others score 0.
        let text_complete = hits.len() < q.candidates;
        if stats.vectors > 0 {
            let connection = if beside.is_some() { "second" } else { "shared" };
            metrics::counter!("memoire_recall_vector_search_total", "table" => table.name(), "connection" => connection)
                .increment(1);
        }
        // The full-text-only candidates' vector scores come with hydration (the same rows, one
        // statement) on the vector search's connection; the vector-only candidates' text scores
        // on another, when there is one: the full text's, or one idle now.
        let (mut chain, vector, near_all, spare) = match beside {
            Some(found) => {
                let (chain, vector, near) = found?;
                (chain, vector, near, Some(conn))
            }
            None => {
                // A connection for the text scores is looked for while the vector search runs.
                let spare_needed = !text_complete && stats.vectors > 0;
                let (found, spare) = tokio::join!(
                    vector_hits(conn, &self.vectors, table, q, vector, vs, stats, now),
                    async {
                        if spare_needed {
                            self.idle_read_conn(q.tenant_id).await
                        } else {
                            None
                        }
                    }
                );
                let (chain, v, near) = found?;
                (chain, v, near, spare)
            }
        };
        let mut text_scores: HashMap<Uuid, f32> = hits.iter().copied().collect();
        let near_hits: Vec<(Uuid, f32)> = near_all.iter().map(|(id, s, _, _)| (*id, *s)).collect();
        let (text, near) = (ranked(&hits), ranked(&near_hits));
        let mut ids: Vec<Uuid> = text.keys().chain(near.keys()).copied().collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // An episode's neighbouring turns are its context (an answer follows its question): they
        // join the candidates, scored like the others, and fusion credits each turn with its
        // neighbours' relevance. They came with the searches' hits.
        let mut adjacent: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        if context {
            let found = text_adjacent
                .into_iter()
                .chain(near_all.into_iter().map(|(id, _, b, a)| (id, b, a)));
            for (id, before, after) in found {
                let entry = adjacent.entry(id).or_default();
                for n in [before, after].into_iter().flatten() {
                    if !entry.contains(&n) {
                        entry.push(n);
                    }
                }
            }
            let mut more: Vec<Uuid> = adjacent.values().flatten().copied().collect();
            more.sort();
            more.dedup();
            more.retain(|n| ids.binary_search(n).is_err());
            ids.extend(more);
            ids.sort();
        }
        // Every candidate gets both real scores: one that only one search ranked high is still
        // scored for the other, so that fusion never counts a real similarity as 0 (and the
        // order of the first items does not depend on how many were asked for).
        let no_text: Vec<Uuid> = if text_complete {
            Vec::new()
        } else {
            ids.iter()
                .filter(|id| !text_scores.contains_key(id))
                .copied()
                .collect()
        };
        let vector = vector.filter(|v| v.len() == vs.dims as usize);
        let vector = vector.as_deref();
        let (text_only, items) = match spare {
            Some(mut spare) => tokio::join!(
                score_texts(&mut spare, table, q, &terms, stats, &no_text),
                hydrate(chain.conn(), table, q, &ids, vector, vs)
            ),
            // No connection to spare: one after the other.
            None => {
                let items = hydrate(chain.conn(), table, q, &ids, vector, vs).await;
                let text_only = score_texts(chain.conn(), table, q, &terms, stats, &no_text).await;
                (text_only, items)
            }
        };
        text_scores.extend(text_only?);
        let items = items?;
        Ok(items
            .into_iter()
            .map(|(item, cosine)| {
                let id = item.id();
                let (text_rank, text_score) = text
                    .get(&id)
                    .map(|(r, s)| (Some(*r), *s))
                    .unwrap_or((None, text_scores.get(&id).copied().unwrap_or(0.0)));
                let (vector_rank, vector_score) = near
                    .get(&id)
                    .map(|(r, s)| (Some(*r), *s))
                    .unwrap_or((None, cosine.unwrap_or(0.0)));
                Candidate {
                    neighbours: adjacent.remove(&id).unwrap_or_default(),
                    item,
                    text_rank,
                    text_score,
                    vector_rank,
                    vector_score,
                }
            })
            .collect())
    }

    /// The best full-text matches in `table`, the query's terms in the scope, and for
    /// conversation turns ([`with_context`]) the neighbouring turns of those matches.
    async fn text_hits(
        &self,
        conn: &mut PgConnection,
        table: Table,
        q: &RecallQuery,
        stats: ScopeStats,
        vs: &SearchSettings,
        now: DateTime<Utc>,
    ) -> Result<(Vec<(Uuid, f32)>, Terms, Vec<Adjacent>)> {
        let (hits, terms) = staged(
            "full_text",
            table,
            bm25(
                conn,
                &self.stats_cache,
                table,
                q,
                stats,
                vs.exact_text_max_scope,
                now,
            ),
        )
        .await?;
        let adjacent = if with_context(table, q) {
            let ids: Vec<Uuid> = hits.iter().map(|(id, _)| *id).collect();
            staged("neighbours", table, neighbours(conn, q.tenant_id, &ids)).await?
        } else {
            Vec::new()
        };
        Ok((hits, terms, adjacent))
    }
}

/// A hydrated row with its cosine similarity to the query vector (when there is one and the
/// row was embedded by the configured model): the vector score of candidates that only the
/// full-text search found, computed where the row is read anyway.
#[derive(sqlx::FromRow)]
struct Hydrated<T> {
    #[sqlx(flatten)]
    row: T,
    cosine: Option<f32>,
}

/// The select-list expression for [`Hydrated::cosine`]: the vector and the model are bound as
/// `$v` and `$m`.
fn cosine_column(alias: &str, v: usize, m: usize) -> String {
    format!(
        "CASE WHEN {alias}embedding_model = ${m} THEN (1 - ({alias}embedding <=> ${v}))::float4 END AS cosine"
    )
}

async fn hydrate_memories(
    conn: &mut PgConnection,
    q: &RecallQuery,
    ids: &[Uuid],
    vector: Option<&[f32]>,
    vs: &SearchSettings,
) -> Result<Vec<(Item, Option<f32>)>> {
    let vector = vector.map(|v| Vector::from(v.to_vec()));
    let rows: Vec<Hydrated<MemoryRow>> = match q.as_of {
        None => {
            let sql = format!(
                "SELECT {MEMORY_COLUMNS}, {} FROM memories WHERE tenant_id = $1 AND id = ANY($2)",
                cosine_column("", 3, 4)
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(q.tenant_id)
                .bind(ids)
                .bind(vector)
                .bind(&vs.model)
                .fetch_all(&mut *conn)
                .await
        }
        Some(as_of) => {
            // Every field a version records comes from the version in force at `as_of`.
            let sql = format!(
                concat!(
                    "SELECT m.id, m.tenant_id, m.user_id, m.namespace, v.kind, v.content, m.content_key, v.slot, \
                       v.subject, v.tags, v.importance, v.confidence, v.pinned, m.essential, v.expires_at, v.status, \
                       v.superseded_by, v.version, m.created_at, v.created_at AS updated_at, ",
                    last_accessed!("m"),
                    " AS last_accessed_at, ",
                    access_count!("m"),
                    " AS access_count, m.embedding_model, m.source_episode_ids, {} \
                     FROM memories m JOIN LATERAL (SELECT * FROM memory_versions v WHERE v.memory_id = m.id \
                       AND v.created_at <= $3 ORDER BY v.version DESC LIMIT 1) v ON true \
                     WHERE m.tenant_id = $1 AND m.id = ANY($2)",
                ),
                cosine_column("m.", 4, 5)
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(q.tenant_id)
                .bind(ids)
                .bind(as_of)
                .bind(vector)
                .bind(&vs.model)
                .fetch_all(&mut *conn)
                .await
        }
    }
    .map_err(db_error)?;
    rows.into_iter()
        .map(|r| Ok((Item::Memory(Box::new(Memory::try_from(r.row)?)), r.cosine)))
        .collect()
}

async fn hydrate_episodes(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ids: &[Uuid],
    vector: Option<&[f32]>,
    vs: &SearchSettings,
) -> Result<Vec<(Item, Option<f32>)>> {
    let sql = format!(
        "SELECT {EPISODE_COLUMNS}, {} FROM episodes WHERE tenant_id = $1 AND id = ANY($2)",
        cosine_column("", 3, 4)
    );
    let rows: Vec<Hydrated<EpisodeRow>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(ids)
        .bind(vector.map(|v| Vector::from(v.to_vec())))
        .bind(&vs.model)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    rows.into_iter()
        .map(|r| {
            Ok((
                Item::Episode(Box::new(EpisodeHit::try_from(r.row)?)),
                r.cosine,
            ))
        })
        .collect()
}
