//! The periodic jobs (PRODUCT.md §3): optimize, decay, reflect, retention, re-embed — each run
//! on a schedule by the worker and on demand through `AdminService.RunMaintenance`, for all
//! tenants, one tenant, or one user. Every run is recorded in `maintenance_runs` with what it did,
//! and the users whose memories a job changed get their working memory (Conscious) invalidated.

use std::time::{Duration, Instant};

use memoire_core::command::{NewMemory, Teach};
use memoire_core::model::{Basis, MemoryKind, WriteOutcome};
use memoire_core::summary;
use memoire_store::{JobOutput, JobScope, VectorTable};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use tracing::Instrument as _;

use crate::{Permit, UseCases};

/// A maintenance job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// Recompute essential memories (the Conscious tier).
    Optimize,
    /// Lower the confidence of stale, unpinned memories.
    Decay,
    /// Summarize quiet sessions.
    Reflect,
    /// Apply expiry and the tenants' retention policies.
    Retention,
    /// Re-embed vectors of another model.
    ReEmbed,
}

impl Job {
    /// Every job.
    pub const ALL: [Job; 5] = [
        Job::Optimize,
        Job::Decay,
        Job::Reflect,
        Job::Retention,
        Job::ReEmbed,
    ];

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Optimize => "optimize",
            Job::Decay => "decay",
            Job::Reflect => "reflect",
            Job::Retention => "retention",
            Job::ReEmbed => "re_embed",
        }
    }
}

/// The jobs' settings.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The model that writes abstractive session summaries (`None`: extractive summaries).
    pub summarizer: Option<std::sync::Arc<dyn memoire_core::extract::Summarizer>>,
    /// Most essential memories per user and namespace.
    pub max_essential: usize,
    /// Decay half-life.
    pub half_life: Duration,
    /// Decay floor.
    pub floor: f32,
    /// Sessions with at least this many turns are summarized.
    pub reflect_min_turns: i64,
    /// Most turns quoted in a summary.
    pub reflect_max_turns: usize,
    /// A session is summarized once quiet this long.
    pub reflect_idle: Duration,
    /// Longest memory content.
    pub max_content_bytes: usize,
}

/// Re-embed's batch: rows claimed and embedded per model call.
const REEMBED_BATCH: i64 = 64;

impl UseCases {
    /// Runs `job` over `scope` and records the run under `id`, after any run of the same job
    /// elsewhere (another worker's schedule, another `RunMaintenance`) has ended: one job runs
    /// once at a time across every process sharing the database. Returns what the job did.
    pub async fn run_job(
        &self,
        id: Uuid,
        job: Job,
        scope: &JobScope,
    ) -> memoire_core::Result<serde_json::Value> {
        let _alone = self.store().lock_job(job.as_str(), true).await?;
        self.run_locked(id, job, scope).await
    }

    /// A scheduled run of `job` over every tenant — skipped (`None`, nothing recorded) while
    /// another process runs the job.
    pub async fn run_scheduled_job(
        &self,
        job: Job,
    ) -> memoire_core::Result<Option<serde_json::Value>> {
        let Some(_alone) = self.store().lock_job(job.as_str(), false).await? else {
            crate::job_outcome(job.as_str(), "skipped");
            tracing::debug!(
                job = job.as_str(),
                "scheduled run skipped: the job runs elsewhere"
            );
            return Ok(None);
        };
        self.run_locked(Uuid::now_v7(), job, &JobScope::default())
            .await
            .map(Some)
    }

    async fn run_locked(
        &self,
        id: Uuid,
        job: Job,
        scope: &JobScope,
    ) -> memoire_core::Result<serde_json::Value> {
        let store = self.store();
        let s = &self.settings().jobs;
        store.start_run(id, job.as_str(), scope).await?;
        let started = Instant::now();
        let output = async {
            match job {
                Job::Optimize => store.optimize(scope, s.max_essential).await,
                Job::Decay => store.decay(scope, s.half_life, s.floor).await,
                Job::Reflect => self.reflect(scope).await,
                Job::Retention => store.retention(scope).await,
                Job::ReEmbed => self.reembed(scope).await,
            }
        }
        .instrument(tracing::info_span!("job", otel.name = job.as_str(), run_id = %id))
        .await;
        let result = match output {
            Ok(JobOutput { report, changed }) => {
                self.changed_all(&changed).await;
                Ok(report)
            }
            Err(e) => Err(e),
        };
        metrics::histogram!("memoire_maintenance_seconds", "task" => job.as_str())
            .record(started.elapsed().as_secs_f64());
        crate::job_outcome(job.as_str(), if result.is_ok() { "ok" } else { "error" });
        match &result {
            Ok(v) => {
                tracing::info!(job = job.as_str(), run_id = %id, result = %v, "maintenance job done")
            }
            Err(e) => {
                tracing::warn!(job = job.as_str(), run_id = %id, error = %e, "maintenance job failed")
            }
        }
        if let Err(e) = store.finish_run(id, &result).await {
            tracing::warn!(run_id = %id, error = %e, "recording the maintenance run failed");
        }
        result
    }

