//! The memory service's use-cases: Recall, Teach, Forget, Ingest, Conscious, and the reads.

use std::time::Duration;

use memoire_core::command::{
    Forget, ForgetResult, Ingest, Ingested, ListCursor, ListEpisodes, ListMemories, ListUsers,
    RecallQuery, Teach, TeachResult, UserSummary,
};
use memoire_core::embed::Embedding;
use memoire_core::model::{ForgetMode, Memory, MemoryVersion, Scope, WriteOutcome};
use memoire_core::recall::{self, EpisodeHit, Item, Packed, Scored};
use memoire_core::{Error, Result};
use memoire_providers::Tiktoken;
use memoire_store::{ConsciousSource, ConsciousView, Correction, record_stage};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{Permit, UseCases};

/// What Recall found.
#[derive(Debug)]
pub struct Recalled {
    /// The items, best first.
    pub items: Vec<Scored>,
    /// The packed context.
    pub packed: Packed,
    /// The embedding model the query was embedded with.
    pub embedding_model: String,
}

/// How waiting for extraction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractionWait {
    /// Not asked to wait.
    Queued,
    /// Every message was extracted.
    Completed,
    /// Some message was dead-lettered.
    Failed,
    /// The deadline passed first.
    TimedOut,
}

/// The delay an Ingest refused for the tenant's backlog suggests: a few seconds of a worker's
/// drain, and longer than the backlog count is reused.
const BACKLOG_RETRY: Duration = Duration::from_secs(5);

/// How many times a correction is re-embedded when its text changed under it.
const CORRECTION_ATTEMPTS: usize = 3;

impl UseCases {
    /// Recall: embed what is searched for (the query without its speakers' names; cached; full
    /// text searches meanwhile) → vector candidates → rank (core) → pack under the token budget
    /// (with `tokenizer`'s counts) → access statistics after the reply, once `permit` is granted.
    pub async fn recall(
        &self,
        permit: &Permit,
        query: RecallQuery,
        k: usize,
        budget: usize,
        tokenizer: &str,
        min_score: Option<f32>,
    ) -> Result<Recalled> {
        self.recall_with(permit, query, k, budget, tokenizer, min_score, true)
            .await
    }

