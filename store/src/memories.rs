//! Memories: Teach through the resolver, corrections, Forget, reads and history.
//!
//! Every write runs in one transaction that first takes an advisory lock on the user+namespace,
//! so that writes to one user's memories are serialized (the resolver's read-then-write is safe,
//! and per-user order is the order of commits), while different users proceed in parallel.

use chrono::{DateTime, Utc};
use memoire_core::command::{
    Forget, ForgetResult, ForgetSelector, ForgetTarget, ListCursor, ListMemories, MemoryPatch,
    NewMemory, TeachResult,
};
use memoire_core::conscious::essential_when_written;
use memoire_core::embed::{Embedding, memory_text};
use memoire_core::model::{
    Basis, ForgetMode, Memory, MemoryStatus, MemoryVersion, Scope, VersionOp, WriteOutcome,
};
use memoire_core::resolve::{self, Candidate, Decision};
use memoire_core::validate::content_key;
use memoire_core::{Error, Result};
use pgvector::Vector;
use serde_json::json;
use sqlx::AssertSqlSafe;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::rows::{MEMORY_COLUMNS, MemoryRow, VERSION_COLUMNS, VersionRow, convert_all};
use crate::vectors::Held;
use crate::{PgStore, Rows, db_error};

/// The reason of an `expire` version when `expires_at` passed.
const EXPIRY_PASSED: &str = "expiry time passed";

/// Statuses visible in the current view, and with superseded memories included.
const CURRENT: &[&str] = &["active"];
const CURRENT_AND_SUPERSEDED: &[&str] = &["active", "superseded"];

