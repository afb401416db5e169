//! Conscious working memory over gRPC against real Postgres and real Redis: the essential set and
//! the session's recent turns, served from Redis when warm, rebuilt from Postgres when cold, never
//! stale after a write (teach, correct, forget, ingest, extraction), and correct with Redis down,
//! frozen, or back after an outage.

use std::process::{Child, Command};
use std::time::Duration;

use memoire_sdk::Client;
use memoire_tests::{TestServer, proto as pb};

fn teach(
    user: &str,
    kind: pb::MemoryKind,
    content: &str,
    slot: Option<&str>,
    importance: f32,
) -> pb::TeachRequest {
    pb::TeachRequest {
        user_id: user.into(),
        kind: kind as i32,
        content: content.into(),
        slot: slot.map(str::to_owned),
        importance: Some(importance),
        ..Default::default()
    }
}

async fn conscious(client: &Client, user: &str, session: Option<&str>) -> pb::ConsciousResponse {
    client
        .memory()
        .conscious(pb::ConsciousRequest {
            user_id: user.into(),
            session_id: session.map(str::to_owned),
            ..Default::default()
        })
        .await
        .expect("conscious")
        .into_inner()
}

fn source(r: &pb::ConsciousResponse) -> pb::ConsciousSource {
    pb::ConsciousSource::try_from(r.source).expect("source")
}

