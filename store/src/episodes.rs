//! Episodes: Ingest, and the worker's side of the durable queue the episodes table forms.
//!
//! Ingest is one statement: it scrubs PII by the tenant's policy and inserts the batch, skipping
//! messages whose `message_id` is already stored; a statement trigger notifies workers. When the
//! statement returns, the messages are durable — and queued, because "queued" is a property of
//! the rows (`extracted_at IS NULL`), not a second write that could be lost.
//!
//! The worker claims one user+namespace at a time with a transaction-scoped advisory lock (so
//! two workers never resolve one user's episodes out of order, and a crashed worker's claim ends
//! with its connection), extracts each pending episode in order, and applies the result in one
//! transaction that also marks the episode extracted: a replay finds it done and writes nothing.
//!
//! Embedding claims episodes without a vector by a lease (`embed_after` pushed past the model
//! call in one statement) rather than a row lock, so extraction, which writes the same rows,
//! never waits for a model to finish.

use std::time::Duration;

use chrono::{DateTime, Utc};
use memoire_core::command::{Ingest, Ingested, ListCursor, ListEpisodes, NewMemory};
use memoire_core::embed::{
    EPISODE_CONTEXT_CHARS, EPISODE_CONTEXT_TURNS, Embedding, episode_vector_text,
};
use memoire_core::extract::{CandidateMemory, ExtractError, Extraction, KnownMemory, Turn};
use memoire_core::model::{Basis, DeadLetter, MemoryKind, MessageRole, PiiMode, Scope, VersionOp};
use memoire_core::pii;
use memoire_core::recall::EpisodeHit;
use memoire_core::resolve::{self, Existing, Resolution, Similar, Thresholds};
use memoire_core::validate::content_key;
use memoire_core::{Error, Result};
use pgvector::Vector;
use serde_json::json;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::memories::{
    NewRow, audit, derived_from_edges, identical, insert_memory, lock_user, record_versions,
    slot_holder, supersede, supersedes_edge,
};
use crate::rows::{EPISODE_COLUMNS, EpisodeRow};
use crate::{PgStore, Rows, db_error, write_vectors};

/// (tenant, user, namespace) rows as scopes.
pub(crate) fn scopes(rows: Vec<(Uuid, String, String)>) -> Vec<Scope> {
    rows.into_iter()
        .map(|(tenant_id, user_id, namespace)| Scope {
            tenant_id,
            user_id,
            namespace,
        })
        .collect()
}

/// The notification channel Ingest signals on.
pub const EPISODES_CHANNEL: &str = "memoire_episodes";

/// An episode waiting for extraction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEpisode {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// User.
    pub user_id: String,
    /// Namespace.
    pub namespace: String,
    /// Session.
    pub session_id: String,
    /// Role, as stored.
    pub role: String,
    /// Speaker name.
    pub name: Option<String>,
    /// Whether the speaker is the user rather than someone else in the conversation.
    pub speaker_is_user: bool,
    /// Content (scrubbed).
    pub content: String,
    /// When it was said.
    pub occurred_at: DateTime<Utc>,
    /// Insertion order.
    pub seq: i64,
    /// Failed attempts so far.
    pub extract_attempts: i32,
    /// Not before this time (backoff).
    pub extract_after: Option<DateTime<Utc>>,
}

impl PendingEpisode {
    /// Its scope.
    pub fn scope(&self) -> Scope {
        Scope {
            tenant_id: self.tenant_id,
            user_id: self.user_id.clone(),
            namespace: self.namespace.clone(),
        }
    }

    pub fn turn(&self) -> Turn {
        Turn {
            role: MessageRole::parse(&self.role).unwrap_or(MessageRole::User),
            name: self.name.clone(),
            speaker_is_user: self.speaker_is_user,
            content: self.content.clone(),
        }
    }
}

/// Retries with exponential backoff, then the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles.
    pub base_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failure.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What happened to a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It will be retried after the delay.
    Retry(Duration),
    /// It went to the dead-letter queue.
    DeadLettered,
}

/// One decision applied for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The resolver's action (`create`, `supersede`, `update`, `duplicate`, `tombstone`, `ignore`).
    pub action: &'static str,
    /// The memory written or matched.
    pub memory_id: Option<Uuid>,
    /// The similarity score, when one decided.
    pub score: Option<f32>,
    /// Why.
    pub reason: String,
}

/// Queue sizes, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepths {
    /// Episodes waiting for extraction.
    pub extract: i64,
    /// Episodes waiting for an embedding.
    pub embed: i64,
    /// Dead letters.
    pub dead_letters: i64,
    /// How long the oldest episode waiting for extraction has waited (0 when none does).
    pub extract_oldest_age: Duration,
    /// How long the oldest episode waiting for an embedding has waited (0 when none does).
    pub embed_oldest_age: Duration,
}

/// How long a tenant's counted extraction backlog is reused by Ingest's bound: counting is an
/// index-only scan of the tenant's waiting messages, so a tenant is counted at most once a
/// second per process, whatever its ingest rate.
pub const BACKLOG_TTL: Duration = Duration::from_secs(1);

/// Tenants' extraction backlogs, as last counted.
#[derive(Debug)]
pub(crate) struct BacklogCache(crate::ttl::TtlMap<Uuid, u64>);

impl Default for BacklogCache {
    fn default() -> Self {
        BacklogCache(crate::ttl::TtlMap::new(BACKLOG_TTL))
    }
}

