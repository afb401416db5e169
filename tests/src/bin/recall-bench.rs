//! recall-bench: Recall latency and throughput over gRPC on loopback, and vector-search overlap
//! with exact search, at several scope sizes. Run it in release:
//!
//! ```sh
//! cargo run --release -p memoire-tests --bin recall-bench            # 1k, 10k and 100k scopes
//! cargo run --release -p memoire-tests --bin recall-bench -- --quick # 1k, 2k and 10k, fewer queries
//! # --keep-db keeps the seeded database for EXPLAIN ANALYZE
//! ```
//!
//! It generates realistic user memories (no downloads), embeds them with the local model (cached
//! under target/bench-cache so reruns skip it), bulk-loads them into a fresh database (COPY, then
//! the HNSW index is built), starts three servers on that database — one caching query embeddings
//! in Redis, one computing every query, one ranking the full text exactly at every scope size —
//! and drives Recall at concurrency 1 and 8, then prints where the time of each scope's c=1 run
//! went (`memoire_recall_stage_seconds`), and how much the approximate full text of large scopes
//! changes Recall's top 10.
//! Everything (server, Postgres, Redis, load generator) shares this machine.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memoire_app::Listeners;
use memoire_config::Config;
use memoire_core::model::KeyRole;
use memoire_core::validate::content_key;
use memoire_providers::LocalEmbedder;
use memoire_sdk::{Client, pb};
use memoire_store::PgStore;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use sqlx::{Connection as _, PgConnection};
use tokio::net::TcpListener;
use uuid::Uuid;

