//! The worker's steps: extract and resolve one episode, embed pending episodes, expire memories.
//! The loops that schedule them (claiming users, waking on notifications, backing off) are the
//! worker's; what each step does is here.

use std::time::{Duration, Instant};

use memoire_core::Error;
use memoire_core::embed::memory_text;
use memoire_core::extract::{ExtractError, ExtractionInput, Extractor};
use memoire_core::model::Basis;
use memoire_core::resolve::Thresholds;
use memoire_store::{EmbedClaim, Failure, PendingEpisode, RetryPolicy};
use tracing::Instrument as _;

use crate::UseCases;

/// Extraction settings.
#[derive(Debug, Clone)]
pub struct ExtractSettings {
    /// Retries and the dead-letter queue.
    pub retry: RetryPolicy,
    /// The resolver's similarity thresholds.
    pub thresholds: Thresholds,
    /// Earlier turns an extractor sees.
    pub context_turns: u32,
    /// Related current memories an extractor sees (0 for the rule extractor, which needs none).
    pub known_memories: u32,
    /// Messages a tenant may have waiting for extraction before Ingest refuses more (0: no
    /// bound).
    pub max_backlog: u64,
    /// How long the embedding pass holds a batch of episodes before another worker may take it
    /// over; longer than one model call with its retries.
    pub embed_lease: Duration,
}

/// What extracting one episode came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Done (or dead-lettered): go on with the user's next episode.
    Next,
    /// Retry later: the user's later episodes wait behind it.
    Wait,
}

/// How many memories one expiry transaction expires; small batches keep locks short.
const EXPIRY_BATCH: i64 = 500;

/// Counts one outcome of a worker job (`memoire_jobs_total{task,outcome}`).
pub fn job_outcome(job: &'static str, outcome: &'static str) {
    metrics::counter!("memoire_jobs_total", "task" => job, "outcome" => outcome).increment(1);
}

impl UseCases {
    /// Extracts one episode: its context (earlier turns; related memories, found by the episode's
    /// vector, for an extractor that can update them) → the extractor → the candidates' vectors →
    /// resolve and write, marking the episode extracted, in one transaction → invalidate
    /// Conscious. A failure is recorded (retry with backoff, or the dead-letter queue); only the
    /// database being unreachable is returned as an error, since it is not the episode's fault.
    pub async fn extract_episode(
        &self,
        ep: &PendingEpisode,
        extractor: &dyn Extractor,
    ) -> memoire_core::Result<Step> {
        let s = &self.settings().extract;
        let started = Instant::now();
        let failed = |what: &str, e: Error| match e {
            Error::Unavailable(_) => Err(e),
            e => Ok(ExtractError::new(format!("{what} failed: {e}"))),
        };
        let outcome = match self
            .extraction_input(ep, s)
            .instrument(tracing::info_span!("extraction_input"))
            .await
        {
            Err(e) => Err(failed("preparing the extraction", e)?),
            Ok(input) => match extractor
                .extract(&input)
                .instrument(tracing::info_span!("extractor"))
                .await
                .map(|x| x.filed_under_speaker(&input.turn))
            {
                Err(e) => Err(e),
                Ok(extraction) => {
                    let run = [(ep, extraction)];
                    match self.apply(&run, extractor, s).await {
                        Err(e) => Err(failed("applying the extraction", e)?),
                        Ok(applied) => {
                            let applied = applied.into_iter().next().flatten();
                            self.record_extraction(ep, &run[0].1, applied.as_deref());
                            Ok(())
                        }
                    }
                }
            },
        };
        metrics::histogram!("memoire_extraction_seconds").record(started.elapsed().as_secs_f64());
        let Err(err) = outcome else {
            return Ok(Step::Next);
        };
        match self.store().extraction_failed(ep, &err, &s.retry).await? {
            Failure::Retry(delay) => {
                job_outcome("extract", "retry");
                tracing::warn!(episode_id = %ep.id, attempt = ep.extract_attempts + 1, retry_in_ms = delay.as_millis() as u64, error = %err, "extraction failed; will retry");
                Ok(Step::Wait)
            }
            Failure::DeadLettered => {
                job_outcome("extract", "dead_letter");
                tracing::error!(episode_id = %ep.id, attempts = ep.extract_attempts + 1, error = %err, "extraction dead-lettered");
                Ok(Step::Next)
            }
        }
    }

