//! Mémoire's background worker: extraction, episode embedding, and the expiry sweep.
//!
//! The queue is the episodes table itself (see `memoire-store`'s `episodes` module): Ingest's
//! commit is the enqueue, so nothing acknowledged can be lost between a database and a broker.
//! [`run`] drives three loops until shutdown:
//!
//! - **extraction**: a reconciler scan finds users with due episodes; up to `concurrency` users
//!   are claimed at once (a Postgres advisory lock per user+namespace, so several workers share
//!   the load and one user's episodes are resolved in the order they were said); each episode is
//!   extracted, resolved and marked done in one transaction. A failure is retried with
//!   exponential backoff (the user's later episodes wait, to keep the order) and after
//!   `max_attempts` goes to the dead-letter queue, which lets the later episodes proceed.
//! - **embedding**: episodes without a vector, in batches, with the same retry rules.
//! - **expiry sweep and gauges**: memories past their expiry get an `expire` version; queue
//!   depths and the dead-letter count are published as metrics.
//!
//! Ingest's statement trigger sends a notification that wakes the loops at once; the reconciler
//! also runs every `poll_interval`, so a lost notification, a restarted worker or a restarted
//! Postgres only delay work. Database errors never stop the worker: it logs, waits and resumes.

pub mod jobs;
pub mod providers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use memoire_core::Error;
use memoire_core::extract::{ExtractError, Extractor};
use memoire_core::model::Scope;
use memoire_core::resolve::Thresholds;
use memoire_store::{EPISODES_CHANNEL, Failure, PendingEpisode, PgStore, RetryPolicy};
use tokio::sync::{Notify, watch};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often the expiry sweep runs.
    pub expiry_sweep_interval: Duration,
    /// How often the reconciler scans for pending work without a notification.
    pub poll_interval: Duration,
    /// Users extracted at once.
    pub concurrency: usize,
    /// Retries and the dead-letter queue.
    pub retry: RetryPolicy,
    /// The resolver's similarity thresholds.
    pub thresholds: Thresholds,
    /// Earlier turns an extractor sees.
    pub context_turns: u32,
    /// Related current memories an extractor sees (0 for the rule extractor, which needs none).
    pub known_memories: u32,
    /// Episodes embedded per model call.
    pub embed_batch: u32,
    /// The periodic jobs.
    pub jobs: jobs::JobSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            expiry_sweep_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            concurrency: 2,
            retry: RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(300),
            },
            thresholds: Thresholds::default(),
            context_turns: 6,
            known_memories: 20,
            embed_batch: 64,
            jobs: jobs::JobSettings::default(),
        }
    }
}

/// How many memories one sweep transaction expires; small batches keep locks short.
const EXPIRY_BATCH: i64 = 500;
/// Episodes read per claim round.
const EPISODES_PER_ROUND: i64 = 32;

