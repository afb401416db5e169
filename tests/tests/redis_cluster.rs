//! Redis Cluster: the server's `redis_url` names a three-primary cluster (`redis-cluster://…`,
//! fred's cluster mode) that this test starts on loopback ports, and every path that touches
//! Redis works there without falling back: the rate limits (one script over keys that share the
//! tenant's hash tag), the query-embedding cache, Conscious's cache with its invalidation, and a
//! purge that must find the scope's entries on every primary.
//!
//! Its own test binary: it starts (and stops) its own cluster with `scripts/redis-cluster.sh`,
//! from the Redis that `scripts/setup.sh` installs.

use std::path::PathBuf;
use std::process::Command;

use memoire_tests::{TestServer, fact, http_get, proto as pb, redis_keys, redis_ports};

/// A throwaway cluster, made and removed by `scripts/redis-cluster.sh` (what `make test` also
/// runs the Redis-touching end-to-end tests against).
struct Cluster {
    dir: PathBuf,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
}

impl Cluster {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("memoire-redis-cluster-{}", std::process::id()));
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("scripts/redis-cluster.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Cluster { dir, url }
    }

    /// The keys matching `pattern` on each primary.
    fn keys(&self, pattern: &str) -> Vec<Vec<String>> {
        redis_ports(&self.url)
            .into_iter()
            .map(|p| redis_keys(&format!("redis://127.0.0.1:{p}"), pattern))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}

/// The value of the metric line starting with `prefix` (0 when absent).
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_path_works_on_a_three_primary_cluster() {
    let cluster = Cluster::start();
    let url = cluster.url.clone();
    let server = TestServer::start_with(
        |c| {
            c.redis_url = url;
            c.worker_embedded = false;
        },
        None,
    )
    .await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let essential = |content: &str| pb::TeachRequest {
        kind: pb::MemoryKind::Preference as i32,
        importance: Some(0.9),
        ..fact("ada", content)
    };
    client
        .memory()
        .teach(essential("Prefers jasmine tea in the morning"))
        .await
        .expect("teach");

    // The query-embedding cache: the second identical query is a hit.
    let recall = || {
        let client = client.clone();
        async move {
            client
                .memory()
                .recall(pb::RecallRequest {
                    user_id: "ada".into(),
                    query: "what does ada drink".into(),
                    k: 5,
                    ..Default::default()
                })
                .await
        }
    };
    recall().await.expect("recall");
    recall().await.expect("recall");

    // Conscious's cache: one entry per session, spread over the primaries by their keys' slots.
    let conscious = |session: String| {
        let client = client.clone();
        async move {
            client
                .memory()
                .conscious(pb::ConsciousRequest {
                    user_id: "ada".into(),
                    session_id: Some(session),
                    ..Default::default()
                })
                .await
        }
    };
    for s in 0..12 {
        conscious(format!("s{s}")).await.expect("conscious");
    }
    let hit = conscious("s0".into())
        .await
        .expect("conscious")
        .into_inner();
    assert_eq!(hit.source, pb::ConsciousSource::Redis as i32, "{hit:?}");
    assert!(
        hit.essential.iter().any(|e| e.content.contains("jasmine")),
        "{hit:?}"
    );
    // A write invalidates it: the next read sees the new memory.
    client
        .memory()
        .teach(essential("Likes peanuts roasted"))
        .await
        .expect("teach");
    let fresh = conscious("s0".into())
        .await
        .expect("conscious")
        .into_inner();
    assert_eq!(fresh.source, pb::ConsciousSource::Postgres as i32);
    assert!(
        fresh
            .essential
            .iter()
            .any(|e| e.content.contains("peanuts")),
        "a stale view after a write: {fresh:?}"
    );

    let pattern = format!("memoire:{tenant}:conscious:*");
    let before = cluster.keys(&pattern);
    assert!(
        before.iter().filter(|k| !k.is_empty()).count() >= 2,
        "conscious entries on one primary only: {before:?}"
    );

    // A purge removes the scope's entries from every primary.
    client
        .memory()
        .forget(memoire_tests::purge_user("ada"))
        .await
        .expect("purge");
    let entries: Vec<String> = cluster
        .keys(&format!("memoire:{tenant}:conscious:*:e*"))
        .concat();
    assert!(entries.is_empty(), "left after the purge: {entries:?}");

    // The rate limits: the script runs on the tenant's slot, refuses past the burst.
    server
        .admin()
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            rate_limit_rps: Some(2),
            rate_limit_burst: Some(3),
            ..Default::default()
        })
        .await
        .expect("limit");
    let mut refused = None;
    for _ in 0..20 {
        if let Err(e) = recall().await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("a refusal past the burst");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let limit_keys = cluster.keys(&format!("memoire:rl:{{{tenant}}}:*"));
    assert_eq!(
        limit_keys.iter().filter(|k| !k.is_empty()).count(),
        1,
        "the tenant's limits share one slot: {limit_keys:?}"
    );

    // None of it fell back or failed.
    let metrics = http_get(server.http_addr, "/metrics").await;
    assert_eq!(
        metric(&metrics, "memoire_rate_limit_fallback_total"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "memoire_redis_errors_total"),
        0.0,
        "{metrics}"
    );
    for cache in ["query_embedding", "conscious"] {
        let hits = format!("memoire_cache_requests_total{{cache=\"{cache}\",result=\"hit\"}}");
        assert!(metric(&metrics, &hits) >= 1.0, "no {cache} hit: {metrics}");
    }
}