/// A worker's exclusive claim on one user+namespace; released when dropped (the transaction that
/// holds the advisory lock rolls back) or when the worker's connection dies.
#[derive(Debug)]
pub struct ScopeClaim {
    _tx: Transaction<'static, Postgres>,
}

impl ScopeClaim {
    /// Releases the claim now (dropping it releases it too, a moment later, in the background).
    pub async fn release(self) -> Result<()> {
        self._tx.rollback().await.map_err(db_error)
    }
}

fn claim_key(scope: &Scope) -> String {
    format!(
        "extract/{}/{}/{}",
        scope.tenant_id, scope.user_id, scope.namespace
    )
}

#[derive(sqlx::FromRow)]
struct SimilarRow {
    #[sqlx(flatten)]
    memory: ExistingRow,
    cosine: f64,
}

#[derive(sqlx::FromRow)]
struct ListedDeadLetter {
    id: Uuid,
    tenant_id: Uuid,
    job: String,
    episode_id: Uuid,
    payload: serde_json::Value,
    error: String,
    attempts: i32,
    raw_reply: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ExistingRow {
    id: Uuid,
    kind: String,
    slot: Option<String>,
    subject: Option<String>,
    content: String,
    content_key: String,
}

impl ExistingRow {
    fn into_existing(self) -> Existing {
        Existing {
            id: self.id,
            kind: MemoryKind::parse(&self.kind).unwrap_or(MemoryKind::Fact),
            slot: self.slot,
            subject: self.subject,
            content: self.content,
            content_key: self.content_key,
        }
    }
}

impl PgStore {
    /// Stores a batch of messages as episodes, scrubbed by the tenant's PII policy, skipping
    /// messages whose `message_id` is already stored. Durable when it returns.
    pub async fn ingest(&self, cmd: Ingest) -> Result<Vec<Ingested>> {
        let now = self.clock.now();
        let scope = &cmd.scope;
        // One connection for the call's statements: scoping it costs a round trip.
        let mut conn = self.conn(scope.tenant_id).await?;
        let mode: String = sqlx::query_scalar("SELECT pii_mode FROM tenants WHERE id = $1")
            .bind(scope.tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::NotFound {
                what: "tenant",
                id: scope.tenant_id.to_string(),
            })?;
        let mode = PiiMode::parse(&mode).unwrap_or(PiiMode::Redact);

        // A message id repeated inside the batch is the same message said once.
        let mut out: Vec<Ingested> = Vec::with_capacity(cmd.messages.len());
        let (mut ids, mut roles, mut names, mut contents, mut message_ids, mut times) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut speaker_is_user = vec![];
        for m in &cmd.messages {
            if let Some(mid) = &m.message_id
                && let Some(first) = out
                    .iter()
                    .find(|o| o.message_id.as_deref() == Some(mid.as_str()))
            {
                out.push(Ingested {
                    duplicate: true,
                    ..first.clone()
                });
                continue;
            }
            let id = Uuid::now_v7();
            let content = pii::scrub(&m.content, mode);
            let name = m.name.as_deref().map(|n| pii::scrub(n, mode));
            for kind in content
                .found
                .iter()
                .chain(name.iter().flat_map(|n| n.found.iter()))
            {
                metrics::counter!("memoire_pii_scrubbed_total", "kind" => kind.as_str())
                    .increment(1);
            }
            ids.push(id);
            roles.push(m.role.as_str());
            names.push(name.map(|n| n.text));
            speaker_is_user.push(m.speaker_is_user);
            contents.push(content.text);
            message_ids.push(m.message_id.clone());
            times.push(m.occurred_at.unwrap_or(now));
            out.push(Ingested {
                episode_id: id,
                message_id: m.message_id.clone(),
                duplicate: false,
            });
        }
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO episodes (id, tenant_id, user_id, namespace, session_id, role, name, content, \
               message_id, occurred_at, created_at, speaker_is_user) \
             SELECT t.id, $1, $2, $3, $4, t.role, t.name, t.content, t.message_id, t.occurred_at, $11, \
               t.speaker_is_user \
             FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], \
               $12::bool[]) \
               WITH ORDINALITY AS t(id, role, name, content, message_id, occurred_at, speaker_is_user, ord) \
             ORDER BY t.ord \
             ON CONFLICT (tenant_id, user_id, namespace, message_id) WHERE message_id IS NOT NULL \
               DO NOTHING \
             RETURNING id",
        )
        .bind(scope.tenant_id)
        .bind(&scope.user_id)
        .bind(&scope.namespace)
        .bind(&cmd.session_id)
        .bind(&ids)
        .bind(&roles)
        .bind(&names)
        .bind(&contents)
        .bind(&message_ids)
        .bind(&times)
        .bind(now)
        .bind(&speaker_is_user)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;

        if inserted.len() < ids.len() {
            // Retried messages: answer with the episode stored the first time.
            let retried: Vec<String> = out
                .iter()
                .filter(|o| !o.duplicate && !inserted.contains(&o.episode_id))
                .filter_map(|o| o.message_id.clone())
                .collect();
            let existing: Vec<(String, Uuid)> = sqlx::query_as(
                "SELECT message_id, id FROM episodes WHERE tenant_id = $1 AND user_id = $2 \
                 AND namespace = $3 AND message_id = ANY($4)",
            )
            .bind(scope.tenant_id)
            .bind(&scope.user_id)
            .bind(&scope.namespace)
            .bind(&retried)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
            for o in &mut out {
                if let Some(mid) = &o.message_id
                    && let Some((_, id)) = existing.iter().find(|(m, _)| m == mid)
                {
                    o.duplicate = o.duplicate || o.episode_id != *id;
                    o.episode_id = *id;
                }
            }
        }
        Ok(out)
    }

    /// The episode a client's `message_id` was stored as in `scope`, if any.
    pub async fn episode_by_message_id(
        &self,
        scope: &Scope,
        message_id: &str,
    ) -> Result<Option<EpisodeHit>> {
        let sql = format!(
            "SELECT {EPISODE_COLUMNS} FROM episodes \
             WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 AND message_id = $4"
        );
        let row: Option<EpisodeRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(scope.tenant_id)
            .bind(&scope.user_id)
            .bind(&scope.namespace)
            .bind(message_id)
            .fetch_optional(&mut *self.conn(scope.tenant_id).await?)
            .await
            .map_err(db_error)?;
        row.map(EpisodeHit::try_from).transpose()
    }

    /// A page of one session's turns, in the order they were said (`occurred_at`, then the
    /// order they were stored in, as everywhere else).
    pub async fn list_episodes(
        &self,
        q: &ListEpisodes,
    ) -> Result<(Vec<EpisodeHit>, Option<ListCursor>)> {
        let sql = format!(
            "SELECT {EPISODE_COLUMNS} FROM episodes \
             WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 AND session_id = $4 \
               AND ($5::timestamptz IS NULL OR (occurred_at, seq) > \
                    (SELECT c.occurred_at, c.seq FROM episodes c WHERE c.tenant_id = $1 AND c.id = $6)) \
             ORDER BY occurred_at, seq LIMIT $7"
        );
        let rows: Vec<EpisodeRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(q.scope.tenant_id)
            .bind(&q.scope.user_id)
            .bind(&q.scope.namespace)
            .bind(&q.session_id)
            .bind(q.after.map(|c| c.created_at))
            .bind(q.after.map(|c| c.id))
            .bind(q.page_size as i64 + 1)
            .fetch_all(&mut *self.read_conn(q.scope.tenant_id).await?)
            .await
            .map_err(db_error)?;
        let mut episodes = rows
            .into_iter()
            .map(EpisodeHit::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next = if episodes.len() > q.page_size {
            episodes.truncate(q.page_size);
            episodes.last().map(|e| ListCursor {
                created_at: e.occurred_at,
                id: e.id,
            })
        } else {
            None
        };
        Ok((episodes, next))
    }

    /// Of `ids`: how many still wait for extraction, and how many were dead-lettered.
    pub async fn extraction_progress(&self, tenant_id: Uuid, ids: &[Uuid]) -> Result<(i64, i64)> {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE extracted_at IS NULL AND extract_dead_at IS NULL), \
                    count(*) FILTER (WHERE extract_dead_at IS NOT NULL) \
             FROM episodes WHERE tenant_id = $1 AND id = ANY($2)",
        )
        .bind(tenant_id)
        .bind(ids)
        .fetch_one(&mut *self.conn(tenant_id).await?)
        .await
        .map_err(db_error)
    }

    /// Users+namespaces with an episode due for extraction, oldest first. This scan is the
    /// reconciler: whatever was ingested and not yet extracted is found here, however the
    /// notification was lost.
    pub async fn pending_scopes(&self, limit: i64) -> Result<Vec<Scope>> {
        // A user is due when its *first* pending episode is: later ones wait behind it (order),
        // so a user whose first episode is backing off must not take a place in the batch.
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT tenant_id, user_id, namespace FROM ( \
               SELECT DISTINCT ON (tenant_id, user_id, namespace) tenant_id, user_id, namespace, \
                 seq, extract_after FROM episodes \
               WHERE extracted_at IS NULL AND extract_dead_at IS NULL \
               ORDER BY tenant_id, user_id, namespace, occurred_at, seq) firsts \
             WHERE extract_after IS NULL OR extract_after <= $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(self.clock.now())
        .bind(limit)
        .fetch_all(&mut *self.conn(Rows::All).await?)
        .await
        .map_err(db_error)?;
        Ok(scopes(rows))
    }

    /// Claims `scope` for extraction; `None` when another worker holds it.
    pub async fn claim_scope(&self, scope: &Scope) -> Result<Option<ScopeClaim>> {
        let mut tx = self.begin(scope.tenant_id).await?;
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(claim_key(scope))
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        Ok(got.then_some(ScopeClaim { _tx: tx }))
    }

    /// The scope's episodes waiting for extraction, in the order they were said.
    pub async fn pending_episodes(&self, scope: &Scope, limit: i64) -> Result<Vec<PendingEpisode>> {
        sqlx::query_as(
            "SELECT id, tenant_id, user_id, namespace, session_id, role, name, speaker_is_user, content, \
               occurred_at, seq, extract_attempts, extract_after \
             FROM episodes WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 \
               AND extracted_at IS NULL AND extract_dead_at IS NULL \
             ORDER BY occurred_at, seq LIMIT $4",
        )
        .bind(scope.tenant_id)
        .bind(&scope.user_id)
        .bind(&scope.namespace)
        .bind(limit)
        .fetch_all(&mut *self.conn(scope.tenant_id).await?)
        .await
        .map_err(db_error)
    }

    /// The turns of the episode's session said before it, oldest first (at most `n`).
    pub async fn context_turns(&self, ep: &PendingEpisode, n: i64) -> Result<Vec<Turn>> {
        if n <= 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Option<String>, bool, String)> = sqlx::query_as(
            "SELECT role, name, speaker_is_user, content FROM ( \
               SELECT role, name, speaker_is_user, content, occurred_at, seq FROM episodes \
               WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 AND session_id = $4 \
                 AND (occurred_at, seq) < ($5, $6) \
               ORDER BY occurred_at DESC, seq DESC LIMIT $7) t \
             ORDER BY occurred_at, seq",
        )
        .bind(ep.tenant_id)
        .bind(&ep.user_id)
        .bind(&ep.namespace)
        .bind(&ep.session_id)
        .bind(ep.occurred_at)
        .bind(ep.seq)
        .bind(n)
        .fetch_all(&mut *self.conn(ep.tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(role, name, speaker_is_user, content)| Turn {
                role: MessageRole::parse(&role).unwrap_or(MessageRole::User),
                name,
                speaker_is_user,
                content,
            })
            .collect())
    }

    /// The user's current memories most related to the episode (by embedding), for an
    /// extractor that can update or delete them.
    pub async fn known_memories(
        &self,
        ep: &PendingEpisode,
        near: Option<&Embedding>,
        k: i64,
    ) -> Result<Vec<KnownMemory>> {
        if k <= 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<ExistingRow> = match near {
            Some(e) => sqlx::query_as(
                "SELECT id, kind, slot, subject, content, content_key FROM memories \
                 WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 AND status = 'active' \
                   AND (expires_at IS NULL OR expires_at > $4) \
                 ORDER BY CASE WHEN embedding_model = $5 THEN embedding <=> $6 END NULLS LAST, \
                   updated_at DESC, id LIMIT $7",
            )
            .bind(ep.tenant_id)
            .bind(&ep.user_id)
            .bind(&ep.namespace)
            .bind(self.clock.now())
            .bind(&e.model)
            .bind(Vector::from(e.vector.clone()))
            .bind(k)
            .fetch_all(&mut *self.conn(ep.tenant_id).await?)
            .await
            .map_err(db_error)?,
            None => Vec::new(),
        };
        Ok(rows
            .into_iter()
            .map(|r| {
                let e = r.into_existing();
                KnownMemory {
                    id: e.id,
                    kind: e.kind,
                    slot: e.slot,
                    content: e.content,
                }
            })
            .collect())
    }

    /// Resolves and writes the candidates of a run of one user's episodes (one scope, one
    /// episode or more), in the order given, and marks each episode extracted — in one
    /// transaction: the user is locked once and the run committed once, and each episode's
    /// candidates are resolved against what the episodes before it wrote. Everything is written
    /// or nothing. `embeddings` holds one vector per candidate (of its `memory_text`), or is empty
    /// when there is no embedding model. One result per episode: `None` when it was already
    /// extracted (a replay writes nothing).
    pub async fn apply_extractions(
        &self,
        run: Vec<(&PendingEpisode, &Extraction, Vec<Embedding>)>,
        basis: Basis,
        thresholds: Thresholds,
    ) -> Result<Vec<Option<Vec<Applied>>>> {
        let Some(scope) = run.first().map(|(ep, _, _)| ep.scope()) else {
            return Ok(Vec::new());
        };
        if run.iter().any(|(ep, _, _)| ep.scope() != scope) {
            return Err(Error::Internal(
                "a run of extractions spans several scopes".into(),
            ));
        }
        let now = self.clock.now();
        let actor = format!("extractor:{}", basis.as_str());
        let mut tx = self.begin(scope.tenant_id).await?;
        lock_user(&mut tx, scope.tenant_id, &scope.user_id, &scope.namespace).await?;
        let create_only: bool =
            sqlx::query_scalar("SELECT extraction_create_only FROM tenants WHERE id = $1")
                .bind(scope.tenant_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let mut out = Vec::with_capacity(run.len());
        let mut written = false;
        for (ep, extraction, embeddings) in run {
            let pending: Option<bool> = sqlx::query_scalar(
                "SELECT extracted_at IS NULL AND extract_dead_at IS NULL FROM episodes \
                 WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
            )
            .bind(ep.id)
            .bind(ep.tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            if pending != Some(true) {
                // Extracted by an earlier run, dead-lettered, or purged meanwhile.
                out.push(None);
                continue;
            }
            let model = embeddings.first().map(|e| e.model.clone());
            let mut vectors: Vec<Option<Vector>> = embeddings
                .into_iter()
                .map(|e| Some(Vector::from(e.vector)))
                .collect();
            vectors.resize(extraction.candidates.len(), None);
            let mut applied = Vec::with_capacity(extraction.candidates.len());
            for (c, vector) in extraction.candidates.iter().zip(vectors) {
                let a = self
                    .apply_candidate(
                        &mut tx,
                        Candidate {
                            ep,
                            scope: &scope,
                            c,
                            vector: vector.as_ref(),
                            model: model.as_deref(),
                        },
                        basis,
                        thresholds,
                        create_only,
                        &actor,
                        now,
                    )
                    .await?;
                applied.push(a);
            }
            for why in &extraction.rejected {
                audit(
                    &mut tx,
                    scope.tenant_id,
                    &actor,
                    "extract.reject",
                    Some(ep.id),
                    json!({ "reason": why }),
                    now,
                )
                .await?;
            }
            sqlx::query(
                "UPDATE episodes SET extracted_at = $2, extract_error = NULL, extract_after = NULL \
                 WHERE id = $1",
            )
            .bind(ep.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            written = true;
            out.push(Some(applied));
        }
        // A replay writes nothing (the transaction is rolled back when dropped).
        if written {
            tx.commit().await.map_err(db_error)?;
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_candidate(
        &self,
        tx: &mut PgConnection,
        cand: Candidate<'_>,
        basis: Basis,
        thresholds: Thresholds,
        create_only: bool,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let Candidate {
            ep,
            scope,
            c,
            vector,
            model,
        } = &cand;
        let (ep, scope, c, vector, model) = (*ep, *scope, *c, *vector, *model);
        let key = content_key(&c.content);
        let holder = match &c.slot {
            Some(slot) => slot_holder(tx, scope, slot, None)
                .await?
                .filter(|r| r.expires_at.is_none_or(|t| t > now))
                .map(|r| Existing {
                    id: r.id,
                    kind: MemoryKind::parse(&r.kind).unwrap_or(MemoryKind::Fact),
                    slot: r.slot,
                    subject: r.subject,
                    content: r.content,
                    content_key: r.content_key,
                }),
            None => None,
        };
        let identical: Option<ExistingRow> = identical(
            &mut *tx,
            "id, kind, slot, subject, content, content_key",
            scope,
            &key,
            c.slot.as_deref(),
            now,
        )
        .await?;
        let identical = identical.map(ExistingRow::into_existing);
        let similar = match (vector, model) {
            (Some(v), Some(m)) => similar_memories(tx, scope, c, v, m, now).await?,
            _ => Vec::new(),
        };
        let resolution = resolve::resolve_candidate(
            c,
            &key,
            holder.as_ref(),
            identical.as_ref(),
            &similar,
            thresholds,
            create_only,
        );
        let action = resolution.action();
        let (memory_id, score, reason) = match resolution {
            Resolution::Create { drop_slot, reason } => {
                let id =
                    write_new(tx, &cand, &key, None, drop_slot, basis, &reason, actor, now).await?;
                (Some(id), None, reason)
            }
            Resolution::Supersede { old, reason } => {
                let id = write_new(
                    tx,
                    &cand,
                    &key,
                    Some(old),
                    false,
                    basis,
                    &reason,
                    actor,
                    now,
                )
                .await?;
                (Some(id), Some(1.0), reason)
            }
            Resolution::Update {
                target,
                score,
                reason,
            } => {
                sqlx::query(
                    "UPDATE memories SET content = $2, content_key = $3, \
                       importance = GREATEST(importance, $4), confidence = $5, \
                       embedding = COALESCE($6, embedding), \
                       embedding_model = CASE WHEN $6 IS NULL THEN embedding_model ELSE $7 END, \
                       source_episode_ids = CASE WHEN $8 = ANY(source_episode_ids) \
                         THEN source_episode_ids ELSE source_episode_ids || $8 END, \
                       version = version + 1, updated_at = $9 \
                     WHERE id = $1",
                )
                .bind(target)
                .bind(&c.content)
                .bind(&key)
                .bind(c.importance)
                .bind(c.confidence)
                .bind(vector)
                .bind(model)
                .bind(ep.id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                record_versions(
                    tx,
                    &[target],
                    VersionOp::Update,
                    Basis::Resolver,
                    Some(score),
                    &reason,
                    actor,
                )
                .await?;
                derived_from_edges(tx, scope.tenant_id, target, &[ep.id], now).await?;
                (Some(target), Some(score), reason)
            }
            Resolution::Tombstone {
                target,
                score,
                reason,
            } => {
                sqlx::query(
                    "UPDATE memories SET status = 'tombstoned', version = version + 1, updated_at = $2 \
                     WHERE id = $1",
                )
                .bind(target)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                record_versions(
                    tx,
                    &[target],
                    VersionOp::Tombstone,
                    basis,
                    Some(score),
                    &reason,
                    actor,
                )
                .await?;
                (Some(target), Some(score), reason)
            }
            Resolution::Duplicate { of, score, reason } => {
                // Nothing changes, but the episode supports the memory: keep the provenance.
                derived_from_edges(tx, scope.tenant_id, of, &[ep.id], now).await?;
                (Some(of), Some(score), reason)
            }
            Resolution::Ignore { reason } => (None, None, reason),
        };
        let best = similar.first().map(|s| s.score);
        audit(
            tx,
            scope.tenant_id,
            actor,
            &format!("extract.{action}"),
            memory_id,
            json!({
                "episode": ep.id, "basis": basis.as_str(), "score": score,
                "best_similarity": best, "reason": reason, "slot": c.slot,
            }),
            now,
        )
        .await?;
        Ok(Applied {
            action,
            memory_id,
            score: score.or(best),
            reason,
        })
    }

    /// Records a failed extraction: retried after a backoff, or dead-lettered after the last
    /// attempt (with the model's raw reply) so that the user's later episodes can proceed.
    pub async fn extraction_failed(
        &self,
        ep: &PendingEpisode,
        err: &ExtractError,
        policy: &RetryPolicy,
    ) -> Result<Failure> {
        let now = self.clock.now();
        let attempts = ep.extract_attempts as u32 + 1;
        let mut tx = self.begin(ep.tenant_id).await?;
        if attempts >= policy.max_attempts {
            sqlx::query(
                "UPDATE episodes SET extract_attempts = $2, extract_error = $3, extract_dead_at = $4 \
                 WHERE id = $1",
            )
            .bind(ep.id)
            .bind(attempts as i32)
            .bind(&err.message)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            dead_letter(
                &mut tx,
                DeadLetterRow {
                    tenant_id: ep.tenant_id,
                    job: "extract",
                    episode_id: ep.id,
                    payload: json!({
                        "episode_id": ep.id, "user_id": ep.user_id, "namespace": ep.namespace,
                        "session_id": ep.session_id,
                    }),
                    error: &err.message,
                    attempts,
                    raw_reply: err.raw_reply.as_deref(),
                    now,
                },
            )
            .await?;
            tx.commit().await.map_err(db_error)?;
            return Ok(Failure::DeadLettered);
        }
        let delay = policy.delay(attempts);
        sqlx::query(
            "UPDATE episodes SET extract_attempts = $2, extract_error = $3, extract_after = $4 \
             WHERE id = $1",
        )
        .bind(ep.id)
        .bind(attempts as i32)
        .bind(&err.message)
        .bind(now + delay)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Failure::Retry(delay))
    }

    /// Claims up to `batch` episodes that have no vector yet for `lease`: other workers skip
    /// them until it ends, and then take them over (a worker that died mid-batch delays its
    /// episodes by at most the lease). `None` when there are none. The claim is one short
    /// statement, not a held transaction: the model runs with no episode row locked, so
    /// extraction, which marks the same rows, never waits for it. The caller embeds the texts
    /// and then completes or fails the claim.
    pub async fn claim_unembedded(
        &self,
        batch: i64,
        lease: Duration,
    ) -> Result<Option<EmbedClaim>> {
        let now = self.clock.now();
        let until = now + lease;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            Uuid,
            Uuid,
            String,
            i32,
            Option<String>,
            DateTime<Utc>,
            Option<String>,
        )> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH due AS ( \
               SELECT id FROM episodes \
               WHERE embedding IS NULL AND embed_dead_at IS NULL \
                 AND (embed_after IS NULL OR embed_after <= $1) \
               ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE episodes x SET embed_after = $3 FROM due WHERE x.id = due.id \
             RETURNING x.id, x.tenant_id, x.content, x.embed_attempts, x.name, x.occurred_at, {}",
            turns_before("x")
        )))
        .bind(now)
        .bind(batch)
        .bind(until)
        .fetch_all(&mut *self.conn(Rows::All).await?)
        .await
        .map_err(db_error)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let rows = rows
            .into_iter()
            .map(|(id, tenant, content, attempts, name, at, before)| {
                (
                    id,
                    tenant,
                    episode_vector_text(name.as_deref(), at, &content, before.as_deref()),
                    attempts,
                )
            })
            .collect();
        Ok(Some(EmbedClaim {
            store: self.clone(),
            rows,
            now,
        }))
    }

    /// Queue sizes across tenants (for the worker's gauges).
    pub async fn queue_depths(&self) -> Result<QueueDepths> {
        // The oldest waiting episode of each queue is the first of its partial index by seq
        // (the order of arrival): one index probe each.
        let (extract, embed, dead_letters, extract_age, embed_age): (i64, i64, i64, f64, f64) =
            sqlx::query_as(
                "SELECT \
                   (SELECT count(*) FROM episodes WHERE extracted_at IS NULL AND extract_dead_at IS NULL), \
                   (SELECT count(*) FROM episodes WHERE embedding IS NULL AND embed_dead_at IS NULL), \
                   (SELECT count(*) FROM dead_letters), \
                   COALESCE((SELECT extract(epoch FROM $1 - created_at)::float8 FROM episodes \
                     WHERE extracted_at IS NULL AND extract_dead_at IS NULL ORDER BY seq LIMIT 1), 0), \
                   COALESCE((SELECT extract(epoch FROM $1 - created_at)::float8 FROM episodes \
                     WHERE embedding IS NULL AND embed_dead_at IS NULL ORDER BY seq LIMIT 1), 0)",
            )
            .bind(self.clock.now())
            .fetch_one(&mut *self.conn(Rows::All).await?)
            .await
            .map_err(db_error)?;
        let age = |secs: f64| Duration::from_secs_f64(secs.max(0.0));
        Ok(QueueDepths {
            extract,
            embed,
            dead_letters,
            extract_oldest_age: age(extract_age),
            embed_oldest_age: age(embed_age),
        })
    }

    /// How many of `tenant_id`'s messages wait for extraction, counted up to `cap` (an
    /// index-only scan of at most `cap` entries), reused for [`BACKLOG_TTL`].
    pub async fn extraction_backlog(&self, tenant_id: Uuid, cap: u64) -> Result<u64> {
        if let Some(n) = self.backlogs.0.get(&tenant_id) {
            return Ok(n);
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM episodes WHERE tenant_id = $1 \
               AND extracted_at IS NULL AND extract_dead_at IS NULL LIMIT $2) waiting",
        )
        .bind(tenant_id)
        .bind(i64::try_from(cap).unwrap_or(i64::MAX))
        .fetch_one(&mut *self.conn(tenant_id).await?)
        .await
        .map_err(db_error)?;
        let n = n.max(0) as u64;
        self.backlogs.0.put(tenant_id, n);
        Ok(n)
    }

    /// A tenant's dead letters, oldest first, after the keyset `after`.
    pub async fn list_dead_letters(
        &self,
        tenant_id: Uuid,
        limit: i64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<DeadLetter>> {
        let (after_time, after_id) = after.unzip();
        let rows: Vec<ListedDeadLetter> = sqlx::query_as(
            "SELECT id, tenant_id, job, episode_id, payload, error, attempts, raw_reply, created_at \
             FROM dead_letters WHERE tenant_id = $1 \
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) \
             ORDER BY created_at, id LIMIT $4",
        )
        .bind(tenant_id)
        .bind(after_time)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.conn(tenant_id).await?)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetter {
                id: r.id,
                tenant_id: r.tenant_id,
                job: r.job,
                episode_id: r.episode_id,
                payload_json: r.payload.to_string(),
                error: r.error,
                attempts: r.attempts.max(0) as u32,
                raw_reply: r.raw_reply,
                created_at: r.created_at,
            })
            .collect())
    }

    /// Puts dead letters back on the queue (all of the tenant's when `ids` is empty): their
    /// episodes become pending again with a fresh attempt count. Returns how many.
    pub async fn replay_dead_letters(&self, tenant_id: Uuid, ids: &[Uuid]) -> Result<u64> {
        let mut tx = self.begin(tenant_id).await?;
        let replayed: Vec<(Uuid, String)> = sqlx::query_as(
            "DELETE FROM dead_letters WHERE tenant_id = $1 AND (cardinality($2::uuid[]) = 0 OR id = ANY($2)) \
             RETURNING episode_id, job",
        )
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let (extract, embed): (Vec<_>, Vec<_>) =
            replayed.iter().partition(|(_, job)| job == "extract");
        let extract: Vec<Uuid> = extract.into_iter().map(|(id, _)| *id).collect();
        let embed: Vec<Uuid> = embed.into_iter().map(|(id, _)| *id).collect();
        sqlx::query(
            "UPDATE episodes SET extract_dead_at = NULL, extract_attempts = 0, extract_after = NULL \
             WHERE tenant_id = $1 AND id = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&extract)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "UPDATE episodes SET embed_dead_at = NULL, embed_attempts = 0, embed_after = NULL \
             WHERE tenant_id = $1 AND id = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&embed)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if !replayed.is_empty() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(EPISODES_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(replayed.len() as u64)
    }
}

