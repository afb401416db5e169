//! Conscious benchmark over real gRPC against real Postgres and Redis (release build:
//! `make bench-conscious`): one user with 24 essential memories (and 200 others) and a session
//! of 8 recent turns; `Conscious` latency p50 / p95 / p99 and calls/s —
//! warm (served from Redis), cold (invalidated before every call, so rebuilt from Postgres and
//! cached again), and with Redis unreachable (always Postgres). `--quick` for a smoke run.

use std::time::{Duration, Instant};

use memoire_sdk::Client;
use memoire_store::RedisCache;
use memoire_tests::{TestServer, percentile_ms, proto as pb};
use uuid::Uuid;

async fn seed(client: &Client) -> anyhow::Result<()> {
    let mut m = client.memory();
    for i in 0..224 {
        let essential = i < 24;
        m.teach(pb::TeachRequest {
            user_id: "u".into(),
            kind: if essential {
                pb::MemoryKind::Preference
            } else {
                pb::MemoryKind::Fact
            } as i32,
            content: format!("Statement number {i} about the user's habits, tastes and plans"),
            importance: Some(if essential { 0.8 } else { 0.3 }),
            ..Default::default()
        })
        .await?;
    }
    let messages = (0..8)
        .map(|i| pb::Message {
            role: if i % 2 == 0 {
                pb::MessageRole::User
            } else {
                pb::MessageRole::Assistant
            } as i32,
            content: format!("Turn {i} of the current conversation, about planning a weekend trip"),
            ..Default::default()
        })
        .collect();
    m.ingest(pb::IngestRequest {
        user_id: "u".into(),
        session_id: "s".into(),
        messages,
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn measure<F, Fut>(
    client: &Client,
    calls: usize,
    mut before_each: F,
) -> anyhow::Result<(Vec<Duration>, f64, i32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut m = client.memory();
    let mut lat = Vec::with_capacity(calls);
    let mut source = 0;
    let mut busy = Duration::ZERO;
    for _ in 0..calls {
        before_each().await;
        let t = Instant::now();
        let r = m
            .conscious(pb::ConsciousRequest {
                user_id: "u".into(),
                session_id: Some("s".into()),
                ..Default::default()
            })
            .await?
            .into_inner();
        let e = t.elapsed();
        busy += e;
        lat.push(e);
        anyhow::ensure!(
            r.essential.len() == 24 && r.recent.len() == 8,
            "wrong answer"
        );
        source = r.source;
    }
    lat.sort();
    Ok((lat, calls as f64 / busy.as_secs_f64(), source))
}

fn report(label: &str, r: &(Vec<Duration>, f64, i32)) {
    let source = pb::ConsciousSource::try_from(r.2)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("CONSCIOUS_SOURCE_")
                .to_lowercase()
        })
        .unwrap_or_default();
    println!(
        "{label:<22} {source:>9} {:>8.3} {:>8.3} {:>8.3} {:>9.0}",
        percentile_ms(&r.0, 0.5),
        percentile_ms(&r.0, 0.95),
        percentile_ms(&r.0, 0.99),
        r.1
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 200 } else { 3_000 };
    println!("conscious-bench: 24 essential memories (224 in all) + 8 recent turns, concurrency 1");
    println!(
        "{:<22} {:>9} {:>8} {:>8} {:>8} {:>9}",
        "case", "source", "p50 ms", "p95 ms", "p99 ms", "calls/s"
    );
    let server = TestServer::start_with(|c| c.log = "warn".into(), None).await;
    let (tenant, client) = server.tenant("bench", pb::KeyRole::Writer).await;
    seed(&client).await?;
    // Warm-up.
    measure(&client, 50, || async {}).await?;
    report("warm", &measure(&client, calls, || async {}).await?);

    // Cold: bump the user's generation (what every write does) before each call.
    let redis = RedisCache::connect(&server.config.redis_url, Duration::from_secs(1)).await?;
    let cache = memoire_store::ConsciousCache::new(redis);
    let tenant: Uuid = tenant.parse()?;
    let cold = measure(&client, calls / 3, || {
        let cache = cache.clone();
        async move { cache.invalidate(tenant, "u", "default").await }
    })
    .await?;
    report("cold (after a write)", &cold);

    // Redis unreachable.
    let down = TestServer::start_with(
        |c| {
            c.log = "error".into();
            c.redis_url = "redis://127.0.0.1:1".into();
        },
        None,
    )
    .await;
    let (_, client) = down.tenant("bench", pb::KeyRole::Writer).await;
    seed(&client).await?;
    measure(&client, 50, || async {}).await?;
    report(
        "redis down",
        &measure(&client, calls / 3, || async {}).await?,
    );
    Ok(())
}