/// Expires every memory past its expiry time, in batches. Returns how many.
pub async fn sweep_expired(store: &PgStore) -> memoire_core::Result<u64> {
    let mut total = 0;
    loop {
        let n = store.expire_due(EXPIRY_BATCH).await?;
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

fn job_outcome(job: &'static str, outcome: &'static str) {
    metrics::counter!("memoire_jobs_total", "job" => job, "outcome" => outcome).increment(1);
}

/// The extraction side of the worker, shared by its tasks.
#[derive(Debug)]
struct Extraction {
    store: PgStore,
    extractor: Arc<dyn Extractor>,
    settings: WorkerSettings,
    stop: watch::Receiver<bool>,
}

/// What extracting one episode came to.
enum Step {
    /// Done (or dead-lettered): go on with the user's next episode.
    Next,
    /// Retry later: the user's later episodes wait behind it.
    Wait,
}

impl Extraction {
    /// One reconciler pass: every due user, `concurrency` at a time. Returns how many episodes
    /// were finished (extracted or dead-lettered).
    async fn pass(&self) -> memoire_core::Result<usize> {
        let scopes = self
            .store
            .pending_scopes((self.settings.concurrency * 8) as i64)
            .await?;
        let done = futures::stream::iter(scopes)
            .map(|scope| self.user(scope))
            .buffer_unordered(self.settings.concurrency)
            .fold(Ok(0usize), |acc, r| async move {
                match (acc, r) {
                    (Ok(a), Ok(n)) => Ok(a + n),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            })
            .await?;
        Ok(done)
    }

    /// Extracts one user's due episodes in order, holding the user's claim.
    async fn user(&self, scope: Scope) -> memoire_core::Result<usize> {
        let Some(_claim) = self.store.claim_scope(&scope).await? else {
            return Ok(0); // another worker has this user
        };
        let mut done = 0;
        loop {
            let episodes = self
                .store
                .pending_episodes(&scope, EPISODES_PER_ROUND)
                .await?;
            if episodes.is_empty() {
                return Ok(done);
            }
            for ep in &episodes {
                let stopping = *self.stop.borrow();
                if stopping || ep.extract_after.is_some_and(|t| t > self.store.now()) {
                    return Ok(done);
                }
                match self.episode(ep).await? {
                    Step::Next => done += 1,
                    Step::Wait => return Ok(done),
                }
            }
        }
    }

    /// Extracts, resolves and applies one episode.
    async fn episode(&self, ep: &PendingEpisode) -> memoire_core::Result<Step> {
        let s = &self.settings;
        let started = std::time::Instant::now();
        // The database going away is not the episode's fault: it spends no attempt.
        let failed = |what: &str, e: Error| match e {
            Error::Unavailable(_) => Err(e),
            e => Ok(ExtractError::new(format!("{what} failed: {e}"))),
        };
        let outcome = match self
            .store
            .extraction_input(ep, s.context_turns as i64, s.known_memories as i64)
            .await
        {
            Err(e) => Err(failed("preparing the extraction", e)?),
            Ok(input) => match self.extractor.extract(&input).await {
                Err(e) => Err(e),
                Ok(extraction) => match self
                    .store
                    .apply_extraction(ep, &extraction, self.extractor.basis(), s.thresholds)
                    .await
                {
                    Err(e) => Err(failed("applying the extraction", e)?),
                    Ok(applied) => {
                        for why in &extraction.rejected {
                            metrics::counter!("memoire_extraction_decisions_total", "action" => "reject").increment(1);
                            tracing::info!(episode_id = %ep.id, reason = %why, "candidate rejected");
                        }
                        for a in applied.iter().flatten() {
                            metrics::counter!("memoire_extraction_decisions_total", "action" => a.action).increment(1);
                            if let Some(score) = a.score {
                                metrics::histogram!("memoire_resolver_score", "action" => a.action)
                                    .record(score as f64);
                            }
                            tracing::debug!(episode_id = %ep.id, action = a.action, memory_id = ?a.memory_id, reason = %a.reason, "resolved");
                        }
                        job_outcome("extract", if applied.is_some() { "ok" } else { "replay" });
                        Ok(())
                    }
                },
            },
        };
        metrics::histogram!("memoire_extraction_seconds").record(started.elapsed().as_secs_f64());
        let Err(err) = outcome else {
            return Ok(Step::Next);
        };
        match self.store.extraction_failed(ep, &err, &s.retry).await? {
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
}

/// Embeds pending episodes until none is left (or an error). Returns how many.
async fn embed_pass(store: &PgStore, settings: &WorkerSettings) -> memoire_core::Result<usize> {
    let mut total = 0;
    loop {
        let started = std::time::Instant::now();
        match store
            .embed_pending_episodes(settings.embed_batch as i64, &settings.retry)
            .await
        {
            Ok(0) => return Ok(total),
            Ok(n) => {
                metrics::histogram!("memoire_embedding_duration_seconds", "kind" => "episodes")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("memoire_episodes_embedded_total").increment(n as u64);
                job_outcome("embed", "ok");
                total += n;
            }
            Err(e) => {
                if !matches!(e, Error::Unavailable(_)) {
                    job_outcome("embed", "retry");
                }
                return Err(e);
            }
        }
    }
}

async fn publish_gauges(store: &PgStore) -> memoire_core::Result<()> {
    let d = store.queue_depths().await?;
    metrics::gauge!("memoire_queue_depth", "queue" => "extract").set(d.extract as f64);
    metrics::gauge!("memoire_queue_depth", "queue" => "embed").set(d.embed as f64);
    metrics::gauge!("memoire_dead_letters").set(d.dead_letters as f64);
    Ok(())
}

/// Listens for Ingest's notifications and wakes the loops; reconnects after errors.
async fn listen(store: PgStore, wakes: Vec<Arc<Notify>>) {
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
            l.listen(EPISODES_CHANNEL).await?;
            loop {
                l.recv().await?;
                wakes.iter().for_each(|w| w.notify_one());
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = listener.await {
            tracing::debug!(error = %e, "notification listener lost its connection; reconnecting");
        }
        // Whatever was said while the listener was away, the reconciler finds.
        wakes.iter().for_each(|w| w.notify_one());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Completes when the stop flag is set.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs `pass` whenever `wake` fires or `every` passes, until `stop`. Runs again at once while a
/// pass finds work; backs off after an error.
async fn drive<F, Fut>(
    name: &'static str,
    wake: Arc<Notify>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = memoire_core::Result<usize>>,
{
    let mut backoff = every;
    loop {
        let stopping = *stop.borrow();
        if stopping {
            break;
        }
        match pass().await {
            Ok(n) if n > 0 => {
                backoff = every;
                continue;
            }
            Ok(_) => backoff = every,
            Err(e) => {
                tracing::warn!(job = name, error = %e, "worker pass failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => break,
        }
    }
}

/// Runs the worker until `shutdown` completes. In-flight episodes finish; no new ones start.
pub async fn run(
    store: PgStore,
    extractor: Arc<dyn Extractor>,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()>,
) {
    tracing::info!(
        concurrency = settings.concurrency,
        extractor = extractor.basis().as_str(),
        poll_interval_ms = settings.poll_interval.as_millis() as u64,
        "worker started"
    );
    let (stop_tx, stop) = watch::channel(false);
    let extract_wake = Arc::new(Notify::new());
    let embed_wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(
        store.clone(),
        vec![extract_wake.clone(), embed_wake.clone()],
    ));

    let extraction = Arc::new(Extraction {
        store: store.clone(),
        extractor,
        settings: settings.clone(),
        stop: stop.clone(),
    });
    let extract_loop = {
        let x = extraction.clone();
        drive(
            "extract",
            extract_wake,
            settings.poll_interval,
            stop.clone(),
            move || {
                let x = x.clone();
                async move { x.pass().await }
            },
        )
    };
    let embed_loop = {
        let (store, settings) = (store.clone(), settings.clone());
        drive(
            "embed",
            embed_wake,
            settings.poll_interval,
            stop.clone(),
            move || {
                let (store, settings) = (store.clone(), settings.clone());
                async move { embed_pass(&store, &settings).await }
            },
        )
    };
    let housekeeping = {
        let store = store.clone();
        let mut stop = stop.clone();
        let (sweep_every, gauge_every) = (settings.expiry_sweep_interval, settings.poll_interval);
        let job_settings = settings.jobs.clone();
        async move {
            let mut schedule = jobs::Schedule::new(&job_settings);
            let mut jobs_tick = tokio::time::interval(Duration::from_secs(1));
            jobs_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sweep = tokio::time::interval(sweep_every);
            let mut gauges = tokio::time::interval(gauge_every);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = *stop.borrow();
                if stopping {
                    break;
                }
                tokio::select! {
                    _ = sweep.tick() => {
                        if let Err(e) = sweep_expired(&store).await {
                            job_outcome("expiry", "error");
                            tracing::warn!(error = %e, "expiry sweep failed");
                        }
                    }
                    _ = gauges.tick() => {
                        if let Err(e) = publish_gauges(&store).await {
                            tracing::debug!(error = %e, "queue gauges not updated");
                        }
                    }
                    _ = jobs_tick.tick() => {
                        for job in schedule.due() {
                            // Logged and recorded by the run itself.
                            let _ = jobs::run(&store, uuid::Uuid::now_v7(), job, &memoire_store::JobScope::default(), &job_settings).await;
                        }
                    }
                    _ = stopped(&mut stop) => break,
                }
            }
        }
    };
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::join!(extract_loop, embed_loop, housekeeping, stopper);
    listener.abort();
    tracing::info!("worker stopped");
}