/// One candidate with what it was embedded as.
struct Candidate<'a> {
    ep: &'a PendingEpisode,
    scope: &'a Scope,
    c: &'a CandidateMemory,
    vector: Option<&'a Vector>,
    model: Option<&'a str>,
}

/// Writes a candidate as a new memory (superseding `supersedes` when given); returns its id.
#[allow(clippy::too_many_arguments)]
async fn write_new(
    tx: &mut PgConnection,
    cand: &Candidate<'_>,
    key: &str,
    supersedes: Option<Uuid>,
    drop_slot: bool,
    basis: Basis,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    if let Some(old) = supersedes {
        supersede(tx, old, id, &format!("superseded by {id}"), actor, now).await?;
    }
    insert_memory(
        tx,
        NewRow {
            id,
            scope: cand.scope,
            memory: &new_memory(cand.c, cand.ep.id, drop_slot),
            content_key: key,
            vector: cand.vector,
            model: cand.vector.and(cand.model),
            now,
        },
        basis,
        reason,
        actor,
    )
    .await?;
    if let Some(old) = supersedes {
        supersedes_edge(tx, cand.scope.tenant_id, id, old, now).await?;
    }
    Ok(id)
}

fn new_memory(c: &CandidateMemory, episode: Uuid, drop_slot: bool) -> NewMemory {
    NewMemory {
        kind: c.kind,
        content: c.content.clone(),
        slot: if drop_slot { None } else { c.slot.clone() },
        subject: c.subject.clone(),
        tags: Vec::new(),
        importance: c.importance,
        confidence: c.confidence,
        pinned: false,
        expires_at: None,
        source_episode_ids: vec![episode],
    }
}

