//! The periodic jobs' database side: optimize, decay, reflect, retention, re-embed.
//!
//! Each job is idempotent and safe beside traffic and beside itself: per-user work runs under the
//! user's advisory lock (optimize, and reflect through Teach), bulk work in small batches claimed
//! with `FOR UPDATE SKIP LOCKED` (decay, retention, re-embed), so no transaction holds many rows
//! for long and two workers running the same job split the rows instead of doubling the work.
//! Every job invalidates the working memory (Conscious) of the users whose memories it changed.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use memoire_core::command::{NewMemory, Teach};
use memoire_core::conscious::optimize_order;
use memoire_core::embed::memory_text;
use memoire_core::extract::{RuleExtractor, Summarizer, Turn};
use memoire_core::model::{Basis, Memory, MemoryKind, MessageRole, Scope, VersionOp, WriteOutcome};
use memoire_core::resolve::significant_words;
use memoire_core::{Error, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::episodes::scopes;
use crate::memories::{audit, delete_episodes, expire, lock_user, record_versions};
use crate::rows::{MEMORY_COLUMNS, MemoryRow, convert_all};
use crate::{PgStore, db_error, write_vectors};

/// Which part of the data a job runs on: everything, one tenant, or one user of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobScope {
    /// Only this tenant.
    pub tenant_id: Option<Uuid>,
    /// Only this user (of `tenant_id`).
    pub user_id: Option<String>,
}

/// Rows per batch of the bulk jobs.
const BATCH: i64 = 500;

type Scopes = BTreeSet<(Uuid, String, String)>;

impl PgStore {
    async fn invalidate_all(&self, scopes: &Scopes) {
        for (tenant, user, namespace) in scopes {
            self.conscious_changed(*tenant, user, namespace).await;
        }
    }

