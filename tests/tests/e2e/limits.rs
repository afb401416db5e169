//! Rate limits over real gRPC: the tenant's request rate with its burst, a key's own rate, the
//! Ingest message rate (nothing stored when refused), and the in-process fallback when Redis is
//! unreachable. Two server processes sharing one budget are tested from Python
//! (`tests/python/test_rate_limits.py`).

use std::time::{Duration, Instant};

use memoire_sdk::Client;
use memoire_tests::{TestServer, fact, proto as pb, retry_delay, violated_field};

/// Sets `tenant`'s limits (unset fields keep their value).
async fn limit(server: &TestServer, update: pb::UpdateTenantRequest) -> pb::Tenant {
    server
        .admin()
        .admin()
        .update_tenant(update)
        .await
        .expect("update tenant")
        .into_inner()
        .tenant
        .expect("tenant")
}

/// A new key of `tenant` with `role`, limited to `rps` requests/s on its own.
async fn limited_key(
    server: &TestServer,
    tenant: &str,
    role: pb::KeyRole,
    rps: u32,
) -> pb::CreateApiKeyResponse {
    server
        .admin()
        .admin()
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: tenant.into(),
            name: format!("{rps} per second"),
            role: role as i32,
            rate_limit_rps: rps,
        })
        .await
        .expect("create key")
        .into_inner()
}

/// `n` cheap calls as fast as they go: how many were admitted, the first refusal, and how long
/// the calls took. Every admitted call reports what remains exactly when `limited`.
async fn burst(
    client: &Client,
    n: usize,
    limited: bool,
) -> (usize, Option<tonic::Status>, Duration) {
    let start = Instant::now();
    let (mut admitted, mut refused) = (0, None);
    for _ in 0..n {
        let r = client
            .memory()
            .list_memories(pb::ListMemoriesRequest {
                user_id: "u".into(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(reply) => {
                admitted += 1;
                let remaining = reply.metadata().get("x-ratelimit-remaining");
                assert_eq!(remaining.is_some(), limited, "{remaining:?}");
            }
            Err(e) if refused.is_none() => refused = Some(e),
            Err(_) => {}
        }
    }
    (admitted, refused, start.elapsed())
}

/// The burst plus what `rate` refills in `elapsed`, plus one for the boundary.
fn at_most(burst: u32, rate: u32, elapsed: Duration) -> usize {
    (burst as f64 + rate as f64 * elapsed.as_secs_f64()).floor() as usize + 1
}

fn assert_refused(status: &tonic::Status, setting: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(setting), "{}", status.message());
    let retry = retry_delay(status).expect("a retry delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok()),
        Some("0")
    );
}

#[tokio::test]
async fn a_tenant_rate_admits_its_burst_then_refuses_with_retry_info() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let (_, other) = server.tenant("other", pb::KeyRole::Writer).await;
    let t = limit(
        &server,
        pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            rate_limit_rps: Some(4),
            rate_limit_burst: Some(6),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((t.rate_limit_rps, t.rate_limit_burst), (4, 6));

    let (admitted, refused, elapsed) = burst(&client, 30, true).await;
    assert!(admitted >= 6, "the burst: {admitted}");
    assert!(
        admitted <= at_most(6, 4, elapsed),
        "{admitted} in {elapsed:?}"
    );
    assert_refused(&refused.expect("refused"), "rate_limit_rps");

    // Another tenant has its own budget (none).
    let (admitted, refused, _) = burst(&other, 30, false).await;
    assert_eq!((admitted, refused.map(|s| s.code())), (30, None));

    // After a rest the rate refills.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (admitted, _, _) = burst(&client, 1, true).await;
    assert_eq!(admitted, 1);

    // Out-of-range settings are refused by name.
    let err = server
        .admin()
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            rate_limit_burst: Some(1_000_001),
            ..Default::default()
        })
        .await
        .expect_err("burst out of range");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_field(&err).as_deref(), Some("rate_limit_burst"));

    // The refusals are counted per tenant and limit.
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("memoire_rate_limited_total")
                && l.contains(&tenant)
                && l.contains("limit=\"tenant_rps\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_rate_limits_that_key_only() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, unlimited) = server.tenant("t", pb::KeyRole::Writer).await;
    let created = limited_key(&server, &tenant, pb::KeyRole::Reader, 3).await;
    assert_eq!(created.key.expect("key").rate_limit_rps, 3);
    let slow = server.client(Some(&created.secret));

    let (admitted, refused, elapsed) = burst(&slow, 20, true).await;
    assert!(
        admitted >= 3 && admitted <= at_most(3, 3, elapsed),
        "{admitted}"
    );
    assert_refused(&refused.expect("refused"), "API key's rate_limit_rps");
    // The tenant's other key is not slowed, and reports no limit.
    let (admitted, _, _) = burst(&unlimited, 10, false).await;
    assert_eq!(admitted, 10);

    let err = server
        .admin()
        .admin()
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: tenant,
            name: "too fast".into(),
            role: pb::KeyRole::Reader as i32,
            rate_limit_rps: 5_000_000,
        })
        .await
        .expect_err("rate out of range");
    assert_eq!(violated_field(&err).as_deref(), Some("rate_limit_rps"));
}