pub(crate) async fn lock_user(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    user_id: &str,
    namespace: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{tenant_id}/{user_id}/{namespace}"))
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Appends, for each of `ids`, the version row that records the memory's current state (after
/// the write). One statement however many memories.
pub(crate) async fn record_versions(
    conn: &mut PgConnection,
    ids: &[Uuid],
    op: VersionOp,
    basis: Basis,
    score: Option<f32>,
    reason: &str,
    actor: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO memory_versions (tenant_id, memory_id, version, op, basis, score, reason, actor, \
           created_at, kind, content, slot, subject, tags, importance, confidence, pinned, expires_at, \
           status, superseded_by) \
         SELECT tenant_id, id, version, $2, $3, $4, $5, $6, updated_at, kind, content, slot, subject, \
           tags, importance, confidence, pinned, expires_at, status, superseded_by \
         FROM memories WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(op.as_str())
    .bind(basis.as_str())
    .bind(score)
    .bind(reason)
    .bind(actor)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn audit(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    actor: &str,
    action: &str,
    target: Option<Uuid>,
    detail: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, actor, action, target_id, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant_id)
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .bind(now)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn fetch_memory(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    id: Uuid,
    for_update: bool,
) -> Result<Option<Memory>> {
    let sql = format!(
        "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND id = $2{}",
        if for_update { " FOR UPDATE" } else { "" }
    );
    let row: Option<MemoryRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(db_error)?;
    row.map(Memory::try_from).transpose()
}

/// The resolver's "identical" memory: the scope's oldest current memory with content key `key`
/// and slot `slot`, unexpired at `now`, as `columns` (read into `T`). Its rows come from the
/// content index first, in a fenced subquery, and are ordered after: without planner statistics
/// (a young database, autovacuum off) `ORDER BY created_at LIMIT 1` was planned as a walk of the
/// whole scope in creation order — 5 ms per Teach at 10k memories.
pub(crate) async fn identical<T>(
    conn: &mut PgConnection,
    columns: &str,
    scope: &Scope,
    key: &str,
    slot: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let sql = format!(
        "SELECT {columns} FROM (SELECT * FROM memories WHERE tenant_id = $1 AND user_id = $2 \
         AND namespace = $3 AND content_key = $4 AND status = 'active' \
         AND slot IS NOT DISTINCT FROM $5 AND (expires_at IS NULL OR expires_at > $6) OFFSET 0) m \
         ORDER BY created_at, id LIMIT 1"
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(scope.tenant_id)
        .bind(&scope.user_id)
        .bind(&scope.namespace)
        .bind(key)
        .bind(slot)
        .bind(now)
        .fetch_optional(conn)
        .await
        .map_err(db_error)
}

/// The current memory holding `slot` in the scope, locked.
pub(crate) async fn slot_holder(
    conn: &mut PgConnection,
    scope: &Scope,
    slot: &str,
    except: Option<Uuid>,
) -> Result<Option<MemoryRow>> {
    let sql = format!(
        "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND user_id = $2 \
         AND namespace = $3 AND slot = $4 AND status = 'active' AND ($5::uuid IS NULL OR id <> $5) FOR UPDATE"
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(scope.tenant_id)
        .bind(&scope.user_id)
        .bind(&scope.namespace)
        .bind(slot)
        .bind(except)
        .fetch_optional(conn)
        .await
        .map_err(db_error)
}

/// Marks `old` superseded by `new_id` and records the version.
pub(crate) async fn supersede(
    conn: &mut PgConnection,
    old: Uuid,
    new_id: Uuid,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE memories SET status = 'superseded', superseded_by = $2, version = version + 1, \
         updated_at = $3 WHERE id = $1",
    )
    .bind(old)
    .bind(new_id)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    record_versions(
        conn,
        &[old],
        VersionOp::Supersede,
        Basis::Resolver,
        Some(1.0),
        reason,
        actor,
    )
    .await
}

/// Marks active memories whose expiry has passed as expired and records their versions.
pub(crate) async fn expire(
    conn: &mut PgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
    reason: &str,
) -> Result<()> {
    sqlx::query("UPDATE memories SET status = 'expired', version = version + 1, updated_at = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    record_versions(
        conn,
        ids,
        VersionOp::Expire,
        Basis::Retention,
        None,
        reason,
        "system",
    )
    .await
}

/// A memory row to insert.
pub(crate) struct NewRow<'a> {
    pub id: Uuid,
    pub scope: &'a Scope,
    pub memory: &'a NewMemory,
    pub content_key: &'a str,
    pub vector: Option<&'a Vector>,
    pub model: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Inserts a new memory (version 1), its `create` version, and its derived-from edges.
pub(crate) async fn insert_memory(
    conn: &mut PgConnection,
    row: NewRow<'_>,
    basis: Basis,
    reason: &str,
    actor: &str,
) -> Result<()> {
    let NewRow {
        id,
        scope,
        memory: new,
        content_key,
        vector,
        model,
        now,
    } = row;
    sqlx::query(
        "INSERT INTO memories (id, tenant_id, user_id, namespace, kind, content, content_key, slot, \
           subject, tags, importance, confidence, pinned, expires_at, version, created_at, updated_at, \
           source_episode_ids, embedding, embedding_model, essential) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, $15, $15, $16, $17, $18, $19)",
    )
    .bind(id)
    .bind(scope.tenant_id)
    .bind(&scope.user_id)
    .bind(&scope.namespace)
    .bind(new.kind.as_str())
    .bind(&new.content)
    .bind(content_key)
    .bind(&new.slot)
    .bind(&new.subject)
    .bind(&new.tags)
    .bind(new.importance)
    .bind(new.confidence)
    .bind(new.pinned)
    .bind(new.expires_at)
    .bind(now)
    .bind(&new.source_episode_ids)
    .bind(vector)
    .bind(model)
    .bind(essential_when_written(
        new.kind,
        new.slot.as_deref(),
        new.importance,
        new.pinned,
    ))
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    record_versions(conn, &[id], VersionOp::Create, basis, None, reason, actor).await?;
    derived_from_edges(conn, scope.tenant_id, id, &new.source_episode_ids, now).await
}

/// Edges from a memory to the episodes it was derived from.
pub(crate) async fn derived_from_edges(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    memory_id: Uuid,
    episodes: &[Uuid],
    now: DateTime<Utc>,
) -> Result<()> {
    if episodes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO edges (tenant_id, src_type, src_id, relation, dst_type, dst_id, created_at) \
         SELECT $1, 'memory', $2, 'derived_from', 'episode', e, $4 FROM unnest($3::uuid[]) AS e \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant_id)
    .bind(memory_id)
    .bind(episodes)
    .bind(now)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Deletes episodes with every trace of them: their edges, audit rows, and the provenance of
/// surviving memories that pointed at them. Returns (episodes, edges) deleted.
pub(crate) async fn delete_episodes(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<(u64, u64)> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let edges = sqlx::query(
        "DELETE FROM edges WHERE tenant_id = $1 AND (src_id = ANY($2) OR dst_id = ANY($2))",
    )
    .bind(tenant_id)
    .bind(ids)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?
    .rows_affected();
    sqlx::query("DELETE FROM audit_log WHERE tenant_id = $1 AND target_id = ANY($2)")
        .bind(tenant_id)
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    let episodes = sqlx::query("DELETE FROM episodes WHERE tenant_id = $1 AND id = ANY($2)")
        .bind(tenant_id)
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    // Surviving memories must not point at erased episodes.
    sqlx::query(
        "UPDATE memories SET source_episode_ids = \
           ARRAY(SELECT unnest(source_episode_ids) EXCEPT SELECT unnest($2::uuid[])) \
         WHERE tenant_id = $1 AND source_episode_ids && $2",
    )
    .bind(tenant_id)
    .bind(ids)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok((episodes, edges))
}

/// The edge recording that `new` superseded `old`.
pub(crate) async fn supersedes_edge(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    new: Uuid,
    old: Uuid,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO edges (tenant_id, src_type, src_id, relation, dst_type, dst_id, created_at) \
         VALUES ($1, 'memory', $2, 'supersedes', 'memory', $3, $4)",
    )
    .bind(tenant_id)
    .bind(new)
    .bind(old)
    .bind(now)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// What a correction came to.
#[derive(Debug)]
pub enum Correction {
    /// Written (or nothing to change).
    Done(Box<TeachResult>),
    /// The corrected text needs a vector: embed it and call again. Nothing was written.
    Embed(String),
}

impl PgStore {
    /// Teach's write of a new memory, through the resolver: `embedding` is the vector of its
    /// `memory_text` (none without an embedding model).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_memory(
        &self,
        scope: Scope,
        new: NewMemory,
        force_create: bool,
        note: Option<String>,
        basis: Basis,
        actor: &str,
        embedding: Option<Embedding>,
    ) -> Result<TeachResult> {
        let now = self.clock.now();
        let key = content_key(&new.content);
        let (vector, model) = embedding.map(|e| (Vector::from(e.vector), e.model)).unzip();
        let mut tx = self.begin(scope.tenant_id).await?;
        lock_user(&mut tx, scope.tenant_id, &scope.user_id, &scope.namespace).await?;

        let mut holder = None;
        if let Some(slot) = &new.slot
            && let Some(row) = slot_holder(&mut tx, &scope, slot, None).await?
        {
            if row.expires_at.is_some_and(|t| t <= now) {
                expire(&mut tx, &[row.id], now, EXPIRY_PASSED).await?;
            } else {
                holder = Some(Candidate {
                    id: row.id,
                    content_key: row.content_key,
                });
            }
        }
        let identical: Option<(Uuid, String)> = identical(
            &mut tx,
            "id, content_key",
            &scope,
            &key,
            new.slot.as_deref(),
            now,
        )
        .await?;
        let identical = identical.map(|(id, content_key)| Candidate { id, content_key });

        let decision = resolve::decide(
            &key,
            new.slot.as_deref(),
            holder.as_ref(),
            identical.as_ref(),
            force_create,
        );
        let (outcome, superseded, reason) = match decision {
            Decision::Duplicate {
                of,
                basis,
                score,
                reason,
            } => {
                let memory = fetch_memory(&mut tx, scope.tenant_id, of, false)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("duplicate {of} vanished")))?;
                audit(
                    &mut tx,
                    scope.tenant_id,
                    actor,
                    "teach.duplicate",
                    Some(of),
                    json!({ "basis": basis.as_str(), "score": score, "reason": reason }),
                    now,
                )
                .await?;
                tx.commit().await.map_err(db_error)?;
                return Ok(TeachResult {
                    outcome: WriteOutcome::Duplicate,
                    memory,
                    superseded: None,
                    duplicate_of: Some(of),
                    basis,
                    score: Some(score),
                    reason,
                });
            }
            Decision::Supersede { old, reason } => (WriteOutcome::Superseded, Some(old), reason),
            Decision::Create { reason } => (WriteOutcome::Created, None, reason),
        };

        let id = Uuid::now_v7();
        if let Some(old) = superseded {
            supersede(&mut tx, old, id, &format!("superseded by {id}"), actor, now).await?;
        }
        let history_reason = note.clone().unwrap_or_else(|| reason.clone());
        insert_memory(
            &mut tx,
            NewRow {
                id,
                scope: &scope,
                memory: &new,
                content_key: &key,
                vector: vector.as_ref(),
                model: model.as_deref(),
                now,
            },
            basis,
            &history_reason,
            actor,
        )
        .await?;
        if let Some(old) = superseded {
            supersedes_edge(&mut tx, scope.tenant_id, id, old, now).await?;
        }
        let action = match outcome {
            WriteOutcome::Superseded => "teach.supersede",
            _ => "teach.create",
        };
        audit(
            &mut tx,
            scope.tenant_id,
            actor,
            action,
            Some(id),
            json!({ "basis": basis.as_str(), "reason": reason, "superseded": superseded }),
            now,
        )
        .await?;
        let memory = fetch_memory(&mut tx, scope.tenant_id, id, false)
            .await?
            .ok_or_else(|| Error::Internal("new memory vanished".into()))?;
        tx.commit().await.map_err(db_error)?;
        Ok(TeachResult {
            outcome,
            memory,
            superseded,
            duplicate_of: None,
            basis: if superseded.is_some() {
                Basis::Resolver
            } else {
                basis
            },
            score: superseded.map(|_| 1.0),
            reason,
        })
    }

    /// Teach's correction of a memory: a new version with `patch` applied. `model` is the
    /// configured embedding model; when the embedded text changes (or the stored vector is of
    /// another model) `embedding` must be the vector of the corrected `memory_text`, else nothing
    /// is written and the text to embed comes back ([`Correction::Embed`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn correct_memory(
        &self,
        scope: Scope,
        memory_id: Uuid,
        patch: MemoryPatch,
        note: Option<String>,
        actor: &str,
        model: Option<&str>,
        embedding: Option<&(String, Embedding)>,
    ) -> Result<Correction> {
        let now = self.clock.now();
        let not_found = || Error::NotFound {
            what: "memory",
            id: memory_id.to_string(),
        };
        let mut tx = self.begin(scope.tenant_id).await?;
        // Read without a lock to learn the memory's namespace, lock its user+namespace, then re-read locked.
        let current = fetch_memory(&mut tx, scope.tenant_id, memory_id, false)
            .await?
            .ok_or_else(not_found)?;
        lock_user(
            &mut tx,
            scope.tenant_id,
            &current.user_id,
            &current.namespace,
        )
        .await?;
        let current = fetch_memory(&mut tx, scope.tenant_id, memory_id, true)
            .await?
            .ok_or_else(not_found)?;
        let expired = current.expires_at.is_some_and(|t| t <= now);
        match current.status {
            MemoryStatus::Tombstoned | MemoryStatus::Expired => return Err(not_found()),
            MemoryStatus::Active if expired => return Err(not_found()),
            MemoryStatus::Superseded => {
                return Err(Error::FailedPrecondition(format!(
                    "memory {memory_id} is superseded by {}; correct the current memory instead",
                    current
                        .superseded_by
                        .map(|u| u.to_string())
                        .unwrap_or_else(|| "another memory".into())
                )));
            }
            MemoryStatus::Active => {}
        }
        if current.user_id != scope.user_id {
            return Err(Error::invalid(
                "user_id",
                format!("memory {memory_id} belongs to another user"),
            ));
        }
        if current.namespace != scope.namespace {
            return Err(Error::invalid(
                "namespace",
                format!(
                    "memory {memory_id} lives in namespace '{}'",
                    current.namespace
                ),
            ));
        }

        let next = Memory {
            kind: patch.kind.unwrap_or(current.kind),
            content: patch
                .content
                .clone()
                .unwrap_or_else(|| current.content.clone()),
            slot: patch.slot.clone().or_else(|| current.slot.clone()),
            subject: patch.subject.clone().or_else(|| current.subject.clone()),
            tags: patch.tags.clone().unwrap_or_else(|| current.tags.clone()),
            importance: patch.importance.unwrap_or(current.importance),
            confidence: patch.confidence.unwrap_or(current.confidence),
            pinned: patch.pinned.unwrap_or(current.pinned),
            expires_at: patch.expires_at.or(current.expires_at),
            ..current.clone()
        };
        if next == current {
            tx.commit().await.map_err(db_error)?;
            return Ok(Correction::Done(Box::new(TeachResult {
                outcome: WriteOutcome::Duplicate,
                duplicate_of: Some(memory_id),
                memory: current,
                superseded: None,
                basis: Basis::Correction,
                score: Some(1.0),
                reason: "the correction changes nothing".into(),
            })));
        }

        // A correction that moves the memory into a slot another current memory holds supersedes it.
        let mut superseded = None;
        if let Some(slot) = next
            .slot
            .as_deref()
            .filter(|s| current.slot.as_deref() != Some(*s))
            && let Some(other) = slot_holder(&mut tx, &scope, slot, Some(memory_id)).await?
        {
            supersede(
                &mut tx,
                other.id,
                memory_id,
                &format!("slot {slot} taken by corrected memory {memory_id}"),
                actor,
                now,
            )
            .await?;
            superseded = Some(other.id);
        }
        // Re-embed when the embedded text changed, or the vector is of another model.
        let text_of = |m: &Memory| memory_text(&m.content, m.subject.as_deref(), m.slot.as_deref());
        let text_changed = text_of(&next) != text_of(&current);
        let stale_model = model != current.embedding_model.as_deref();
        let embedding = if model.is_some() && (text_changed || stale_model) {
            let text = text_of(&next);
            match embedding {
                Some((embedded, e)) if *embedded == text => Some(e.clone()),
                // Nothing written yet: the caller embeds this text and calls again.
                _ => return Ok(Correction::Embed(text)),
            }
        } else {
            None
        };
        let replace_embedding = text_changed || embedding.is_some();
        let (vector, model) = embedding.map(|e| (Vector::from(e.vector), e.model)).unzip();
        sqlx::query(
            "UPDATE memories SET kind = $2, content = $3, content_key = $4, slot = $5, subject = $6, tags = $7, \
               importance = $8, confidence = $9, pinned = $10, expires_at = $11, version = version + 1, \
               updated_at = $12, \
               embedding = CASE WHEN $13 THEN $14 ELSE embedding END, \
               embedding_model = CASE WHEN $13 THEN $15 ELSE embedding_model END, \
               essential = essential OR $16 \
             WHERE id = $1",
        )
        .bind(memory_id)
        .bind(next.kind.as_str())
        .bind(&next.content)
        .bind(content_key(&next.content))
        .bind(&next.slot)
        .bind(&next.subject)
        .bind(&next.tags)
        .bind(next.importance)
        .bind(next.confidence)
        .bind(next.pinned)
        .bind(next.expires_at)
        .bind(now)
        .bind(replace_embedding)
        .bind(&vector)
        .bind(&model)
        .bind(essential_when_written(
            next.kind,
            next.slot.as_deref(),
            next.importance,
            next.pinned,
        ))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let reason = note.unwrap_or_else(|| "corrected by the client".into());
        record_versions(
            &mut tx,
            &[memory_id],
            VersionOp::Correct,
            Basis::Correction,
            None,
            &reason,
            actor,
        )
        .await?;
        audit(
            &mut tx,
            scope.tenant_id,
            actor,
            "teach.correct",
            Some(memory_id),
            json!({ "superseded": superseded }),
            now,
        )
        .await?;
        let memory = fetch_memory(&mut tx, scope.tenant_id, memory_id, false)
            .await?
            .ok_or_else(not_found)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Correction::Done(Box::new(TeachResult {
            outcome: WriteOutcome::Corrected,
            memory,
            superseded,
            duplicate_of: None,
            basis: Basis::Correction,
            score: None,
            reason,
        })))
    }

    /// Forget: tombstone or purge, by ids or selector; `dry_run` reports without writing.
    /// Returns what was forgotten and the users+namespaces it touched.
    pub async fn forget(&self, cmd: Forget, actor: &str) -> Result<(ForgetResult, Vec<Scope>)> {
        let now = self.clock.now();
        let tenant = cmd.tenant_id;
        let mut tx = self.begin(tenant).await?;
        // Tombstoning only touches what is still visible; purge erases whatever state it is in.
        let statuses: &[&str] = match cmd.mode {
            ForgetMode::Tombstone => CURRENT_AND_SUPERSEDED,
            ForgetMode::Purge => &["active", "superseded", "tombstoned", "expired"],
        };
        let mut result = ForgetResult::default();
        let ids: Vec<Uuid> = match &cmd.target {
            ForgetTarget::Ids(requested) => {
                let found: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM memories WHERE tenant_id = $1 AND id = ANY($2) AND status = ANY($3) \
                     ORDER BY id FOR UPDATE",
                )
                .bind(tenant)
                .bind(requested)
                .bind(statuses)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
                result.not_found_ids = requested
                    .iter()
                    .filter(|id| !found.contains(id))
                    .copied()
                    .collect();
                found
            }
            ForgetTarget::Selector(sel) => {
                // The same per-namespace locks every write takes, in a fixed order (no
                // deadlock between two forgets): all of the user's namespaces when none is named.
                let namespaces: Vec<String> = match &sel.namespace {
                    Some(ns) => vec![ns.clone()],
                    None => sqlx::query_scalar(
                        "SELECT namespace FROM memories WHERE tenant_id = $1 AND user_id = $2 \
                         UNION SELECT namespace FROM episodes WHERE tenant_id = $1 AND user_id = $2 \
                         ORDER BY 1",
                    )
                    .bind(tenant)
                    .bind(&sel.user_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?,
                };
                for ns in &namespaces {
                    lock_user(&mut tx, tenant, &sel.user_id, ns).await?;
                }
                let mut q = QueryBuilder::<Postgres>::new("SELECT id FROM memories WHERE ");
                push_selector(&mut q, tenant, sel);
                q.push(" AND status = ANY(")
                    .push_bind(statuses)
                    .push(") ORDER BY id FOR UPDATE");
                q.build_query_scalar()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?
            }
        };
        // The working memories this changes: the forgotten memories' scopes, and for a selector
        // the user's namespaces (a purge also takes their episodes).
        let mut touched: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT user_id, namespace FROM memories WHERE tenant_id = $1 AND id = ANY($2)",
        )
        .bind(tenant)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if let ForgetTarget::Selector(sel) = &cmd.target {
            let namespaces: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT namespace FROM episodes WHERE tenant_id = $1 AND user_id = $2 \
                 AND ($3::text IS NULL OR namespace = $3)",
            )
            .bind(tenant)
            .bind(&sel.user_id)
            .bind(&sel.namespace)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            touched.extend(namespaces.into_iter().map(|ns| (sel.user_id.clone(), ns)));
        }
        touched.sort();
        touched.dedup();
        result.memories = ids.len() as u64;
        result.memory_ids_truncated = ids.len() > ForgetResult::MAX_IDS;
        result.memory_ids = ids.iter().take(ForgetResult::MAX_IDS).copied().collect();

        // Episodes go only with a purge whose selector describes a conversation scope (user,
        // namespace, session, time) rather than particular memories (slot, kind).
        let episode_selector = match (&cmd.target, cmd.mode) {
            (ForgetTarget::Selector(sel), ForgetMode::Purge)
                if sel.slot.is_none() && sel.kind.is_none() =>
            {
                Some(sel)
            }
            _ => None,
        };

        match (cmd.mode, cmd.dry_run) {
            (ForgetMode::Tombstone, true) => {}
            (ForgetMode::Tombstone, false) => {
                let reason = cmd.reason.clone().unwrap_or_else(|| "forgotten".into());
                sqlx::query("UPDATE memories SET status = 'tombstoned', version = version + 1, updated_at = $2 WHERE id = ANY($1)")
                    .bind(&ids)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                record_versions(
                    &mut tx,
                    &ids,
                    VersionOp::Tombstone,
                    Basis::Forget,
                    None,
                    &reason,
                    actor,
                )
                .await?;
            }
            (ForgetMode::Purge, dry_run) => {
                let episode_ids: Vec<Uuid> = match episode_selector {
                    Some(sel) => {
                        let mut q = QueryBuilder::<Postgres>::new(
                            "SELECT id FROM episodes WHERE tenant_id = ",
                        );
                        q.push_bind(tenant)
                            .push(" AND user_id = ")
                            .push_bind(&sel.user_id);
                        if let Some(ns) = &sel.namespace {
                            q.push(" AND namespace = ").push_bind(ns);
                        }
                        if let Some(session) = &sel.session_id {
                            q.push(" AND session_id = ").push_bind(session);
                        }
                        if let Some(before) = sel.before {
                            q.push(" AND created_at < ").push_bind(before);
                        }
                        q.push(" FOR UPDATE");
                        q.build_query_scalar()
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(db_error)?
                    }
                    None => Vec::new(),
                };
                if dry_run {
                    let (versions, edges): (i64, i64) = sqlx::query_as(
                        "SELECT (SELECT count(*) FROM memory_versions WHERE tenant_id = $1 AND memory_id = ANY($2)), \
                                (SELECT count(*) FROM edges WHERE tenant_id = $1 \
                                   AND (src_id = ANY($2) OR dst_id = ANY($2) OR src_id = ANY($3) OR dst_id = ANY($3)))",
                    )
                    .bind(tenant)
                    .bind(&ids)
                    .bind(&episode_ids)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    result.versions = versions as u64;
                    result.edges = edges as u64;
                    result.episodes = episode_ids.len() as u64;
                } else {
                    result.edges = sqlx::query(
                        "DELETE FROM edges WHERE tenant_id = $1 AND (src_id = ANY($2) OR dst_id = ANY($2))",
                    )
                    .bind(tenant)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .rows_affected();
                    sqlx::query(
                        "DELETE FROM audit_log WHERE tenant_id = $1 AND target_id = ANY($2)",
                    )
                    .bind(tenant)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    result.versions = sqlx::query(
                        "DELETE FROM memory_versions WHERE tenant_id = $1 AND memory_id = ANY($2)",
                    )
                    .bind(tenant)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .rows_affected();
                    sqlx::query("DELETE FROM memories WHERE tenant_id = $1 AND id = ANY($2)")
                        .bind(tenant)
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    let (episodes, edges) = delete_episodes(&mut tx, tenant, &episode_ids).await?;
                    result.episodes = episodes;
                    result.edges += edges;
                }
            }
        }
        if !cmd.dry_run {
            // The audit row of a purge holds counts only: the ids and content are gone.
            let detail = match cmd.mode {
                ForgetMode::Tombstone => {
                    json!({ "mode": "tombstone", "memories": result.memories, "ids": result.memory_ids })
                }
                ForgetMode::Purge => {
                    json!({ "mode": "purge", "memories": result.memories, "versions": result.versions, "episodes": result.episodes, "edges": result.edges })
                }
            };
            audit(&mut tx, tenant, actor, "forget", None, detail, now).await?;
        }
        tx.commit().await.map_err(db_error)?;
        let touched = if cmd.dry_run {
            Vec::new()
        } else {
            touched
                .into_iter()
                .map(|(user_id, namespace)| Scope {
                    tenant_id: tenant,
                    user_id,
                    namespace,
                })
                .collect()
        };
        Ok((result, touched))
    }

    /// One memory of the tenant: current or superseded, not forgotten or expired.
    pub async fn get_memory(&self, tenant_id: Uuid, id: Uuid) -> Result<Memory> {
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND id = $2 \
             AND status = ANY($3) AND (expires_at IS NULL OR expires_at > $4)"
        );
        let row: Option<MemoryRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(id)
            .bind(CURRENT_AND_SUPERSEDED)
            .bind(self.clock.now())
            .fetch_optional(&mut *self.read_conn(tenant_id).await?)
            .await
            .map_err(db_error)?;
        row.ok_or_else(|| Error::NotFound {
            what: "memory",
            id: id.to_string(),
        })?
        .try_into()
    }

    /// A page of memories, newest first, and the cursor of the next page.
    pub async fn list_memories(
        &self,
        q: &ListMemories,
    ) -> Result<(Vec<Memory>, Option<ListCursor>)> {
        let mut b = QueryBuilder::<Postgres>::new(format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = "
        ));
        b.push_bind(q.tenant_id)
            .push(" AND user_id = ")
            .push_bind(&q.user_id)
            .push(" AND namespace = ANY(")
            .push_bind(&q.namespaces)
            .push(") AND status = ANY(")
            .push_bind(if q.include_superseded {
                CURRENT_AND_SUPERSEDED
            } else {
                CURRENT
            })
            .push(") AND (expires_at IS NULL OR expires_at > ")
            .push_bind(self.clock.now())
            .push(")");
        if !q.kinds.is_empty() {
            let kinds: Vec<&str> = q.kinds.iter().map(|k| k.as_str()).collect();
            b.push(" AND kind = ANY(").push_bind(kinds).push(")");
        }
        if !q.tags.is_empty() {
            b.push(" AND tags @> ").push_bind(&q.tags);
        }
        if let Some(slot) = &q.slot {
            b.push(" AND slot = ").push_bind(slot);
        }
        if let Some(t) = q.created_after {
            b.push(" AND created_at >= ").push_bind(t);
        }
        if let Some(t) = q.created_before {
            b.push(" AND created_at < ").push_bind(t);
        }
        if let Some(c) = q.after {
            b.push(" AND (created_at, id) < (")
                .push_bind(c.created_at)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        b.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(q.page_size as i64 + 1);
        let rows: Vec<MemoryRow> = b
            .build_query_as()
            .fetch_all(&mut *self.read_conn(q.tenant_id).await?)
            .await
            .map_err(db_error)?;
        let mut memories: Vec<Memory> = convert_all(rows)?;
        let next = if memories.len() > q.page_size {
            memories.truncate(q.page_size);
            memories.last().map(|m| ListCursor {
                created_at: m.created_at,
                id: m.id,
            })
        } else {
            None
        };
        Ok((memories, next))
    }

    /// Every version of a memory of the tenant, oldest first.
    pub async fn history(&self, tenant_id: Uuid, memory_id: Uuid) -> Result<Vec<MemoryVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM memory_versions WHERE tenant_id = $1 AND memory_id = $2 ORDER BY version"
        );
        let rows: Vec<VersionRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(memory_id)
            .fetch_all(&mut *self.read_conn(tenant_id).await?)
            .await
            .map_err(db_error)?;
        if rows.is_empty() {
            return Err(Error::NotFound {
                what: "memory",
                id: memory_id.to_string(),
            });
        }
        convert_all(rows)
    }

    /// Marks up to `batch` active memories whose expiry has passed as expired (with a version
    /// each). Returns how many; call again until it returns 0. Concurrent callers skip each
    /// other's rows, and rows of a scope a writer holds (`vectors::busy_rows`).
    pub async fn expire_due(&self, batch: i64) -> Result<u64> {
        let now = self.clock.now();
        let mut tx = self.begin(Rows::All).await?;
        let held: Vec<Held> = sqlx::query_as(
            "SELECT id, tenant_id, user_id, namespace FROM memories \
             WHERE status = 'active' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        // Rows of scopes busy with a writer wait for the next sweep (a busy batch counts 0).
        let busy = crate::vectors::busy_rows(&mut tx, &held).await?;
        let ids: Vec<Uuid> = held
            .iter()
            .map(|r| r.0)
            .filter(|id| !busy.contains(id))
            .collect();
        expire(&mut tx, &ids, now, EXPIRY_PASSED).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(ids.len() as u64)
    }
}

fn push_selector(q: &mut QueryBuilder<Postgres>, tenant: Uuid, sel: &ForgetSelector) {
    q.push("tenant_id = ")
        .push_bind(tenant)
        .push(" AND user_id = ")
        .push_bind(&sel.user_id);
    if let Some(ns) = &sel.namespace {
        q.push(" AND namespace = ").push_bind(ns);
    }
    if let Some(slot) = &sel.slot {
        q.push(" AND slot = ").push_bind(slot);
    }
    if let Some(kind) = sel.kind {
        q.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(before) = sel.before {
        q.push(" AND created_at < ").push_bind(before);
    }
    if let Some(session) = &sel.session_id {
        q.push(" AND source_episode_ids && ARRAY(SELECT id FROM episodes WHERE tenant_id = ")
            .push_bind(tenant)
            .push(" AND user_id = ")
            .push_bind(&sel.user_id)
            .push(" AND session_id = ")
            .push_bind(session)
            .push(")");
    }
}
