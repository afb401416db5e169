//! End to end through gRPC against real Postgres: auth and tenants, Teach (create, supersede,
//! duplicate, correct), Forget (tombstone, purge, dry run), Get/List/History, tenant isolation,
//! input validation, paging, expiry, health and metrics.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use memoire_core::clock::{Clock, ManualClock};
use memoire_tests::{TestServer, http_get, proto as pb, violated_field};
use tonic::Code;

type Mem = memoire_sdk::MemoryClient;

fn teach_req(user: &str, content: &str, slot: Option<&str>) -> pb::TeachRequest {
    pb::TeachRequest {
        user_id: user.into(),
        kind: pb::MemoryKind::Fact as i32,
        content: content.into(),
        slot: slot.map(Into::into),
        ..Default::default()
    }
}

async fn teach(m: &mut Mem, req: pb::TeachRequest) -> pb::TeachResponse {
    m.teach(req).await.expect("teach").into_inner()
}

async fn list(m: &mut Mem, user: &str, include_superseded: bool) -> Vec<pb::Memory> {
    m.list_memories(pb::ListMemoriesRequest {
        user_id: user.into(),
        include_superseded,
        ..Default::default()
    })
    .await
    .expect("list")
    .into_inner()
    .memories
}

async fn history(m: &mut Mem, id: &str) -> Vec<pb::MemoryVersion> {
    m.history(pb::HistoryRequest {
        memory_id: id.into(),
    })
    .await
    .expect("history")
    .into_inner()
    .versions
}

fn ops(versions: &[pb::MemoryVersion]) -> Vec<pb::VersionOp> {
    versions
        .iter()
        .map(|v| pb::VersionOp::try_from(v.op).expect("op"))
        .collect()
}

