//! Durability of the write path: a worker stopped or killed in the middle of a batch and a
//! flushed Redis lose nothing and duplicate nothing — every acknowledged message is stored once and extracted
//! once. (Restarting Postgres has its own test binary, `fault_postgres`, because it interrupts
//! every connection of the machine's server.)

use std::time::Duration;

use memoire_config::ExtractorKind;
use memoire_sdk::Client;
use memoire_tests::fake_llm::{FakeLlm, Reply};
use memoire_tests::{TestServer, TestWorker, proto as pb};
use serde_json::json;

fn likes(i: usize) -> String {
    format!("I like item{i}.")
}

async fn ingest_all(client: &Client, n: usize) {
    let messages = (0..n)
        .map(|i| pb::Message {
            role: pb::MessageRole::User as i32,
            content: likes(i),
            message_id: Some(format!("m{i}")),
            ..Default::default()
        })
        .collect();
    client
        .memory()
        .ingest(pb::IngestRequest {
            user_id: "u".into(),
            session_id: "s".into(),
            messages,
            ..Default::default()
        })
        .await
        .expect("ingest");
}

/// Exactly one memory and one `extract.create` decision per message, and every episode done.
async fn assert_extracted_exactly_once(server: &TestServer, n: usize) {
    let per_slot: Vec<(String, i64)> = sqlx::query_as(
        "SELECT slot, count(*) FROM memories WHERE slot LIKE 'user.taste.%' GROUP BY slot ORDER BY slot",
    )
    .fetch_all(server.pool())
    .await
    .expect("memories");
    assert_eq!(per_slot.len(), n, "one memory per message: {per_slot:?}");
    assert!(
        per_slot.iter().all(|(_, c)| *c == 1),
        "duplicates: {per_slot:?}"
    );
    let creates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'extract.create'")
            .fetch_one(server.pool())
            .await
            .expect("audit");
    assert_eq!(creates, n as i64, "one create decision per message");
    let (episodes, done): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(extracted_at) FROM episodes")
            .fetch_one(server.pool())
            .await
            .expect("episodes");
    assert_eq!((episodes, done), (n as i64, n as i64));
}

/// A model that takes 150 ms per turn (so that a stop or a kill lands in the middle of a
/// batch), and a server without a worker that extracts with it.
async fn slow_model_server() -> (FakeLlm, TestServer) {
    let fake = FakeLlm::start(|turn, _| {
        let item = turn
            .strip_prefix("I like ")
            .unwrap_or("x")
            .trim_end_matches('.')
            .to_owned();
        Reply::Delayed(
            Duration::from_millis(150),
            Box::new(Reply::memories(json!([{
                "action": "add", "kind": "preference", "content": format!("Likes {item}"),
                "slot": format!("user.taste.{item}"), "subject": null, "importance": 0.5,
                "confidence": 0.9, "memory_id": null
            }]))),
        )
    })
    .await;
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.extractor = ExtractorKind::Llm;
            c.llm_base_url = fake.url.clone();
            c.llm_model = "fake".into();
        },
        None,
    )
    .await;
    (fake, server)
}

/// Messages ingested for one user in the fault tests.
const N: usize = 12;

