//! The periodic jobs' database side: optimize, decay, reflect, retention, re-embed.
//!
//! Each job is idempotent and safe beside traffic and beside itself: per-user work runs under the
//! user's advisory lock (optimize, and reflect through Teach), bulk work in small batches claimed
//! with `FOR UPDATE SKIP LOCKED` (decay, retention, re-embed), so no transaction holds many rows
//! for long and two workers running the same job split the rows instead of doubling the work.
//! Every job returns the users+namespaces whose memories it changed, so that the caller can
//! invalidate their working memory (Conscious). Models (embedding, summaries) are called by the
//! use-cases between these statements, never here.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use memoire_core::Result;
use memoire_core::conscious::optimize_order;
use memoire_core::embed::{episode_vector_text, memory_text};
use memoire_core::model::{Basis, Memory, MessageRole, Scope, VersionOp};
use memoire_core::summary::SessionTurn;
use serde_json::json;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::episodes::{scopes, turns_before};
use crate::memories::{audit, delete_episodes, expire, lock_user, record_versions};
use crate::rows::{MEMORY_COLUMNS, MemoryRow, convert_all, last_accessed};
use crate::vectors::{Held, busy_rows};
use crate::{PgStore, Rows, db_error, write_vectors};

/// Which part of the data a job runs on: everything, one tenant, or one user of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobScope {
    /// Only this tenant.
    pub tenant_id: Option<Uuid>,
    /// Only this user (of `tenant_id`).
    pub user_id: Option<String>,
}

/// How often a run waiting for its job's lock asks again.
pub const JOB_LOCK_RETRY: Duration = Duration::from_millis(250);

/// A run's exclusive right to its job (see [`PgStore::lock_job`]).
#[derive(Debug)]
pub struct JobLock {
    _tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// Rows per batch of the bulk jobs.
const BATCH: i64 = 500;

/// The tables whose statistics [`PgStore::analyze_stale_tables`] keeps fresh.
const ANALYZED_TABLES: &[&str] = &[
    "episode_terms",
    "episodes",
    "memories",
    "memory_access",
    "memory_terms",
    "memory_vectors",
    "memory_versions",
];

type Scopes = BTreeSet<(Uuid, String, String)>;

impl PgStore {
    /// Users+namespaces with current memories, within `f`.
    async fn memory_scopes(&self, f: &JobScope) -> Result<Vec<Scope>> {
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT DISTINCT tenant_id, user_id, namespace FROM memories WHERE status = 'active' \
             AND ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2) \
             ORDER BY 1, 2, 3",
        )
        .bind(f.tenant_id)
        .bind(&f.user_id)
        .fetch_all(&mut *self.conn(f.tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(scopes(rows))
    }

    /// Refreshes the planner statistics of the tables Recall, Teach and extraction read, where
    /// they are as stale as autovacuum's default rule would not allow (more than 50 + 10% of the
    /// rows changed since the last analyze, none in the last minute). With autovacuum on this
    /// finds nothing to do; with it off or behind (a young database after a burst of writes),
    /// plans made from an empty table's statistics — and cached by every connection — would
    /// otherwise stay. Returns the tables analyzed.
    pub async fn analyze_stale_tables(&self) -> Result<Vec<String>> {
        let mut conn = self.conn(Rows::All).await?;
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = ANY($1) \
               AND n_mod_since_analyze > 50 + 0.1 * n_live_tup \
               AND coalesce(greatest(last_analyze, last_autoanalyze), '-infinity') \
                   < now() - interval '1 minute' \
             ORDER BY relname",
        )
        .bind(ANALYZED_TABLES)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        for table in &stale {
            // Names come from the fixed list above, not from input.
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(stale)
    }

    /// Optimize: recomputes each user's essential set (see `memoire_core::conscious`): promotes
    /// what qualifies, demotes what no longer does, at most `max_essential`. Returns
    /// `{scopes, promoted, demoted}`.
    pub async fn optimize(&self, f: &JobScope, max_essential: usize) -> Result<JobOutput> {
        let now = self.clock.now();
        let (mut promoted, mut demoted) = (0u64, 0u64);
        let scopes = self.memory_scopes(f).await?;
        let mut changed = Vec::new();
        for scope in &scopes {
            let mut tx = self.begin(scope.tenant_id).await?;
            lock_user(&mut tx, scope.tenant_id, &scope.user_id, &scope.namespace).await?;
            let sql = format!(
                "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND user_id = $2 \
                 AND namespace = $3 AND status = 'active' AND (expires_at IS NULL OR expires_at > $4)"
            );
            let rows: Vec<MemoryRow> = sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope.tenant_id)
                .bind(&scope.user_id)
                .bind(&scope.namespace)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
            let memories: Vec<Memory> = convert_all(rows)?;
            let keep = optimize_order(&memories, now, max_essential);
            let promote: Vec<Uuid> = memories
                .iter()
                .filter(|m| !m.essential && keep.contains(&m.id))
                .map(|m| m.id)
                .collect();
            let demote: Vec<Uuid> = memories
                .iter()
                .filter(|m| m.essential && !keep.contains(&m.id))
                .map(|m| m.id)
                .collect();
            if promote.is_empty() && demote.is_empty() {
                tx.commit().await.map_err(db_error)?;
                continue;
            }
            // The essential tier is derived, not part of the memory's content: no version, an
            // audit row.
            sqlx::query(
                "UPDATE memories SET essential = (id = ANY($1)) WHERE id = ANY($2) OR id = ANY($3)",
            )
            .bind(&promote)
            .bind(&promote)
            .bind(&demote)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            audit(
                &mut tx,
                scope.tenant_id,
                "job:optimize",
                "optimize",
                None,
                json!({ "user_id": scope.user_id, "namespace": scope.namespace,
                        "promoted": promote, "demoted": demote }),
                now,
            )
            .await?;
            tx.commit().await.map_err(db_error)?;
            changed.push(scope.clone());
            promoted += promote.len() as u64;
            demoted += demote.len() as u64;
        }
        Ok(JobOutput {
            report: json!({ "scopes": scopes.len(), "promoted": promoted, "demoted": demoted }),
            changed,
        })
    }

