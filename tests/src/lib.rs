//! The end-to-end test harness: [`TestServer`] starts the real server in-process on
//! `127.0.0.1:0`, against a fresh Postgres database of its own (so tests run in parallel), and
//! hands out real gRPC clients. Dropping it stops the server and drops the database.
//!
//! The database server comes from `MEMOIRE_TEST_DATABASE_URL` (default: the one
//! `scripts/setup.sh` prepares, `postgres://memoire:memoire@127.0.0.1:5432/memoire`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod eval;
pub mod fake_llm;
pub mod otlp;
pub mod tls;

use memoire_app::Listeners;
use memoire_config::Config;
use memoire_core::clock::Clock;
use memoire_sdk::{Client, pb};
use memoire_store::PgStore;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use memoire_sdk::pb as proto;

/// The local embedding model's directory (what scripts/setup.sh installs).
pub fn model_dir() -> std::path::PathBuf {
    std::env::var_os("MEMOIRE_EMBEDDING_MODEL_DIR")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models/all-MiniLM-L6-v2")
        })
}

/// The Postgres server tests create their databases on.
pub fn base_database_url() -> String {
    std::env::var("MEMOIRE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://memoire:memoire@127.0.0.1:5432/memoire".into())
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (server, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{server}/{db}")
}

/// What a test client presents to a TLS server.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA (PEM) that issued the server's certificate.
    pub ca: String,
    /// A client certificate, for servers that require one.
    pub identity: Option<tls::Pem>,
}

