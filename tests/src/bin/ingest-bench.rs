//! Ingest benchmark over real gRPC against real Postgres (release build: `make bench-ingest`).
//!
//! 1. Acknowledgement: single-message and 10-message `Ingest` calls at concurrency 1 and 8,
//!    spread over 200 users — p50 / p95 / p99 latency of the acknowledgement and messages/s —
//!    with no worker running (the write path alone), then with the embedded worker extracting
//!    and embedding beside it (the one-command default).
//! 2. Extraction: 5,000 messages queued with the worker stopped, then one worker (rule
//!    extractor, local embedding model) drains the queue — extraction and episode-embedding
//!    throughput, and how many statements sqlx logged as slow (over a second: a lock wait).
//!
//! `--quick` runs a smaller version (for a smoke test).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memoire_sdk::Client;
use memoire_tests::{TestServer, percentile_ms, proto as pb};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer, filter};

/// Counts sqlx's "slow statement" warnings (target `sqlx::query`, level WARN).
struct SlowStatements(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for SlowStatements {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

const CITIES: &[&str] = &[
    "Dallas", "Lisbon", "Osaka", "Denver", "Nairobi", "Bergen", "Quito", "Lyon", "Perth", "Austin",
];
const FOODS: &[&str] = &[
    "sushi",
    "ramen",
    "tacos",
    "falafel",
    "risotto",
    "pho",
    "curry",
    "dumplings",
    "paella",
];

/// The i-th message: a mix of statements the rules pick up and small talk they ignore.
fn message(i: usize) -> String {
    match i % 5 {
        0 => format!("I just moved to {}.", CITIES[i / 5 % CITIES.len()]),
        1 => format!(
            "I love {}, especially on Fridays.",
            FOODS[i / 5 % FOODS.len()]
        ),
        2 => "What do you think the weather will be like this weekend?".to_owned(),
        3 => format!("My sister is called Maya and she works at Acme {}.", i % 97),
        _ => format!(
            "Can you remind me about the meeting at {} o'clock?",
            i % 12 + 1
        ),
    }
}

struct Run {
    latencies: Vec<Duration>,
    messages: usize,
    wall: f64,
}

/// `calls` Ingest calls of `batch` messages each from `concurrency` clients.
async fn drive(
    client: &Client,
    calls: usize,
    batch: usize,
    concurrency: usize,
    offset: usize,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut m = client.memory();
            let mut lat = Vec::new();
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    break;
                }
                let base = offset + call * batch;
                let messages = (base..base + batch)
                    .map(|i| pb::Message {
                        role: pb::MessageRole::User as i32,
                        content: message(i),
                        message_id: Some(format!("m{i}")),
                        ..Default::default()
                    })
                    .collect();
                let t = Instant::now();
                m.ingest(pb::IngestRequest {
                    user_id: format!("user{}", call % 200),
                    session_id: "s".into(),
                    messages,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("ingest failed: {e}"))?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    latencies.sort();
    Ok(Run {
        messages: latencies.len() * batch,
        latencies,
        wall: started.elapsed().as_secs_f64(),
    })
}

fn report(label: &str, batch: usize, concurrency: usize, r: &Run) {
    println!(
        "{label:<16} {batch:>5} {concurrency:>5} {:>8.2} {:>8.2} {:>8.2} {:>10.0} {:>8}",
        percentile_ms(&r.latencies, 0.50),
        percentile_ms(&r.latencies, 0.95),
        percentile_ms(&r.latencies, 0.99),
        r.messages as f64 / r.wall,
        r.latencies.len()
    );
}

async fn pending(server: &TestServer, column: &str) -> anyhow::Result<i64> {
    let sql = format!("SELECT count(*) FROM episodes WHERE {column} IS NULL");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(server.pool())
        .await?)
}

/// A quiet server without an embedded worker, and a writer of a tenant of it.
async fn workerless() -> (TestServer, memoire_sdk::Client) {
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.log = "warn".into();
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("bench", pb::KeyRole::Writer).await;
    (server, client)
}

/// Teach at concurrency 1: one user, distinct facts (each embedded and resolved against the
/// user's memories), reported in halves so that growth with the user's history shows.
async fn teach(calls: usize) -> anyhow::Result<()> {
    println!("ingest-bench: Teach over gRPC, concurrency 1, one user ({calls} calls)");
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>10}",
        "calls", "p50 ms", "p95 ms", "p99 ms", "calls/s"
    );
    let (_server, client) = workerless().await;
    let mut m = client.memory();
    for half in 0..2 {
        let mut took = Vec::with_capacity(calls / 2);
        let started = Instant::now();
        for i in 0..calls / 2 {
            let t = Instant::now();
            m.teach(pb::TeachRequest {
                user_id: "u".into(),
                kind: pb::MemoryKind::Fact as i32,
                content: format!("{} (note {})", message(half * calls + i), half * calls + i),
                ..Default::default()
            })
            .await?;
            took.push(t.elapsed());
        }
        let wall = started.elapsed().as_secs_f64();
        took.sort();
        println!(
            "{:<16} {:>8.2} {:>8.2} {:>8.2} {:>10.1}",
            format!("{}..{}", half * calls / 2, (half + 1) * calls / 2),
            percentile_ms(&took, 0.50),
            percentile_ms(&took, 0.95),
            percentile_ms(&took, 0.99),
            took.len() as f64 / wall
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Measured as the binaries run: one core per forward pass of the model.
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let calls = 4_000 / scale;
    let extraction_messages = 5_000 / scale;
    let slow = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(
        SlowStatements(slow.clone()).with_filter(filter::filter_fn(|m| {
            m.target() == "sqlx::query" && *m.level() == tracing::Level::WARN
        })),
    ))?;

    println!("ingest-bench: acknowledgement of Ingest over gRPC (127.0.0.1, 200 users)");
    println!(
        "{:<16} {:>5} {:>5} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "worker", "batch", "conc", "p50 ms", "p95 ms", "p99 ms", "msgs/s", "calls"
    );
    let mut offset = 0;
    for (label, embedded) in [("none", false), ("embedded", true)] {
        let server = TestServer::start_with(
            |c| {
                c.worker_embedded = embedded;
                c.database_max_connections = 20;
                c.log = "warn".into();
            },
            None,
        )
        .await;
        let (_, client) = server.tenant("bench", pb::KeyRole::Writer).await;
        // Warm-up: connections, prepared statements.
        drive(&client, 200 / scale, 1, 4, 10_000_000).await?;
        for (batch, concurrency) in [(1, 1), (1, 8), (10, 8)] {
            let n = if batch == 1 { calls } else { calls / 4 };
            let r = drive(&client, n, batch, concurrency, offset).await?;
            offset += n * batch;
            report(label, batch, concurrency, &r);
        }
    }

    println!();
    teach(if quick { 200 } else { 1_000 }).await?;

    println!();
    println!("ingest-bench: extraction (rule extractor, local embedding model, one worker)");
    let (server, client) = workerless().await;
    drive(&client, extraction_messages / 10, 10, 4, 0).await?;
    let slow_before = slow.load(Ordering::Relaxed);
    let started = Instant::now();
    let worker = server.start_worker(|c| c.worker_concurrency = 2).await;
    let (mut extracted_at, mut embedded_at) = (None, None);
    while extracted_at.is_none() || embedded_at.is_none() {
        if extracted_at.is_none() && pending(&server, "extracted_at").await? == 0 {
            extracted_at = Some(started.elapsed().as_secs_f64());
        }
        if embedded_at.is_none() && pending(&server, "embedding").await? == 0 {
            embedded_at = Some(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the worker stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    let memories: i64 = sqlx::query_scalar("SELECT count(*) FROM memories")
        .fetch_one(server.pool())
        .await?;
    let (extract_s, embed_s) = (extracted_at.unwrap_or(0.0), embedded_at.unwrap_or(0.0));
    println!(
        "{extraction_messages} messages: extracted in {extract_s:.1} s ({:.0} messages/s, {memories} memories written); \
         episodes embedded in {embed_s:.1} s ({:.0} episodes/s); both loops share the 2 cores; \
         {} slow statements (over 1 s) logged meanwhile",
        extraction_messages as f64 / extract_s,
        extraction_messages as f64 / embed_s,
        slow.load(Ordering::Relaxed) - slow_before
    );
    Ok(())
}