/// A slow-model server with `N` messages queued and a worker that has extracted 3 of them.
async fn mid_batch() -> (FakeLlm, TestServer, Client, TestWorker) {
    let (fake, server) = slow_model_server().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    ingest_all(&client, N).await;
    let worker = server.start_worker(|_| {}).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if extracted(&server).await >= 3 {
            return (fake, server, client, worker);
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn extracted(server: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM episodes WHERE extracted_at IS NOT NULL")
        .fetch_one(server.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_batch_finishes_its_episode_and_leaves_the_rest_pending() {
    let (_fake, server, _client, worker) = mid_batch().await;
    let asked = tokio::time::Instant::now();
    worker.stop().await;
    // The episode in flight (150 ms of model) finishes; the next ones do not start.
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the stop took {:?}",
        asked.elapsed()
    );
    let done = extracted(&server).await;
    assert!(
        done < N as i64,
        "the rest is left pending ({done} of {N} done)"
    );
    // Never half-written: an episode is extracted with its memory, or pending without one.
    let memories: i64 =
        sqlx::query_scalar("SELECT count(*) FROM memories WHERE slot LIKE 'user.taste.%'")
            .fetch_one(server.pool())
            .await
            .expect("memories");
    assert_eq!(
        memories, done,
        "one memory per extracted episode, none for the others"
    );

    let worker = server.start_worker(|_| {}).await;
    server.wait_extracted(Duration::from_secs(30)).await;
    worker.stop().await;
    assert_extracted_exactly_once(&server, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_and_duplicates_nothing() {
    let (_fake, server, client, worker) = mid_batch().await;
    // Killed while a request to the model is in flight.
    worker.kill().await;
    let done = extracted(&server).await;
    assert!(
        done < N as i64,
        "the kill must land mid-batch ({done} of {N} done)"
    );

    // The retried message is idempotent too: nothing new is stored.
    ingest_all(&client, N).await;
    let worker = server.start_worker(|_| {}).await;
    server.wait_extracted(Duration::from_secs(30)).await;
    worker.stop().await;
    assert_extracted_exactly_once(&server, N).await;
}

/// FLUSHALL on the test Redis, over RESP.
async fn flush_redis() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .expect("redis");
    s.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_redis_while_jobs_are_queued_loses_nothing() {
    const N: usize = 8;
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    ingest_all(&client, N).await;
    flush_redis().await;
    let worker = server.start_worker(|_| {}).await;
    server.wait_extracted(Duration::from_secs(30)).await;
    flush_redis().await;
    ingest_all(&client, N).await; // retried after the flush: still idempotent
    server.wait_extracted(Duration::from_secs(30)).await;
    worker.stop().await;
    assert_extracted_exactly_once(&server, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_queue_and_keep_each_users_order() {
    // Two workers, several users, each user's statements in order: the later "moved to"
    // must win for every user, and nothing is extracted twice.
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let cities = ["Oslo", "Lima", "Pune", "Kyiv", "Accra", "Quito"];
    for u in 0..6 {
        let messages = cities
            .iter()
            .cycle()
            .skip(u)
            .take(cities.len())
            .map(|c| pb::Message {
                role: pb::MessageRole::User as i32,
                content: format!("I moved to {c}."),
                ..Default::default()
            })
            .collect();
        client
            .memory()
            .ingest(pb::IngestRequest {
                user_id: format!("user{u}"),
                session_id: "s".into(),
                messages,
                ..Default::default()
            })
            .await
            .expect("ingest");
    }
    let a = server.start_worker(|c| c.worker_concurrency = 3).await;
    let b = server.start_worker(|c| c.worker_concurrency = 3).await;
    server.wait_extracted(Duration::from_secs(30)).await;
    a.stop().await;
    b.stop().await;
    for u in 0..6 {
        let last = cities
            .iter()
            .cycle()
            .skip(u)
            .take(cities.len())
            .last()
            .expect("city");
        let current: Vec<String> = sqlx::query_scalar(
            "SELECT content FROM memories WHERE user_id = $1 AND slot = 'user.home_city' AND status = 'active'",
        )
        .bind(format!("user{u}"))
        .fetch_all(server.pool())
        .await
        .expect("current");
        assert_eq!(current, vec![format!("Lives in {last}")], "user{u}");
        let versions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM memories WHERE user_id = $1 AND slot = 'user.home_city'",
        )
        .bind(format!("user{u}"))
        .fetch_one(server.pool())
        .await
        .expect("all");
        assert_eq!(
            versions,
            cities.len() as i64,
            "one memory per statement, user{u}"
        );
    }
}