/// Teach and Recall start before the rate limits have decided (the decision is one Redis round
/// trip): a refused Teach must still write nothing, and a refused Recall leave no access count.
#[tokio::test]
async fn calls_that_start_before_the_decision_leave_nothing_when_refused() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, owner) = server.tenant("t", pb::KeyRole::Writer).await;
    let created = limited_key(&server, &tenant, pb::KeyRole::Writer, 1).await;
    let slow = server.client(Some(&created.secret));
    let memory = owner
        .memory()
        .teach(fact("u", "I keep bees on the roof"))
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("memory");

    // Ten different facts, as fast as they go: the first is admitted, the second is decided by
    // Redis while its embedding runs, the rest are refused without a round trip.
    let mut admitted = Vec::new();
    for i in 0..10 {
        match slow
            .memory()
            .teach(fact("u", &format!("My locker number is {}", 100 + i)))
            .await
        {
            Ok(r) => admitted.push(r.into_inner().memory.expect("memory").id),
            Err(e) => assert_refused(&e, "API key's rate_limit_rps"),
        }
    }
    assert!(!admitted.is_empty() && admitted.len() < 10, "{admitted:?}");
    let listed = owner
        .memory()
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories;
    assert_eq!(
        listed.len(),
        admitted.len() + 1,
        "a refused Teach wrote: {listed:?}"
    );

    // Recalls that find the memory: only the admitted ones count as accesses.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut recalled = 0u64;
    for _ in 0..10 {
        let r = slow
            .memory()
            .recall(pb::RecallRequest {
                user_id: "u".into(),
                query: "bees on the roof".into(),
                k: 5,
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let items = r.into_inner().items;
                let found = items.iter().any(|x| {
                    matches!(&x.item, Some(pb::recall_item::Item::Memory(m)) if m.id == memory.id)
                });
                assert!(found, "{items:?}");
                recalled += 1;
            }
            Err(e) => assert_refused(&e, "API key's rate_limit_rps"),
        }
    }
    assert!(recalled > 0 && recalled < 10, "{recalled}");
    // Access statistics are written after the reply: wait until they settle.
    let access_count = || {
        let (owner, id) = (owner.clone(), memory.id.clone());
        async move {
            owner
                .memory()
                .get_memory(pb::GetMemoryRequest { memory_id: id })
                .await
                .expect("get")
                .into_inner()
                .memory
                .expect("memory")
                .access_count
        }
    };
    let mut count = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        count = access_count().await;
        if count >= recalled {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = access_count().await;
    assert_eq!((count, settled), (recalled, recalled));
}