    /// Extracts the first of `episodes` (one user's due episodes, in the order they were said)
    /// — and, when the extractor answers at once and reads nothing the episodes before it write
    /// (the rule extractor, without related memories), as many of the next as are ready,
    /// together: their candidates embedded in one model call, written in one transaction
    /// ([`memoire_store::PgStore::apply_extractions`]). An episode whose input or extractor fails
    /// ends the run; it is then extracted alone, which records its failure. So does any failure
    /// to write the run: each of its episodes is then extracted alone. Returns how many episodes
    /// from the front are finished, and whether the next must wait.
    pub async fn extract_run(
        &self,
        episodes: &[PendingEpisode],
        extractor: &dyn Extractor,
    ) -> memoire_core::Result<(usize, Step)> {
        let s = &self.settings().extract;
        if extractor.basis() != Basis::Rule || s.known_memories > 0 || episodes.len() < 2 {
            return self
                .extract_each(&episodes[..episodes.len().min(1)], extractor)
                .await;
        }
        let started = Instant::now();
        let mut ready = Vec::with_capacity(episodes.len());
        for ep in episodes {
            let Ok(input) = self
                .extraction_input(ep, s)
                .instrument(tracing::info_span!("extraction_input", episode_id = %ep.id))
                .await
            else {
                break;
            };
            match extractor
                .extract(&input)
                .instrument(tracing::info_span!("extractor", episode_id = %ep.id))
                .await
            {
                Ok(x) => ready.push((ep, x.filed_under_speaker(&input.turn))),
                Err(_) => break,
            }
        }
        if ready.len() < 2 {
            return self.extract_each(&episodes[..1], extractor).await;
        }
        let applied = match self.apply(&ready, extractor, s).await {
            Ok(applied) => applied,
            Err(e @ Error::Unavailable(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(episodes = ready.len(), error = %e, "writing a run of extractions failed; extracting them one at a time");
                return self.extract_each(&episodes[..ready.len()], extractor).await;
            }
        };
        let per_episode = started.elapsed().as_secs_f64() / ready.len() as f64;
        for ((ep, x), applied) in ready.iter().zip(&applied) {
            self.record_extraction(ep, x, applied.as_deref());
            metrics::histogram!("memoire_extraction_seconds").record(per_episode);
        }
        Ok((ready.len(), Step::Next))
    }

    /// Extracts `episodes` one at a time, in order, until one must wait. Returns how many are
    /// finished, and whether the next must wait.
    async fn extract_each(
        &self,
        episodes: &[PendingEpisode],
        extractor: &dyn Extractor,
    ) -> memoire_core::Result<(usize, Step)> {
        for (done, ep) in episodes.iter().enumerate() {
            let span = tracing::info_span!("extract_episode", episode_id = %ep.id);
            if self.extract_episode(ep, extractor).instrument(span).await? == Step::Wait {
                return Ok((done, Step::Wait));
            }
        }
        Ok((episodes.len(), Step::Next))
    }

    /// Counts what extracting one episode decided (`memoire_extraction_decisions_total`, the
    /// resolver's scores, the job's outcome); `applied` is `None` for a replay.
    fn record_extraction(
        &self,
        ep: &PendingEpisode,
        extraction: &memoire_core::extract::Extraction,
        applied: Option<&[memoire_store::Applied]>,
    ) {
        for why in &extraction.rejected {
            metrics::counter!("memoire_extraction_decisions_total", "action" => "reject")
                .increment(1);
            tracing::info!(episode_id = %ep.id, reason = %why, "candidate rejected");
        }
        for a in applied.into_iter().flatten() {
            metrics::counter!("memoire_extraction_decisions_total", "action" => a.action)
                .increment(1);
            if let Some(score) = a.score {
                metrics::histogram!("memoire_resolver_score", "action" => a.action)
                    .record(score as f64);
            }
            tracing::debug!(episode_id = %ep.id, action = a.action, memory_id = ?a.memory_id, reason = %a.reason, "resolved");
        }
        job_outcome("extract", if applied.is_some() { "ok" } else { "replay" });
    }

    /// The turn an extractor reads, with its context.
    async fn extraction_input(
        &self,
        ep: &PendingEpisode,
        s: &crate::ExtractSettings,
    ) -> memoire_core::Result<ExtractionInput> {
        let context = self
            .store()
            .context_turns(ep, s.context_turns as i64)
            .await?;
        let known = if s.known_memories > 0 {
            let near = self
                .embeddings(std::slice::from_ref(&ep.content))
                .await?
                .pop();
            self.store()
                .known_memories(ep, near.as_ref(), s.known_memories as i64)
                .await?
        } else {
            Vec::new()
        };
        Ok(ExtractionInput {
            turn: ep.turn(),
            context,
            known,
        })
    }

    /// Embeds the candidates of a run of one user's episodes in one model call (before the
    /// transaction: no lock is held while the model runs), then resolves and writes them in order,
    /// in one transaction; invalidates Conscious when something changed. One result per episode
    /// (`None`: a replay).
    async fn apply(
        &self,
        run: &[(&PendingEpisode, memoire_core::extract::Extraction)],
        extractor: &dyn Extractor,
        s: &crate::ExtractSettings,
    ) -> memoire_core::Result<Vec<Option<Vec<memoire_store::Applied>>>> {
        let Some((first, _)) = run.first() else {
            return Ok(Vec::new());
        };
        let texts: Vec<String> = run
            .iter()
            .flat_map(|(_, x)| &x.candidates)
            .map(|c| memory_text(&c.content, c.subject.as_deref(), c.slot.as_deref()))
            .collect();
        let mut vectors = self.embeddings(&texts).await?;
        let mut each = Vec::with_capacity(run.len());
        for (ep, x) in run {
            let rest = vectors.split_off(x.candidates.len().min(vectors.len()));
            each.push((*ep, x, std::mem::replace(&mut vectors, rest)));
        }
        let applied = self
            .store()
            .apply_extractions(each, extractor.basis(), s.thresholds)
            .instrument(tracing::info_span!("resolve_write", episodes = run.len()))
            .await?;
        if applied
            .iter()
            .flatten()
            .flatten()
            .any(|a| !matches!(a.action, "duplicate" | "ignore"))
        {
            self.changed(&first.scope()).await;
        }
        Ok(applied)
    }

    /// Embeds up to `batch` episodes that have no vector yet, in one model call, under a lease
    /// (other workers skip them; no row stays locked while the model runs). Returns how many
    /// were embedded.
    pub async fn embed_pending_episodes(
        &self,
        batch: i64,
        policy: &RetryPolicy,
    ) -> memoire_core::Result<usize> {
        match self.claim_unembedded(batch).await? {
            Some(claim) => self.embed_claimed(claim, policy).await,
            None => Ok(0),
        }
    }

    /// Claims up to `batch` episodes that have no vector yet, for the embedding lease (see
    /// `PgStore::claim_unembedded`). `None` when there are none.
    pub async fn claim_unembedded(&self, batch: i64) -> memoire_core::Result<Option<EmbedClaim>> {
        self.store()
            .claim_unembedded(batch, self.settings().extract.embed_lease)
            .await
    }

    /// Embeds claimed episodes in one model call and stores their vectors; a failed call or
    /// write counts as an attempt of each (dead-lettered after `policy.max_attempts`). Returns
    /// how many were embedded.
    pub async fn embed_claimed(
        &self,
        claim: EmbedClaim,
        policy: &RetryPolicy,
    ) -> memoire_core::Result<usize> {
        let texts = claim.texts();
        let (message, error) = match self.embed(&texts).await {
            Ok(vectors) => match claim.complete(vectors, self.embedding_model()).await {
                Ok(n) => return Ok(n),
                // Written nowhere: an attempt like a failed model call, so that the episodes
                // are retried after the backoff instead of after the whole lease.
                Err(e) => (e.to_string(), e),
            },
            Err(e) => (e.to_string(), Error::Provider(e.to_string())),
        };
        claim.fail(&message, policy).await?;
        Err(error)
    }

    /// Expires every memory past its expiry time, in batches. Returns how many.
    pub async fn sweep_expired(&self) -> memoire_core::Result<u64> {
        let mut total = 0;
        loop {
            let n = self.store().expire_due(EXPIRY_BATCH).await?;
            total += n;
            if n < EXPIRY_BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            metrics::counter!("memoire_memories_expired_total").increment(total);
            tracing::info!(count = total, "expired memories");
        }
        Ok(total)
    }
}
