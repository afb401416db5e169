//! Mémoire's background worker, on apalis: extraction, episode embedding, the expiry sweep
//! and the periodic jobs, each an apalis worker under one [`Monitor`]. What each step does is a
//! use-case (`memoire-usecases`); this crate decides when steps run.
//!
//! - **extraction**: the backend (`queue::due_scopes`) reads the users with due episodes — when
//!   Ingest's notification wakes it, and every `poll_interval` (the reconciler) — and claims each
//!   user (a Postgres advisory lock per user+namespace, so several workers share the load and
//!   one user's episodes are resolved in the order they were said) when the worker has room:
//!   `concurrency` users at once. The task extracts the user's due episodes in order; each is
//!   extracted, resolved and marked done in one transaction — the acknowledgement. A failure is
//!   retried with exponential backoff stored on the episode (the user's later episodes wait, to
//!   keep the order) and after `max_attempts` goes to the dead-letter queue, which lets the
//!   later episodes proceed.
//! - **embedding** (`queue::unembedded`): episodes without a vector, a batch per task, claimed
//!   under a lease (no row stays locked while the model runs; a dead worker's batch is taken
//!   over when the lease ends), with the same retry rules; the task times out at the lease.
//! - **the periodic jobs** (optimize, decay, reflect, retention, re-embed) run on apalis-cron
//!   schedules; a run first takes the job's advisory lock, so one job runs once at a time across
//!   every worker and server sharing the database (a tick that finds it running is skipped).
//! - **housekeeping**: the expiry sweep (memories past their expiry get an `expire` version;
//!   planner statistics autovacuum left stale are refreshed) and the queue gauges, on intervals.
//!
//! Database errors never stop a worker: the backends log, back off and read again, a failed
//! task is logged, and a worker that fails anyway (a panic outside a task) is restarted by the
//! monitor. On shutdown no new task starts; an extraction in flight finishes the episode it is
//! on and leaves the rest pending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{Data, Event, Monitor, WorkerBuilder, WorkerBuilderExt as _, WorkerContext};
use apalis_cron::{CronScheduler, Tick};
use memoire_core::Error;
use memoire_core::extract::Extractor;
use memoire_usecases::jobs::Job;
use memoire_usecases::{EmbedClaim, PendingEpisode, Step, UseCases, job_outcome};
use tokio::sync::Notify;
use tracing::Instrument as _;

mod measure;
mod queue;

use measure::TaskMetrics;
use queue::{Claimed, Every, Queue};

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
    /// The periodic jobs that run on a schedule (the others run only when triggered).
    pub schedules: Vec<(Job, cron::Schedule)>,
}

/// Episodes read per round of one user's extraction.
const EPISODES_PER_ROUND: i64 = 32;

/// What the extraction task needs.
#[derive(Debug)]
struct Extraction {
    uc: UseCases,
    extractor: Arc<dyn Extractor>,
    /// Wakes the backend: a task that found work has the queue read again at once.
    wake: Arc<Notify>,
}

/// The extraction task: `claimed`'s due episodes, in the order they were said, under its claim.
/// Returns how many were finished (extracted or dead-lettered).
async fn extract(
    claimed: Claimed,
    worker: WorkerContext,
    x: Data<Arc<Extraction>>,
) -> Result<usize, Error> {
    let Claimed { scope, claim } = claimed;
    let store = x.uc.store();
    let mut done = 0;
    'rounds: loop {
        let episodes: Vec<PendingEpisode> =
            store.pending_episodes(&scope, EPISODES_PER_ROUND).await?;
        if episodes.is_empty() {
            break;
        }
        // The due ones: an episode retried later holds back the user's later episodes.
        let now = store.now();
        let due = episodes
            .iter()
            .position(|ep| ep.extract_after.is_some_and(|t| t > now))
            .unwrap_or(episodes.len());
        let mut rest = &episodes[..due];
        while !rest.is_empty() {
            if worker.is_shutting_down() {
                break 'rounds;
            }
            let span = tracing::info_span!("extract_run", first_episode_id = %rest[0].id);
            let (n, step) =
                x.uc.extract_run(rest, x.extractor.as_ref())
                    .instrument(span)
                    .await?;
            done += n;
            rest = &rest[n..];
            if step == Step::Wait {
                break 'rounds;
            }
        }
        if due < episodes.len() {
            break;
        }
    }
    // Released before the backend is woken, so that it can claim the user again at once.
    claim.release().await?;
    if done > 0 {
        x.wake.notify_one();
    }
    Ok(done)
}