/// Teach computes its embedding while the rate limits decide, and writes nothing until they have:
/// not while the decision is pending, and nothing at all when it is a refusal. (Over gRPC the
/// decision nearly always comes first; here it is held back on purpose.)
#[tokio::test]
async fn teach_writes_only_once_its_permit_is_granted() {
    use memoire_core::command::Teach;
    use memoire_core::model::{Basis, MemoryKind, Scope};
    use memoire_usecases::Permit;

    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let uc = server.usecases().await;
    let teach = |content: &str| Teach::Create {
        scope: Scope {
            tenant_id: tenant.parse().expect("tenant id"),
            user_id: "u".into(),
            namespace: "default".into(),
        },
        memory: memoire_tests::new_memory(MemoryKind::Fact, content),
        force_create: false,
        reason: None,
        basis: Basis::Teach,
    };
    let stored = || {
        let client = client.clone();
        async move {
            client
                .memory()
                .list_memories(pb::ListMemoriesRequest {
                    user_id: "u".into(),
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner()
                .memories
                .len()
        }
    };

    let (decider, permit) = Permit::pending();
    let call = {
        let (uc, cmd) = (uc.clone(), teach("Keeps bees on the roof"));
        tokio::spawn(async move { uc.teach(&permit, cmd, "test").await })
    };
    // Long enough for the embedding; the write waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!call.is_finished(), "Teach finished before its permit");
    assert_eq!(stored().await, 0, "written before the permit");
    decider.admit(Some(1));
    call.await.expect("join").expect("teach");
    assert_eq!(stored().await, 1);

    let (decider, permit) = Permit::pending();
    decider.refuse(memoire_core::Error::ResourceExhausted {
        message: "rate limit exceeded".into(),
        retry_after: Some(Duration::from_millis(100)),
    });
    let err = uc
        .teach(&permit, teach("Keeps goats in the garden"), "test")
        .await
        .expect_err("refused");
    assert!(
        matches!(err, memoire_core::Error::ResourceExhausted { .. }),
        "{err:?}"
    );
    assert_eq!(stored().await, 1, "a refused Teach wrote");
}

fn messages(prefix: &str, n: usize) -> Vec<pb::Message> {
    (0..n)
        .map(|i| pb::Message {
            role: pb::MessageRole::User as i32,
            content: format!("message {prefix}{i}"),
            message_id: Some(format!("{prefix}{i}")),
            ..Default::default()
        })
        .collect()
}

async fn ingest(client: &Client, batch: Vec<pb::Message>) -> Result<(), tonic::Status> {
    client
        .memory()
        .ingest(pb::IngestRequest {
            user_id: "u".into(),
            session_id: "s".into(),
            messages: batch,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_ingest_message_rate_counts_messages_and_stores_nothing_it_refuses() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    limit(
        &server,
        pb::UpdateTenantRequest {
            tenant_id: tenant,
            ingest_rate_limit_mps: Some(10),
            ..Default::default()
        },
    )
    .await;
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM episodes")
            .fetch_one(server.pool())
            .await
            .expect("count")
    };

    ingest(&client, messages("a", 8))
        .await
        .expect("within the burst");
    let refused = ingest(&client, messages("b", 8))
        .await
        .expect_err("past it");
    assert_refused(&refused, "ingest_rate_limit_mps");
    assert_eq!(stored().await, 8, "nothing of the refused call was stored");

    // A call larger than a second's worth goes through once the budget is rested, then the
    // tenant waits its debt off.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ingest(&client, messages("c", 25)).await.expect("rested");
    let refused = ingest(&client, messages("d", 1))
        .await
        .expect_err("in debt");
    let retry = retry_delay(&refused).expect("retry");
    assert!(retry >= Duration::from_millis(1200), "{retry:?}");
    assert_eq!(stored().await, 33);
}

#[tokio::test]
async fn without_redis_each_replica_limits_on_its_own() {
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.redis_url = "redis://127.0.0.1:1".into();
        },
        None,
    )
    .await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    limit(
        &server,
        pb::UpdateTenantRequest {
            tenant_id: tenant,
            rate_limit_rps: Some(5),
            ..Default::default()
        },
    )
    .await;
    let (admitted, refused, elapsed) = burst(&client, 30, true).await;
    assert!(
        admitted >= 5 && admitted <= at_most(5, 5, elapsed),
        "{admitted}"
    );
    assert_refused(&refused.expect("refused"), "rate_limit_rps");
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("memoire_rate_limit_fallback_total"),
        "{metrics}"
    );
}