/// The user's current memories closest to the candidate, scored by the resolver's hybrid
/// similarity, best first. Exact distances over the user's scope (a user's memories are few
/// enough; the per-user index narrows the scan).
async fn similar_memories(
    tx: &mut PgConnection,
    scope: &Scope,
    c: &CandidateMemory,
    vector: &Vector,
    model: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Similar>> {
    let rows: Vec<SimilarRow> = sqlx::query_as(
        "SELECT id, kind, slot, subject, content, content_key, 1 - (embedding <=> $4) AS cosine \
         FROM memories WHERE tenant_id = $1 AND user_id = $2 AND namespace = $3 \
           AND status = 'active' AND embedding_model = $5 \
           AND (expires_at IS NULL OR expires_at > $6) \
         ORDER BY embedding <=> $4, id LIMIT 5",
    )
    .bind(scope.tenant_id)
    .bind(&scope.user_id)
    .bind(&scope.namespace)
    .bind(vector)
    .bind(model)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let mut out: Vec<Similar> = rows
        .into_iter()
        .map(|r| {
            let cosine = r.cosine as f32;
            let memory = r.memory.into_existing();
            Similar {
                score: resolve::hybrid_score(cosine, &c.content, &memory.content),
                memory,
                cosine,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.memory.id.cmp(&b.memory.id))
    });
    Ok(out)
}

struct DeadLetterRow<'a> {
    tenant_id: Uuid,
    job: &'static str,
    episode_id: Uuid,
    payload: serde_json::Value,
    error: &'a str,
    attempts: u32,
    raw_reply: Option<&'a str>,
    now: DateTime<Utc>,
}