async fn say(
    client: &Client,
    user: &str,
    session: &str,
    role: pb::MessageRole,
    text: &str,
    wait: bool,
) {
    client
        .memory()
        .ingest(pb::IngestRequest {
            user_id: user.into(),
            session_id: session.into(),
            messages: vec![pb::Message {
                role: role as i32,
                content: text.into(),
                ..Default::default()
            }],
            wait_for_extraction: wait,
            ..Default::default()
        })
        .await
        .expect("ingest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_reflected_by_the_very_next_call() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let name = m
        .teach(teach(
            "ada",
            pb::MemoryKind::Fact,
            "Name is Ada",
            Some("user.name"),
            0.9,
        ))
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("m");
    let tea = m
        .teach(teach(
            "ada",
            pb::MemoryKind::Preference,
            "Prefers green tea",
            None,
            0.7,
        ))
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("m");
    m.teach(teach(
        "ada",
        pb::MemoryKind::Fact,
        "Mentioned a rainy Tuesday",
        None,
        0.3,
    ))
    .await
    .expect("teach");
    say(
        &client,
        "ada",
        "s1",
        pb::MessageRole::User,
        "Can you help me plan a trip to Kyoto?",
        false,
    )
    .await;
    say(
        &client,
        "ada",
        "s1",
        pb::MessageRole::Assistant,
        "Of course! When are you going?",
        false,
    )
    .await;

    let first = conscious(&client, "ada", Some("s1")).await;
    assert_eq!(
        source(&first),
        pb::ConsciousSource::Postgres,
        "cold: built from Postgres"
    );
    assert!(
        first.context.contains("Name is Ada") && first.context.contains("Prefers green tea"),
        "{}",
        first.context
    );
    assert!(
        !first.context.contains("rainy Tuesday"),
        "not essential: {}",
        first.context
    );
    assert!(
        first.context.contains("trip to Kyoto") && first.context.contains("When are you going?")
    );
    assert_eq!(first.recent.len(), 2);
    assert!(first.context_tokens > 0 && !first.truncated);
    let warm = conscious(&client, "ada", Some("s1")).await;
    assert_eq!(
        source(&warm),
        pb::ConsciousSource::Redis,
        "warm: served from Redis"
    );
    assert_eq!(warm.context, first.context, "same answer from either store");

    // A correction: the very next call shows it.
    m.teach(pb::TeachRequest {
        user_id: "ada".into(),
        memory_id: Some(tea.id.clone()),
        content: "Prefers jasmine tea".into(),
        ..Default::default()
    })
    .await
    .expect("correct");
    let after = conscious(&client, "ada", Some("s1")).await;
    assert!(
        after.context.contains("Prefers jasmine tea") && !after.context.contains("green tea"),
        "{}",
        after.context
    );

    // A new turn in the session.
    say(
        &client,
        "ada",
        "s1",
        pb::MessageRole::User,
        "In April, for two weeks.",
        false,
    )
    .await;
    let after = conscious(&client, "ada", Some("s1")).await;
    assert!(after.context.contains("In April, for two weeks."));

    // Forgetting: gone at once.
    m.forget(pb::ForgetRequest {
        memory_ids: vec![name.id.clone()],
        ..Default::default()
    })
    .await
    .expect("forget");
    let after = conscious(&client, "ada", Some("s1")).await;
    assert!(!after.context.contains("Name is Ada"), "{}", after.context);
    assert!(after.essential.iter().all(|e| e.id != name.id));

    // Extraction by the worker: "I'm allergic to shellfish" becomes essential.
    say(
        &client,
        "ada",
        "s1",
        pb::MessageRole::User,
        "I'm allergic to shellfish.",
        true,
    )
    .await;
    let after = conscious(&client, "ada", Some("s1")).await;
    assert!(
        after
            .essential
            .iter()
            .any(|e| e.slot == "user.allergy.shellfish"),
        "{:?}",
        after.essential
    );

    // Another namespace and another user see nothing of it.
    let other = conscious(&client, "bob", None).await;
    assert!(other.essential.is_empty() && other.context.is_empty());

    // A tight budget keeps the essentials and the newest turns, and says it truncated.
    let tight = client
        .memory()
        .conscious(pb::ConsciousRequest {
            user_id: "ada".into(),
            session_id: Some("s1".into()),
            token_budget: 30,
            ..Default::default()
        })
        .await
        .expect("conscious")
        .into_inner();
    assert!(tight.truncated && tight.context_tokens <= 30, "{tight:?}");

    // Purge: the content leaves Redis too.
    conscious(&client, "ada", Some("s1")).await;
    m.forget(memoire_tests::purge_user("ada"))
        .await
        .expect("purge");
    let after = conscious(&client, "ada", Some("s1")).await;
    assert!(
        after.essential.is_empty() && after.recent.is_empty(),
        "{after:?}"
    );
    let leftovers = redis_keys_holding("jasmine");
    assert!(
        leftovers.is_empty(),
        "purged content still in Redis: {leftovers:?}"
    );
}

/// Keys whose value contains `needle` (scans the test Redis — every primary of a cluster;
/// values are JSON).
fn redis_keys_holding(needle: &str) -> Vec<String> {
    let url = memoire_tests::test_redis_url();
    memoire_tests::redis_keys(&url, "memoire:*:conscious:*")
        .into_iter()
        .filter(|key| memoire_tests::redis_cli(&url, &["GET", key]).contains(needle))
        .collect()
}

/// A private redis-server (nothing on disk) on a free port.
struct PrivateRedis {
    child: Child,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/setup.sh)");
        PrivateRedis { child }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn wait_for(client: &Client, user: &str, want: pb::ConsciousSource) -> pb::ConsciousResponse {
    for _ in 0..100 {
        let r = conscious(client, user, None).await;
        if source(&r) == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Conscious never answered from {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_frozen_or_back_never_errors_and_never_serves_stale() {
    let port = free_port();
    let redis = PrivateRedis::start(port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server =
        TestServer::start_with(|c| c.redis_url = format!("redis://127.0.0.1:{port}"), None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let city = m
        .teach(teach(
            "cy",
            pb::MemoryKind::Fact,
            "Lives in Lyon",
            Some("user.home_city"),
            0.8,
        ))
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("m");
    conscious(&client, "cy", None).await;
    wait_for(&client, "cy", pb::ConsciousSource::Redis).await;

    // Frozen Redis (SIGSTOP keeps its data): calls answer from Postgres, a write's invalidation
    // cannot reach Redis ...
    redis.signal("-STOP");
    let down = conscious(&client, "cy", None).await;
    assert_eq!(source(&down), pb::ConsciousSource::Postgres);
    assert!(down.context.contains("Lives in Lyon"));
    m.teach(pb::TeachRequest {
        user_id: "cy".into(),
        memory_id: Some(city.id.clone()),
        content: "Lives in Nantes".into(),
        ..Default::default()
    })
    .await
    .expect("correct while redis is frozen");
    let down = conscious(&client, "cy", None).await;
    assert!(down.context.contains("Lives in Nantes"), "{}", down.context);
    // ... and when it thaws, the entry from before the outage is never served.
    redis.signal("-CONT");
    for _ in 0..20 {
        let r = conscious(&client, "cy", None).await;
        assert!(
            r.context.contains("Lives in Nantes"),
            "stale after the outage: {} ({:?})",
            r.context,
            source(&r)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(&client, "cy", pb::ConsciousSource::Redis).await;

    // Redis stopped: same answer from Postgres, no error.
    redis.stop();
    let down = conscious(&client, "cy", None).await;
    assert_eq!(source(&down), pb::ConsciousSource::Postgres);
    assert!(down.context.contains("Lives in Nantes"));
    m.teach(teach(
        "cy",
        pb::MemoryKind::Rule,
        "Always answer in French",
        None,
        0.9,
    ))
    .await
    .expect("teach while redis is down");
    let down = conscious(&client, "cy", None).await;
    assert!(down.context.contains("Always answer in French"));

    // Redis back (empty): the cache is rebuilt.
    let redis = PrivateRedis::start(port);
    let back = wait_for(&client, "cy", pb::ConsciousSource::Redis).await;
    assert!(
        back.context.contains("Always answer in French")
            && back.context.contains("Lives in Nantes")
    );
    redis.stop();
}