/// `name`'s entry in GetStats' quotas: (used, limit).
async fn quota_usage(server: &TestServer, tenant: &str, name: &str) -> (u64, u64) {
    let stats = server
        .admin()
        .admin()
        .get_stats(pb::GetStatsRequest {
            tenant_id: tenant.into(),
        })
        .await
        .expect("stats")
        .into_inner();
    let q = stats
        .quotas
        .iter()
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("no quota {name} in {stats:?}"));
    (q.used, q.limit)
}

#[tokio::test]
async fn an_episode_quota_holds_under_fifty_concurrent_ingests_and_stats_show_it() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    ingest(&client, messages("a", 4))
        .await
        .expect("before the quota");
    assert_eq!(quota_usage(&server, &tenant, "max_episodes").await, (4, 0));
    let err = server
        .admin()
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            max_episodes: Some(2_000_000_000_000),
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(violated_field(&err).as_deref(), Some("max_episodes"));
    let t = limit(
        &server,
        pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            max_episodes: Some(5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(t.max_episodes, 5);

    // One episode left, fifty callers of two messages or one.
    memoire_tests::assert_exactly_one_fits(50, "max_episodes", |i| {
        let c = client.clone();
        let batch = messages(&format!("w{i}-"), 1 + i % 2);
        async move { ingest(&c, batch).await }
    })
    .await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM episodes")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(stored, 5, "nothing half-written");
    assert_eq!(quota_usage(&server, &tenant, "max_episodes").await, (5, 5));
    // A retried message is a duplicate, not a new episode: it needs no room.
    ingest(&client, messages("a", 1)).await.expect("duplicate");
}

#[tokio::test]
async fn a_content_quota_counts_messages_and_memory_versions() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    ingest(&client, messages("a", 2)).await.expect("ingest");
    let teach = |content: &str| fact("u", content);
    client
        .memory()
        .teach(teach("Likes green tea"))
        .await
        .expect("teach");
    // "message a0", "message a1" and one version of "Likes green tea".
    let used = (2 * "message a0".len() + "Likes green tea".len()) as u64;
    assert_eq!(
        quota_usage(&server, &tenant, "max_content_bytes").await,
        (used, 0)
    );
    limit(
        &server,
        pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            max_content_bytes: Some(used + 20),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        quota_usage(&server, &tenant, "max_content_bytes").await,
        (used, used + 20)
    );
    // 19 bytes fit; 19 more do not, and nothing of the refused write stays.
    client
        .memory()
        .teach(teach("Plays the cello. 19"))
        .await
        .expect("fits");
    let err = client
        .memory()
        .teach(teach("Speaks Portuguese."))
        .await
        .expect_err("past the quota");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_content_bytes"),
        "{}",
        err.message()
    );
    let err = ingest(&client, messages("b", 1))
        .await
        .expect_err("past the quota");
    assert!(
        err.message().contains("max_content_bytes"),
        "{}",
        err.message()
    );
    assert_eq!(
        quota_usage(&server, &tenant, "max_content_bytes").await,
        (used + 19, used + 20)
    );
    // Lifting the quota lifts the bound.
    limit(
        &server,
        pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            max_content_bytes: Some(0),
            ..Default::default()
        },
    )
    .await;
    ingest(&client, messages("b", 1)).await.expect("no quota");
}
