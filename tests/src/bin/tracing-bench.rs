//! What exporting traces costs (release build: `make bench-tracing`): `Recall` p50 / p95 / p99
//! over real gRPC against three `memoire-server` processes (the release binary) on one database —
//! "on" exports every span over OTLP to a collector in this process
//! (`otlp_endpoint`, sample ratio 1), "off" has no `otlp_endpoint`, and "off2", configured like
//! "off", is a control: its difference from "off" is what the bench cannot resolve. Calls rotate
//! among the three (which goes first rotates too), 20 questions in turn whose embeddings are
//! cached after the warm-up. Prints each side, the difference of the p50s from "off", the median
//! of the paired differences, and how many spans the collector received. `--quick` for a smoke
//! run.
//! `MEMOIRE_SERVER_BIN` names another server binary.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use memoire_sdk::Client;
use memoire_tests::otlp::Collector;
use memoire_tests::{BENCH_QUERIES, bench_fact, bench_recall, percentile_ms, proto as pb};
use sqlx::Connection as _;

const ADMIN_KEY: &str = "tracing-bench-admin-key-0123456789";

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn server_binary() -> PathBuf {
    std::env::var_os("MEMOIRE_SERVER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/memoire-server"),
        PathBuf::from,
    )
}

/// A server process and a client of it.
struct Side {
    name: &'static str,
    process: Child,
    client: Client,
    recall: Vec<Duration>,
}

impl Side {
    async fn start(
        name: &'static str,
        database_url: &str,
        otlp: Option<SocketAddr>,
    ) -> anyhow::Result<Side> {
        let (grpc, http) = (free_addr()?, free_addr()?);
        let mut cmd = Command::new(server_binary());
        cmd.env("MEMOIRE_DATABASE_URL", database_url)
            .env("MEMOIRE_ADMIN_KEY", ADMIN_KEY)
            .env("MEMOIRE_GRPC_ADDR", grpc.to_string())
            .env("MEMOIRE_HTTP_ADDR", http.to_string())
            .env("MEMOIRE_WORKER_EMBEDDED", "false")
            .env("MEMOIRE_EMBEDDING_MODEL_DIR", memoire_tests::model_dir())
            .env_remove("MEMOIRE_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(addr) = otlp {
            cmd.env("MEMOIRE_OTLP_ENDPOINT", format!("http://{addr}"));
        }
        let process = cmd
            .spawn()
            .with_context(|| format!("{} (make release builds it)", server_binary().display()))?;
        let client = Client::builder(format!("http://{grpc}"))
            .api_key(ADMIN_KEY)
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .admin()
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "{name} did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Side {
            name,
            process,
            client,
            recall: Vec::new(),
        })
    }

    async fn recall(&mut self, i: usize, record: bool) -> anyhow::Result<()> {
        let took = bench_recall(&self.client, i).await?;
        if record {
            self.recall.push(took);
        }
        Ok(())
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (seed, calls) = if quick { (100, 200) } else { (1_000, 2_000) };
    let base = memoire_tests::base_database_url();
    let db = format!("memoire_tracing_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let url = memoire_tests::with_database(&base, &db);
    let (collector, otlp) = Collector::start().await?;
    let mut sides = vec![
        Side::start("on", &url, Some(otlp)).await?,
        Side::start("off2", &url, None).await?,
        Side::start("off", &url, None).await?,
    ];
    const OFF: usize = 2;
    let tenant = sides[0]
        .client
        .admin()
        .create_tenant(pb::CreateTenantRequest {
            name: "bench".into(),
        })
        .await?
        .into_inner()
        .tenant
        .context("tenant")?
        .id;
    let key = sides[0]
        .client
        .admin()
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: tenant,
            name: "bench".into(),
            role: pb::KeyRole::Writer as i32,
            rate_limit_rps: 0,
        })
        .await?
        .into_inner()
        .secret;
    for side in &mut sides {
        side.client = side.client.with_api_key(&key)?;
    }
    for i in 0..seed {
        sides[OFF].client.memory().teach(bench_fact(i)).await?;
    }
    println!("tracing-bench: {seed} memories, {calls} recalls per side, concurrency 1");
    for side in &mut sides {
        for i in 0..2 * BENCH_QUERIES.len() {
            side.recall(i, false).await?;
        }
    }
    let n = sides.len();
    for i in 0..calls {
        for j in 0..n {
            sides[(i + j) % n].recall(i, true).await?;
        }
    }
    // Call i of a side minus call i of "off", made moments apart: their median cancels drift.
    let paired = |side: &Side| -> f64 {
        let mut d: Vec<f64> = side
            .recall
            .iter()
            .zip(&sides[OFF].recall)
            .map(|(x, off)| (x.as_secs_f64() - off.as_secs_f64()) * 1000.0)
            .collect();
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied().unwrap_or(0.0)
    };
    let paired: Vec<f64> = sides.iter().map(paired).collect();
    println!(
        "{:<8} {:<4} {:>8} {:>8} {:>8}",
        "call", "side", "p50 ms", "p95 ms", "p99 ms"
    );
    let mut p50 = Vec::new();
    for side in &mut sides {
        side.recall.sort();
        let lat = &side.recall;
        println!(
            "{:<8} {:<4} {:>8.3} {:>8.3} {:>8.3}",
            "Recall",
            side.name,
            percentile_ms(lat, 0.5),
            percentile_ms(lat, 0.95),
            percentile_ms(lat, 0.99)
        );
        p50.push(percentile_ms(lat, 0.5));
    }
    // Let the last batch go out before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let spans = collector.spans();
    let rpcs = spans
        .iter()
        .filter(|r| r.span.name == "memoire.v1.MemoryService/Recall")
        .count();
    for (label, j) in [("exporting traces", 0), ("nothing (control)", 1)] {
        println!(
            "cost of {label}: Recall {:+.3} ms (paired {:+.3}) — p50 difference (median of \
             paired differences)",
            p50[j] - p50[OFF],
            paired[j]
        );
    }
    println!(
        "the collector received {} spans, {rpcs} of them Recall calls",
        spans.len()
    );
    drop(sides);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