/// A running server with its own database.
pub struct TestServer {
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// HTTP address.
    pub http_addr: SocketAddr,
    /// The bootstrap admin key.
    pub admin_key: String,
    /// The database's URL.
    pub database_url: String,
    /// A store on the same database (same clock as the server; no embedder).
    pub store: PgStore,
    /// The configuration the server runs with.
    pub config: Config,
    /// How clients reach a TLS server: the CA to trust and, for mTLS, a client certificate
    /// (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// Connections that see every tenant's rows (row-level security's `*`), for tests that look
    /// at tables directly.
    inspect: PgPool,
    db_name: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// The value of the first series on `/metrics` that starts with `name_and_labels` (0 when
    /// there is none yet).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        http_get(self.http_addr, "/metrics")
            .await
            .lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Starts a server with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}, None).await
    }

    /// Starts a server after `configure` adjusts the configuration, with `clock` when given.
    pub async fn start_with(
        configure: impl FnOnce(&mut Config),
        clock: Option<Arc<dyn Clock>>,
    ) -> Self {
        Self::start_inner(configure, clock, None).await
    }

    /// Starts a server whose configuration (after `configure`) serves TLS, and whose clients
    /// connect with `tls`.
    pub async fn start_tls(configure: impl FnOnce(&mut Config), tls: ClientTls) -> Self {
        Self::start_inner(configure, None, Some(tls)).await
    }

    async fn start_inner(
        configure: impl FnOnce(&mut Config),
        clock: Option<Arc<dyn Clock>>,
        tls: Option<ClientTls>,
    ) -> Self {
        let base = base_database_url();
        let db_name = format!("memoire_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&base).await.expect(
            "cannot reach the test Postgres; run scripts/setup.sh (or set MEMOIRE_TEST_DATABASE_URL)",
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let database_url = with_database(&base, &db_name);

        let admin_key = format!("test-admin-{}", Uuid::new_v4().simple());
        let mut config = Config {
            database_url: database_url.clone(),
            database_max_connections: 8,
            admin_key: Some(admin_key.clone()),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            expiry_sweep_interval_secs: 3600,
            // The periodic jobs run when a test asks (RunMaintenance), not on the clock.
            optimize_schedule: String::new(),
            decay_schedule: String::new(),
            reflect_schedule: String::new(),
            retention_schedule: String::new(),
            reembed_schedule: String::new(),
            worker_poll_interval_ms: 200,
            shutdown_grace_secs: 5,
            embedding_model_dir: model_dir(),
            redis_url: test_redis_url(),
            ..Config::default()
        };
        configure(&mut config);
        let mut store = memoire_app::connect(&config)
            .await
            .expect("connect and migrate");
        if let Some(clock) = clock {
            store = store.with_clock(clock);
        }
        let listeners = Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await.expect("bind grpc"),
            http: TcpListener::bind("127.0.0.1:0").await.expect("bind http"),
        };
        let grpc_addr = listeners.grpc.local_addr().expect("addr");
        let http_addr = listeners.http.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(memoire_app::serve(
            config.clone(),
            store.clone(),
            listeners,
            async {
                let _ = rx.await;
            },
        ));
        let inspect = PgStore::connect(&memoire_store::PgSettings {
            url: database_url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            hnsw_ef_search: config.recall_hnsw_ef_search,
            row_level_security: false,
            replica: None,
        })
        .await
        .expect("inspection pool")
        .pool()
        .clone();
        let server = TestServer {
            inspect,
            grpc_addr,
            http_addr,
            admin_key,
            database_url,
            store,
            config,
            tls,
            db_name,
            shutdown: Some(tx),
            task: Some(task),
        };
        server.wait_serving().await;
        server
    }

    async fn wait_serving(&self) {
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(self.client(None).channel());
        for _ in 0..100 {
            let ok = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
                .unwrap_or(false);
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not report SERVING within 5 s");
    }

    /// A client with `key` (or none); over TLS to `localhost` when the server serves TLS.
    pub fn client(&self, key: Option<&str>) -> Client {
        let mut b = match &self.tls {
            None => Client::builder(format!("http://{}", self.grpc_addr)),
            Some(tls) => {
                let b = Client::builder(format!("https://localhost:{}", self.grpc_addr.port()))
                    .tls_ca_pem(tls.ca.clone());
                match &tls.identity {
                    Some(id) => b.tls_identity_pem(id.cert.clone(), id.key.clone()),
                    None => b,
                }
            }
        }
        .timeout(Duration::from_secs(30));
        if let Some(k) = key {
            b = b.api_key(k);
        }
        b.build().expect("client")
    }

    /// A client with the bootstrap admin key.
    pub fn admin(&self) -> Client {
        self.client(Some(&self.admin_key))
    }

    /// Creates a tenant and a key of `role` for it; returns the tenant id and a client using the key.
    pub async fn tenant(&self, name: &str, role: pb::KeyRole) -> (String, Client) {
        let tenant = self
            .admin()
            .admin()
            .create_tenant(pb::CreateTenantRequest { name: name.into() })
            .await
            .expect("create tenant")
            .into_inner()
            .tenant
            .expect("tenant");
        let key = self.key(&tenant.id, role).await;
        (tenant.id, self.client(Some(&key)))
    }

    /// Creates a key of `role` for `tenant_id`; returns its secret.
    pub async fn key(&self, tenant_id: &str, role: pb::KeyRole) -> String {
        self.admin()
            .admin()
            .create_api_key(pb::CreateApiKeyRequest {
                tenant_id: tenant_id.into(),
                name: "test".into(),
                role: role as i32,
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner()
            .secret
    }

    /// Starts a worker of its own (as `memoire-worker` would: its own connection pool) on the
    /// server's database and clock, with the server's configuration after `configure`. Use with
    /// `worker_embedded = false`.
    pub async fn start_worker(&self, configure: impl FnOnce(&mut Config)) -> TestWorker {
        let mut config = self.config.clone();
        configure(&mut config);
        let extractor = memoire_app::providers::extractor(&config).expect("extractor");
        let store = PgStore::connect(&memoire_store::PgSettings {
            url: self.database_url.clone(),
            max_connections: (config.worker_concurrency as u32) * 2 + 6,
            acquire_timeout: Duration::from_secs(5),
            hnsw_ef_search: config.recall_hnsw_ef_search,
            row_level_security: config.database_row_level_security,
            replica: None,
        })
        .await
        .expect("worker pool")
        .with_clock(self.store.clock());
        let uc = memoire_app::usecases(&config, store)
            .await
            .expect("use-cases");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(memoire_worker::run(
            uc,
            extractor,
            memoire_app::worker_settings(&config),
            async {
                let _ = rx.await;
            },
        ));
        TestWorker {
            shutdown: Some(tx),
            task,
        }
    }

    /// Use-cases over the server's database and clock, built from its configuration (the local
    /// model, Redis), for tests that drive a worker step or a job directly.
    pub async fn usecases(&self) -> memoire_usecases::UseCases {
        memoire_app::usecases(&self.config, self.store.clone())
            .await
            .expect("use-cases")
    }

    /// Waits until every episode of the database has its vector; panics after `limit`.
    pub async fn wait_embedded(&self, limit: Duration) {
        self.wait_for_none("embedding IS NULL", "their vector", limit)
            .await
    }

    /// Waits until no episode of the database waits for extraction; panics after `limit`.
    pub async fn wait_extracted(&self, limit: Duration) {
        self.wait_for_none(
            "extracted_at IS NULL AND extract_dead_at IS NULL",
            "extraction",
            limit,
        )
        .await
    }

    /// Waits until no episode matches `pending` (an SQL condition); panics after `limit`, saying
    /// how many still wait for `what`.
    async fn wait_for_none(&self, pending: &str, what: &str, limit: Duration) {
        self.wait_for_zero(
            &format!("SELECT count(*) FROM episodes WHERE {pending}"),
            &format!("episodes still wait for {what}"),
            limit,
        )
        .await
    }

    /// Waits until `count` (an SQL query of one count) is 0; panics after `limit`, saying how
    /// many `what` there still were.
    pub async fn wait_for_zero(&self, count: &str, what: &str, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.to_owned()))
                .fetch_one(self.pool())
                .await
                .expect("count");
            if n == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{n} {what} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A pool on the test database that sees every tenant's rows, for looking at tables
    /// directly.
    pub fn pool(&self) -> &PgPool {
        &self.inspect
    }

    /// Waits until Recall's access statistics (`memory_access`, written behind the replies in
    /// batches) add up to `hits`; panics after 5 s.
    pub async fn wait_access_hits(&self, hits: i64) {
        for _ in 0..200 {
            let now: i64 =
                sqlx::query_scalar("SELECT coalesce(sum(hits), 0)::bigint FROM memory_access")
                    .fetch_one(self.pool())
                    .await
                    .expect("hits");
            if now == hits {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("access statistics never reached {hits} hits");
    }

    /// Stops the server gracefully and returns how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Drop the database from a thread of its own: Drop cannot await, and the test's runtime
        // may be single-threaded.
        let (base, db) = (base_database_url(), self.db_name.clone());
        let pools = [self.store.pool().clone(), self.inspect.clone()];
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                // A connection the server was still returning to the pool when the test ended
                // cannot come back: its return task is queued on the test's runtime, which this
                // drop is blocking. Close what can be closed; FORCE ends the rest.
                for pool in pools {
                    let _ = tokio::time::timeout(Duration::from_millis(500), pool.close()).await;
                }
                if let Ok(mut conn) = PgConnection::connect(&base).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A worker started by [`TestServer::start_worker`].
pub struct TestWorker {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestWorker {
    /// Stops it gracefully (in-flight episodes finish).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Kills it where it stands, as a crash would: its futures are dropped mid-flight, its
    /// transactions never commit, its connections go back to the pool rolled back.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A minimal HTTP/1.0 GET of `path` on `addr`: the whole response, headers included (no client
/// library needed for /metrics, /healthz and /readyz).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// The field named by an `INVALID_ARGUMENT` status's `BadRequest` detail.
pub fn violated_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
}

/// Starts `n` writes at once (`write(i)` makes the i-th) and asserts that exactly one succeeds
/// and every other is `RESOURCE_EXHAUSTED` naming `quota`: a quota with one unit left holds under
/// concurrency.
pub async fn assert_exactly_one_fits<T, Fut>(n: usize, quota: &str, write: impl Fn(usize) -> Fut)
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
{
    let attempts: Vec<_> = (0..n).map(|i| tokio::spawn(write(i))).collect();
    let mut results = Vec::new();
    for a in attempts {
        results.push(a.await.expect("task"));
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 1,
        "exactly one of {n} writes took what was left of {quota}"
    );
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains(quota), "{}", err.message());
        // A quota does not clear with time: no RetryInfo, a QuotaFailure naming it.
        assert_eq!(retry_delay(err), None, "{err:?}");
        use tonic_types::StatusExt as _;
        let failure = err
            .get_details_quota_failure()
            .expect("a QuotaFailure detail");
        assert!(
            failure
                .violations
                .iter()
                .any(|v| v.description.contains(quota)),
            "{failure:?}"
        );
    }
}

/// A `Teach` of a fact about `user`, every other field at its default.
pub fn fact(user: &str, content: &str) -> pb::TeachRequest {
    pb::TeachRequest {
        user_id: user.into(),
        kind: pb::MemoryKind::Fact as i32,
        content: content.into(),
        ..Default::default()
    }
}

/// The Redis the tests' servers use: `MEMOIRE_TEST_REDIS_URL` (`make test` also runs the
/// Redis-touching tests against a Redis Cluster made by `scripts/redis-cluster.sh`), or the local
/// one.
pub fn test_redis_url() -> String {
    std::env::var("MEMOIRE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The ports of the Redis servers `url` names (a cluster's nodes, or the one server).
pub fn redis_ports(url: &str) -> Vec<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    std::iter::once(first)
        .chain(query.split('&').filter_map(|kv| kv.strip_prefix("node=")))
        .filter_map(|hostport| {
            hostport
                .rsplit(':')
                .next()?
                .trim_end_matches('/')
                .parse()
                .ok()
        })
        .collect()
}

/// `redis-cli -p port args…` against `url`'s first server, following a cluster's redirects; its
/// output.
pub fn redis_cli(url: &str, args: &[&str]) -> String {
    let port = redis_ports(url).first().copied().unwrap_or(6379);
    let out = std::process::Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keys matching `pattern` on every server `url` names (each primary of a cluster).
pub fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    redis_ports(url)
        .into_iter()
        .flat_map(|p| {
            let out = std::process::Command::new("redis-cli")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &p.to_string(),
                    "--scan",
                    "--pattern",
                    pattern,
                ])
                .output()
                .expect("redis-cli (scripts/setup.sh installs it)");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Teaches `req`; the memory it made (or changed). Panics on an error.
pub async fn teach(client: &Client, req: pb::TeachRequest) -> pb::Memory {
    client
        .memory()
        .teach(req)
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("memory")
}

/// The contents of `user`'s current memories (default namespace), newest first. Panics on an
/// error.
pub async fn current_contents(client: &Client, user: &str) -> Vec<String> {
    client
        .memory()
        .list_memories(pb::ListMemoriesRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories
        .into_iter()
        .map(|m| m.content)
        .collect()
}

/// Forget every memory and episode of `user` for good (a purge by selector).
pub fn purge_user(user: &str) -> pb::ForgetRequest {
    pb::ForgetRequest {
        selector: Some(pb::ForgetSelector {
            user_id: user.into(),
            ..Default::default()
        }),
        mode: pb::ForgetMode::Purge as i32,
        ..Default::default()
    }
}

/// A new memory of `kind` with `content` and default attributes, for the store and use-case
/// layers' own tests.
pub fn new_memory(
    kind: memoire_core::model::MemoryKind,
    content: &str,
) -> memoire_core::command::NewMemory {
    memoire_core::command::NewMemory {
        kind,
        content: content.into(),
        slot: None,
        subject: None,
        tags: vec![],
        importance: 0.5,
        confidence: 1.0,
        pinned: false,
        expires_at: None,
        source_episode_ids: vec![],
    }
}

/// One Recall of a bench (k = 10, the `i`-th of [`BENCH_QUERIES`]) and how long it took; an
/// error unless it returned ten items.
pub async fn bench_recall(client: &Client, i: usize) -> anyhow::Result<Duration> {
    let t = std::time::Instant::now();
    let r = client
        .memory()
        .recall(pb::RecallRequest {
            user_id: "u".into(),
            query: BENCH_QUERIES[i % BENCH_QUERIES.len()].into(),
            k: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    let took = t.elapsed();
    anyhow::ensure!(r.items.len() == 10, "{} items", r.items.len());
    Ok(took)
}

/// Twenty questions about a user, for Recall benches (their embeddings cache after a warm-up).
pub const BENCH_QUERIES: [&str; 20] = [
    "where does the user live",
    "what food does the user like",
    "which languages does the user speak",
    "what are the user's hobbies",
    "who are the user's friends",
    "what does the user do for work",
    "what music does the user enjoy",
    "where did the user travel last year",
    "what pets does the user have",
    "what is the user allergic to",
    "what sports does the user play",
    "what books does the user read",
    "what are the user's plans for the weekend",
    "what car does the user drive",
    "what is the user's favourite colour",
    "when is the user's birthday",
    "what does the user drink in the morning",
    "how does the user commute",
    "what instrument does the user play",
    "what is the user learning",
];

/// The `i`-th of a user's generated facts, for Teach benches (ten topics, each note distinct).
pub fn bench_fact(i: usize) -> pb::TeachRequest {
    const TOPICS: [&str; 10] = [
        "cooks Sichuan food on Sundays",
        "plays the cello in an amateur orchestra",
        "lived in Porto for three years",
        "is learning Japanese with a tutor",
        "runs a half marathon every spring",
        "keeps two cats named after painters",
        "drinks green tea before work",
        "reads science fiction on the train",
        "is allergic to hazelnuts",
        "drives an old blue hatchback",
    ];
    fact(
        "u",
        &format!("The user {} (note {i})", TOPICS[i % TOPICS.len()]),
    )
}

/// The delay a `RESOURCE_EXHAUSTED` status's `RetryInfo` asks for, if it carries one.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// The `p` quantile (0..=1, nearest rank) of sorted latencies, in milliseconds (0 when empty):
/// what the benchmarks print.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Recall's stage timings on a `/metrics` page: per series of `memoire_recall_stage_seconds`
/// and of the query embedding, its label set with the sum of seconds and the count.
pub fn recall_stage_totals(metrics: &str) -> Vec<(String, f64, f64)> {
    let series = |name: &str| -> Vec<(String, f64)> {
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| {
                let (labels, value) = rest.rsplit_once(' ')?;
                Some((labels.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    };
    let mut out = Vec::new();
    for metric in [
        "memoire_embedding_duration_seconds",
        "memoire_recall_stage_seconds",
    ] {
        let counts = series(&format!("{metric}_count"));
        for (labels, sum) in series(&format!("{metric}_sum")) {
            if metric.starts_with("memoire_embedding") && !labels.contains("\"query\"") {
                continue;
            }
            if let Some((_, n)) = counts.iter().find(|(l, _)| *l == labels) {
                let name = format!("{}{labels}", metric.trim_start_matches("memoire_"));
                out.push((name, sum, *n));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Recall's profile between two `/metrics` pages (`before` empty: since the start): the mean of
/// each stage in ms, one line per stage (stages of the two tables run concurrently, and the
/// full-text side overlaps the query embedding, so the means do not add up to a latency).
pub fn recall_profile(before_page: &str, after: &str) -> String {
    let before = recall_stage_totals(before_page);
    let mut out = String::new();
    for (name, sum, n) in recall_stage_totals(after) {
        let (sum0, n0) = before
            .iter()
            .find(|(b, _, _)| *b == name)
            .map(|(_, s, c)| (*s, *c))
            .unwrap_or((0.0, 0.0));
        let (sum, n) = (sum - sum0, n - n0);
        if n > 0.0 {
            out.push_str(&format!(
                "  {name:<58} {:>7.2} ms mean over {n}\n",
                sum / n * 1e3
            ));
        }
    }
    // How the full-text searches found their best documents (lists read to the end, proven from
    // their heads, or every posting scored).
    let counts = |page: &str| -> Vec<(String, f64)> {
        page.lines()
            .filter_map(|l| l.strip_prefix("memoire_recall_full_text_total"))
            .filter_map(|rest| {
                let (labels, value) = rest.rsplit_once(' ')?;
                Some((labels.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    };
    let earlier = counts(before_page);
    for (labels, n) in counts(after) {
        let n0 = earlier
            .iter()
            .find(|(l, _)| *l == labels)
            .map_or(0.0, |(_, n)| *n);
        if n > n0 {
            out.push_str(&format!(
                "  {:<58} {:>7} searches\n",
                format!("recall_full_text_total{labels}"),
                n - n0
            ));
        }
    }
    out
}
