//! What tenancy hardening costs (release build: `make bench-tenancy`): `Teach` and `Recall`
//! p50 / p95 / p99 over real gRPC, in one run, against five servers on their own databases —
//! "on": row-level security scoping every connection and a tenant with rate limits (request,
//! burst, Ingest and the key's own, all high enough never to refuse) counted in Redis; "rls" and
//! "lim": each part alone; "off": `database_row_level_security = false` and no limits; "off2",
//! configured like "off", a control: its difference from "off" is the bench's own resolution
//! (servers in one process still differ, e.g. in where their model's weights lie). Calls rotate
//! among the five (which goes first rotates too), so all see the same machine. Recall
//! asks 20 queries in turn, their embeddings cached after the warm-up: what is left is the
//! server and Postgres.
//! Last, what the in-process principal cache saves: resolving an API key from Postgres (a miss:
//! a store with a cold cache each time) against from the cache (a hit).
//! `--quick` for a smoke run; `--reverse` starts the servers in the opposite order.

use std::time::{Duration, Instant};

use memoire_sdk::Client;
use memoire_tests::{
    BENCH_QUERIES as QUERIES, TestServer, bench_fact as fact, bench_recall, percentile_ms,
    proto as pb,
};

/// One side of the comparison.
struct Side {
    name: &'static str,
    client: Client,
    /// The API key the client uses, when it is a tenant key of its own.
    secret: Option<String>,
    teach: Vec<Duration>,
    recall: Vec<Duration>,
    _server: TestServer,
}

