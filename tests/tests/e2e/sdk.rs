//! Every RPC through `sdk-rust`'s typed methods against the real server: defaults (user,
//! namespace), typed errors (field-named invalid arguments, unauthenticated after revocation,
//! timeouts), and retries that never repeat a non-idempotent call.

use std::time::Duration;

use memoire_sdk::{Client, Error, RetryPolicy, pb};
use memoire_tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_through_the_typed_client() {
    let server = TestServer::start().await;
    let endpoint = format!("http://{}", server.grpc_addr);
    let admin = Client::builder(&endpoint)
        .api_key(&server.admin_key)
        .build()
        .expect("admin client");

    let tenant = admin
        .create_tenant(pb::CreateTenantRequest { name: "sdk".into() })
        .await
        .expect("create tenant")
        .tenant
        .expect("tenant");
    assert!(
        admin
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .expect("list tenants")
            .tenants
            .iter()
            .any(|t| t.id == tenant.id)
    );
    let updated = admin
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.id.clone(),
            pii_mode: pb::PiiMode::Mask as i32,
            ..Default::default()
        })
        .await
        .expect("update tenant")
        .tenant
        .expect("tenant");
    assert_eq!(updated.pii_mode, pb::PiiMode::Mask as i32);
    let key = admin
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: tenant.id.clone(),
            name: "app".into(),
            role: pb::KeyRole::Admin as i32,
            ..Default::default()
        })
        .await
        .expect("create key");
    let keys = admin
        .list_api_keys(pb::ListApiKeysRequest {
            tenant_id: tenant.id.clone(),
        })
        .await
        .expect("list keys")
        .keys;
    assert_eq!(keys.len(), 1);

    let client = Client::builder(&endpoint)
        .api_key(&key.secret)
        .default_user("dana")
        .default_namespace("assistant")
        .build()
        .expect("client");

    // Memory service, with the default user and namespace filled in.
    let taught = client
        .teach(pb::TeachRequest {
            kind: pb::MemoryKind::Fact as i32,
            content: "Lives in San Francisco".into(),
            slot: Some("user.home_city".into()),
            ..Default::default()
        })
        .await
        .expect("teach");
    let sf = taught.memory.expect("memory");
    assert_eq!(
        (sf.user_id.as_str(), sf.namespace.as_str()),
        ("dana", "assistant")
    );
    let ingested = client
        .ingest(pb::IngestRequest {
            session_id: "s1".into(),
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: "I just moved to Dallas.".into(),
                message_id: Some("m1".into()),
                ..Default::default()
            }],
            wait_for_extraction: true,
            ..Default::default()
        })
        .await
        .expect("ingest");
    assert_eq!(ingested.extraction, pb::ExtractionState::Completed as i32);
    let found = client
        .recall(pb::RecallRequest {
            query: "where does the user live?".into(),
            k: 1,
            ..Default::default()
        })
        .await
        .expect("recall");
    let dallas = match found.items.first().and_then(|i| i.item.clone()) {
        Some(pb::recall_item::Item::Memory(m)) => m,
        other => panic!("expected a memory, got {other:?}"),
    };
    assert!(dallas.content.contains("Dallas"));
    let conscious = client
        .conscious(pb::ConsciousRequest {
            session_id: Some("s1".into()),
            ..Default::default()
        })
        .await
        .expect("conscious");
    assert!(conscious.context.contains("Dallas"));
    assert_eq!(
        client.get_memory(&dallas.id).await.expect("get").id,
        dallas.id
    );
    let page = client
        .list_memories(pb::ListMemoriesRequest {
            include_superseded: true,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.memories.len(), 2);
    let history = client.history(&sf.id).await.expect("history");
    assert_eq!(
        history.last().expect("v").op,
        pb::VersionOp::Supersede as i32
    );
    let forgotten = client
        .forget(pb::ForgetRequest {
            memory_ids: vec![dallas.id.clone()],
            ..Default::default()
        })
        .await
        .expect("forget");
    assert_eq!(forgotten.memories, 1);
    assert!(matches!(
        client.get_memory(&dallas.id).await,
        Err(Error::NotFound(_))
    ));

    // Admin service with the tenant's admin key.
    let stats = client
        .get_stats(pb::GetStatsRequest::default())
        .await
        .expect("stats");
    assert_eq!(stats.episodes, 1);
    let run = client
        .run_maintenance(pb::RunMaintenanceRequest {
            job: pb::MaintenanceJob::Optimize as i32,
            wait: true,
            ..Default::default()
        })
        .await
        .expect("maintenance");
    assert!(run.finished);
    assert!(
        client
            .list_dead_letters(pb::ListDeadLettersRequest::default())
            .await
            .expect("dead letters")
            .dead_letters
            .is_empty()
    );
    assert_eq!(
        client
            .replay_dead_letters(pb::ReplayDeadLettersRequest::default())
            .await
            .expect("replay")
            .replayed,
        0
    );

    // Typed errors.
    match client
        .teach(pb::TeachRequest {
            kind: pb::MemoryKind::Fact as i32,
            ..Default::default()
        })
        .await
    {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field.as_deref(), Some("content")),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let slow = client.with_timeout(Duration::from_micros(1));
    assert!(
        matches!(
            slow.recall(pb::RecallRequest {
                query: "anything".into(),
                ..Default::default()
            })
            .await,
            Err(Error::Timeout(_))
        ),
        "a deadline is a Timeout"
    );
    admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: keys[0].id.clone(),
        })
        .await
        .expect("revoke");
    assert!(matches!(
        client
            .list_memories(pb::ListMemoriesRequest::default())
            .await,
        Err(Error::Unauthenticated(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_repeat_idempotent_calls_only() {
    // A port nobody listens on: every attempt is Unavailable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .retry(RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(40),
            max: Duration::from_millis(40),
        })
        .default_user("u")
        .build()
        .expect("client");
    let started = std::time::Instant::now();
    let err = client
        .recall(pb::RecallRequest {
            query: "q".into(),
            ..Default::default()
        })
        .await
        .expect_err("down");
    assert!(matches!(err, Error::Unavailable(_)));
    assert!(
        started.elapsed() >= Duration::from_millis(55),
        "three jittered waits of ≥ 20 ms"
    );
    let started = std::time::Instant::now();
    let err = client
        .teach(pb::TeachRequest {
            content: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("down");
    assert!(matches!(err, Error::Unavailable(_)));
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "a write is never retried"
    );
}