    /// Decay: confidence × 0.5^(time since the last update, access or decay / `half_life`) for
    /// every current, unpinned memory. Memories that fall below `floor` leave recall and
    /// Conscious (an `update` version with basis `decay` records it). Returns
    /// `{decayed, below_floor}`.
    pub async fn decay(&self, f: &JobScope, half_life: Duration, floor: f32) -> Result<JobOutput> {
        let now = self.clock.now();
        let half_secs = half_life.as_secs_f64().max(1.0);
        let (mut decayed, mut below) = (0u64, 0u64);
        let mut changed = Scopes::new();
        // Rows of scopes busy with a writer, left for the next run (`vectors::busy_rows`).
        let mut skipped: Vec<Uuid> = Vec::new();
        loop {
            let mut tx = self.begin(f.tenant_id).await?;
            let held: Vec<(Uuid, Uuid, String, String, f32)> = sqlx::query_as(
                "SELECT id, tenant_id, user_id, namespace, confidence FROM memories \
                 WHERE status = 'active' AND NOT pinned \
                   AND (decayed_at IS NULL OR decayed_at < $1) \
                   AND ($2::uuid IS NULL OR tenant_id = $2) AND ($3::text IS NULL OR user_id = $3) \
                   AND id <> ALL($5) \
                 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED",
            )
            .bind(now)
            .bind(f.tenant_id)
            .bind(&f.user_id)
            .bind(BATCH)
            .bind(&skipped)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if held.is_empty() {
                tx.commit().await.map_err(db_error)?;
                break;
            }
            let scoped: Vec<Held> = held
                .iter()
                .map(|r| (r.0, r.1, r.2.clone(), r.3.clone()))
                .collect();
            let busy = busy_rows(&mut tx, &scoped).await?;
            let ids: Vec<Uuid> = held
                .iter()
                .map(|r| r.0)
                .filter(|id| !busy.contains(id))
                .collect();
            skipped.extend(busy);
            let after: Vec<(Uuid, f32)> = sqlx::query_as(concat!(
                "UPDATE memories m SET decayed_at = $1, confidence = (m.confidence * power(0.5, \
                     GREATEST(0, extract(epoch FROM ($1 - GREATEST(m.updated_at, ",
                last_accessed!("m"),
                ", COALESCE(m.decayed_at, m.updated_at))))) \
                     / $3))::real \
                 WHERE m.id = ANY($2) RETURNING m.id, m.confidence",
            ))
            .bind(now)
            .bind(&ids)
            .bind(half_secs)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let after: std::collections::HashMap<Uuid, f32> = after.into_iter().collect();
            let rows: Vec<(Uuid, Uuid, String, String, f32, f32)> = held
                .into_iter()
                .filter_map(|(id, t, u, n, before)| {
                    after.get(&id).map(|a| (id, t, u, n, before, *a))
                })
                .collect();
            if rows.is_empty() {
                // Every row held was a busy scope's: the next batch starts after them.
                tx.commit().await.map_err(db_error)?;
                continue;
            }
            let crossed: Vec<Uuid> = rows
                .iter()
                .filter(|r| r.4 >= floor && r.5 < floor)
                .map(|r| r.0)
                .collect();
            if !crossed.is_empty() {
                sqlx::query(
                    "UPDATE memories SET version = version + 1, updated_at = $2 WHERE id = ANY($1)",
                )
                .bind(&crossed)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                record_versions(
                    &mut tx,
                    &crossed,
                    VersionOp::Update,
                    Basis::Decay,
                    Some(floor),
                    &format!("confidence fell below the floor {floor}: out of recall"),
                    "job:decay",
                )
                .await?;
            }
            tx.commit().await.map_err(db_error)?;
            decayed += rows.len() as u64;
            below += crossed.len() as u64;
            changed.extend(rows.into_iter().map(|r| (r.1, r.2, r.3)));
        }
        Ok(JobOutput {
            report: json!({ "decayed": decayed, "below_floor": below }),
            changed: scopes(changed.into_iter().collect()),
        })
    }