    /// Re-embed: memories and episodes whose vector is of another model (or, for memories,
    /// missing) get one from the configured embedder, a claimed batch at a time. Returns
    /// `{memories, episodes, model}`.
    async fn reembed(&self, f: &JobScope) -> memoire_core::Result<JobOutput> {
        let model = self.embedding_model().to_owned();
        let mut counts = [0u64; 2];
        let mut changed = Vec::new();
        for (i, table) in [VectorTable::Memories, VectorTable::Episodes]
            .into_iter()
            .enumerate()
        {
            while let Some(claim) = self
                .store()
                .claim_stale_vectors(table, &model, f, REEMBED_BATCH)
                .await?
            {
                let vectors = self.embed(claim.texts()).await?;
                let (n, scopes) = claim.complete(vectors, &model).await?;
                if n == 0 {
                    // Every row was a scope a writer holds (`complete`): give it a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                counts[i] += n;
                changed.extend(scopes);
            }
        }
        Ok(JobOutput {
            report: json!({ "memories": counts[0], "episodes": counts[1], "model": model }),
            changed,
        })
    }

    /// Reflect: each session with at least `reflect_min_turns` turns, quiet for `reflect_idle`,
    /// gets a summary memory (kind `summary`, slot `summary.session_<hash>`) written through
    /// Teach, with `summarizes` edges to the session's episodes: abstractive when a summarizer
    /// (an LLM) is configured, else extractive. A session whose current summary already covers
    /// its latest turn is left alone; new turns supersede the old summary. A model that fails
    /// leaves the session for the next run. Returns `{sessions, created, unchanged, failed}`.
    async fn reflect(&self, f: &JobScope) -> memoire_core::Result<JobOutput> {
        let s = &self.settings().jobs;
        let quiet_since = self.store().now() - s.reflect_idle;
        let sessions = self
            .store()
            .quiet_sessions(f, s.reflect_min_turns, quiet_since)
            .await?;
        let (mut created, mut unchanged, mut failed) = (0u64, 0u64, 0u64);
        for (scope, session) in &sessions {
            let slot = format!(
                "summary.session_{}",
                hex::encode(&Sha256::digest(session.as_bytes())[..6])
            );
            let turns = self.store().session_turns(scope, session).await?;
            let Some(latest) = turns.last().map(|t| t.id) else {
                continue;
            };
            if self.store().summary_covers(scope, &slot, latest).await? {
                unchanged += 1;
                continue;
            }
            let summary = match &s.summarizer {
                Some(model) => {
                    match summary::abstractive(model.as_ref(), session, &turns, s.max_content_bytes)
                        .await
                    {
                        Ok(summary) => Some(summary),
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(session_id = %session, error = %e, "summarizing a session failed; the next run retries");
                            continue;
                        }
                    }
                }
                None => {
                    summary::extractive(session, &turns, s.reflect_max_turns, s.max_content_bytes)
                }
            };
            let Some(summary) = summary else {
                continue;
            };
            // Through Teach: embedded, resolved against the slot, Conscious invalidated.
            let result = self
                .teach(
                    &Permit::unlimited(),
                    Teach::Create {
                        scope: scope.clone(),
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
            let episode_ids: Vec<Uuid> = turns.iter().map(|t| t.id).collect();
            self.store()
                .link_summary(scope.tenant_id, result.memory.id, &episode_ids)
                .await?;
        }
        Ok(JobOutput {
            report: json!({ "sessions": sessions.len(), "created": created, "unchanged": unchanged, "failed": failed }),
            // Teach invalidated what it wrote.
            changed: Vec::new(),
        })
    }
}