const CITIES: &[&str] = &[
    "Dallas", "Lisbon", "Osaka", "Denver", "Nairobi", "Toronto", "Krakow", "Austin", "Seoul",
    "Lyon", "Porto", "Boston", "Hanoi", "Oslo", "Lima", "Perth", "Cairo", "Dublin", "Quito",
    "Tampa",
];
const JOBS: &[&str] = &[
    "nurse",
    "data engineer",
    "teacher",
    "carpenter",
    "pharmacist",
    "product manager",
    "architect",
    "chef",
    "lawyer",
    "pilot",
    "electrician",
    "accountant",
];
const COMPANIES: &[&str] = &[
    "Initech",
    "Globex",
    "Hooli",
    "Umbrella Health",
    "Acme Logistics",
    "Stark Foods",
    "Wayne Energy",
    "Soylent Labs",
    "Vandelay Imports",
    "Pied Piper",
];
const PETS: &[&str] = &[
    "golden retriever",
    "tabby cat",
    "parrot",
    "rabbit",
    "border collie",
    "hamster",
    "bearded dragon",
    "goldfish",
];
const NAMES: &[&str] = &[
    "Biscuit", "Miso", "Luna", "Pixel", "Mateo", "Sofia", "Lucia", "Omar", "Priya", "Jonas",
    "Amara", "Kenji", "Ingrid", "Tariq", "Elena", "Noah",
];
const FOODS: &[&str] = &[
    "spicy Thai curry",
    "sushi",
    "oat milk lattes",
    "dark chocolate",
    "grilled sardines",
    "vegan burgers",
    "ramen",
    "tacos al pastor",
    "blue cheese",
    "mushroom risotto",
    "pho",
    "falafel",
];
const ALLERGENS: &[&str] = &[
    "peanuts",
    "shellfish",
    "penicillin",
    "pollen",
    "gluten",
    "cats",
    "latex",
    "soy",
];
const GOALS: &[&str] = &[
    "run a half marathon",
    "learn Rust",
    "save for a house",
    "speak Japanese",
    "write a novel",
    "climb Kilimanjaro",
    "get better at chess",
    "learn the cello",
];
const TOPICS: &[&str] = &[
    "the quarterly budget",
    "the kitchen renovation",
    "a job offer",
    "the school trip",
    "a car loan",
    "the wedding plans",
    "a visa application",
    "the product launch",
];
const HOBBIES: &[&str] = &[
    "tennis",
    "pottery",
    "birdwatching",
    "rock climbing",
    "jazz piano",
    "gardening",
    "sailing",
    "board games",
];
const ITEMS: &[&str] = &[
    "standing desk",
    "bicycle",
    "laptop",
    "espresso machine",
    "tent",
];
const DAYS: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn pick<'a>(rng: &mut StdRng, xs: &'a [&'a str]) -> &'a str {
    xs.choose(rng).copied().unwrap_or("")
}

fn code(rng: &mut StdRng) -> String {
    format!(
        "{}{}-{}",
        (b'A' + rng.random_range(0..26)) as char,
        (b'A' + rng.random_range(0..26)) as char,
        rng.random_range(1000..99999)
    )
}

/// One realistic memory: (kind, content).
fn memory(rng: &mut StdRng) -> (&'static str, String) {
    let city = pick(rng, CITIES);
    let name = pick(rng, NAMES);
    match rng.random_range(0..16) {
        0 => (
            "fact",
            format!(
                "Lives in {city} near the {} district",
                pick(rng, &["old", "river", "harbour", "university", "market"])
            ),
        ),
        1 => (
            "fact",
            format!("Works as a {} at {}", pick(rng, JOBS), pick(rng, COMPANIES)),
        ),
        2 => ("fact", format!("Has a {} named {name}", pick(rng, PETS))),
        3 => ("fact", format!("Is allergic to {}", pick(rng, ALLERGENS))),
        4 => (
            "preference",
            format!(
                "Loves {} and orders it every {}",
                pick(rng, FOODS),
                pick(rng, DAYS)
            ),
        ),
        5 => ("preference", format!("Dislikes {}", pick(rng, FOODS))),
        6 => (
            "goal",
            format!(
                "Wants to {} before {}",
                pick(rng, GOALS),
                rng.random_range(2026..2031)
            ),
        ),
        7 => (
            "fact",
            format!(
                "{name} is the user's {} and lives in {city}",
                pick(
                    rng,
                    &[
                        "sister",
                        "brother",
                        "cousin",
                        "best friend",
                        "manager",
                        "neighbour"
                    ]
                )
            ),
        ),
        8 => (
            "event",
            format!(
                "Had a meeting with {name} about {} on {} {}",
                pick(rng, TOPICS),
                pick(rng, MONTHS),
                rng.random_range(1..29)
            ),
        ),
        9 => (
            "event",
            format!(
                "Order {} for a {} was delayed in shipping",
                code(rng),
                pick(rng, ITEMS)
            ),
        ),
        10 => (
            "preference",
            format!(
                "Plays {} on {}s with {name}",
                pick(rng, HOBBIES),
                pick(rng, DAYS)
            ),
        ),
        11 => (
            "fact",
            format!(
                "{name}'s birthday is on {} {}",
                pick(rng, MONTHS),
                rng.random_range(1..29)
            ),
        ),
        12 => (
            "event",
            format!(
                "Visited {city} in {} {} for {}",
                pick(rng, MONTHS),
                rng.random_range(2015..2026),
                pick(
                    rng,
                    &[
                        "a conference",
                        "a wedding",
                        "vacation",
                        "a marathon",
                        "family"
                    ]
                )
            ),
        ),
        13 => (
            "fact",
            format!(
                "Ticket {} about {} is still open",
                code(rng),
                pick(rng, TOPICS)
            ),
        ),
        14 => (
            "preference",
            format!(
                "Prefers {} seats and {} coffee",
                pick(rng, &["window", "aisle", "front-row"]),
                pick(rng, &["black", "iced", "decaf", "oat milk"])
            ),
        ),
        _ => (
            "fact",
            format!(
                "Speaks {} and is learning {}",
                pick(rng, &["Portuguese", "Spanish", "Hindi", "German", "Korean"]),
                pick(rng, &["Japanese", "French", "Arabic", "Italian", "Swahili"])
            ),
        ),
    }
}

fn query(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => "where does the user live?".to_owned(),
        1 => format!("does the user have a {}?", pick(rng, PETS)),
        2 => "what food does the user like?".to_owned(),
        3 => format!("who is {}?", pick(rng, NAMES)),
        4 => format!("when did the user visit {}?", pick(rng, CITIES)),
        5 => "what does the user do for work?".to_owned(),
        6 => format!("is the user allergic to {}?", pick(rng, ALLERGENS)),
        7 => format!("what happened in the meeting about {}?", pick(rng, TOPICS)),
        8 => format!(
            "what are the user's goals for {}?",
            rng.random_range(2026..2031)
        ),
        9 => format!("which hobbies does the user do on {}?", pick(rng, DAYS)),
        10 => format!("when is {}'s birthday?", pick(rng, NAMES)),
        _ => format!("status of the order of a {}", pick(rng, ITEMS)),
    }
}

struct Options {
    scopes: Vec<usize>,
    small_users: usize,
    queries: usize,
}