    /// Retention: expires memories past `expires_at` and, per tenant policy, unpinned memories
    /// untouched for `memory_retention_days`; deletes episodes older than
    /// `episode_retention_days` (once extracted) with their traces. Returns
    /// `{expired, expired_by_policy, episodes_deleted}`.
    pub async fn retention(&self, f: &JobScope) -> Result<JobOutput> {
        let now = self.clock.now();
        let mut changed = Scopes::new();
        let mut expired_due = 0;
        loop {
            let n = self.expire_due(BATCH).await?;
            expired_due += n;
            if n < BATCH as u64 {
                break;
            }
        }
        let mut by_policy = 0u64;
        let mut skipped: Vec<Uuid> = Vec::new();
        loop {
            let mut tx = self.begin(f.tenant_id).await?;
            let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(concat!(
                "SELECT m.id, m.tenant_id, m.user_id, m.namespace FROM memories m \
                 JOIN tenants t ON t.id = m.tenant_id \
                 WHERE t.memory_retention_days > 0 AND m.status = 'active' AND NOT m.pinned \
                   AND GREATEST(m.updated_at, ",
                last_accessed!("m"),
                ") \
                       < $1 - make_interval(days => t.memory_retention_days) \
                   AND ($2::uuid IS NULL OR m.tenant_id = $2) AND ($3::text IS NULL OR m.user_id = $3) \
                   AND m.id <> ALL($5) \
                 ORDER BY m.id LIMIT $4 FOR UPDATE OF m SKIP LOCKED",
            ))
            .bind(now)
            .bind(f.tenant_id)
            .bind(&f.user_id)
            .bind(BATCH)
            .bind(&skipped)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if rows.is_empty() {
                tx.commit().await.map_err(db_error)?;
                break;
            }
            // Rows of scopes busy with a writer are left for the next run.
            let busy = busy_rows(&mut tx, &rows).await?;
            let rows: Vec<Held> = rows.into_iter().filter(|r| !busy.contains(&r.0)).collect();
            let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
            skipped.extend(busy);
            expire(
                &mut tx,
                &ids,
                now,
                "the tenant's memory retention period passed",
            )
            .await?;
            tx.commit().await.map_err(db_error)?;
            by_policy += ids.len() as u64;
            changed.extend(rows.into_iter().map(|r| (r.1, r.2, r.3)));
        }
        let mut episodes = 0u64;
        loop {
            let mut tx = self.begin(f.tenant_id).await?;
            let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
                "SELECT e.id, e.tenant_id, e.user_id, e.namespace FROM episodes e \
                 JOIN tenants t ON t.id = e.tenant_id \
                 WHERE t.episode_retention_days > 0 \
                   AND e.occurred_at < $1 - make_interval(days => t.episode_retention_days) \
                   AND (e.extracted_at IS NOT NULL OR e.extract_dead_at IS NOT NULL) \
                   AND ($2::uuid IS NULL OR e.tenant_id = $2) AND ($3::text IS NULL OR e.user_id = $3) \
                 ORDER BY e.id LIMIT $4 FOR UPDATE OF e SKIP LOCKED",
            )
            .bind(now)
            .bind(f.tenant_id)
            .bind(&f.user_id)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if rows.is_empty() {
                tx.commit().await.map_err(db_error)?;
                break;
            }
            let tenants: BTreeSet<Uuid> = rows.iter().map(|r| r.1).collect();
            for tenant in tenants {
                let ids: Vec<Uuid> = rows.iter().filter(|r| r.1 == tenant).map(|r| r.0).collect();
                episodes += delete_episodes(&mut tx, tenant, &ids).await?.0;
            }
            tx.commit().await.map_err(db_error)?;
            changed.extend(rows.into_iter().map(|r| (r.1, r.2, r.3)));
        }
        Ok(JobOutput {
            report: json!({ "expired": expired_due, "expired_by_policy": by_policy, "episodes_deleted": episodes }),
            changed: scopes(changed.into_iter().collect()),
        })
    }

    /// Re-embed's claim: up to `batch` rows of `table` whose vector is of another model than
    /// `model` (or, for memories, missing), within `f`, locked until the claim completes (other
    /// workers skip them). `None` when none is left. Until a row is re-embedded, vector search
    /// skips it (vectors of two models are never compared) and full text still finds it.
    pub async fn claim_stale_vectors(
        &self,
        table: VectorTable,
        model: &str,
        f: &JobScope,
        batch: i64,
    ) -> Result<Option<VectorClaim>> {
        let mut tx = self.begin(f.tenant_id).await?;
        let (text_sql, stale) = match table {
            VectorTable::Memories => (
                "content, subject, slot, NULL::timestamptz".to_owned(),
                "status IN ('active', 'superseded') AND embedding_model IS DISTINCT FROM $1",
            ),
            // The slot's place carries the turns said before (the vector's context).
            VectorTable::Episodes => (
                format!("content, name, {}, occurred_at", turns_before("x")),
                "embedding_model <> $1",
            ),
        };
        let sql = format!(
            "SELECT id, tenant_id, user_id, namespace, {text_sql} FROM {} x \
             WHERE {stale} AND ($2::uuid IS NULL OR tenant_id = $2) \
               AND ($3::text IS NULL OR user_id = $3) \
             ORDER BY id LIMIT $4 FOR UPDATE OF x SKIP LOCKED",
            table.name()
        );
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            Uuid,
            Uuid,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(model)
            .bind(f.tenant_id)
            .bind(&f.user_id)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        if rows.is_empty() {
            tx.commit().await.map_err(db_error)?;
            return Ok(None);
        }
        Ok(Some(VectorClaim {
            tx,
            table,
            rows: rows
                .iter()
                .map(|r| (r.0, r.1, r.2.clone(), r.3.clone()))
                .collect(),
            texts: rows
                .iter()
                .map(|r| match (table, r.7) {
                    (VectorTable::Episodes, Some(at)) => {
                        episode_vector_text(r.5.as_deref(), at, &r.4, r.6.as_deref())
                    }
                    _ => memory_text(&r.4, r.5.as_deref(), r.6.as_deref()),
                })
                .collect(),
            scopes: scopes(
                rows.into_iter()
                    .map(|r| (r.1, r.2, r.3))
                    .collect::<Scopes>()
                    .into_iter()
                    .collect(),
            ),
        }))
    }

    /// Reflect's sessions: those within `f` with at least `min_turns` turns, quiet since `quiet_since`.
    pub async fn quiet_sessions(
        &self,
        f: &JobScope,
        min_turns: i64,
        quiet_since: DateTime<Utc>,
    ) -> Result<Vec<(Scope, String)>> {
        let sessions: Vec<(Uuid, String, String, String)> = sqlx::query_as(
            "SELECT tenant_id, user_id, namespace, session_id FROM episodes \
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2) \
             GROUP BY tenant_id, user_id, namespace, session_id \
             HAVING count(*) >= $3 AND max(occurred_at) <= $4 ORDER BY 1, 2, 3, 4",
        )
        .bind(f.tenant_id)
        .bind(&f.user_id)
        .bind(min_turns)
        .bind(quiet_since)
        .fetch_all(&mut *self.conn(f.tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(sessions
            .into_iter()
            .map(|(tenant_id, user_id, namespace, session)| {
                (
                    Scope {
                        tenant_id,
                        user_id,
                        namespace,
                    },
                    session,
                )
            })
            .collect())
    }

    /// A session's turns, in the order they were said.
    pub async fn session_turns(&self, scope: &Scope, session: &str) -> Result<Vec<SessionTurn>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            role: String,
            name: Option<String>,
            content: String,
            occurred_at: DateTime<Utc>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, role, name, content, occurred_at FROM episodes WHERE tenant_id = $1 \
             AND user_id = $2 AND namespace = $3 AND session_id = $4 ORDER BY occurred_at, seq",
        )
        .bind(scope.tenant_id)
        .bind(&scope.user_id)
        .bind(&scope.namespace)
        .bind(session)
        .fetch_all(&mut *self.conn(scope.tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| SessionTurn {
                id: r.id,
                role: MessageRole::parse(&r.role).unwrap_or(MessageRole::User),
                name: r.name,
                content: r.content,
                occurred_at: r.occurred_at,
            })
            .collect())
    }

    /// Whether the current memory in `slot` summarizes `episode` already.
    pub async fn summary_covers(&self, scope: &Scope, slot: &str, episode: Uuid) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM memories m JOIN edges e ON e.tenant_id = m.tenant_id \
               AND e.src_id = m.id AND e.relation = 'summarizes' \
             WHERE m.tenant_id = $1 AND m.user_id = $2 AND m.namespace = $3 AND m.slot = $4 \
               AND m.status = 'active' AND e.dst_id = $5)",
        )
        .bind(scope.tenant_id)
        .bind(&scope.user_id)
        .bind(&scope.namespace)
        .bind(slot)
        .bind(episode)
        .fetch_one(&mut *self.conn(scope.tenant_id).await?)
        .await
        .map_err(db_error)
    }

    /// `summarizes` edges from the summary `memory` to `episodes`.
    pub async fn link_summary(
        &self,
        tenant_id: Uuid,
        memory: Uuid,
        episodes: &[Uuid],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO edges (tenant_id, src_type, src_id, relation, dst_type, dst_id, created_at) \
             SELECT $1, 'memory', $2, 'summarizes', 'episode', e, $4 FROM unnest($3::uuid[]) AS e \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant_id)
        .bind(memory)
        .bind(episodes)
        .bind(self.clock.now())
        .execute(&mut *self.conn(tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// The right to run `job` alone, among every worker and server sharing the database (a
    /// transaction-level advisory lock on its own connection): `None` while a run elsewhere holds
    /// it, unless `wait`, which asks again every [`JOB_LOCK_RETRY`] until it is free, holding no
    /// connection in between (a caller that gives up leaves nothing behind). Released when
    /// dropped, or when the holder's connection dies.
    pub async fn lock_job(&self, job: &str, wait: bool) -> Result<Option<JobLock>> {
        let key = format!("job/{job}");
        loop {
            let mut tx = self.begin(Rows::All).await?;
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error)?;
            if got {
                return Ok(Some(JobLock { _tx: tx }));
            }
            tx.rollback().await.map_err(db_error)?;
            if !wait {
                return Ok(None);
            }
            tokio::time::sleep(JOB_LOCK_RETRY).await;
        }
    }

    /// Records the start of a maintenance run.
    pub async fn start_run(&self, id: Uuid, job: &str, f: &JobScope) -> Result<()> {
        sqlx::query(
            "INSERT INTO maintenance_runs (id, tenant_id, user_id, job, status, started_at) \
             VALUES ($1, $2, $3, $4, 'running', $5)",
        )
        .bind(id)
        .bind(f.tenant_id)
        .bind(&f.user_id)
        .bind(job)
        .bind(self.clock.now())
        .execute(&mut *self.conn(f.tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Records how a maintenance run ended.
    pub async fn finish_run(&self, id: Uuid, result: &Result<serde_json::Value>) -> Result<()> {
        let (status, body) = match result {
            Ok(v) => ("done", v.clone()),
            Err(e) => ("failed", json!({ "error": e.to_string() })),
        };
        sqlx::query(
            "UPDATE maintenance_runs SET status = $2, result = $3, finished_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(body)
        .bind(self.clock.now())
        .execute(&mut *self.conn(Rows::All).await?)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}

/// What a bulk job did, and whose working memory it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutput {
    /// The run's result, as recorded in `maintenance_runs`.
    pub report: serde_json::Value,
    /// Users+namespaces whose memories changed.
    pub changed: Vec<Scope>,
}

/// A table with vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorTable {
    /// `memories`.
    Memories,
    /// `episodes`.
    Episodes,
}

impl VectorTable {
    fn name(self) -> &'static str {
        match self {
            VectorTable::Memories => "memories",
            VectorTable::Episodes => "episodes",
        }
    }
}

/// Rows claimed for re-embedding (see [`PgStore::claim_stale_vectors`]).
#[derive(Debug)]
pub struct VectorClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    table: VectorTable,
    /// Each row's id and scope.
    rows: Vec<Held>,
    texts: Vec<String>,
    scopes: Vec<Scope>,
}

impl VectorClaim {
    /// The texts to embed, one per row.
    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Writes one vector per row (of `model`) and releases the claim. Returns how many rows were
    /// written — not the memories of a scope a writer holds now (`vectors::busy_rows`), which
    /// stay stale for a later claim — and the users+namespaces whose memories changed (none for
    /// episodes).
    pub async fn complete(
        mut self,
        vectors: Vec<Vec<f32>>,
        model: &str,
    ) -> Result<(u64, Vec<Scope>)> {
        // The rows of scopes a writer holds stay stale until a later claim.
        let busy = match self.table {
            VectorTable::Memories => busy_rows(&mut self.tx, &self.rows).await?,
            VectorTable::Episodes => Default::default(),
        };
        let (ids, vectors): (Vec<Uuid>, Vec<pgvector::Vector>) = self
            .rows
            .iter()
            .map(|r| r.0)
            .zip(vectors)
            .filter(|(id, _)| !busy.contains(id))
            .map(|(id, v)| (id, pgvector::Vector::from(v)))
            .unzip();
        write_vectors(&mut self.tx, self.table.name(), &ids, &vectors, model).await?;
        self.tx.commit().await.map_err(db_error)?;
        let changed = match self.table {
            VectorTable::Memories => self.scopes,
            VectorTable::Episodes => Vec::new(),
        };
        Ok((ids.len() as u64, changed))
    }
}