    /// Users+namespaces with current memories, within `f`.
    async fn memory_scopes(&self, f: &JobScope) -> Result<Vec<Scope>> {
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT DISTINCT tenant_id, user_id, namespace FROM memories WHERE status = 'active' \
             AND ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2) \
             ORDER BY 1, 2, 3",
        )
        .bind(f.tenant_id)
        .bind(&f.user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(scopes(rows))
    }

    /// Optimize: recomputes each user's essential set (see `memoire_core::conscious`): promotes
    /// what qualifies, demotes what no longer does, at most `max_essential`. Returns
    /// `{scopes, promoted, demoted}`.
    pub async fn optimize(&self, f: &JobScope, max_essential: usize) -> Result<serde_json::Value> {
        let now = self.clock.now();
        let (mut promoted, mut demoted) = (0u64, 0u64);
        let scopes = self.memory_scopes(f).await?;
        for scope in &scopes {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
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
            self.conscious_changed(scope.tenant_id, &scope.user_id, &scope.namespace)
                .await;
            promoted += promote.len() as u64;
            demoted += demote.len() as u64;
        }
        Ok(json!({ "scopes": scopes.len(), "promoted": promoted, "demoted": demoted }))
    }

    /// Decay: confidence × 0.5^(time since the last update, access or decay / `half_life`) for
    /// every current, unpinned memory. Memories that fall below `floor` leave recall and
    /// Conscious (an `update` version with basis `decay` records it). Returns
    /// `{decayed, below_floor}`.
    pub async fn decay(
        &self,
        f: &JobScope,
        half_life: Duration,
        floor: f32,
    ) -> Result<serde_json::Value> {
        let now = self.clock.now();
        let half_secs = half_life.as_secs_f64().max(1.0);
        let (mut decayed, mut below) = (0u64, 0u64);
        loop {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let rows: Vec<(Uuid, Uuid, String, String, f32, f32)> = sqlx::query_as(
                "WITH batch AS ( \
                   SELECT id, confidence AS before FROM memories \
                   WHERE status = 'active' AND NOT pinned \
                     AND (decayed_at IS NULL OR decayed_at < $1) \
                     AND ($2::uuid IS NULL OR tenant_id = $2) AND ($3::text IS NULL OR user_id = $3) \
                   ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE memories m SET decayed_at = $1, confidence = (m.confidence * power(0.5, \
                     GREATEST(0, extract(epoch FROM ($1 - GREATEST(m.updated_at, \
                       COALESCE(m.last_accessed_at, m.updated_at), COALESCE(m.decayed_at, m.updated_at))))) \
                     / $5))::real \
                 FROM batch WHERE m.id = batch.id \
                 RETURNING m.id, m.tenant_id, m.user_id, m.namespace, batch.before, m.confidence",
            )
            .bind(now)
            .bind(f.tenant_id)
            .bind(&f.user_id)
            .bind(BATCH)
            .bind(half_secs)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if rows.is_empty() {
                tx.commit().await.map_err(db_error)?;
                break;
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
            let scopes: Scopes = rows.into_iter().map(|r| (r.1, r.2, r.3)).collect();
            self.invalidate_all(&scopes).await;
        }
        Ok(json!({ "decayed": decayed, "below_floor": below }))
    }

    /// Retention: expires memories past `expires_at` and, per tenant policy, unpinned memories
    /// untouched for `memory_retention_days`; deletes episodes older than
    /// `episode_retention_days` (once extracted) with their traces. Returns
    /// `{expired, expired_by_policy, episodes_deleted}`.
    pub async fn retention(&self, f: &JobScope) -> Result<serde_json::Value> {
        let now = self.clock.now();
        let mut expired_due = 0;
        loop {
            let n = self.expire_due(BATCH).await?;
            expired_due += n;
            if n < BATCH as u64 {
                break;
            }
        }
        let mut by_policy = 0u64;
        loop {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
                "SELECT m.id, m.tenant_id, m.user_id, m.namespace FROM memories m \
                 JOIN tenants t ON t.id = m.tenant_id \
                 WHERE t.memory_retention_days > 0 AND m.status = 'active' AND NOT m.pinned \
                   AND GREATEST(m.updated_at, COALESCE(m.last_accessed_at, m.updated_at)) \
                       < $1 - make_interval(days => t.memory_retention_days) \
                   AND ($2::uuid IS NULL OR m.tenant_id = $2) AND ($3::text IS NULL OR m.user_id = $3) \
                 ORDER BY m.id LIMIT $4 FOR UPDATE OF m SKIP LOCKED",
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
            let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
            expire(
                &mut tx,
                &ids,
                now,
                "the tenant's memory retention period passed",
            )
            .await?;
            tx.commit().await.map_err(db_error)?;
            by_policy += ids.len() as u64;
            self.invalidate_all(&rows.into_iter().map(|r| (r.1, r.2, r.3)).collect())
                .await;
        }
        let mut episodes = 0u64;
        loop {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
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
            self.invalidate_all(&rows.into_iter().map(|r| (r.1, r.2, r.3)).collect())
                .await;
        }
        Ok(
            json!({ "expired": expired_due, "expired_by_policy": by_policy, "episodes_deleted": episodes }),
        )
    }

    /// Re-embed: memories and episodes whose vector is of another model (or, for memories,
    /// missing) get one from the configured embedder, in batches. Until a row is re-embedded,
    /// vector search skips it (vectors of two models are never compared) and full text still
    /// finds it. Returns `{memories, episodes}`.
    pub async fn reembed(&self, f: &JobScope) -> Result<serde_json::Value> {
        let Some(embedder) = self.embedder.clone() else {
            return Err(Error::FailedPrecondition(
                "re-embed needs an embedding model".into(),
            ));
        };
        let model = embedder.model_id().to_owned();
        let mut counts = [0u64; 2];
        for (i, table) in ["memories", "episodes"].into_iter().enumerate() {
            loop {
                let mut tx = self.pool.begin().await.map_err(db_error)?;
                let (text_sql, stale) = if table == "memories" {
                    (
                        "content, subject, slot",
                        "status IN ('active', 'superseded') AND embedding_model IS DISTINCT FROM $1",
                    )
                } else {
                    ("content, NULL::text, NULL::text", "embedding_model <> $1")
                };
                let sql = format!(
                    "SELECT id, tenant_id, user_id, namespace, {text_sql} FROM {table} \
                     WHERE {stale} AND ($2::uuid IS NULL OR tenant_id = $2) \
                       AND ($3::text IS NULL OR user_id = $3) \
                     ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED"
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
                )> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(&model)
                    .bind(f.tenant_id)
                    .bind(&f.user_id)
                    .bind(64i64)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?;
                if rows.is_empty() {
                    tx.commit().await.map_err(db_error)?;
                    break;
                }
                let texts: Vec<String> = rows
                    .iter()
                    .map(|r| memory_text(&r.4, r.5.as_deref(), r.6.as_deref()))
                    .collect();
                let Some((vectors, _)) = self.embed_texts(&texts).await? else {
                    return Err(Error::FailedPrecondition(
                        "re-embed needs an embedding model".into(),
                    ));
                };
                let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
                write_vectors(&mut tx, table, &ids, &vectors, &model).await?;
                tx.commit().await.map_err(db_error)?;
                counts[i] += rows.len() as u64;
                if table == "memories" {
                    self.invalidate_all(&rows.into_iter().map(|r| (r.1, r.2, r.3)).collect())
                        .await;
                }
            }
        }
        Ok(json!({ "memories": counts[0], "episodes": counts[1], "model": model }))
    }

    /// Reflect: each session with at least `min_turns` turns, quiet for `idle`, gets a summary
    /// memory (kind `summary`, slot `summary.session_<hash>`) with `summarizes` edges to the
    /// session's episodes: abstractive when a `summarizer` (an LLM) is given, else extractive
    /// (its most salient user turns, at most `max_turns`). A session whose current summary
    /// already covers its latest turn is left alone; new turns supersede the old summary. A
    /// model that fails leaves the session for the next run. Returns
    /// `{sessions, created, unchanged, failed}`.
    pub async fn reflect(
        &self,
        f: &JobScope,
        summarizer: Option<&dyn Summarizer>,
        min_turns: i64,
        max_turns: usize,
        idle: Duration,
        max_content_bytes: usize,
    ) -> Result<serde_json::Value> {
        let now = self.clock.now();
        let quiet_since = now - idle;
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (mut created, mut unchanged, mut failed) = (0u64, 0u64, 0u64);
        for (tenant_id, user_id, namespace, session) in &sessions {
            let slot = format!(
                "summary.session_{}",
                hex::encode(&Sha256::digest(session.as_bytes())[..6])
            );
            let turns: Vec<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
                "SELECT id, role, content, occurred_at FROM episodes WHERE tenant_id = $1 \
                 AND user_id = $2 AND namespace = $3 AND session_id = $4 ORDER BY occurred_at, seq",
            )
            .bind(tenant_id)
            .bind(user_id)
            .bind(namespace)
            .bind(session)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let Some(latest) = turns.last().map(|t| t.0) else {
                continue;
            };
            let covered: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM memories m JOIN edges e ON e.tenant_id = m.tenant_id \
                   AND e.src_id = m.id AND e.relation = 'summarizes' \
                 WHERE m.tenant_id = $1 AND m.user_id = $2 AND m.namespace = $3 AND m.slot = $4 \
                   AND m.status = 'active' AND e.dst_id = $5)",
            )
            .bind(tenant_id)
            .bind(user_id)
            .bind(namespace)
            .bind(&slot)
            .bind(latest)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
            if covered {
                unchanged += 1;
                continue;
            }
            let summary = match summarizer {
                Some(model) => {
                    match abstractive_summary(model, session, &turns, max_content_bytes).await {
                        Ok(s) => Some(s),
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(session_id = %session, error = %e, "summarizing a session failed; the next run retries");
                            continue;
                        }
                    }
                }
                None => extractive_summary(session, &turns, max_turns, max_content_bytes),
            };
            let Some(summary) = summary else {
                continue;
            };
            let scope = Scope {
                tenant_id: *tenant_id,
                user_id: user_id.clone(),
                namespace: namespace.clone(),
            };
            let result = self
                .teach(
                    Teach::Create {
                        scope,
                        memory: NewMemory {
                            kind: MemoryKind::Summary,
                            content: summary.content,
                            slot: Some(slot),
                            subject: None,
                            tags: vec!["session-summary".into()],
                            importance: 0.6,
                            confidence: 0.9,
                            pinned: false,
                            expires_at: None,
                            source_episode_ids: summary.sources,
                        },
                        force_create: false,
                        reason: Some(format!("summary of session {session}")),
                        basis: Basis::Reflect,
                    },
                    "job:reflect",
                )
                .await?;
            if result.outcome == WriteOutcome::Duplicate {
                unchanged += 1;
                continue;
            }
            created += 1;
            let episode_ids: Vec<Uuid> = turns.iter().map(|t| t.0).collect();
            sqlx::query(
                "INSERT INTO edges (tenant_id, src_type, src_id, relation, dst_type, dst_id, created_at) \
                 SELECT $1, 'memory', $2, 'summarizes', 'episode', e, $4 FROM unnest($3::uuid[]) AS e \
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant_id)
            .bind(result.memory.id)
            .bind(&episode_ids)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        }
        Ok(
            json!({ "sessions": sessions.len(), "created": created, "unchanged": unchanged, "failed": failed }),
        )
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
        .execute(&self.pool)
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
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}

