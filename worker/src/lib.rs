//! Mémoire's background worker: the loops that drive extraction, episode embedding, the expiry
//! sweep and the periodic jobs. What each step does is a use-case (`memoire-usecases`); this
//! crate decides when steps run.
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
//! - **embedding**: episodes without a vector, in batches under a lease (no row stays locked
//!   while the model runs; a dead worker's batch is taken over when the lease ends), with the
//!   same retry rules.
//! - **expiry sweep and gauges**: memories past their expiry get an `expire` version; queue
//!   depths and the dead-letter count are published as metrics; tables whose planner statistics
//!   autovacuum has left stale (off, or behind after a burst) are analyzed.
//!
//! Ingest's statement trigger sends a notification that wakes the loops at once; the reconciler
//! also runs every `poll_interval`, so a lost notification, a restarted worker or a restarted
//! Postgres only delay work. Database errors never stop the worker: it logs, waits and resumes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use memoire_core::Error;
use memoire_core::extract::Extractor;
use memoire_core::model::Scope;
use memoire_usecases::jobs::Schedule;
use memoire_usecases::{JobScope, PendingEpisode, Step, UseCases, job_outcome};
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

/// The worker's own settings (what each step does is the use-cases' settings).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often the expiry sweep runs.
    pub expiry_sweep_interval: Duration,
    /// How often the reconciler scans for pending work without a notification.
    pub poll_interval: Duration,
    /// Users extracted at once.
    pub concurrency: usize,
    /// Episodes embedded per model call.
    pub embed_batch: u32,
}

/// Episodes read per claim round.
const EPISODES_PER_ROUND: i64 = 32;

/// The extraction side of the worker, shared by its tasks.
#[derive(Debug)]
struct Extraction {
    uc: UseCases,
    extractor: Arc<dyn Extractor>,
    settings: WorkerSettings,
    stop: watch::Receiver<bool>,
}

impl Extraction {
    /// One reconciler pass: every due user, `concurrency` at a time. Returns how many episodes
    /// were finished (extracted or dead-lettered).
    async fn pass(&self) -> memoire_core::Result<usize> {
        let scopes = self
            .uc
            .store()
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
        let store = self.uc.store();
        let Some(_claim) = store.claim_scope(&scope).await? else {
            return Ok(0); // another worker has this user
        };
        let mut done = 0;
        loop {
            let episodes: Vec<PendingEpisode> =
                store.pending_episodes(&scope, EPISODES_PER_ROUND).await?;
            if episodes.is_empty() {
                return Ok(done);
            }
            for ep in &episodes {
                let stopping = *self.stop.borrow();
                if stopping || ep.extract_after.is_some_and(|t| t > store.now()) {
                    return Ok(done);
                }
                let span = tracing::info_span!("extract_episode", episode_id = %ep.id);
                match self
                    .uc
                    .extract_episode(ep, self.extractor.as_ref())
                    .instrument(span)
                    .await?
                {
                    Step::Next => done += 1,
                    Step::Wait => return Ok(done),
                }
            }
        }
    }
}

/// Embeds pending episodes until none is left (or an error). Returns how many.
async fn embed_pass(uc: &UseCases, settings: &WorkerSettings) -> memoire_core::Result<usize> {
    let retry = uc.settings().extract.retry;
    let mut total = 0;
    loop {
        let started = std::time::Instant::now();
        match uc
            .embed_pending_episodes(settings.embed_batch as i64, &retry)
            .instrument(tracing::info_span!("embed_episodes"))
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

async fn publish_gauges(uc: &UseCases) -> memoire_core::Result<()> {
    let d = uc.store().queue_depths().await?;
    metrics::gauge!("memoire_queue_depth", "queue" => "extract").set(d.extract as f64);
    metrics::gauge!("memoire_queue_depth", "queue" => "embed").set(d.embed as f64);
    metrics::gauge!("memoire_dead_letters").set(d.dead_letters as f64);
    metrics::gauge!("memoire_queue_oldest_age_seconds", "queue" => "extract")
        .set(d.extract_oldest_age.as_secs_f64());
    metrics::gauge!("memoire_queue_oldest_age_seconds", "queue" => "embed")
        .set(d.embed_oldest_age.as_secs_f64());
    Ok(())
}

/// Listens for Ingest's notifications and wakes the loops; reconnects after errors.
async fn listen(uc: UseCases, wakes: Vec<Arc<Notify>>) {
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(uc.store().pool()).await?;
            l.listen(memoire_usecases::EPISODES_CHANNEL).await?;
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
    uc: UseCases,
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
        uc.clone(),
        vec![extract_wake.clone(), embed_wake.clone()],
    ));

    let extraction = Arc::new(Extraction {
        uc: uc.clone(),
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
        let (uc, settings) = (uc.clone(), settings.clone());
        drive(
            "embed",
            embed_wake,
            settings.poll_interval,
            stop.clone(),
            move || {
                let (uc, settings) = (uc.clone(), settings.clone());
                async move { embed_pass(&uc, &settings).await }
            },
        )
    };
    let housekeeping = {
        let uc = uc.clone();
        let mut stop = stop.clone();
        let (sweep_every, gauge_every) = (settings.expiry_sweep_interval, settings.poll_interval);
        async move {
            let mut schedule = Schedule::new(&uc.settings().jobs);
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
                        if let Err(e) = uc.sweep_expired().await {
                            job_outcome("expiry", "error");
                            tracing::warn!(error = %e, "expiry sweep failed");
                        }
                        match uc.store().analyze_stale_tables().await {
                            Ok(tables) if !tables.is_empty() => {
                                tracing::info!(?tables, "refreshed stale planner statistics");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "refreshing planner statistics failed"),
                        }
                    }
                    _ = gauges.tick() => {
                        if let Err(e) = publish_gauges(&uc).await {
                            tracing::debug!(error = %e, "queue gauges not updated");
                        }
                    }
                    _ = jobs_tick.tick() => {
                        for job in schedule.due() {
                            // Logged and recorded by the run itself.
                            let _ = uc.run_job(uuid::Uuid::now_v7(), job, &JobScope::default()).await;
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