impl Side {
    async fn start(name: &'static str, rls: bool, limits: bool) -> anyhow::Result<Side> {
        let server = TestServer::start_with(
            |c| {
                c.log = "warn".into();
                c.worker_embedded = false;
                c.database_row_level_security = rls;
            },
            None,
        )
        .await;
        let (tenant, admin) = server.tenant(name, pb::KeyRole::Admin).await;
        let (client, secret) = if limits {
            admin
                .admin()
                .update_tenant(pb::UpdateTenantRequest {
                    tenant_id: tenant.clone(),
                    rate_limit_rps: Some(1_000_000),
                    rate_limit_burst: Some(1_000_000),
                    ingest_rate_limit_mps: Some(1_000_000),
                    ..Default::default()
                })
                .await?;
            let key = admin
                .admin()
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant_id: tenant,
                    name: "bench".into(),
                    role: pb::KeyRole::Writer as i32,
                    rate_limit_rps: 1_000_000,
                })
                .await?
                .into_inner()
                .secret;
            (server.client(Some(&key)), Some(key))
        } else {
            (admin, None)
        };
        Ok(Side {
            name,
            client,
            secret,
            teach: Vec::new(),
            recall: Vec::new(),
            _server: server,
        })
    }

    async fn teach(&mut self, i: usize, record: bool) -> anyhow::Result<()> {
        let t = Instant::now();
        self.client.memory().teach(fact(i)).await?;
        if record {
            self.teach.push(t.elapsed());
        }
        Ok(())
    }

    async fn recall(&mut self, i: usize, record: bool) -> anyhow::Result<()> {
        let took = bench_recall(&self.client, i).await?;
        if record {
            self.recall.push(took);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (seed, calls) = if quick { (100, 200) } else { (1_000, 2_000) };
    // Both, each alone (what each part costs), neither — twice: the second "off" is a control,
    // a server configured like the first, whose difference is what this bench cannot resolve.
    // Servers started earlier in the process measured slower, call for call (by ~0.3 ms per
    // place in this list, the control included): `--reverse` starts them in the opposite order,
    // so that a cost that is only a place shows up as a negative one.
    let reverse = std::env::args().any(|a| a == "--reverse");
    let configs = [
        ("on", true, true),
        ("rls", true, false),
        ("lim", false, true),
        ("off2", false, false),
        ("off", false, false),
    ];
    let mut started = Vec::new();
    for i in 0..configs.len() {
        let at = if reverse { configs.len() - 1 - i } else { i };
        let (name, rls, limits) = configs[at];
        started.push((at, Side::start(name, rls, limits).await?));
    }
    started.sort_by_key(|(at, _)| *at);
    let mut sides: Vec<Side> = started.into_iter().map(|(_, s)| s).collect();
    const OFF: usize = 4;
    println!(
        "tenancy-bench: {seed} memories per user, {calls} calls of each per side, concurrency 1"
    );
    for side in &mut sides {
        for i in 0..seed {
            side.teach(i, false).await?;
        }
        for i in 0..2 * QUERIES.len() {
            side.recall(i, false).await?;
        }
    }
    let n = sides.len();
    for i in 0..calls {
        // Which side goes first rotates.
        let order: Vec<usize> = (0..n).map(|j| (i + j) % n).collect();
        for &s in &order {
            sides[s].teach(seed + i, true).await?;
        }
        for &s in &order {
            sides[s].recall(i, true).await?;
        }
    }
    println!(
        "{:<8} {:<4} {:>8} {:>8} {:>8}",
        "call", "side", "p50 ms", "p95 ms", "p99 ms"
    );
    // The cost, estimated two ways: the difference of the p50s, and the median of the paired
    // differences (call i of a side minus call i of "off", made moments apart) — the second
    // cancels the machine's drift over the run, so it moves less from run to run.
    let paired = |pick: usize, j: usize| -> f64 {
        let lat = |s: &Side| {
            if pick == 0 {
                s.teach.clone()
            } else {
                s.recall.clone()
            }
        };
        let (a, off) = (lat(&sides[j]), lat(&sides[OFF]));
        let mut d: Vec<f64> = a
            .iter()
            .zip(&off)
            .map(|(x, y)| (x.as_secs_f64() - y.as_secs_f64()) * 1000.0)
            .collect();
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied().unwrap_or(0.0)
    };
    let median_diff: Vec<[f64; 2]> = (0..OFF).map(|j| [paired(0, j), paired(1, j)]).collect();
    let mut p50 = [[0.0; OFF + 1]; 2];
    for (call, pick) in [("Teach", 0), ("Recall", 1)] {
        for (j, side) in sides.iter_mut().enumerate() {
            let lat = if pick == 0 {
                &mut side.teach
            } else {
                &mut side.recall
            };
            lat.sort();
            println!(
                "{call:<8} {:<4} {:>8.3} {:>8.3} {:>8.3}",
                side.name,
                percentile_ms(lat, 0.5),
                percentile_ms(lat, 0.95),
                percentile_ms(lat, 0.99)
            );
            p50[pick][j] = percentile_ms(lat, 0.5);
        }
    }
    for (label, j) in [
        ("RLS + limits", 0),
        ("RLS alone", 1),
        ("limits alone", 2),
        ("nothing (control)", 3),
    ] {
        println!(
            "cost of {label}: Teach {:+.3} ms (paired {:+.3}), Recall {:+.3} ms (paired {:+.3}) \
             — p50 difference (median of paired differences)",
            p50[0][j] - p50[0][OFF],
            median_diff[j][0],
            p50[1][j] - p50[1][OFF],
            median_diff[j][1]
        );
    }

    // The principal cache: a key resolved from Postgres, or from the process's cache.
    let secret = sides[0].secret.clone().expect("the 'on' side has a key");
    let pool = sides[0]._server.pool().clone();
    let (mut miss, mut hit) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let warm = memoire_store::PgStore::from_pool(pool.clone());
    warm.principal_for_secret(&secret).await?;
    for _ in 0..calls {
        let cold = memoire_store::PgStore::from_pool(pool.clone());
        let t = Instant::now();
        anyhow::ensure!(cold.principal_for_secret(&secret).await?.is_some());
        miss.push(t.elapsed());
        let t = Instant::now();
        anyhow::ensure!(warm.principal_for_secret(&secret).await?.is_some());
        hit.push(t.elapsed());
    }
    for (label, lat) in [
        ("key lookup, from Postgres", &mut miss),
        ("key lookup, cached", &mut hit),
    ] {
        lat.sort();
        println!(
            "{label:<26} p50 {:.3} ms, p95 {:.3} ms",
            percentile_ms(lat, 0.5),
            percentile_ms(lat, 0.95)
        );
    }
    Ok(())
}