fn options() -> Options {
    let quick = std::env::args().any(|a| a == "--quick");
    if quick {
        Options {
            scopes: vec![2_000, 10_000],
            small_users: 4,
            queries: 100,
        }
    } else {
        Options {
            scopes: vec![10_000, 100_000],
            small_users: 10,
            queries: 200,
        }
    }
}

fn model_dir() -> PathBuf {
    memoire_tests::model_dir()
}

/// Embeddings of `texts`, from the cache file when it matches, else computed (and cached).
fn embed_all(
    model: &LocalEmbedder,
    texts: &[String],
    cache: &std::path::Path,
) -> anyhow::Result<(Vec<Vec<f32>>, Option<f64>)> {
    let dims = 384;
    if let Ok(bytes) = std::fs::read(cache)
        && bytes.len() == texts.len() * dims * 4
    {
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Ok((floats.chunks(dims).map(<[f32]>::to_vec).collect(), None));
    }
    let started = Instant::now();
    let mut out = Vec::with_capacity(texts.len());
    for (i, chunk) in texts.chunks(512).enumerate() {
        out.extend(model.embed_blocking(chunk)?);
        if i % 20 == 0 {
            eprint!("\r  embedded {}/{}", out.len(), texts.len());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(cache)?;
    for v in &out {
        for x in v {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    Ok((out, Some(secs)))
}

fn vector_literal(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    format!("[{}]", parts.join(","))
}

async fn drive(
    endpoint: &str,
    key: &str,
    user: &str,
    queries: &[String],
    concurrency: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let client = Client::builder(endpoint)
        .api_key(key)
        .timeout(Duration::from_secs(30))
        .build()?;
    let queries = Arc::new(queries.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, queries, next, user) = (
            client.clone(),
            queries.clone(),
            next.clone(),
            user.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut m = client.memory();
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(q) = queries.get(i) else { break };
                let t = Instant::now();
                let r = m
                    .recall(pb::RecallRequest {
                        user_id: user.clone(),
                        query: q.clone(),
                        k: 10,
                        ..Default::default()
                    })
                    .await;
                lat.push(t.elapsed());
                r.map_err(|e| anyhow::anyhow!("recall failed: {e}"))?;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort();
    let qps = all.len() as f64 / wall;
    Ok((all, qps))
}

/// Recall's item ids for each query (k = 10, c = 1), with each call's latency.
async fn recall_ids(
    endpoint: &str,
    key: &str,
    user: &str,
    queries: &[String],
) -> anyhow::Result<Vec<(Vec<String>, Duration)>> {
    let client = Client::builder(endpoint)
        .api_key(key)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut m = client.memory();
    let mut out = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let r = m
            .recall(pb::RecallRequest {
                user_id: user.to_owned(),
                query: q.clone(),
                k: 10,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("recall failed: {e}"))?
            .into_inner();
        let elapsed = t.elapsed();
        let ids = r
            .items
            .iter()
            .map(|i| match &i.item {
                Some(pb::recall_item::Item::Memory(m)) => m.id.clone(),
                Some(pb::recall_item::Item::Episode(e)) => e.id.clone(),
                None => String::new(),
            })
            .collect();
        out.push((ids, elapsed));
    }
    Ok(out)
}

async fn start_server(
    config: Config,
    store: PgStore,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let listeners = Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await?,
        http: TcpListener::bind("127.0.0.1:0").await?,
    };
    let endpoint = format!("http://{}", listeners.grpc.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(memoire_app::serve(config, store, listeners, async {
        let _ = rx.await;
    }));
    // Wait until it answers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Client::builder(endpoint.clone()).build()?.channel(),
    );
    for _ in 0..200 {
        if health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
        {
            return Ok((endpoint, tx));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("server did not start")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Measured as the binaries run: one core per forward pass of the model.
    let opts = options();
    let mut rng = StdRng::seed_from_u64(42);
    // Users: one per measured scope size, plus small users (1k each) so that the table holds
    // other people's memories too (filter selectivity, and overlap at a small scope).
    let mut users: Vec<(String, usize)> = opts
        .scopes
        .iter()
        .map(|n| (format!("user-{n}"), *n))
        .collect();
    users.extend((0..opts.small_users).map(|i| (format!("small-{i}"), 1_000)));
    let mut rows: Vec<(String, &'static str, String)> = Vec::new();
    for (user, n) in &users {
        let mut seen = BTreeSet::new();
        while seen.len() < *n {
            let (kind, text) = memory(&mut rng);
            if seen.insert(text.clone()) {
                rows.push((user.clone(), kind, text));
            }
        }
    }
    let texts: Vec<String> = rows.iter().map(|(_, _, t)| t.clone()).collect();
    println!(
        "recall-bench: {} memories ({} users), {} queries per phase",
        rows.len(),
        users.len(),
        opts.queries
    );

    let model = LocalEmbedder::load(&model_dir(), "all-MiniLM-L6-v2")?;
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/bench-cache/seed-{}-{}.f32",
        rows.len(),
        opts.scopes.len()
    ));
    let m2 = model.clone();
    let (vectors, embed_secs) =
        tokio::task::spawn_blocking(move || embed_all(&m2, &texts, &cache)).await??;
    match embed_secs {
        Some(s) => println!(
            "embed seed set: {:.1} s ({:.0} memories/s, local model, batches of 32)",
            s,
            rows.len() as f64 / s
        ),
        None => println!(
            "embed seed set: loaded from target/bench-cache (delete it to measure embedding)"
        ),
    }

    // A fresh database.
    let base = memoire_tests::base_database_url();
    let db = format!("memoire_bench_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&base).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let url = memoire_tests::with_database(&base, &db);
    let config = Config {
        database_url: url.clone(),
        embedding_model_dir: model_dir(),
        database_max_connections: 20,
        ..Config::default()
    };
    let store = memoire_app::connect(&config).await?;
    let tenant = store.create_tenant("bench").await?;
    let key = store
        .create_api_key(tenant.id, "bench", KeyRole::Writer, 0)
        .await?
        .secret;

    // Bulk load: COPY without the HNSW index, then build it (as a bulk import would).
    let hnsw = memoire_store::vector_index_name("memories", "all-MiniLM-L6-v2", 384);
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX {hnsw}")))
        .execute(&mut conn)
        .await?;
    // The seed set is written across row-level security, as the worker writes (`*`), with the
    // memories table's policies off for its owner while COPY runs (COPY cannot run under them).
    sqlx::raw_sql("SET memoire.tenant = '*'; ALTER TABLE memories NO FORCE ROW LEVEL SECURITY")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY memories (id, tenant_id, user_id, namespace, kind, content, content_key, importance, confidence, version, created_at, updated_at, embedding, embedding_model) FROM STDIN WITH (FORMAT csv)")
        .await?;
    let now = chrono::Utc::now();
    let mut buf = String::new();
    for (i, ((user, kind, text), v)) in rows.iter().zip(&vectors).enumerate() {
        let t = now - chrono::TimeDelta::minutes((rows.len() - i) as i64);
        buf.push_str(&format!(
            "{},{},{user},default,{kind},\"{}\",\"{}\",{:.2},1,1,{},{},\"{}\",all-MiniLM-L6-v2\n",
            Uuid::now_v7(),
            tenant.id,
            text.replace('"', "\"\""),
            content_key(text).replace('"', "\"\""),
            rng.random_range(0.2..0.9),
            t.to_rfc3339(),
            t.to_rfc3339(),
            vector_literal(v)
        ));
        if buf.len() > 1 << 20 {
            copy.send(buf.as_bytes()).await?;
            buf.clear();
        }
    }
    copy.send(buf.as_bytes()).await?;
    copy.finish().await?;
    sqlx::raw_sql(
        "INSERT INTO memory_versions (tenant_id, memory_id, version, op, basis, actor, created_at, kind, content, tags, importance, confidence, pinned, status) \
         SELECT tenant_id, id, 1, 'create', 'import', 'bench', created_at, kind, content, tags, importance, confidence, pinned, status FROM memories",
    )
    .execute(&mut conn)
    .await?;
    sqlx::raw_sql("ALTER TABLE memories FORCE ROW LEVEL SECURITY")
        .execute(&mut conn)
        .await?;
    let load_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    sqlx::raw_sql("SET maintenance_work_mem = '1GB'")
        .execute(&mut conn)
        .await?;
    store.ensure_vector_indexes("all-MiniLM-L6-v2", 384).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await?;
    println!(
        "index seed set: COPY + versions {:.1} s, HNSW build + analyze {:.1} s",
        load_secs,
        started.elapsed().as_secs_f64()
    );
    // The 100k user's rows and its HNSW index are larger than Postgres' default buffer cache:
    // how many of a Recall's pages come from disk depends on it (docs/scaling.md).
    let (buffers, table, index): (String, String, String) = sqlx::query_as(sqlx::AssertSqlSafe(
        format!(
            "SELECT current_setting('shared_buffers'), pg_size_pretty(pg_relation_size('memories')), \
             pg_size_pretty(pg_relation_size('{hnsw}'))"
        ),
    ))
    .fetch_one(&mut conn)
    .await?;
    println!("postgres shared_buffers {buffers}; memories {table}, its HNSW index {index}");

    // Two servers on the same data: one caches query embeddings in Redis, one never does.
    let (cached, _stop_a) =
        start_server(config.clone(), memoire_app::connect(&config).await?).await?;
    let (computed, _stop_b) = start_server(
        Config {
            query_cache_ttl_secs: 0,
            ..config.clone()
        },
        memoire_app::connect(&config).await?,
    )
    .await?;

    // A third, caching too, ranks the full text exactly at every scope size: what the
    // approximate full text of large scopes (`recall_exact_text_max_scope`) is compared with.
    let (exact_text, _stop_c) = start_server(
        Config {
            recall_exact_text_max_scope: u64::MAX,
            ..config.clone()
        },
        memoire_app::connect(&config).await?,
    )
    .await?;

    let queries: Vec<String> = (0..opts.queries)
        .map(|_| query(&mut rng))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Make every query text distinct (the cache key is the text) without changing its meaning much.
    let queries: Vec<String> = (0..opts.queries)
        .map(|i| format!("{} ({})", queries[i % queries.len()], i))
        .collect();

    println!();
    println!(
        "Recall over gRPC (k=10, budget 512), {} queries per row",
        queries.len()
    );
    println!(
        "{:<8} {:<16} {:>4} {:>9} {:>9} {:>9} {:>8}",
        "scope", "query embedding", "conc", "p50 ms", "p95 ms", "p99 ms", "qps"
    );
    let mut profiles = Vec::new();
    // A 1k user (one of the small ones), then the large scopes.
    let measured: Vec<(String, usize)> = std::iter::once(("small-0".to_owned(), 1_000))
        .chain(opts.scopes.iter().map(|n| (format!("user-{n}"), *n)))
        .collect();
    for (user, n) in &measured {
        let user = user.clone();
        // Warm up connections, plans and the scope statistics (not measured).
        drive(&computed, &key, &user, &queries[..10.min(queries.len())], 2).await?;
        for (label, endpoint) in [("computed", &computed), ("cached", &cached)] {
            if label == "cached" {
                drive(endpoint, &key, &user, &queries, 4).await?; // fills the cache
            }
            for c in [1usize, 8] {
                let before = memoire_app::ops::metrics_handle().render();
                let (lat, qps) = drive(endpoint, &key, &user, &queries, c).await?;
                if c == 1 {
                    profiles.push((
                        format!("{}k, query embedding {label}, c=1", n / 1000),
                        memoire_tests::recall_profile(
                            &before,
                            &memoire_app::ops::metrics_handle().render(),
                        ),
                    ));
                }
                println!(
                    "{:<8} {:<16} {:>4} {:>9.2} {:>9.2} {:>9.2} {:>8.1}",
                    format!("{}k", n / 1000),
                    label,
                    c,
                    memoire_tests::percentile_ms(&lat, 0.50),
                    memoire_tests::percentile_ms(&lat, 0.95),
                    memoire_tests::percentile_ms(&lat, 0.99),
                    qps
                );
            }
        }
    }

    println!();
    println!("Where a Recall's time goes (memoire_recall_stage_seconds, means per stage):");
    for (row, profile) in &profiles {
        println!("{row}\n{profile}");
    }

    // What the approximate full text of large scopes changes in Recall's answers.
    println!();
    println!(
        "Recall's top 10 (k=10, embeddings cached, c=1) with the full text's top taken from the \
         postings' heads above {} documents, vs every posting scored (the same {} queries)",
        config.recall_exact_text_max_scope,
        queries.len()
    );
    println!(
        "{:<8} {:>11} {:>10} {:>22} {:>22}",
        "scope", "overlap@10", "same list", "default p50 / p95 ms", "exact p50 / p95 ms"
    );
    for (user, n) in &measured {
        let default = recall_ids(&cached, &key, user, &queries).await?;
        let exact = recall_ids(&exact_text, &key, user, &queries).await?;
        let (mut overlap, mut asked, mut same) = (0usize, 0usize, 0usize);
        for ((got, _), (want, _)) in default.iter().zip(&exact) {
            overlap += got.iter().filter(|id| want.contains(id)).count();
            asked += want.len();
            same += usize::from(got == want);
        }
        let lat = |runs: &[(Vec<String>, Duration)]| {
            let mut l: Vec<Duration> = runs.iter().map(|r| r.1).collect();
            l.sort();
            format!(
                "{:.2} / {:.2}",
                memoire_tests::percentile_ms(&l, 0.50),
                memoire_tests::percentile_ms(&l, 0.95)
            )
        };
        println!(
            "{:<8} {:>10.1}% {:>9.1}% {:>22} {:>22}",
            format!("{}k", n / 1000),
            100.0 * overlap as f64 / asked.max(1) as f64,
            100.0 * same as f64 / default.len().max(1) as f64,
            lat(&default),
            lat(&exact)
        );
    }

    // Does filtered vector search return the true top-10 of the scope?
    println!();
    println!(
        "Vector top-10 vs exact top-10 of the scope (the same {} query vectors)",
        queries.len().min(100)
    );
    println!(
        "{:<8} {:<40} {:>10} {:>11} {:>9}",
        "scope", "method", "results", "overlap@10", "p50 ms"
    );
    let qvecs = {
        let q: Vec<String> = queries.iter().take(100).cloned().collect();
        let m = model.clone();
        tokio::task::spawn_blocking(move || m.embed_blocking(&q)).await??
    };
    let mut scopes: Vec<(String, usize)> = vec![("small-0".into(), 1_000)];
    scopes.extend(opts.scopes.iter().map(|n| (format!("user-{n}"), *n)));
    let filter = format!(
        "tenant_id = '{}' AND namespace = 'default' AND status = 'active' AND embedding_model = 'all-MiniLM-L6-v2'",
        tenant.id
    );
    for (user, n) in scopes {
        let mut exact_ids = Vec::new();
        for v in &qvecs {
            let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM memories WHERE {filter} AND user_id = $1 ORDER BY embedding <=> $2::vector LIMIT 10"
            )))
            .bind(&user)
            .bind(pgvector::Vector::from(v.clone()))
            .fetch_all(&mut conn)
            .await?;
            exact_ids.push(ids);
        }
        let hnsw_default = n as u64 > config.recall_exact_search_max_scope;
        let ef = config.recall_hnsw_ef_search;
        let choice = if hnsw_default {
            format!("hnsw, ef_search {ef}")
        } else {
            "exact".to_owned()
        };
        let methods = [
            (
                "hnsw, ef_search 100, no iterative scan".to_owned(),
                "off",
                true,
                100,
            ),
            (
                "hnsw, ef_search 100, iterative scan".to_owned(),
                "relaxed_order",
                true,
                100,
            ),
            (
                "hnsw, ef_search 200, iterative scan".to_owned(),
                "relaxed_order",
                true,
                200,
            ),
            (
                "hnsw, ef_search 400, iterative scan".to_owned(),
                "relaxed_order",
                true,
                400,
            ),
            (
                format!("Recall's choice: {choice}"),
                "relaxed_order",
                hnsw_default,
                ef,
            ),
        ];
        for (label, iterative, use_hnsw, ef) in methods {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET hnsw.iterative_scan = {iterative}; SET hnsw.ef_search = {ef}"
            )))
            .execute(&mut conn)
            .await?;
            let order = if use_hnsw {
                "embedding::vector(384) <=> $2::vector(384)"
            } else {
                "embedding <=> $2::vector"
            };
            let (mut results, mut overlap, mut lat) = (0usize, 0usize, Vec::new());
            for (v, exact) in qvecs.iter().zip(&exact_ids) {
                let t = Instant::now();
                let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM memories WHERE {filter} AND user_id = $1 ORDER BY {order} LIMIT 10"
                )))
                .bind(&user)
                .bind(pgvector::Vector::from(v.clone()))
                .fetch_all(&mut conn)
                .await?;
                lat.push(t.elapsed());
                results += ids.len();
                overlap += ids.iter().filter(|id| exact.contains(id)).count();
            }
            lat.sort();
            let q = qvecs.len() as f64;
            println!(
                "{:<8} {:<40} {:>10.1} {:>10.0}% {:>9.2}",
                format!("{}k", n / 1000),
                label,
                results as f64 / q,
                100.0 * overlap as f64 / (q * 10.0),
                memoire_tests::percentile_ms(&lat, 0.5)
            );
        }
    }
    drop(conn);
    if std::env::args().any(|a| a == "--keep-db") {
        println!("kept database {db}");
    } else {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    Ok(())
}