async fn count(server: &TestServer, sql: &str, id: &str) -> i64 {
    let id: uuid::Uuid = id.parse().expect("uuid");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(server.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bootstrap_creates_tenants_and_keys_and_auth_is_enforced() {
    let server = TestServer::start().await;
    let mut admin = server.admin().admin();
    let tenant = admin
        .create_tenant(pb::CreateTenantRequest {
            name: "acme".into(),
        })
        .await
        .expect("create tenant")
        .into_inner()
        .tenant
        .expect("tenant");
    let dup = admin
        .create_tenant(pb::CreateTenantRequest {
            name: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = admin
        .create_tenant(pb::CreateTenantRequest {
            name: "no spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&bad).as_deref(), Some("name"));

    let created = admin
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: tenant.id.clone(),
            name: "app".into(),
            role: pb::KeyRole::Writer as i32,
            ..Default::default()
        })
        .await
        .expect("create key")
        .into_inner();
    assert!(created.secret.starts_with("mem_"));
    let key = created.key.expect("key");
    assert!(created.secret.starts_with(&key.prefix));

    // The key is stored hashed: the secret appears nowhere in the table.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
        .fetch_all(server.pool())
        .await
        .expect("keys");
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 32 && h.as_slice() != created.secret.as_bytes())
    );

    let keys = admin
        .list_api_keys(pb::ListApiKeysRequest {
            tenant_id: tenant.id.clone(),
        })
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);

    // The key works; no key, a wrong key and the bootstrap key on the memory service do not.
    let mut writer = server.client(Some(&created.secret)).memory();
    teach(&mut writer, teach_req("u1", "likes tea", None)).await;
    let no_key = server
        .client(None)
        .memory()
        .teach(teach_req("u1", "x", None))
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::Unauthenticated);
    let wrong = server
        .client(Some("mem_not-a-real-key"))
        .memory()
        .teach(teach_req("u1", "x", None))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let boot = server
        .admin()
        .memory()
        .teach(teach_req("u1", "x", None))
        .await
        .unwrap_err();
    assert_eq!(boot.code(), Code::PermissionDenied);

    // A writer key cannot administer; a reader key cannot write.
    let denied = server
        .client(Some(&created.secret))
        .admin()
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let reader = server.key(&tenant.id, pb::KeyRole::Reader).await;
    let mut reader = server.client(Some(&reader)).memory();
    assert_eq!(
        reader
            .teach(teach_req("u1", "x", None))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(list(&mut reader, "u1", false).await.len(), 1);

    // A tenant admin manages its own tenant only, and cannot create tenants.
    let tenant_admin = server.key(&tenant.id, pb::KeyRole::Admin).await;
    let mut tadmin = server.client(Some(&tenant_admin)).admin();
    assert_eq!(
        tadmin
            .create_tenant(pb::CreateTenantRequest {
                name: "other".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let other = admin
        .create_tenant(pb::CreateTenantRequest {
            name: "other".into(),
        })
        .await
        .expect("other")
        .into_inner()
        .tenant
        .expect("t");
    let cross = tadmin
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: other.id.clone(),
            name: String::new(),
            role: pb::KeyRole::Admin as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(cross.code(), Code::PermissionDenied);
    let visible = tadmin
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .expect("list")
        .into_inner()
        .tenants;
    assert_eq!(
        visible.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["acme"]
    );

    // Revocation takes effect at once.
    admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: key.id.clone(),
        })
        .await
        .expect("revoke");
    let revoked = writer.teach(teach_req("u1", "x", None)).await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);

    let stats = admin
        .get_stats(pb::GetStatsRequest {
            tenant_id: tenant.id.clone(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        (stats.users, stats.active_memories, stats.versions),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_home_city_supersedes_the_old_one_and_history_keeps_it() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();

    let sf = teach(
        &mut m,
        teach_req("dana", "Lives in San Francisco", Some("user.home_city")),
    )
    .await;
    assert_eq!(sf.outcome, pb::WriteOutcome::Created as i32);
    let sf = sf.memory.expect("memory");
    assert_eq!((sf.version, sf.slot.as_str()), (1, "user.home_city"));

    let dallas = teach(
        &mut m,
        teach_req("dana", "Lives in Dallas", Some("User.Home_City")),
    )
    .await;
    assert_eq!(dallas.outcome, pb::WriteOutcome::Superseded as i32);
    assert_eq!(dallas.superseded_memory_id, sf.id);
    let decision = dallas.decision.expect("decision");
    assert_eq!(decision.basis, pb::Basis::Resolver as i32);
    assert!(
        decision.reason.contains("user.home_city"),
        "{}",
        decision.reason
    );
    let dallas = dallas.memory.expect("memory");

    let current = list(&mut m, "dana", false).await;
    assert_eq!(
        current
            .iter()
            .map(|x| x.content.as_str())
            .collect::<Vec<_>>(),
        vec!["Lives in Dallas"]
    );
    assert_eq!(list(&mut m, "dana", true).await.len(), 2);

    let old = m
        .get_memory(pb::GetMemoryRequest {
            memory_id: sf.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .memory
        .expect("m");
    assert_eq!(old.status, pb::MemoryStatus::Superseded as i32);
    assert_eq!(old.superseded_by, dallas.id);
    let h = history(&mut m, &sf.id).await;
    assert_eq!(
        ops(&h),
        vec![pb::VersionOp::Create, pb::VersionOp::Supersede]
    );
    assert_eq!(h[1].superseded_by, dallas.id);
    assert_eq!(h[0].basis, pb::Basis::Teach as i32);
    assert!(!h[0].actor.is_empty());
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM edges WHERE src_id = $1 AND relation = 'supersedes'",
            &dallas.id
        )
        .await,
        1
    );

    // Saying the same thing again writes nothing.
    let again = teach(
        &mut m,
        teach_req("dana", "lives in  dallas.", Some("user.home_city")),
    )
    .await;
    assert_eq!(again.outcome, pb::WriteOutcome::Duplicate as i32);
    assert_eq!(again.duplicate_of, dallas.id);
    assert_eq!(history(&mut m, &dallas.id).await.len(), 1);

    // Identical content without a slot is a duplicate too, unless forced.
    let tea = teach(&mut m, teach_req("dana", "Likes green tea", None))
        .await
        .memory
        .expect("m");
    let dup = teach(&mut m, teach_req("dana", "likes green tea", None)).await;
    assert_eq!(
        (dup.outcome, dup.duplicate_of.as_str()),
        (pb::WriteOutcome::Duplicate as i32, tea.id.as_str())
    );
    let forced = teach(
        &mut m,
        pb::TeachRequest {
            force_create: true,
            ..teach_req("dana", "likes green tea", None)
        },
    )
    .await;
    assert_eq!(forced.outcome, pb::WriteOutcome::Created as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_is_a_new_version_of_the_same_memory() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let job = teach(
        &mut m,
        pb::TeachRequest {
            tags: vec!["Work".into()],
            ..teach_req("u", "Works at Initech", Some("user.employer"))
        },
    )
    .await
    .memory
    .expect("m");

    let fixed = teach(
        &mut m,
        pb::TeachRequest {
            user_id: "u".into(),
            memory_id: Some(job.id.clone()),
            content: "Works at Initrode".into(),
            importance: Some(0.9),
            reason: Some("typo".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(fixed.outcome, pb::WriteOutcome::Corrected as i32);
    let fixed = fixed.memory.expect("m");
    assert_eq!(
        (fixed.id.as_str(), fixed.version, fixed.content.as_str()),
        (job.id.as_str(), 2, "Works at Initrode")
    );
    assert_eq!(fixed.tags, vec!["work"], "unset fields keep their value");
    assert!((fixed.importance - 0.9).abs() < 1e-6);
    let h = history(&mut m, &job.id).await;
    assert_eq!(ops(&h), vec![pb::VersionOp::Create, pb::VersionOp::Correct]);
    assert_eq!(
        (h[1].basis, h[1].reason.as_str(), h[0].content.as_str()),
        (pb::Basis::Correction as i32, "typo", "Works at Initech")
    );

    // A correction that changes nothing, or sets no field, writes nothing.
    let same = teach(
        &mut m,
        pb::TeachRequest {
            user_id: "u".into(),
            memory_id: Some(job.id.clone()),
            content: "Works at Initrode".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(same.outcome, pb::WriteOutcome::Duplicate as i32);
    let empty = m
        .teach(pb::TeachRequest {
            user_id: "u".into(),
            memory_id: Some(job.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&empty).as_deref(), Some("memory_id"));
    assert_eq!(history(&mut m, &job.id).await.len(), 2);

    // A superseded memory cannot be corrected; an unknown one is not found.
    let newer = teach(
        &mut m,
        teach_req("u", "Works at Hooli", Some("user.employer")),
    )
    .await;
    assert_eq!(newer.outcome, pb::WriteOutcome::Superseded as i32);
    let stale = m
        .teach(pb::TeachRequest {
            user_id: "u".into(),
            memory_id: Some(job.id.clone()),
            content: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let unknown = m
        .teach(pb::TeachRequest {
            user_id: "u".into(),
            memory_id: Some(uuid::Uuid::new_v4().to_string()),
            content: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstoned_memories_disappear_from_reads_but_keep_history() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let a = teach(&mut m, teach_req("u", "Has a cat named Miso", None))
        .await
        .memory
        .expect("m");
    let b = teach(&mut m, teach_req("u", "Plays chess", None))
        .await
        .memory
        .expect("m");

    let r = m
        .forget(pb::ForgetRequest {
            memory_ids: vec![a.id.clone()],
            reason: Some("user asked".into()),
            ..Default::default()
        })
        .await
        .expect("forget")
        .into_inner();
    assert_eq!(
        (r.outcome, r.mode, r.memories),
        (
            pb::WriteOutcome::Forgotten as i32,
            pb::ForgetMode::Tombstone as i32,
            1
        )
    );
    assert_eq!(r.memory_ids, vec![a.id.clone()]);

    assert_eq!(
        m.get_memory(pb::GetMemoryRequest {
            memory_id: a.id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        list(&mut m, "u", true)
            .await
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>(),
        vec![b.id.clone()]
    );
    let h = history(&mut m, &a.id).await;
    assert_eq!(
        ops(&h),
        vec![pb::VersionOp::Create, pb::VersionOp::Tombstone]
    );
    assert_eq!(
        (h[1].basis, h[1].reason.as_str()),
        (pb::Basis::Forget as i32, "user asked")
    );

    // Forgetting again is a no-op that says so.
    let again = m
        .forget(pb::ForgetRequest {
            memory_ids: vec![a.id.clone()],
            ..Default::default()
        })
        .await
        .expect("forget")
        .into_inner();
    assert_eq!(
        (again.memories, again.not_found_ids),
        (0, vec![a.id.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_erases_every_trace_and_dry_run_changes_nothing() {
    let server = TestServer::start().await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let old = teach(
        &mut m,
        teach_req("erin", "Lives in Oslo", Some("user.home_city")),
    )
    .await
    .memory
    .expect("m");
    let new = teach(
        &mut m,
        teach_req("erin", "Lives in Bergen", Some("user.home_city")),
    )
    .await
    .memory
    .expect("m");
    let keep = teach(
        &mut m,
        teach_req("frank", "Lives in Rome", Some("user.home_city")),
    )
    .await
    .memory
    .expect("m");
    // An episode of erin's, written directly and marked extracted (the worker leaves it alone):
    // purge must erase episodes.
    sqlx::query(
        "INSERT INTO episodes (id, tenant_id, user_id, namespace, session_id, role, content, occurred_at, \
           created_at, extracted_at) \
         VALUES (gen_random_uuid(), $1, 'erin', 'default', 's1', 'user', 'I moved to Bergen', now(), now(), now())",
    )
    .bind(tenant.parse::<uuid::Uuid>().expect("uuid"))
    .execute(server.pool())
    .await
    .expect("episode");

    let selector = || {
        Some(pb::ForgetSelector {
            user_id: "erin".into(),
            ..Default::default()
        })
    };
    let dry = m
        .forget(pb::ForgetRequest {
            selector: selector(),
            mode: pb::ForgetMode::Purge as i32,
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("dry run")
        .into_inner();
    assert!(dry.dry_run);
    assert_eq!(
        (dry.memories, dry.versions, dry.edges, dry.episodes),
        (2, 3, 1, 1)
    );
    assert_eq!(
        list(&mut m, "erin", true).await.len(),
        2,
        "a dry run changes nothing"
    );

    let done = m
        .forget(pb::ForgetRequest {
            selector: selector(),
            mode: pb::ForgetMode::Purge as i32,
            ..Default::default()
        })
        .await
        .expect("purge")
        .into_inner();
    assert_eq!(
        (done.memories, done.versions, done.edges, done.episodes),
        (2, 3, 1, 1)
    );

    for id in [&old.id, &new.id] {
        assert_eq!(
            m.get_memory(pb::GetMemoryRequest {
                memory_id: id.clone()
            })
            .await
            .unwrap_err()
            .code(),
            Code::NotFound
        );
        assert_eq!(
            m.history(pb::HistoryRequest {
                memory_id: id.clone()
            })
            .await
            .unwrap_err()
            .code(),
            Code::NotFound
        );
        for table in [
            "SELECT count(*) FROM memories WHERE id = $1",
            "SELECT count(*) FROM memory_versions WHERE memory_id = $1",
            "SELECT count(*) FROM edges WHERE src_id = $1 OR dst_id = $1",
            "SELECT count(*) FROM audit_log WHERE target_id = $1",
            "SELECT count(*) FROM memory_terms WHERE doc_id = $1",
        ] {
            assert_eq!(count(&server, table, id).await, 0, "{table}");
        }
    }
    let postings: i64 =
        sqlx::query_scalar("SELECT count(*) FROM episode_terms WHERE user_id = 'erin'")
            .fetch_one(server.pool())
            .await
            .expect("count");
    assert_eq!(postings, 0, "the purged episode's postings are gone too");
    let leftover: i64 = sqlx::query_scalar("SELECT count(*) FROM episodes WHERE user_id = 'erin'")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(leftover, 0);
    let text: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM memory_versions WHERE content ILIKE '%Oslo%' OR content ILIKE '%Bergen%') \
              + (SELECT count(*) FROM audit_log WHERE detail::text ILIKE '%Oslo%' OR detail::text ILIKE '%Bergen%')",
    )
    .fetch_one(server.pool())
    .await
    .expect("count");
    assert_eq!(
        text, 0,
        "no content of the purged memories survives anywhere"
    );
    // Another user's memory is untouched.
    assert_eq!(list(&mut m, "frank", false).await[0].id, keep.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_sees_or_touches_another_tenants_memories() {
    let server = TestServer::start().await;
    let (_, alice) = server.tenant("alice-co", pb::KeyRole::Writer).await;
    let (_, mallory) = server.tenant("mallory-co", pb::KeyRole::Admin).await;
    let (mut a, mut b) = (alice.memory(), mallory.memory());
    let secret = teach(
        &mut a,
        teach_req(
            "shared-user-id",
            "Secret: the launch is on Friday",
            Some("user.secret"),
        ),
    )
    .await
    .memory
    .expect("m");

    let id = secret.id.clone();
    assert_eq!(
        b.get_memory(pb::GetMemoryRequest {
            memory_id: id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        b.history(pb::HistoryRequest {
            memory_id: id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert!(list(&mut b, "shared-user-id", true).await.is_empty());
    let correction = b
        .teach(pb::TeachRequest {
            user_id: "shared-user-id".into(),
            memory_id: Some(id.clone()),
            content: "hijacked".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(correction.code(), Code::NotFound);
    for mode in [pb::ForgetMode::Tombstone, pb::ForgetMode::Purge] {
        let r = b
            .forget(pb::ForgetRequest {
                memory_ids: vec![id.clone()],
                mode: mode as i32,
                ..Default::default()
            })
            .await
            .expect("forget")
            .into_inner();
        assert_eq!((r.memories, r.not_found_ids.clone()), (0, vec![id.clone()]));
        let r = b
            .forget(pb::ForgetRequest {
                selector: Some(pb::ForgetSelector {
                    user_id: "shared-user-id".into(),
                    ..Default::default()
                }),
                mode: mode as i32,
                ..Default::default()
            })
            .await
            .expect("forget")
            .into_inner();
        assert_eq!(r.memories, 0);
    }
    // Same user id and slot in the other tenant: no supersession across tenants.
    let theirs = teach(
        &mut b,
        teach_req("shared-user-id", "Secret: nothing", Some("user.secret")),
    )
    .await;
    assert_eq!(theirs.outcome, pb::WriteOutcome::Created as i32);
    let stats = mallory
        .admin()
        .get_stats(pb::GetStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.active_memories, 1);

    let still = a
        .get_memory(pb::GetMemoryRequest {
            memory_id: id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .memory
        .expect("m");
    assert_eq!(
        (still.status, still.version, still.content.as_str()),
        (pb::MemoryStatus::Active as i32, 1, secret.content.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_writes_nothing() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let cases: Vec<(pb::TeachRequest, &str)> = vec![
        (teach_req("u", "", None), "content"),
        (teach_req("u", &"x".repeat(16 * 1024 + 1), None), "content"),
        (
            pb::TeachRequest {
                kind: 0,
                ..teach_req("u", "ok", None)
            },
            "kind",
        ),
        (
            pb::TeachRequest {
                kind: 99,
                ..teach_req("u", "ok", None)
            },
            "kind",
        ),
        (teach_req("", "ok", None), "user_id"),
        (teach_req("u", "ok", Some("nodot")), "slot"),
        (teach_req("u", "nul \0 byte", None), "content"),
        (
            pb::TeachRequest {
                namespace: "bad ns".into(),
                ..teach_req("u", "ok", None)
            },
            "namespace",
        ),
        (
            pb::TeachRequest {
                importance: Some(1.5),
                ..teach_req("u", "ok", None)
            },
            "importance",
        ),
        (
            pb::TeachRequest {
                tags: vec!["ok".into(), "".into()],
                ..teach_req("u", "ok", None)
            },
            "tags[1]",
        ),
        (
            pb::TeachRequest {
                memory_id: Some("not-a-uuid".into()),
                ..teach_req("u", "ok", None)
            },
            "memory_id",
        ),
        (
            pb::TeachRequest {
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..teach_req("u", "ok", None)
            },
            "expires_at",
        ),
    ];
    for (req, field) in cases {
        let err = m.teach(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(
            violated_field(&err).as_deref(),
            Some(field),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains(field),
            "the message names the field: {}",
            err.message()
        );
    }
    let err = m
        .get_memory(pb::GetMemoryRequest {
            memory_id: "123".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("memory_id"));
    let err = m
        .history(pb::HistoryRequest {
            memory_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("memory_id"));
    let err = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            page_size: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("page_size"));
    let err = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("user_id"));
    let err = m
        .forget(pb::ForgetRequest {
            memory_ids: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("memory_ids[0]"));
    let err = m
        .forget(pb::ForgetRequest {
            selector: Some(pb::ForgetSelector::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("selector.user_id"));
    let too_many = (0..1001)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let err = m
        .forget(pb::ForgetRequest {
            memory_ids: too_many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("memory_ids"));

    for table in ["memories", "memory_versions", "edges", "audit_log"] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(server.pool())
                .await
                .expect("count");
        assert_eq!(n, 0, "{table} has rows after rejected requests");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_a_stable_cursor_and_filters() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let mut taught = Vec::new();
    for i in 0..7 {
        let kind = if i % 2 == 0 {
            pb::MemoryKind::Fact
        } else {
            pb::MemoryKind::Preference
        };
        let r = teach(
            &mut m,
            pb::TeachRequest {
                kind: kind as i32,
                tags: vec![format!("t{}", i % 3)],
                ..teach_req("u", &format!("memory number {i}"), None)
            },
        )
        .await;
        taught.push(r.memory.expect("m").id);
    }
    teach(
        &mut m,
        pb::TeachRequest {
            namespace: "work".into(),
            ..teach_req("u", "in another namespace", None)
        },
    )
    .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = m
            .list_memories(pb::ListMemoriesRequest {
                user_id: "u".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        // A memory taught between pages does not shift the cursor.
        if pages == 1 {
            teach(&mut m, teach_req("u", "taught while paging", None)).await;
        }
        seen.extend(page.memories.into_iter().map(|x| x.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    taught.reverse();
    assert_eq!(
        seen, taught,
        "newest first, every memory once, none of the other namespace"
    );

    let prefs = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            kinds: vec![pb::MemoryKind::Preference as i32],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories;
    assert_eq!(prefs.len(), 3);
    let tagged = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            tags: vec!["t0".into()],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories;
    assert_eq!(tagged.len(), 3);
    let both = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            namespaces: vec!["default".into(), "work".into()],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories;
    assert_eq!(both.len(), 9);

    // A token is bound to its filters.
    let first = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let err = m
        .list_memories(pb::ListMemoriesRequest {
            user_id: "u".into(),
            kinds: vec![1],
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Some("page_token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_teaches_of_one_slot_leave_exactly_one_current_memory() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let mut m = client.memory();
            tokio::spawn(async move {
                m.teach(teach_req(
                    "u",
                    &format!("Lives in city {i}"),
                    Some("user.home_city"),
                ))
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("every teach succeeds");
    }
    let mut m = client.memory();
    assert_eq!(list(&mut m, "u", false).await.len(), 1);
    assert_eq!(list(&mut m, "u", true).await.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_memories_vanish_at_their_time_and_the_worker_records_it() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    // The sweep runs below, by hand: an embedded worker's own first sweep could race it (it runs
    // when the worker starts, which a busy test process can delay past the clock's jump).
    let server = TestServer::start_with(
        |c| c.worker_embedded = false,
        Some(clock.clone() as Arc<dyn Clock>),
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let in_an_hour = memoire_tests_ts(clock.now() + TimeDelta::hours(1));
    let temp = teach(
        &mut m,
        pb::TeachRequest {
            expires_at: Some(in_an_hour),
            ..teach_req("u", "Is at the dentist today", None)
        },
    )
    .await
    .memory
    .expect("m");
    let lasting = teach(&mut m, teach_req("u", "Is a dentist", None))
        .await
        .memory
        .expect("m");
    assert_eq!(list(&mut m, "u", false).await.len(), 2);

    clock.advance(TimeDelta::hours(2));
    assert_eq!(
        m.get_memory(pb::GetMemoryRequest {
            memory_id: temp.id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        list(&mut m, "u", false)
            .await
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>(),
        vec![lasting.id.clone()]
    );

    let uc = server.usecases().await;
    let expired = uc.sweep_expired().await.expect("sweep");
    assert_eq!(expired, 1);
    assert_eq!(
        ops(&history(&mut m, &temp.id).await),
        vec![pb::VersionOp::Create, pb::VersionOp::Expire]
    );
    assert_eq!(uc.sweep_expired().await.expect("sweep"), 0, "idempotent");
}

fn memoire_tests_ts(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_unimplemented_rpcs() {
    let server = TestServer::start().await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(server.client(None).channel());
    for service in ["", "memoire.v1.MemoryService", "memoire.v1.AdminService"] {
        let s = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(
            s.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let err = client
        .memory()
        .conscious(pb::ConsciousRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Export checks the caller before it says anything.
    let export = |tenant_id: &str| pb::ExportMemoriesRequest {
        tenant_id: tenant_id.into(),
        user_id: "u".into(),
        ..Default::default()
    };
    let err = client
        .admin()
        .export_memories(export(&tenant))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "a writer key: {err:?}");
    let err = server
        .client(None)
        .admin()
        .export_memories(export(&tenant))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "no key: {err:?}");
    server
        .admin()
        .admin()
        .export_memories(export(&tenant))
        .await
        .expect("the bootstrap key exports");

    let body = http_get(server.http_addr, "/metrics").await;
    assert!(body.contains("memoire_rpc_requests_total"), "{body}");
    assert!(body.contains("PERMISSION_DENIED"), "{body}");
    assert!(http_get(server.http_addr, "/healthz").await.contains("ok"));
    assert!(
        http_get(server.http_addr, "/readyz")
            .await
            .contains("ready")
    );

    // Graceful stop: the server returns cleanly.
    server.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_quota_holds_under_fifty_concurrent_writes() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("quota", pb::KeyRole::Writer).await;
    let teach = |user: &str, content: &str| pb::TeachRequest {
        user_id: user.into(),
        kind: pb::MemoryKind::Fact as i32,
        content: content.into(),
        ..Default::default()
    };
    for i in 0..4 {
        client
            .memory()
            .teach(teach("u", &format!("Fact number {i} about the user")))
            .await
            .expect("teach");
    }
    let set = |max: u64| pb::UpdateTenantRequest {
        tenant_id: tenant.clone(),
        max_memories: Some(max),
        ..Default::default()
    };
    // Past the bound: the field is named.
    let err = server
        .admin()
        .admin()
        .update_tenant(set(2_000_000_000_000))
        .await
        .expect_err("too large");
    assert_eq!(
        violated_field(&err).as_deref(),
        Some("max_memories"),
        "{err:?}"
    );
    let t = server
        .admin()
        .admin()
        .update_tenant(set(5))
        .await
        .expect("quota")
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(t.max_memories, 5);

    // One slot left, fifty writers (different users, so no per-user lock orders them).
    memoire_tests::assert_exactly_one_fits(50, "max_memories", |i| {
        let c = client.clone();
        let req = teach(
            &format!("user-{i}"),
            &format!("A fact taught by writer {i}"),
        );
        async move { c.memory().teach(req).await }
    })
    .await;
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM memories WHERE status = 'active'")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(active, 5, "nothing half-written");

    // A new fact in a slot replaces the old one: no new slot is needed at the quota.
    let slotted = |content: &str| pb::TeachRequest {
        slot: Some("user.home_city".into()),
        ..teach("u", content)
    };
    client
        .memory()
        .teach(slotted("Lives in Lisbon"))
        .await
        .expect_err("a sixth memory");
    // Forgetting frees a slot; lifting the quota removes the bound.
    let first: String = sqlx::query_scalar(
        "SELECT id::text FROM memories WHERE status = 'active' ORDER BY created_at LIMIT 1",
    )
    .fetch_one(server.pool())
    .await
    .expect("id");
    client
        .memory()
        .forget(pb::ForgetRequest {
            memory_ids: vec![first],
            ..Default::default()
        })
        .await
        .expect("forget");
    client
        .memory()
        .teach(slotted("Lives in Lisbon"))
        .await
        .expect("a freed slot");
    client
        .memory()
        .teach(slotted("Lives in Porto"))
        .await
        .expect("a supersession needs no new slot");
    server
        .admin()
        .admin()
        .update_tenant(set(0))
        .await
        .expect("no quota");
    client
        .memory()
        .teach(teach("u", "One more fact, with no quota"))
        .await
        .expect("no bound");
}

fn said(content: &str, seconds: i64) -> pb::Message {
    pb::Message {
        role: pb::MessageRole::User as i32,
        content: content.into(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + seconds,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_tenants_users_and_a_sessions_turns_are_listed_page_by_page() {
    let server = TestServer::start().await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    teach(
        &mut m,
        teach_req("ana", "Lives in Lisbon", Some("user.home_city")),
    )
    .await;
    teach(
        &mut m,
        teach_req("ana", "Lives in Porto", Some("user.home_city")),
    )
    .await;
    teach(&mut m, teach_req("bob", "Plays chess", None)).await;
    teach(
        &mut m,
        pb::TeachRequest {
            namespace: "work".into(),
            ..teach_req("dana", "Leads the platform team", None)
        },
    )
    .await;
    // Sent out of order within the batch: listing follows when they were said.
    let turns = [
        ("third", 30),
        ("first", 10),
        ("second", 20),
        ("fourth", 40),
        ("fifth", 50),
    ];
    m.ingest(pb::IngestRequest {
        user_id: "carl".into(),
        session_id: "s1".into(),
        messages: turns.iter().map(|(c, s)| said(c, *s)).collect(),
        ..Default::default()
    })
    .await
    .expect("ingest");
    m.ingest(pb::IngestRequest {
        user_id: "carl".into(),
        session_id: "s2".into(),
        messages: vec![said("another session", 5)],
        ..Default::default()
    })
    .await
    .expect("ingest");

    // A reader lists, page by page, by user id.
    let reader = server.client(Some(&server.key(&tenant, pb::KeyRole::Reader).await));
    let mut r = reader.memory();
    let page = |token: String, namespace: Option<&str>| pb::ListUsersRequest {
        namespace: namespace.map(Into::into),
        page_size: 2,
        page_token: token,
    };
    let first = r
        .list_users(page(String::new(), None))
        .await
        .expect("page 1")
        .into_inner();
    let names: Vec<&str> = first.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(names, ["ana", "bob"]);
    assert_eq!(first.users[0].active_memories, 1, "Porto superseded Lisbon");
    assert!(first.users[0].last_active_at.is_some());
    let second = r
        .list_users(page(first.next_page_token.clone(), None))
        .await
        .expect("page 2")
        .into_inner();
    let names: Vec<&str> = second.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(names, ["carl", "dana"]);
    assert_eq!(
        (second.users[0].episodes, second.users[0].active_memories),
        (6, 0)
    );
    assert!(second.next_page_token.is_empty(), "the last page");
    // A namespace narrows it; a token is bound to its filter.
    let work = r
        .list_users(page(String::new(), Some("work")))
        .await
        .expect("work")
        .into_inner();
    assert_eq!(work.users.len(), 1);
    assert_eq!(work.users[0].user_id, "dana");
    let refused = r
        .list_users(page(first.next_page_token.clone(), Some("work")))
        .await
        .expect_err("a token of another filter");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_field(&refused).as_deref(), Some("page_token"));
    // Another tenant sees none of them.
    let (_, other) = server.tenant("other", pb::KeyRole::Reader).await;
    let none = other
        .memory()
        .list_users(page(String::new(), None))
        .await
        .expect("other tenant")
        .into_inner();
    assert!(none.users.is_empty());

    // A session's turns, in the order they were said, page by page.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = r
            .list_episodes(pb::ListEpisodesRequest {
                user_id: "carl".into(),
                session_id: "s1".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("episodes")
            .into_inner();
        seen.extend(page.episodes.into_iter().map(|e| e.content));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["first", "second", "third", "fourth", "fifth"]);
    let refused = r
        .list_episodes(pb::ListEpisodesRequest {
            user_id: "carl".into(),
            ..Default::default()
        })
        .await
        .expect_err("no session");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_field(&refused).as_deref(), Some("session_id"));
}
