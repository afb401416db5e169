//! Restarting Postgres while a client ingests: Ingest answers `UNAVAILABLE` while the database is
//! away (it never acknowledges what it did not store); the client retries with the same
//! `message_id`; afterwards every message is stored exactly once and extracted exactly once.
//!
//! Its own test binary: restarting the machine's Postgres interrupts every connection, so no
//! other test may run beside it (cargo runs test binaries one after another). It restarts the
//! cluster with `pg_ctlcluster` (Debian's postgresql-common, as scripts/setup.sh installs it),
//! which needs root or the postgres user.

use std::process::Command;
use std::time::Duration;

use memoire_tests::{TestServer, proto as pb};

/// The cluster serving 127.0.0.1:5432, as `pg_lsclusters` names it ("15 main").
fn cluster() -> (String, String) {
    let out = Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .expect("pg_lsclusters (postgresql-common) must be installed: run scripts/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2] == "5432")
        .map(|f| (f[0].to_owned(), f[1].to_owned()))
        .expect("a cluster on port 5432")
}

fn pg_ctl(action: &str) {
    let (version, name) = cluster();
    let status = Command::new("pg_ctlcluster")
        .args([&version, &name, action, "--mode", "fast"])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_while_ingesting_loses_and_duplicates_nothing() {
    const N: usize = 60;
    let server = TestServer::start_with(|c| c.database_acquire_timeout_ms = 1_000, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;

    let ingest = |i: usize| pb::IngestRequest {
        user_id: "u".into(),
        session_id: "s".into(),
        messages: vec![pb::Message {
            role: pb::MessageRole::User as i32,
            content: format!("I like item{i}."),
            message_id: Some(format!("m{i}")),
            ..Default::default()
        }],
        ..Default::default()
    };
    // A client ingesting one message after another, retrying each until it is acknowledged.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let (mut unavailable, mut other) = (0, Vec::new());
            for i in 0..N {
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    match client.memory().ingest(ingest(i)).await {
                        Ok(_) => break,
                        Err(e) if e.code() == tonic::Code::Unavailable => unavailable += 1,
                        Err(e) => other.push(format!("{:?}: {}", e.code(), e.message())),
                    }
                    assert!(
                        tokio::time::Instant::now() < until,
                        "postgres did not come back"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (unavailable, other)
        })
    };

    // Postgres goes away in the middle of it. While it is down, Ingest acknowledges nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(|| pg_ctl("stop"))
        .await
        .expect("stop");
    let err = client
        .memory()
        .ingest(ingest(10_000))
        .await
        .expect_err("postgres is down: nothing may be acknowledged");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // Each scrape asks Postgres: the outage shows without traffic.
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "memoire_postgres_up 0"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| pg_ctl("start"))
        .await
        .expect("start");

    let (unavailable, other_errors) = writer.await.expect("writer");
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "memoire_postgres_up 1"),
        "{metrics}"
    );
    assert!(
        other_errors.is_empty(),
        "only UNAVAILABLE is acceptable: {other_errors:?}"
    );
    println!("ingest calls answered UNAVAILABLE during the outage: {unavailable}");
    server.wait_extracted(Duration::from_secs(60)).await;
    let per_message: Vec<(String, i64)> = sqlx::query_as(
        "SELECT message_id, count(*) FROM episodes GROUP BY message_id ORDER BY message_id",
    )
    .fetch_all(server.pool())
    .await
    .expect("episodes");
    assert_eq!(
        per_message.len(),
        N,
        "every acknowledged message is stored, the refused one is not"
    );
    assert!(per_message.iter().all(|(_, c)| *c == 1), "{per_message:?}");
    let per_slot: Vec<(String, i64)> =
        sqlx::query_as("SELECT slot, count(*) FROM memories GROUP BY slot ORDER BY slot")
            .fetch_all(server.pool())
            .await
            .expect("memories");
    assert_eq!(per_slot.len(), N, "every message extracted: {per_slot:?}");
    assert!(
        per_slot.iter().all(|(_, c)| *c == 1),
        "extracted once: {per_slot:?}"
    );
}