async fn dead_letter(conn: &mut PgConnection, d: DeadLetterRow<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO dead_letters (id, tenant_id, job, episode_id, payload, error, attempts, raw_reply, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (episode_id, job) DO UPDATE SET error = EXCLUDED.error, \
           attempts = EXCLUDED.attempts, raw_reply = EXCLUDED.raw_reply, created_at = EXCLUDED.created_at",
    )
    .bind(Uuid::now_v7())
    .bind(d.tenant_id)
    .bind(d.job)
    .bind(d.episode_id)
    .bind(d.payload)
    .bind(d.error)
    .bind(d.attempts as i32)
    .bind(d.raw_reply)
    .bind(d.now)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// A subquery over the turns of episode `alias`'s session (`alias` must carry its tenant, user,
/// namespace, session, time and seq) said before it (`cmp` `<`, `dir` `DESC`) or after it (`>`,
/// `ASC`), nearest first, selecting `columns` of `e`, at most `limit`: one index probe. Recall's
/// neighbouring turns and an episode vector's context are both this order.
pub(crate) fn session_turns(
    alias: &str,
    cmp: &str,
    dir: &str,
    columns: &str,
    limit: i64,
) -> String {
    format!(
        "SELECT {columns} FROM episodes e \
         WHERE e.tenant_id = {alias}.tenant_id AND e.user_id = {alias}.user_id \
           AND e.namespace = {alias}.namespace AND e.session_id = {alias}.session_id \
           AND (e.occurred_at, e.seq) {cmp} ({alias}.occurred_at, {alias}.seq) \
         ORDER BY e.occurred_at {dir}, e.seq {dir} LIMIT {limit}"
    )
}

/// The select-list expression for the turns said just before the episode `alias` in its session,
/// as `core::embed::episode_vector_text` takes them: up to [`EPISODE_CONTEXT_TURNS`] lines of
/// `speaker: text` (each text's last [`EPISODE_CONTEXT_CHARS`] characters), oldest first; NULL
/// for a session's first turn.
pub(crate) fn turns_before(alias: &str) -> String {
    format!(
        "(SELECT string_agg(coalesce(nullif(btrim(p.name), '') || ': ', '') \
                            || right(p.content, {EPISODE_CONTEXT_CHARS}), \
                            E'\\n' ORDER BY p.occurred_at, p.seq) \
          FROM ({}) p)",
        session_turns(
            alias,
            "<",
            "DESC",
            "e.name, e.content, e.occurred_at, e.seq",
            EPISODE_CONTEXT_TURNS
        )
    )
}

/// Episodes claimed for embedding (see [`PgStore::claim_unembedded`]).
#[derive(Debug)]
pub struct EmbedClaim {
    store: PgStore,
    rows: Vec<(Uuid, Uuid, String, i32)>,
    now: DateTime<Utc>,
}

impl EmbedClaim {
    /// The episodes' texts (`core::embed::episode_vector_text`), in order.
    pub fn texts(&self) -> Vec<String> {
        self.rows.iter().map(|r| r.2.clone()).collect()
    }

    /// Begins the transaction that writes the claimed rows (returned with their ids), with them
    /// locked in the order extraction locks them (a user's episodes by `occurred_at, seq`;
    /// extraction's transaction holds one user's), so that the two never wait for each other in a
    /// cycle: a batch written in another order could hold a later turn that extraction is about
    /// to mark while waiting for an earlier one extraction holds, and Postgres would abort one of
    /// them as a deadlock.
    async fn lock(&self) -> Result<(Transaction<'static, Postgres>, Vec<Uuid>)> {
        let ids: Vec<Uuid> = self.rows.iter().map(|r| r.0).collect();
        let mut tx = self.store.begin(Rows::All).await?;
        sqlx::query(
            "SELECT 1 FROM episodes WHERE id = ANY($1) \
             ORDER BY tenant_id, user_id, namespace, occurred_at, seq FOR UPDATE",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        Ok((tx, ids))
    }

    /// Writes one vector per episode (an episode forgotten meanwhile is skipped) and releases
    /// the claim. On an error the claim stays out: record the attempt with [`Self::fail`].
    pub async fn complete(&self, vectors: Vec<Vec<f32>>, model: &str) -> Result<usize> {
        let vectors: Vec<Vector> = vectors.into_iter().map(Vector::from).collect();
        let (mut tx, ids) = self.lock().await?;
        write_vectors(&mut tx, "episodes", &ids, &vectors, model).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(self.rows.len())
    }

    /// Records a failed attempt for every claimed episode (dead-lettering those out of attempts)
    /// and releases the claim.
    pub async fn fail(self, error: &str, policy: &RetryPolicy) -> Result<()> {
        let now = self.now;
        let (mut tx, _) = self.lock().await?;
        for (id, tenant_id, _, attempts) in &self.rows {
            let attempts = *attempts as u32 + 1;
            if attempts >= policy.max_attempts {
                sqlx::query(
                    "UPDATE episodes SET embed_attempts = $2, embed_dead_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(attempts as i32)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                dead_letter(
                    &mut tx,
                    DeadLetterRow {
                        tenant_id: *tenant_id,
                        job: "embed",
                        episode_id: *id,
                        payload: json!({ "episode_id": id }),
                        error,
                        attempts,
                        raw_reply: None,
                        now,
                    },
                )
                .await?;
            } else {
                sqlx::query(
                    "UPDATE episodes SET embed_attempts = $2, embed_after = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(attempts as i32)
                .bind(now + policy.delay(attempts))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}