/// A session's extractive summary.
struct Summary {
    content: String,
    sources: Vec<Uuid>,
}

/// A model's summary of the whole session; its sources are the user's turns.
async fn abstractive_summary(
    model: &dyn Summarizer,
    session: &str,
    turns: &[(Uuid, String, String, DateTime<Utc>)],
    max_bytes: usize,
) -> std::result::Result<Summary, memoire_core::extract::ExtractError> {
    let said: Vec<Turn> = turns
        .iter()
        .map(|t| Turn {
            role: MessageRole::parse(&t.1).unwrap_or(MessageRole::User),
            name: None,
            content: t.2.clone(),
        })
        .collect();
    let text = model.summarize(&said).await?;
    let date = turns
        .first()
        .map(|t| t.3.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let mut content = format!("Session {session} ({date}): {text}");
    if content.len() > max_bytes {
        let mut end = max_bytes;
        while !content.is_char_boundary(end) {
            end -= 1;
        }
        content.truncate(end);
    }
    let sources = turns
        .iter()
        .filter(|t| t.1 == "user")
        .map(|t| t.0)
        .take(64)
        .collect();
    Ok(Summary { content, sources })
}

/// How much a user turn says about the user: statements the rule extractor recognises weigh
/// most, then names and numbers (capitalised words not at the start, digits), then length.
fn salience(text: &str) -> f32 {
    let statements = RuleExtractor.extract(text).len() as f32;
    let words: Vec<&str> = text.split_whitespace().collect();
    let names = words
        .iter()
        .skip(1)
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .count() as f32;
    let digits = text.chars().any(|c| c.is_ascii_digit()) as u8 as f32;
    let body = (significant_words(text).len().min(12) as f32) / 12.0;
    5.0 * statements + 0.5 * names.min(4.0) + 0.5 * digits + body
}

fn extractive_summary(
    session: &str,
    turns: &[(Uuid, String, String, DateTime<Utc>)],
    max_turns: usize,
    max_bytes: usize,
) -> Option<Summary> {
    let mut scored: Vec<(f32, usize)> = turns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.1 == "user")
        .map(|(i, t)| (salience(&t.2), i))
        .filter(|(s, _)| *s >= 5.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = scored.into_iter().take(max_turns).map(|(_, i)| i).collect();
    chosen.sort();
    if chosen.is_empty() {
        return None;
    }
    let date = turns.first().map(|t| t.3.format("%Y-%m-%d").to_string())?;
    let mut content = format!("Session {session} ({date}), what the user said:");
    let mut sources = Vec::new();
    for i in chosen {
        let said = turns[i].2.split_whitespace().collect::<Vec<_>>().join(" ");
        if content.len() + said.len() + 3 > max_bytes {
            break;
        }
        content.push_str(if sources.is_empty() { " " } else { " | " });
        content.push_str(&said);
        sources.push(turns[i].0);
    }
    (!sources.is_empty()).then_some(Summary { content, sources })
}