/// The embedding task: one claimed batch.
async fn embed(claim: EmbedClaim, uc: Data<UseCases>) -> Result<usize, Error> {
    let started = Instant::now();
    let retry = uc.settings().extract.retry;
    match uc
        .embed_claimed(claim, &retry)
        .instrument(tracing::info_span!("embed_episodes"))
        .await
    {
        Ok(n) => {
            metrics::histogram!("memoire_embedding_duration_seconds", "kind" => "episodes")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("memoire_episodes_embedded_total").increment(n as u64);
            job_outcome("embed", "ok");
            Ok(n)
        }
        Err(e) => {
            if !matches!(e, Error::Unavailable(_)) {
                job_outcome("embed", "retry");
            }
            Err(e)
        }
    }
}

/// A periodic job's scheduled run: skipped while the job's previous tick still waits or runs
/// here, or while the job runs elsewhere. This process runs one scheduled job at a time (`slot`):
/// each holds two connections (its lock and its work) of a pool sized for that.
async fn scheduled(
    _: Tick,
    job: Data<Job>,
    uc: Data<UseCases>,
    alone: Data<Alone>,
    slot: Data<JobSlot>,
) -> Result<(), Error> {
    let Some(_mine) = alone.start() else {
        return Ok(());
    };
    let Ok(_slot) = slot.take().await else {
        return Ok(()); // never closed
    };
    // The run logs and records its own outcome.
    uc.run_scheduled_job(*job).await.map(|_| ())
}

/// The one scheduled job this process runs at a time.
#[derive(Debug, Clone)]
struct JobSlot(Arc<tokio::sync::Semaphore>);

impl JobSlot {
    async fn take(&self) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
        self.0.acquire().await
    }
}

/// One run at a time of a housekeeping task in this process: its ticks keep coming while a run
/// is slow (a cron backend must be polled on time), and a tick that finds the previous run still
/// going is skipped.
#[derive(Debug, Clone, Default)]
struct Alone(Arc<tokio::sync::Mutex<()>>);

impl Alone {
    /// Held while a run goes on; `None` while another one does.
    fn start(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.0.try_lock().ok()
    }
}

/// The expiry sweep, then a refresh of stale planner statistics.
async fn sweep(_: Tick, uc: Data<UseCases>, alone: Data<Alone>) -> Result<(), Error> {
    let Some(_running) = alone.start() else {
        return Ok(());
    };
    if let Err(e) = uc.sweep_expired().await {
        job_outcome("expiry", "error");
        return Err(e);
    }
    let tables = uc.store().analyze_stale_tables().await?;
    if !tables.is_empty() {
        tracing::info!(?tables, "refreshed stale planner statistics");
    }
    Ok(())
}

