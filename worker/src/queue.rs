//! The worker's apalis backends over the episodes table, and the periodic schedule they lack.
//!
//! The episodes table is the queue: Ingest's commit is the enqueue, and the transaction that
//! writes an episode's memories marks it extracted (the acknowledgement), so there is no broker
//! to lose or duplicate anything. A backend here only decides *what is due*: it reads the table
//! when Ingest's notification wakes it or every poll interval (the reconciler, which also finds
//! what was said while no worker listened), claims the work, and hands the claim to apalis as a
//! task. Its stream never ends and never fails — a database error is logged and retried after a
//! backoff — so a restarted Postgres leaves the worker waiting, never `Dead`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::context::WorkerContext;
use apalis_cron::{Tick, timezone::Utc};
use futures::stream::{BoxStream, StreamExt};
use memoire_core::model::Scope;
use memoire_usecases::{EmbedClaim, ScopeClaim, UseCases};
use tokio::sync::Notify;

/// Longest wait between attempts while the database fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An apalis backend whose tasks are the items of a stream that neither ends nor fails,
/// numbered in the order they were handed out (the id apalis' spans carry).
pub struct Queue<T> {
    tasks: BoxStream<'static, T>,
    handed_out: u64,
}

impl<T> Queue<T> {
    pub fn new(tasks: BoxStream<'static, T>) -> Self {
        Queue {
            tasks,
            handed_out: 0,
        }
    }
}

impl<T: Send + 'static> Backend for Queue<T> {
    type Task = Task<T>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<T>, Infallible>>> {
        self.tasks.poll_next_unpin(cx).map(|next| {
            next.map(|t| {
                self.handed_out += 1;
                Ok(TaskBuilder::new(t)
                    .task_id(TaskId::Int(self.handed_out))
                    .build())
            })
        })
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
}

impl<T> BackendConfig for Queue<T> {
    type Args = T;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}

/// When a backend reads the table next: at once when woken (Ingest's notification, or a task
/// that found work), else after the poll interval — or after a backoff that doubles while the
/// database fails.
struct Pace {
    wake: Arc<Notify>,
    every: Duration,
    backoff: Duration,
}

impl Pace {
    fn new(wake: Arc<Notify>, every: Duration) -> Self {
        Pace {
            wake,
            every,
            backoff: every,
        }
    }

    async fn wait(&self) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(self.backoff) => {}
        }
    }

    fn ok(&mut self) {
        self.backoff = self.every;
    }

    fn failed(&mut self, queue: &str, e: &memoire_core::Error) {
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tracing::warn!(queue, error = %e, retry_in_ms = self.backoff.as_millis() as u64, "reading the queue failed; retrying");
    }
}

/// A user+namespace whose episodes are due for extraction, claimed by this worker.
#[derive(Debug)]
pub struct Claimed {
    pub scope: Scope,
    /// The user's advisory lock: held while the task runs, released when it is dropped or
    /// when the worker's connection dies.
    pub claim: ScopeClaim,
}

/// Users+namespaces with due episodes, oldest first, each claimed just before it is handed
/// out (so a claim is only taken when the worker has room for it). One listing of up to
/// `list` users is handed out before the table is read again; a user claimed by another
/// worker is skipped.
pub fn due_scopes(
    uc: UseCases,
    wake: Arc<Notify>,
    every: Duration,
    list: i64,
) -> BoxStream<'static, Claimed> {
    struct State {
        uc: UseCases,
        pace: Pace,
        due: VecDeque<Scope>,
        listed: bool,
    }
    let state = State {
        uc,
        pace: Pace::new(wake, every),
        due: VecDeque::new(),
        listed: false,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            while let Some(scope) = s.due.pop_front() {
                match s.uc.store().claim_scope(&scope).await {
                    Ok(Some(claim)) => return Some((Claimed { scope, claim }, s)),
                    Ok(None) => {} // another worker has this user
                    Err(e) => {
                        s.due.clear();
                        s.pace.failed("extract", &e);
                    }
                }
            }
            if s.listed {
                s.pace.wait().await;
            }
            s.listed = true;
            match s.uc.store().pending_scopes(list).await {
                Ok(scopes) => {
                    s.pace.ok();
                    s.due = scopes.into();
                }
                Err(e) => s.pace.failed("extract", &e),
            }
        }
    })
    .boxed()
}

/// Batches of up to `batch` episodes without a vector, each claimed under the embedding lease.
/// The next batch is claimed as soon as the worker has room; the table is read again after a
/// wake or the poll interval once none is left.
pub fn unembedded(
    uc: UseCases,
    wake: Arc<Notify>,
    every: Duration,
    batch: i64,
) -> BoxStream<'static, EmbedClaim> {
    futures::stream::unfold(
        (uc, Pace::new(wake, every), false),
        move |(uc, mut pace, mut waiting)| async move {
            loop {
                if waiting {
                    pace.wait().await;
                }
                match uc.claim_unembedded(batch).await {
                    Ok(Some(claim)) => {
                        pace.ok();
                        return Some((claim, (uc, pace, false)));
                    }
                    Ok(None) => pace.ok(),
                    Err(e) => pace.failed("embed", &e),
                }
                waiting = true;
            }
        },
    )
    .boxed()
}

/// An apalis-cron schedule that fires every `0` (whole seconds, at least one): the worker's
/// housekeeping, whose settings are intervals.
#[derive(Debug, Clone)]
pub struct Every(pub Duration);

impl apalis_cron::Schedule<Utc> for Every {
    fn next_tick(&mut self, _: &Utc) -> Option<Tick<Utc>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Tick::new(now + self.0.as_secs().max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apalis_cron::Schedule as _;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    #[test]
    fn every_fires_one_interval_from_now_and_never_sooner_than_a_second() {
        let before = now();
        let tick = Every(Duration::from_secs(60))
            .next_tick(&Utc)
            .expect("tick")
            .get_timestamp();
        assert!((before + 60..=now() + 60).contains(&tick), "{tick}");
        let tick = Every(Duration::from_millis(200))
            .next_tick(&Utc)
            .expect("tick")
            .get_timestamp();
        assert!(
            tick > before,
            "a sub-second interval fires a second later: {tick}"
        );
    }
}
