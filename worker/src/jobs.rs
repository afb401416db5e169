//! The periodic jobs (PRODUCT.md §3): optimize, decay, reflect, retention, re-embed — each run
//! on a schedule by the worker and on demand through `AdminService.RunMaintenance`, for all
//! tenants, one tenant, or one user. Every run is recorded in `maintenance_runs` with what it did.

use std::time::{Duration, Instant};

use memoire_store::{JobScope, PgStore};
use uuid::Uuid;

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
    /// How often each job runs on its own (`None`: only when triggered).
    pub every: Vec<(Job, Option<Duration>)>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            summarizer: None,
            max_essential: 24,
            half_life: Duration::from_secs(180 * 86_400),
            floor: 0.2,
            reflect_min_turns: 8,
            reflect_max_turns: 8,
            reflect_idle: Duration::from_secs(1_800),
            max_content_bytes: 16 * 1024,
            every: Vec::new(),
        }
    }
}

/// Runs `job` over `scope` and records the run under `id`. Returns what the job did.
pub async fn run(
    store: &PgStore,
    id: Uuid,
    job: Job,
    scope: &JobScope,
    s: &JobSettings,
) -> memoire_core::Result<serde_json::Value> {
    store.start_run(id, job.as_str(), scope).await?;
    let started = Instant::now();
    let result = match job {
        Job::Optimize => store.optimize(scope, s.max_essential).await,
        Job::Decay => store.decay(scope, s.half_life, s.floor).await,
        Job::Reflect => {
            store
                .reflect(
                    scope,
                    s.summarizer.as_deref(),
                    s.reflect_min_turns,
                    s.reflect_max_turns,
                    s.reflect_idle,
                    s.max_content_bytes,
                )
                .await
        }
        Job::Retention => store.retention(scope).await,
        Job::ReEmbed => store.reembed(scope).await,
    };
    metrics::histogram!("memoire_maintenance_seconds", "job" => job.as_str())
        .record(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("memoire_jobs_total", "job" => job.as_str(), "outcome" => outcome)
        .increment(1);
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

/// When each scheduled job is next due.
#[derive(Debug)]
pub(crate) struct Schedule {
    next: Vec<(Job, Duration, Instant)>,
}

impl Schedule {
    pub(crate) fn new(s: &JobSettings) -> Self {
        let now = Instant::now();
        Schedule {
            next: s
                .every
                .iter()
                .filter_map(|(job, every)| every.map(|e| (*job, e, now + e)))
                .collect(),
        }
    }

    /// The jobs due now (each then scheduled one interval later).
    pub(crate) fn due(&mut self) -> Vec<Job> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (job, every, next) in &mut self.next {
            if *next <= now {
                due.push(*job);
                *next = now + *every;
            }
        }
        due
    }
}