/// Queue depths and the dead-letter count, as gauges.
async fn gauges(_: Tick, uc: Data<UseCases>, alone: Data<Alone>) -> Result<(), Error> {
    let Some(_running) = alone.start() else {
        return Ok(());
    };
    // Every second: an outage is told by the backends and /readyz, not here.
    if let Err(e) = publish_gauges(&uc).await {
        tracing::debug!(error = %e, "queue gauges not updated");
    }
    Ok(())
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

/// Listens for Ingest's notifications and wakes the backends; reconnects after errors.
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

/// Runs the worker until `shutdown` completes. In-flight tasks finish (an extraction stops
/// after the episode it is on); no new ones start.
pub async fn run(
    uc: UseCases,
    extractor: Arc<dyn Extractor>,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send,
) {
    tracing::info!(
        concurrency = settings.concurrency,
        extractor = extractor.basis().as_str(),
        poll_interval_ms = settings.poll_interval.as_millis() as u64,
        scheduled = ?settings.schedules.iter().map(|(j, s)| format!("{}: {s}", j.as_str())).collect::<Vec<_>>(),
        "worker started"
    );
    let extract_wake = Arc::new(Notify::new());
    let embed_wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(
        uc.clone(),
        vec![extract_wake.clone(), embed_wake.clone()],
    ));
    let every = settings.poll_interval;
    let extraction = Arc::new(Extraction {
        uc: uc.clone(),
        extractor,
        wake: extract_wake.clone(),
    });

    let mut monitor = Monitor::new()
        .register({
            let (uc, x, concurrency) = (uc.clone(), extraction, settings.concurrency);
            move |_| {
                WorkerBuilder::new("extract")
                    .backend(Queue::new(queue::due_scopes(
                        uc.clone(),
                        extract_wake.clone(),
                        every,
                        (concurrency * 8) as i64,
                    )))
                    .data(x.clone())
                    .layer(TaskMetrics("extract"))
                    .concurrency(concurrency)
                    .enable_tracing()
                    .catch_panic()
                    .build(extract)
            }
        })
        .register({
            let (uc, batch) = (uc.clone(), settings.embed_batch as i64);
            // Past the lease another worker may take the batch over.
            let lease = uc.settings().extract.embed_lease;
            move |_| {
                WorkerBuilder::new("embed")
                    .backend(Queue::new(queue::unembedded(
                        uc.clone(),
                        embed_wake.clone(),
                        every,
                        batch,
                    )))
                    .data(uc.clone())
                    .layer(TaskMetrics("embed"))
                    .concurrency(1)
                    .timeout(lease)
                    .enable_tracing()
                    .catch_panic()
                    .build(embed)
            }
        })
        .register({
            let (uc, interval) = (uc.clone(), settings.expiry_sweep_interval);
            move |_| {
                WorkerBuilder::new("expiry-sweep")
                    .backend(CronScheduler::new(Every(interval)))
                    .data(uc.clone())
                    .data(Alone::default())
                    .layer(TaskMetrics("expiry-sweep"))
                    .enable_tracing()
                    .catch_panic()
                    .build(sweep)
            }
        })
        .register({
            let uc = uc.clone();
            move |_| {
                WorkerBuilder::new("queue-gauges")
                    .backend(CronScheduler::new(Every(every)))
                    .data(uc.clone())
                    .data(Alone::default())
                    .catch_panic()
                    .build(gauges)
            }
        });
    let slot = JobSlot(Arc::new(tokio::sync::Semaphore::new(1)));
    for (job, schedule) in settings.schedules {
        let (uc, slot) = (uc.clone(), slot.clone());
        // No concurrency limit: a tick that comes while the job still runs is taken (a cron
        // backend left unpolled past its next tick fails) and skipped.
        monitor = monitor.register(move |_| {
            WorkerBuilder::new(format!("job-{}", job.as_str()))
                .backend(CronScheduler::new(schedule.clone()))
                .data(job)
                .data(uc.clone())
                .data(Alone::default())
                .data(slot.clone())
                .layer(TaskMetrics(job.as_str()))
                .enable_tracing()
                .catch_panic()
                .build(scheduled)
        });
    }
    let result = monitor
        .on_event(|worker, event| {
            if let Event::Error(e) = event {
                tracing::warn!(worker = worker.name(), error = %e, "worker task failed");
            }
        })
        .should_restart(|worker, e| {
            tracing::warn!(worker = worker.name(), error = %e, "worker failed; restarting it");
            true
        })
        .run_with_signal(async {
            shutdown.await;
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "the worker's monitor ended with an error");
    }
    listener.abort();
    tracing::info!("worker stopped");
}
