//! The tower layer that measures the worker's tasks.

use std::task::{Context, Poll};

/// A tower layer that counts and times a worker's tasks:
/// `memoire_worker_tasks_total{worker,outcome=ok|error}` and
/// `memoire_worker_task_seconds{worker}`.
#[derive(Debug, Clone, Copy)]
pub struct TaskMetrics(pub &'static str);

impl<S> tower::Layer<S> for TaskMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            worker: self.0,
        }
    }
}

/// A service measured by [`TaskMetrics`].
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    worker: &'static str,
}

impl<S, R> tower::Service<R> for Measured<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: R) -> Self::Future {
        let (worker, started) = (self.worker, std::time::Instant::now());
        let done = self.inner.call(task);
        Box::pin(async move {
            let out = done.await;
            let outcome = if out.is_ok() { "ok" } else { "error" };
            metrics::counter!("memoire_worker_tasks_total", "worker" => worker, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("memoire_worker_task_seconds", "worker" => worker)
                .record(started.elapsed().as_secs_f64());
            out
        })
    }
}