    /// Recall; `record_access: false` leaves the memories' access statistics as they were (a
    /// prompt built only to be shown).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn recall_with(
        &self,
        permit: &Permit,
        mut query: RecallQuery,
        k: usize,
        budget: usize,
        tokenizer: &str,
        min_score: Option<f32>,
        record_access: bool,
    ) -> Result<Recalled> {
        let counter = Tiktoken::named("tokenizer", tokenizer)?;
        let s = &self.settings().recall;
        // The same candidates for every k up to `recall_candidates` (so the first items do not
        // depend on how many were asked for); a larger k takes k from each search. The pool is
        // most of a Recall's database work: half of it was measured to leave `make eval`'s
        // quality unchanged (docs/benchmarks.md), so it is not sized for the largest k allowed.
        query.candidates = s.candidates.max(k);
        query.min_confidence = s.min_confidence;
        let tenant = query.tenant_id;
        // What the searches look for is embedded while the full-text searches run.
        let embedding = |text: String| async move {
            let span = tracing::info_span!("query_embedding", cached = tracing::field::Empty);
            let (vector, cached) = self
                .inner
                .queries
                .embed(tenant, &text)
                .instrument(span.clone())
                .await?;
            span.record("cached", cached);
            Ok(Some(vector))
        };
        let candidates = self
            .store()
            .recall_candidates(&query, embedding, &s.search)
            .await?;
        let started = std::time::Instant::now();
        let ranked = tracing::info_span!("rank").in_scope(|| {
            recall::rank(
                candidates,
                &query.text,
                &s.weights,
                self.store().now(),
                min_score,
                k,
            )
        });
        record_stage("rank", "all", started);
        let started = std::time::Instant::now();
        let packed =
            tracing::info_span!("pack").in_scope(|| recall::pack(&ranked, budget, &counter));
        record_stage("pack", "all", started);
        let touched: Vec<Uuid> = ranked
            .iter()
            .filter_map(|x| match &x.item {
                Item::Memory(m) => Some(m.id),
                Item::Episode(_) => None,
            })
            .collect();
        if record_access && !touched.is_empty() {
            // Access statistics are written after the reply (in batches), never on its path.
            let (store, permit) = (self.store().clone(), permit.clone());
            tokio::spawn(async move {
                // A call the rate limits refuse leaves no trace.
                if permit.granted().await.is_ok() {
                    store.touch_memories(tenant, &touched);
                }
            });
        }
        Ok(Recalled {
            items: ranked,
            packed,
            embedding_model: self.inner.queries.model_id().to_owned(),
        })
    }

    /// Teach: a new memory (embedded, then resolved against the user's memories and written in
    /// one transaction) or a correction (a new version; re-embedded when its text changes).
    /// Conscious is invalidated before the reply whenever something was written. Nothing is
    /// written before `permit` is granted (a new memory's embedding is computed meanwhile).
    pub async fn teach(&self, permit: &Permit, cmd: Teach, actor: &str) -> Result<TeachResult> {
        let (scope, result) = match cmd {
            Teach::Create {
                scope,
                memory,
                force_create,
                reason,
                basis,
            } => {
                // Embedded before the transaction: no lock is held while the model runs.
                let embedding = self
                    .embed_memory(
                        &memory.content,
                        memory.subject.as_deref(),
                        memory.slot.as_deref(),
                    )
                    .await?;
                permit.granted().await?;
                let result = self
                    .store()
                    .create_memory(
                        scope.clone(),
                        memory,
                        force_create,
                        reason,
                        basis,
                        actor,
                        embedding,
                    )
                    .await?;
                (scope, result)
            }
            Teach::Correct {
                scope,
                memory_id,
                patch,
                reason,
            } => {
                permit.granted().await?;
                let model = Some(self.embedding_model().to_owned());
                let mut embedding: Option<(String, Embedding)> = None;
                let mut attempts = 0;
                let result = loop {
                    let written = self
                        .store()
                        .correct_memory(
                            scope.clone(),
                            memory_id,
                            patch.clone(),
                            reason.clone(),
                            actor,
                            model.as_deref(),
                            embedding.as_ref(),
                        )
                        .await?;
                    match written {
                        Correction::Done(result) => break *result,
                        Correction::Embed(_) if attempts >= CORRECTION_ATTEMPTS => {
                            return Err(Error::Unavailable(
                                "the memory kept changing while its correction was embedded; retry"
                                    .into(),
                            ));
                        }
                        Correction::Embed(text) => {
                            attempts += 1;
                            // Embedded outside the transaction: no lock is held while the model runs.
                            let e = self.embeddings(std::slice::from_ref(&text)).await?.pop();
                            embedding = e.map(|e| (text, e));
                        }
                    }
                };
                (scope, result)
            }
        };
        if result.outcome != WriteOutcome::Duplicate {
            self.changed(&scope).await;
        }
        Ok(result)
    }

    /// Forget by ids or selector; tombstoned scopes are invalidated, purged ones also leave Redis.
    pub async fn forget(&self, cmd: Forget, actor: &str) -> Result<ForgetResult> {
        let mode = cmd.mode;
        let (result, touched) = self.store().forget(cmd, actor).await?;
        for scope in &touched {
            match mode {
                ForgetMode::Tombstone => self.changed(scope).await,
                ForgetMode::Purge => self.purged(scope).await,
            }
        }
        Ok(result)
    }

    /// Ingest: store the messages as episodes (durable and queued in one statement); with
    /// `wait`, poll until they are extracted or dead-lettered, or the deadline passes.
    pub async fn ingest(
        &self,
        cmd: Ingest,
        wait: Option<Duration>,
    ) -> Result<(Vec<Ingested>, ExtractionWait)> {
        let scope = cmd.scope.clone();
        let count = cmd.messages.len() as u64;
        self.check_backlog(scope.tenant_id).await?;
        let ingested = self
            .store()
            .ingest(cmd)
            .instrument(tracing::info_span!("store_episodes", messages = count))
            .await?;
        let new = ingested.iter().filter(|i| !i.duplicate).count() as u64;
        metrics::counter!("memoire_ingested_messages_total").increment(count);
        metrics::counter!("memoire_ingested_duplicates_total").increment(count - new);
        if new > 0 {
            // The session's recent turns changed.
            self.changed(&scope).await;
        }
        let state = match wait {
            // Retried messages count too: the caller waits for what it sent.
            Some(deadline) => {
                let ids: Vec<Uuid> = ingested.iter().map(|i| i.episode_id).collect();
                self.await_extraction(scope.tenant_id, &ids, deadline)
                    .await?
            }
            None => ExtractionWait::Queued,
        };
        Ok((ingested, state))
    }

    /// Waits until the episodes `ids` are extracted or dead-lettered, or `deadline` passes; the
    /// caller's next reads then see what the worker wrote.
    pub(crate) async fn await_extraction(
        &self,
        tenant: Uuid,
        ids: &[Uuid],
        deadline: Duration,
    ) -> Result<ExtractionWait> {
        let waited = self
            .wait_for_extraction(tenant, ids, deadline)
            .instrument(tracing::info_span!("wait_for_extraction"))
            .await?;
        self.store().wrote(tenant);
        Ok(waited)
    }

    /// Refuses more messages while the tenant has `max_backlog` or more waiting for extraction:
    /// acknowledging work the worker will not reach for hours helps nobody, and the caller's
    /// retry after the delay finds room as the worker drains. A call that crosses the bound is
    /// accepted whole (no batch is split), and the count is reused for a second, so a tenant
    /// can overshoot by what it sends in that second.
    async fn check_backlog(&self, tenant: Uuid) -> Result<()> {
        let max = self.settings().extract.max_backlog;
        if max == 0 {
            return Ok(());
        }
        let waiting = self.store().extraction_backlog(tenant, max).await?;
        if waiting < max {
            return Ok(());
        }
        metrics::counter!("memoire_ingest_refused_total", "reason" => "backlog").increment(1);
        Err(memoire_core::Error::ResourceExhausted {
            message: format!(
                "this tenant has {waiting} or more messages waiting for extraction \
                 (max_extraction_backlog); retry after the delay, as the worker catches up"
            ),
            retry_after: Some(BACKLOG_RETRY),
        })
    }

    /// Polls until every episode of `ids` is extracted or dead-lettered, or `deadline` passes.
    async fn wait_for_extraction(
        &self,
        tenant: Uuid,
        ids: &[Uuid],
        deadline: Duration,
    ) -> Result<ExtractionWait> {
        let until = tokio::time::Instant::now() + deadline;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.store().extraction_progress(tenant, ids).await? {
                (0, 0) => return Ok(ExtractionWait::Completed),
                (0, _) => return Ok(ExtractionWait::Failed),
                _ => {}
            }
            if tokio::time::Instant::now() + pause > until {
                return Ok(ExtractionWait::TimedOut);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Conscious: the working memory of a user+namespace (and session) — from Redis when it holds
    /// the current generation, else rebuilt from Postgres (and cached) — packed under `budget`.
    pub async fn conscious(
        &self,
        scope: &Scope,
        session: Option<&str>,
        budget: usize,
        tokenizer: &str,
    ) -> Result<(ConsciousView, Packed, ConsciousSource)> {
        let counter = Tiktoken::named("tokenizer", tokenizer)?;
        let settings = &self.settings().conscious;
        let now = self.store().now();
        let (cached, ticket) = match &self.inner.conscious {
            Some(c) => c.get(scope, session).await,
            None => (None, None),
        };
        let (view, source) = match cached {
            Some(mut view) => {
                // Time passes inside a cached entry too.
                view.essential
                    .retain(|m| m.expires_at.is_none_or(|t| t > now));
                let since = now - settings.session_ttl;
                view.recent.retain(|e| e.occurred_at > since);
                metrics::counter!("memoire_cache_requests_total", "cache" => "conscious", "result" => "hit").increment(1);
                (view, ConsciousSource::Redis)
            }
            None => {
                metrics::counter!("memoire_cache_requests_total", "cache" => "conscious", "result" => "miss").increment(1);
                let view = self
                    .store()
                    .conscious_view(scope, session, settings, now)
                    .await?;
                if let (Some(c), Some(ticket)) = (&self.inner.conscious, ticket) {
                    c.put(ticket, &view, settings.cache_ttl).await;
                }
                (view, ConsciousSource::Postgres)
            }
        };
        let packed = memoire_core::conscious::pack(&view.essential, &view.recent, budget, &counter);
        Ok((view, packed, source))
    }

    /// One memory of the tenant.
    pub async fn get_memory(&self, tenant: Uuid, id: Uuid) -> Result<Memory> {
        self.store().get_memory(tenant, id).await
    }

    /// A page of memories, and the cursor of the next one.
    pub async fn list_memories(
        &self,
        q: &ListMemories,
    ) -> Result<(Vec<Memory>, Option<ListCursor>)> {
        self.store().list_memories(q).await
    }

    /// A page of the tenant's users.
    pub async fn list_users(&self, q: &ListUsers) -> Result<(Vec<UserSummary>, Option<String>)> {
        self.store().list_users(q).await
    }

    /// A page of one session's turns, oldest first.
    pub async fn list_episodes(
        &self,
        q: &ListEpisodes,
    ) -> Result<(Vec<EpisodeHit>, Option<ListCursor>)> {
        self.store().list_episodes(q).await
    }

    /// A memory's versions, oldest first.
    pub async fn history(&self, tenant: Uuid, id: Uuid) -> Result<Vec<MemoryVersion>> {
        self.store().history(tenant, id).await
    }
}
