//! The store's SQL on its own, against real Postgres: the contracts the use-cases rely on and that
//! an end-to-end test would only see indirectly — claims that hold rows across a model call (by
//! a lease, not a row lock), a correction that asks for a vector instead of writing a stale one,
//! and the scopes writes report.

use std::sync::Arc;
use std::time::Duration;

use memoire_core::clock::{Clock, ManualClock};
use memoire_core::command::{Ingest, MemoryPatch, NewEpisode};
use memoire_core::embed::Embedding;
use memoire_core::model::{Basis, ForgetMode, MemoryKind, MessageRole, Scope};
use memoire_store::{Correction, EmbedClaim, JobScope, PgStore, RetryPolicy, VectorTable};
use memoire_tests::{TestServer, fact, new_memory, proto as pb};

fn vector(x: f32) -> Vec<f32> {
    let mut v = vec![0.0; 384];
    v[0] = x;
    v[1] = (1.0 - x * x).max(0.0).sqrt();
    v
}

async fn scope(server: &TestServer) -> Scope {
    let tenant = server.store.create_tenant("t").await.expect("tenant");
    Scope {
        tenant_id: tenant.id,
        user_id: "u".into(),
        namespace: "default".into(),
    }
}

/// Ingests the user's turns `(content, message id, when said)` in one call (said on arrival when
/// no time is given).
async fn ingest_turns(
    server: &TestServer,
    scope: &Scope,
    turns: impl IntoIterator<Item = (String, String, Option<chrono::DateTime<chrono::Utc>>)>,
) {
    server
        .store
        .ingest(Ingest {
            scope: scope.clone(),
            session_id: "s".into(),
            messages: turns
                .into_iter()
                .map(|(content, message_id, occurred_at)| NewEpisode {
                    role: MessageRole::User,
                    name: None,
                    speaker_is_user: true,
                    content,
                    message_id: Some(message_id),
                    occurred_at,
                })
                .collect(),
        })
        .await
        .expect("ingest");
}

async fn ingest(server: &TestServer, scope: &Scope, n: usize) {
    ingest_turns(
        server,
        scope,
        (0..n).map(|i| (format!("turn {i}"), format!("m{i}"), None)),
    )
    .await;
}

/// A connection of its own (outside the store's pool) that sees every tenant's rows.
async fn every_tenant_conn(server: &TestServer) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&server.database_url)
        .await
        .expect("connect");
    sqlx::query("SELECT set_config('memoire.tenant', '*', false)")
        .execute(&mut conn)
        .await
        .expect("every tenant's rows");
    conn
}

fn no_worker(c: &mut memoire_config::Config) {
    c.worker_embedded = false;
}

const LEASE: Duration = Duration::from_secs(60);

/// Whether an embedding claim finds nothing.
async fn nothing_to_claim(store: &PgStore) -> bool {
    store
        .claim_unembedded(10, LEASE)
        .await
        .expect("claim")
        .is_none()
}

/// An embedding claim that must find episodes.
async fn claim(store: &PgStore, batch: i64) -> EmbedClaim {
    store
        .claim_unembedded(batch, LEASE)
        .await
        .expect("claim")
        .expect("episodes to embed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_claim_hides_its_rows_and_dead_letters_after_the_last_attempt() {
    let server = TestServer::start_with(no_worker, None).await;
    let scope = scope(&server).await;
    ingest(&server, &scope, 3).await;
    let store = &server.store;
    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    let first = claim(store, 2).await;
    assert_eq!(first.texts().len(), 2);
    // Held rows are skipped by a second claimer.
    let second = claim(store, 10).await;
    let texts = second.texts();
    assert_eq!(texts.len(), 1);
    // Embedded as `core::embed::episode_vector_text`: the two turns said before it in its
    // session, then the day and the turn.
    assert!(
        texts[0].starts_with("turn 0\nturn 1\n[") && texts[0].ends_with("] turn 2"),
        "{texts:?}"
    );
    let written = second
        .complete(vec![vector(1.0)], "m")
        .await
        .expect("complete");
    assert_eq!(written, 1);

    first.fail("model down", &policy).await.expect("fail");
    let again = claim(store, 10).await;
    assert_eq!(again.texts().len(), 2, "a failed attempt returns the rows");
    again.fail("model down", &policy).await.expect("fail");
    assert!(
        store
            .claim_unembedded(10, LEASE)
            .await
            .expect("claim")
            .is_none(),
        "out of attempts: dead-lettered, not claimable"
    );
    let letters = store
        .list_dead_letters(scope.tenant_id, 10, None)
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|d| d.job == "embed"), "{letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_claim_locks_no_row_while_the_model_runs_and_lapses_after_its_lease() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let server = TestServer::start_with(no_worker, Some(clock.clone() as Arc<dyn Clock>)).await;
    let scope = scope(&server).await;
    ingest(&server, &scope, 2).await;
    let store = &server.store;
    let first = claim(store, 10).await;
    assert_eq!(first.texts().len(), 2);

    // While the claim is out (the model would be running), extraction can write the same rows:
    // with a row lock held this update would wait and hit the lock timeout.
    let mut conn = every_tenant_conn(&server).await;
    sqlx::query("SELECT set_config('lock_timeout', '500ms', false)")
        .execute(&mut conn)
        .await
        .expect("lock timeout");
    let updated =
        sqlx::query("UPDATE episodes SET extract_attempts = extract_attempts WHERE tenant_id = $1")
            .bind(scope.tenant_id)
            .execute(&mut conn)
            .await
            .expect("no embedding claim holds a row lock");
    assert_eq!(updated.rows_affected(), 2);

    // Within the lease another worker finds nothing; after it (the first worker died), it
    // takes the episodes over, and the first worker's late write is harmless.
    assert!(nothing_to_claim(store).await);
    clock.advance(chrono::TimeDelta::seconds(61));
    let taken_over = claim(store, 10).await;
    assert_eq!(taken_over.texts(), first.texts());
    assert_eq!(
        taken_over
            .complete(vec![vector(1.0), vector(0.5)], "m")
            .await
            .expect("complete"),
        2
    );
    first
        .complete(vec![vector(1.0), vector(0.5)], "m")
        .await
        .expect("a late completion");
    assert!(nothing_to_claim(store).await);
    let unembedded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM episodes WHERE tenant_id = $1 AND embedding IS NULL",
    )
    .bind(scope.tenant_id)
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(unembedded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_write_and_extraction_lock_a_users_turns_in_one_order() {
    use sqlx::Connection as _;
    let server = TestServer::start_with(no_worker, None).await;
    let scope = scope(&server).await;
    // Arrival order (by which a batch is claimed) and the order the turns were said in (by
    // which extraction marks them) disagree: the turn that arrived first was said later.
    let now = chrono::Utc::now();
    for (content, at) in [
        ("said later", now),
        ("said earlier", now - chrono::TimeDelta::hours(1)),
    ] {
        ingest_turns(
            &server,
            &scope,
            [(content.into(), content.into(), Some(at))],
        )
        .await;
    }
    let batch = claim(&server.store, 10).await;
    assert_eq!(batch.texts().len(), 2);

    // Extraction's transaction holds the earlier turn and marks the later one next.
    let mut conn = every_tenant_conn(&server).await;
    let mut extraction = conn.begin().await.expect("begin");
    let lock = |content: &'static str| {
        sqlx::query("SELECT 1 FROM episodes WHERE tenant_id = $1 AND content = $2 FOR UPDATE")
            .bind(scope.tenant_id)
            .bind(content)
    };
    lock("said earlier")
        .execute(&mut *extraction)
        .await
        .expect("lock the earlier turn");
    let write =
        tokio::spawn(async move { batch.complete(vec![vector(1.0), vector(0.5)], "m").await });
    // Long enough for the write to queue behind the earlier turn; in the wrong order it would
    // hold the later one by now, and Postgres would abort one side as a deadlock after its
    // `deadlock_timeout`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock("said later")
        .execute(&mut *extraction)
        .await
        .expect("extraction marks the later turn");
    extraction.commit().await.expect("commit");
    let written = write
        .await
        .expect("join")
        .expect("the write waited for extraction, then completed");
    assert_eq!(written, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_embedding_write_can_still_be_recorded_as_an_attempt() {
    let server = TestServer::start_with(no_worker, None).await;
    let scope = scope(&server).await;
    ingest(&server, &scope, 2).await;
    let store = &server.store;
    let batch = claim(store, 10).await;
    batch
        .complete(vec![vec![f32::NAN; 384], vector(0.5)], "m")
        .await
        .expect_err("pgvector refuses NaN");
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };
    batch.fail("write failed", &policy).await.expect("fail");
    // Claimable again at once, not after the lease.
    assert_eq!(claim(store, 10).await.texts().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_that_changes_the_text_asks_for_its_vector_and_writes_nothing_until_given() {
    let server = TestServer::start_with(no_worker, None).await;
    let scope = scope(&server).await;
    let store = &server.store;
    let created = store
        .create_memory(
            scope.clone(),
            new_memory(MemoryKind::Fact, "Lives in Lisbon"),
            false,
            None,
            Basis::Teach,
            "test",
            Some(Embedding {
                vector: vector(1.0),
                model: "m".into(),
            }),
        )
        .await
        .expect("create");
    let id = created.memory.id;
    let patch = MemoryPatch {
        content: Some("Lives in Porto".into()),
        ..Default::default()
    };
    let asked = store
        .correct_memory(
            scope.clone(),
            id,
            patch.clone(),
            None,
            "test",
            Some("m"),
            None,
        )
        .await
        .expect("correct");
    let Correction::Embed(text) = asked else {
        panic!("expected a request for a vector, got {asked:?}");
    };
    assert_eq!(text, "Lives in Porto");
    let unchanged = store.get_memory(scope.tenant_id, id).await.expect("get");
    assert_eq!(
        (unchanged.content.as_str(), unchanged.version),
        ("Lives in Lisbon", 1)
    );

    // A vector of another text is refused the same way.
    let stale = (
        "Lives in Braga".to_owned(),
        Embedding {
            vector: vector(0.5),
            model: "m".into(),
        },
    );
    let asked = store
        .correct_memory(
            scope.clone(),
            id,
            patch.clone(),
            None,
            "test",
            Some("m"),
            Some(&stale),
        )
        .await
        .expect("correct");
    assert!(matches!(asked, Correction::Embed(_)), "{asked:?}");

    let right = (
        text,
        Embedding {
            vector: vector(0.2),
            model: "m".into(),
        },
    );
    let done = store
        .correct_memory(
            scope.clone(),
            id,
            patch,
            None,
            "test",
            Some("m"),
            Some(&right),
        )
        .await
        .expect("correct");
    let Correction::Done(result) = done else {
        panic!("expected the correction written, got {done:?}");
    };
    assert_eq!(
        (result.memory.content.as_str(), result.memory.version),
        ("Lives in Porto", 2)
    );

    // Changing what is not embedded needs no vector.
    let pin = MemoryPatch {
        pinned: Some(true),
        ..Default::default()
    };
    let done = store
        .correct_memory(scope.clone(), id, pin, None, "test", Some("m"), None)
        .await
        .expect("correct");
    assert!(matches!(done, Correction::Done(_)), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_report_the_scopes_they_changed() {
    let server = TestServer::start_with(no_worker, None).await;
    let scope = scope(&server).await;
    let store = &server.store;
    for content in ["Likes tea", "Likes chess"] {
        store
            .create_memory(
                scope.clone(),
                new_memory(MemoryKind::Preference, content),
                false,
                None,
                Basis::Teach,
                "test",
                None,
            )
            .await
            .expect("create");
    }
    // Re-embed's claim: both memories lack a vector of model "m"; they belong to one scope.
    let claim = store
        .claim_stale_vectors(VectorTable::Memories, "m", &JobScope::default(), 10)
        .await
        .expect("claim")
        .expect("rows");
    assert_eq!(claim.texts().len(), 2);
    let (n, changed) = claim
        .complete(vec![vector(1.0), vector(0.5)], "m")
        .await
        .expect("complete");
    assert_eq!((n, changed), (2, vec![scope.clone()]));
    assert!(
        store
            .claim_stale_vectors(VectorTable::Memories, "m", &JobScope::default(), 10)
            .await
            .expect("claim")
            .is_none()
    );

    let (result, touched) = store
        .forget(
            memoire_core::command::Forget {
                tenant_id: scope.tenant_id,
                target: memoire_core::command::ForgetTarget::Selector(
                    memoire_core::command::ForgetSelector {
                        user_id: "u".into(),
                        namespace: None,
                        slot: None,
                        kind: None,
                        session_id: None,
                        before: None,
                    },
                ),
                mode: ForgetMode::Tombstone,
                dry_run: false,
                reason: None,
            },
            "test",
        )
        .await
        .expect("forget");
    assert_eq!(result.memories, 2);
    assert_eq!(touched, vec![scope]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_are_searched_by_the_text_they_are_embedded_from() {
    let server = TestServer::start_with(no_worker, None).await;
    let cases = [
        (Some("Caroline"), "2023-05-08T13:56:00Z", "Hi Mel!"),
        (Some("  "), "2024-12-31T23:59:59Z", "Happy new year"),
        (None, "2022-01-01T00:00:00Z", "no speaker"),
    ];
    for (name, at, content) in cases {
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .expect("time")
            .to_utc();
        let sql: String = sqlx::query_scalar("SELECT memoire_episode_text($1, $2, $3)")
            .bind(name)
            .bind(at)
            .bind(content)
            .fetch_one(server.pool())
            .await
            .expect("render");
        assert_eq!(sql, memoire_core::embed::episode_text(name, at, content));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_at_once_here_and_within_the_cache_ttl_on_another_replica() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let tenant = server.store.create_tenant("t").await.expect("tenant");
    let key = server
        .store
        .create_api_key(tenant.id, "k", memoire_core::model::KeyRole::Writer, 0)
        .await
        .expect("key");
    // Two replicas: the server's store and another process's, on the same database.
    let here = &server.store;
    let there = memoire_store::PgStore::from_pool(server.pool().clone());
    for store in [here, &there] {
        assert!(
            store
                .principal_for_secret(&key.secret)
                .await
                .expect("lookup")
                .is_some()
        );
    }
    here.revoke_api_key(key.key.id, Some(tenant.id))
        .await
        .expect("revoke");
    assert!(
        here.principal_for_secret(&key.secret)
            .await
            .expect("lookup")
            .is_none(),
        "the replica that revoked refuses at once"
    );
    tokio::time::sleep(memoire_store::PRINCIPAL_TTL + Duration::from_millis(100)).await;
    assert!(
        there
            .principal_for_secret(&key.secret)
            .await
            .expect("lookup")
            .is_none(),
        "another replica refuses within the cache's lifetime"
    );
}

/// Row-level security on its own: a connection of the service role with another tenant's
/// setting, or none, sees none of a tenant's rows and cannot write one, whatever its WHERE says.
#[tokio::test]
async fn row_level_security_is_a_wall_of_its_own() {
    use sqlx::Connection as _;
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (a, client) = server.tenant("a", pb::KeyRole::Writer).await;
    let (b, _) = server.tenant("b", pb::KeyRole::Writer).await;
    client
        .memory()
        .teach(fact("u", "Keeps bees"))
        .await
        .expect("teach");
    client
        .memory()
        .ingest(pb::IngestRequest {
            user_id: "u".into(),
            session_id: "s".into(),
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: "I keep bees.".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("ingest");

    let mut conn = sqlx::PgConnection::connect(&server.database_url)
        .await
        .expect("connect");
    // The wall only stands for a role that cannot bypass it.
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .expect("role");
    assert!(
        !superuser && !bypass,
        "the test role must be subject to RLS"
    );

    for (t, n) in rls_counts(&mut conn, &a, None).await {
        assert_eq!(n, 0, "{t} with no setting");
    }
    for (t, n) in rls_counts(&mut conn, &a, Some(&b)).await {
        assert_eq!(n, 0, "{t} as the other tenant");
    }
    let own = rls_counts(&mut conn, &a, Some(&a)).await;
    for t in [
        "tenants",
        "api_keys",
        "memories",
        "memory_versions",
        "memory_vectors",
        "episodes",
    ] {
        assert!(
            own.iter().any(|(name, n)| *name == t && *n > 0),
            "{t} as its tenant: {own:?}"
        );
    }
    // Writing another tenant's row is refused by the policy's check.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET memoire.tenant = '{b}'")))
        .execute(&mut conn)
        .await
        .expect("set");
    let err = sqlx::query(
        "INSERT INTO edges (tenant_id, src_type, src_id, relation, dst_type, dst_id, created_at) \
         VALUES ($1::uuid, 'memory', gen_random_uuid(), 'relates_to', 'memory', gen_random_uuid(), now())",
    )
    .bind(&a)
    .execute(&mut conn)
    .await
    .expect_err("a row of another tenant");
    assert!(err.to_string().contains("row-level security"), "{err}");
}

/// Each tenant table's count of `tenant`'s rows, as a connection with `setting` (or none) sees it.
async fn rls_counts(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    setting: Option<&str>,
) -> Vec<(&'static str, i64)> {
    if let Some(s) = setting {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET memoire.tenant = '{s}'")))
            .execute(&mut *conn)
            .await
            .expect("set");
    }
    let mut out = Vec::new();
    for t in [
        "tenants",
        "api_keys",
        "memories",
        "memory_versions",
        "episodes",
        "memory_terms",
        "memory_vectors",
        "episode_terms",
        "audit_log",
        "edges",
    ] {
        let column = if t == "tenants" { "id" } else { "tenant_id" };
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {t} WHERE {column} = $1::uuid"
        )))
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await
        .expect("count");
        out.push((t, n));
    }
    out
}

/// With `database_row_level_security` off (for poolers that do not keep session settings), every
/// connection sees every tenant from its start: the service works, isolation rests on the
/// queries' own filters.
#[tokio::test]
async fn with_row_level_security_off_the_service_still_works() {
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.database_row_level_security = false;
        },
        None,
    )
    .await;
    let (_, a) = server.tenant("a", pb::KeyRole::Writer).await;
    let (_, b) = server.tenant("b", pb::KeyRole::Writer).await;
    a.memory()
        .teach(fact("u", "Keeps bees"))
        .await
        .expect("teach");
    let list = |c: &memoire_sdk::Client| {
        let mut m = c.memory();
        async move {
            m.list_memories(pb::ListMemoriesRequest {
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
    assert_eq!(list(&a).await, 1);
    assert_eq!(list(&b).await, 0);
}

/// Pooled connections that died while idle (Postgres restarted, a proxy dropped them) are
/// replaced where they are taken — with row-level security on, by the scope's first statement,
/// not by a check of its own — so no call fails for them.
#[tokio::test]
async fn pooled_connections_that_died_idle_are_replaced_without_an_error() {
    use sqlx::Connection as _;
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    client
        .memory()
        .teach(fact("u", "Keeps bees on the roof"))
        .await
        .expect("teach");
    let recall = || {
        let client = client.clone();
        async move {
            client
                .memory()
                .recall(pb::RecallRequest {
                    user_id: "u".into(),
                    query: "bees".into(),
                    k: 5,
                    include_episodes: Some(true),
                    ..Default::default()
                })
                .await
        }
    };
    // Calls side by side leave several idle connections in the pool.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        calls.spawn(recall());
    }
    while let Some(r) = calls.join_next().await {
        r.expect("join").expect("recall");
    }
    let mut conn = sqlx::PgConnection::connect(&server.database_url)
        .await
        .expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&mut conn)
    .await
    .expect("terminate");
    assert!(killed >= 2, "{killed} connections ended");
    tokio::time::sleep(Duration::from_millis(200)).await;

    for _ in 0..4 {
        calls.spawn(recall());
    }
    while let Some(r) = calls.join_next().await {
        let items = r
            .expect("join")
            .expect("recall after the pool's connections died")
            .into_inner()
            .items;
        assert!(!items.is_empty());
    }
    client
        .memory()
        .teach(fact("u", "Keeps goats in the garden"))
        .await
        .expect("teach after the pool's connections died");
}

/// Purges and the retention job delete memories and episodes in bulk. Each deleted row makes
/// Postgres visit the rows that reference it (to cascade, or to clear the reference): without an
/// index on the referencing columns that is a scan of the whole table per deleted row — a purge
/// of 100,000 memories ran for over a quarter of an hour before `superseded_by` had one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_to_memories_and_episodes_is_indexed() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let unindexed: Vec<String> = sqlx::query_scalar(
        "SELECT c.conrelid::regclass::text || ' (' || c.conname || ')' FROM pg_constraint c \
         WHERE c.contype = 'f' AND c.confrelid IN ('memories'::regclass, 'episodes'::regclass) \
           AND NOT EXISTS ( \
             SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid \
               AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey \
               AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey) \
         ORDER BY 1",
    )
    .fetch_all(server.pool())
    .await
    .expect("foreign keys");
    assert!(
        unindexed.is_empty(),
        "foreign keys without an index: {unindexed:?}"
    );
}

/// BM25 by hand, over every posting: the reference the store's full-text search must match.
/// Returns the `k` best active documents of `user` for `text` (scores as `real`, ties by id).
/// A full-text query of user "u"'s memories, 50 candidates.
fn text_query(
    tenant_id: uuid::Uuid,
    text: &str,
    include_superseded: bool,
    kind: Option<&str>,
) -> memoire_core::command::RecallQuery {
    memoire_core::command::RecallQuery {
        kinds: kind
            .map(|k| vec![MemoryKind::parse(k).expect("kind")])
            .unwrap_or_default(),
        include_superseded,
        include_episodes: false,
        candidates: 50,
        ..memoire_core::command::RecallQuery::new(
            tenant_id,
            "u".into(),
            "default".into(),
            text.into(),
        )
    }
}

/// The full-text hits of `q` (no vector search), best first: (rank, id, BM25 score).
async fn text_ranked(
    server: &TestServer,
    q: &memoire_core::command::RecallQuery,
    settings: &memoire_store::SearchSettings,
) -> Vec<(u32, uuid::Uuid, f32)> {
    let found = server
        .store
        .recall_candidates(q, |_| async { Ok(None) }, settings)
        .await
        .expect("recall");
    let mut got: Vec<(u32, uuid::Uuid, f32)> = found
        .iter()
        .filter_map(|c| c.text_rank.map(|r| (r, c.item.id(), c.text_score)))
        .collect();
    got.sort_by_key(|g| g.0);
    got
}

async fn bm25_by_hand(
    server: &TestServer,
    tenant: uuid::Uuid,
    text: &str,
    statuses: &[&str],
    kind: Option<&str>,
    k: usize,
) -> Vec<(uuid::Uuid, f32)> {
    let pool = server.pool();
    let terms: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $1))")
            .bind(text)
            .fetch_all(pool)
            .await
            .expect("terms");
    let (docs, avg): (f64, f64) = sqlx::query_as(
        "SELECT count(*)::float8, avg(length(tsv))::float8 FROM memories \
         WHERE tenant_id = $1 AND user_id = 'u' AND namespace = 'default'",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .expect("corpus");
    let rows: Vec<(uuid::Uuid, String, f64, f64)> = sqlx::query_as(
        "SELECT m.id, u.lexeme, coalesce(array_length(u.positions, 1), 1)::float8, \
                length(m.tsv)::float8 \
         FROM memories m, unnest(m.tsv) u \
         WHERE m.tenant_id = $1 AND m.user_id = 'u' AND m.status = ANY($2) \
           AND ($3::text IS NULL OR m.kind = $3) AND u.lexeme = ANY($4)",
    )
    .bind(tenant)
    .bind(statuses)
    .bind(kind)
    .bind(&terms)
    .fetch_all(pool)
    .await
    .expect("postings");
    // Document frequencies count the postings the search may score (kinds are not in them).
    let df_rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT u.lexeme, count(*)::float8 FROM memories m, unnest(m.tsv) u \
         WHERE m.tenant_id = $1 AND m.user_id = 'u' AND m.status = ANY($2) AND u.lexeme = ANY($3) \
         GROUP BY u.lexeme",
    )
    .bind(tenant)
    .bind(statuses)
    .bind(&terms)
    .fetch_all(pool)
    .await
    .expect("df");
    let df: std::collections::HashMap<String, f64> = df_rows.into_iter().collect();
    let (k1, b) = (1.2f64, 0.75f64);
    let mut scores: std::collections::HashMap<uuid::Uuid, f64> = Default::default();
    for (id, lexeme, tf, dl) in rows {
        let n = df[&lexeme];
        let idf = (1.0 + (docs.max(n) - n + 0.5) / (n + 0.5)).ln();
        *scores.entry(id).or_default() +=
            idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl / avg.max(1.0)));
    }
    let mut ranked: Vec<(uuid::Uuid, f32)> =
        scores.into_iter().map(|(id, s)| (id, s as f32)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_text_search_stops_early_yet_returns_what_scoring_every_posting_ranks_first() {
    use rand::{Rng as _, SeedableRng as _};
    let server = TestServer::start_with(no_worker, None).await;
    let scope = scope(&server).await;
    // 4,000 memories over a small vocabulary whose first words are in most of them: long posting
    // lists, repeated words (tf > 1), many equal lengths (ties) and some superseded memories.
    const WORDS: &[&str] = &[
        "garden", "river", "violin", "pencil", "rocket", "tiger", "ocean", "lantern", "marble",
        "harbor", "canyon", "orchid",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut ids, mut contents, mut kinds, mut statuses) = (vec![], vec![], vec![], vec![]);
    for _ in 0..4_000 {
        let len = rng.random_range(1..12);
        let words: Vec<&str> = (0..len)
            .map(|_| {
                // Word i is drawn with probability ~ 1 / (i + 1).
                let x: f64 = rng.random_range(0.0..3.1);
                WORDS[((x.exp() - 1.0) as usize).min(WORDS.len() - 1)]
            })
            .collect();
        ids.push(uuid::Uuid::now_v7());
        contents.push(words.join(" "));
        kinds.push(if rng.random_bool(0.2) {
            "preference"
        } else {
            "fact"
        });
        statuses.push(if rng.random_bool(0.1) {
            "superseded"
        } else {
            "active"
        });
    }
    // And one memory with 64 distinct words, one more than a search tracks per document (a full
    // scan).
    let long: String = (0..63).map(|i| format!("word{i} ")).collect::<String>() + "garden";
    ids.push(uuid::Uuid::now_v7());
    contents.push(long.clone());
    kinds.push("fact");
    statuses.push("active");
    sqlx::query(
        "INSERT INTO memories (id, tenant_id, user_id, namespace, kind, content, content_key, \
           importance, confidence, status, version, created_at, updated_at) \
         SELECT i, $1, 'u', 'default', k, c, c, 0.5, 1, s, 1, now(), now() \
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[]) x(i, c, k, s)",
    )
    .bind(scope.tenant_id)
    .bind(&ids)
    .bind(&contents)
    .bind(&kinds)
    .bind(&statuses)
    .execute(server.pool())
    .await
    .expect("seed");
    sqlx::query("ANALYZE memory_terms")
        .execute(server.pool())
        .await
        .expect("analyze");

    let proven = r#"memoire_recall_full_text_total{how="proven"}"#;
    let proven_before = server.metric(proven).await;
    let vs = memoire_store::SearchSettings {
        model: "m".into(),
        dims: 384,
        exact_search_max_scope: 10_000,
        exact_text_max_scope: 10_000,
        vector_cache_bytes: 0,
    };
    let queries = [
        "garden",
        "river violin",
        "garden river",
        "garden orchid",
        "tiger tiger canyon",
        "garden river violin pencil rocket",
        "harbor",
        "marble lantern ocean",
        long.as_str(),
    ];
    for (text, superseded, kind) in queries.iter().map(|t| (*t, false, None)).chain([
        ("garden river", true, None),
        ("river violin", false, Some("preference")),
    ]) {
        let q = text_query(scope.tenant_id, text, superseded, kind);
        // Twice: the second time the common terms' frequencies come from the cache.
        for pass in 0..2 {
            let got = text_ranked(&server, &q, &vs).await;
            let statuses: &[&str] = if superseded {
                &["active", "superseded"]
            } else {
                &["active"]
            };
            let want = bm25_by_hand(&server, scope.tenant_id, text, statuses, kind, 50).await;
            assert_eq!(got.len(), want.len(), "{text} (pass {pass})");
            for (i, ((_, id, score), (want_id, want_score))) in got.iter().zip(&want).enumerate() {
                assert_eq!(id, want_id, "{text} (pass {pass}): place {}", i + 1);
                assert!(
                    (score - want_score).abs() <= 1e-5 * want_score.abs().max(1.0),
                    "{text} (pass {pass}): place {} scored {score}, by hand {want_score}",
                    i + 1
                );
            }
        }
    }
    // The lists' heads sufficed at least once (not only complete lists, or a scan).
    assert!(server.metric(proven).await > proven_before);

    // Above the exact limit, a query the heads cannot settle takes the heads' best instead of a
    // scan: every score is still exact, and the ranking follows the scores. Most of the exact top
    // 10 is found even on this data, which is adversarial for it (twelve words: the documents with
    // all of a long query's words are long, and no term's best postings reach them; 70 of 80 when
    // written, 5 of 10 for the five-word query). On the recall bench, 98.8% of Recall's top 10.
    let approximate = r#"memoire_recall_full_text_total{how="approximate"}"#;
    let approximate_before = server.metric(approximate).await;
    let vs = memoire_store::SearchSettings {
        exact_text_max_scope: 1_000,
        ..vs
    };
    let (mut overlap, mut asked) = (0, 0);
    for text in &queries[..queries.len() - 1] {
        let q = text_query(scope.tenant_id, text, false, None);
        let got = text_ranked(&server, &q, &vs).await;
        let every: std::collections::HashMap<uuid::Uuid, f32> =
            bm25_by_hand(&server, scope.tenant_id, text, &["active"], None, 10_000)
                .await
                .into_iter()
                .collect();
        assert_eq!(got.len(), 50, "{text}");
        for (i, (_, id, score)) in got.iter().enumerate() {
            let want = every[id];
            assert!(
                (score - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{text}: place {} scored {score}, by hand {want}",
                i + 1
            );
            if i > 0 {
                let (prev_id, prev) = (got[i - 1].1, got[i - 1].2);
                assert!(
                    prev > *score || (prev == *score && prev_id < *id),
                    "{text}: place {} is out of order",
                    i + 1
                );
            }
        }
        let want = bm25_by_hand(&server, scope.tenant_id, text, &["active"], None, 10).await;
        // Equal scores at the tenth place may be any of the tied documents.
        let tenth = want[want.len() - 1].1;
        overlap += got[..10]
            .iter()
            .filter(|(_, _, score)| *score >= tenth)
            .count();
        asked += want.len();
    }
    assert!(server.metric(approximate).await > approximate_before);
    assert!(
        overlap * 4 >= asked * 3,
        "the heads' top 10 found {overlap} of the exact top 10s' {asked}"
    );
}

/// A long memory's and a long turn's vectors stay in their rows (migrations 0018 and 0019): out
/// of line, in TOAST, an exact vector search fetched every vector through the TOAST index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_rows_keep_their_vectors_inline() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    // Some 600 characters of words that do not repeat (compressed, repetitive text fits).
    let long: String = (0..90)
        .map(|i| format!("w{}x{}", i * 7919 % 1000, i * 104_729 % 997))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(long.len() > 600);
    let mut m = client.memory();
    m.teach(fact("u", &long)).await.expect("teach");
    m.ingest(pb::IngestRequest {
        user_id: "u".into(),
        session_id: "s".into(),
        messages: vec![pb::Message {
            role: pb::MessageRole::User as i32,
            content: long.clone(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .expect("ingest");
    server.wait_embedded(Duration::from_secs(30)).await;
    for table in ["memories", "memory_vectors", "episodes"] {
        let storage: String = sqlx::query_scalar(
            "SELECT attstorage::text FROM pg_attribute \
             WHERE attrelid = $1::regclass AND attname = 'embedding'",
        )
        .bind(table)
        .fetch_one(server.pool())
        .await
        .expect("storage");
        assert_eq!(storage, "m", "{table}.embedding is stored MAIN");
        // The stored size of each vector: in the row, 8 bytes of header and 384 floats; out of
        // line, what its TOAST chunks hold — the same but the 4-byte length word.
        let sizes: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_column_size(embedding) FROM {table} WHERE embedding IS NOT NULL"
        )))
        .fetch_all(server.pool())
        .await
        .expect("sizes");
        assert!(!sizes.is_empty(), "{table}: no vector");
        for size in sizes {
            assert_eq!(size, 8 + 384 * 4, "{table}: a vector stored out of line");
        }
    }
}

/// What `memory_vectors` holds (migration 0019) against what `memories` says it must: each
/// memory with a vector, with its scope, status, expiry, confidence, model and vector.
async fn vector_rows_mismatch(server: &TestServer) -> (i64, i64, i64) {
    let columns = "id, tenant_id, user_id, namespace, status, expires_at, confidence, \
                   embedding_model, embedding";
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM memory_vectors), \
                (SELECT count(*) FROM (SELECT {columns} FROM memories WHERE embedding IS NOT NULL \
                 EXCEPT SELECT {columns} FROM memory_vectors) x), \
                (SELECT count(*) FROM (SELECT {columns} FROM memory_vectors \
                 EXCEPT SELECT {columns} FROM memories WHERE embedding IS NOT NULL) x)"
    )))
    .fetch_one(server.pool())
    .await
    .expect("compare")
}

/// The narrow vector rows an exact search reads (migration 0019) follow their memories through
/// every write: a new memory, a supersession, a correction of confidence and expiry, a
/// tombstone, a purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_vectors_follow_their_memories() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let mut taught = Vec::new();
    for (content, slot) in [
        ("Lives in Oslo", Some("user.home_city")),
        ("Lives in Bergen", Some("user.home_city")),
        ("Plays chess on Sundays", None),
        ("Has a cat named Miso", None),
        ("Keeps bees in the garden", None),
    ] {
        let r = m
            .teach(pb::TeachRequest {
                slot: slot.map(str::to_owned),
                ..fact("u", content)
            })
            .await
            .expect("teach")
            .into_inner();
        taught.push(r.memory.expect("memory").id);
    }
    assert_eq!(
        vector_rows_mismatch(&server).await,
        (5, 0, 0),
        "after teaching"
    );
    let superseded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM memory_vectors WHERE status = 'superseded'")
            .fetch_one(server.pool())
            .await
            .expect("count");
    assert_eq!(superseded, 1, "Bergen supersedes Oslo");

    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    m.teach(pb::TeachRequest {
        user_id: "u".into(),
        memory_id: Some(taught[2].clone()),
        confidence: Some(0.25),
        expires_at: Some(prost_types::Timestamp {
            seconds: tomorrow.timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .expect("correct");
    let (confidence, expires): (f32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT confidence, expires_at FROM memory_vectors WHERE id = $1::uuid")
            .bind(&taught[2])
            .fetch_one(server.pool())
            .await
            .expect("row");
    assert_eq!(
        (confidence, expires.map(|t| t.timestamp())),
        (0.25, Some(tomorrow.timestamp()))
    );

    m.forget(pb::ForgetRequest {
        memory_ids: vec![taught[3].clone()],
        ..Default::default()
    })
    .await
    .expect("tombstone");
    m.forget(pb::ForgetRequest {
        memory_ids: vec![taught[4].clone()],
        mode: pb::ForgetMode::Purge as i32,
        ..Default::default()
    })
    .await
    .expect("purge");
    assert_eq!(
        vector_rows_mismatch(&server).await,
        (4, 0, 0),
        "after a correction, a tombstone and a purge"
    );
}

/// The scope's generation (migration 0020): `None` when the scope has no row.
async fn scope_generation(server: &TestServer, user: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT generation FROM memory_scopes WHERE user_id = $1")
        .bind(user)
        .fetch_optional(server.pool())
        .await
        .expect("generation")
}

/// A memory's vector as stored.
async fn stored_vector(server: &TestServer, id: &str) -> Vec<f32> {
    let v: pgvector::Vector =
        sqlx::query_scalar("SELECT embedding FROM memory_vectors WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(server.pool())
            .await
            .expect("vector");
    v.to_vec()
}

/// An exact vector search answers from the server's copy of the scope's vectors once it saw
/// the scope's generation unchanged (`crate::vectors` in the store): the same memories in the
/// same order, with the same similarities (to the last bit or so), as Postgres's own scan. Each
/// write — a new memory, a tombstone, a corrected vector, a purge — gives the scope a new
/// generation in its transaction, so the very next search sees it; an expiry, which writes
/// nothing, is applied by the copy at search time; and a purged scope leaves no row behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_scopes_vectors_rank_as_postgres_and_follow_every_write() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let server = TestServer::start_with(|c| c.worker_embedded = false, Some(clock.clone())).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let tenant: uuid::Uuid = tenant.parse().expect("tenant id");
    let mut m = client.memory();
    let mut taught = Vec::new();
    for i in 0..40 {
        let content = format!(
            "Note {i}: keeps {} in the {} on {}",
            ["bees", "books", "tools", "plants", "letters"][i % 5],
            ["garden", "attic", "garage", "kitchen"][i % 4],
            ["Mondays", "weekends", "holidays"][i % 3]
        );
        taught.push(memoire_tests::teach(&client, fact("u", &content)).await.id);
    }
    let in_an_hour = clock.now() + chrono::Duration::hours(1);
    let expiring = m
        .teach(pb::TeachRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: in_an_hour.timestamp(),
                nanos: 0,
            }),
            ..fact("u", "Is visiting Lisbon this week")
        })
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("memory")
        .id;
    let postgres = memoire_store::SearchSettings {
        model: server.config.embedding_model.clone(),
        dims: server.config.embedding_dims,
        exact_search_max_scope: 10_000,
        exact_text_max_scope: 10_000,
        vector_cache_bytes: 0,
    };
    let copies = memoire_store::SearchSettings {
        vector_cache_bytes: 64 << 20,
        ..postgres.clone()
    };
    // The vector search's hits (no word of the query is in any memory), best first.
    let near = |vector: Vec<f32>, vs: memoire_store::SearchSettings| {
        let server = &server;
        async move {
            let q = memoire_core::command::RecallQuery {
                candidates: 20,
                ..memoire_core::command::RecallQuery::new(
                    tenant,
                    "u".into(),
                    "default".into(),
                    "zzyzx".into(),
                )
            };
            let mut hits: Vec<(u32, String, f32)> = server
                .store
                .recall_candidates(&q, |_| std::future::ready(Ok(Some(vector.clone()))), &vs)
                .await
                .expect("recall")
                .into_iter()
                .filter_map(|c| {
                    c.vector_rank
                        .map(|r| (r, c.item.id().to_string(), c.vector_score))
                })
                .collect();
            hits.sort_by_key(|h| h.0);
            hits.into_iter()
                .map(|(_, id, s)| (id, s))
                .collect::<Vec<_>>()
        }
    };
    let searched = r#"memoire_recall_vector_copies_total{outcome="searched"}"#;
    let same = |a: &[(String, f32)], b: &[(String, f32)], what: &str| {
        let ids = |x: &[(String, f32)]| x.iter().map(|h| h.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(a), ids(b), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!((x.1 - y.1).abs() <= 1e-6, "{what}: {} against {}", x.1, y.1);
        }
    };
    // Queries: pseudo-random directions, and a memory's own vector.
    let mut seed = 7u64;
    let mut queries: Vec<Vec<f32>> = (0..3)
        .map(|_| {
            (0..postgres.dims)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        })
        .collect();
    queries.push(stored_vector(&server, &taught[7]).await);
    // A scope larger than the budget is searched in Postgres (the process's other tests may
    // count copies meanwhile: the answer is what is checked here).
    let small = memoire_store::SearchSettings {
        vector_cache_bytes: 10_000,
        ..postgres.clone()
    };
    for _ in 0..3 {
        let truth = near(queries[0].clone(), postgres.clone()).await;
        same(
            &near(queries[0].clone(), small.clone()).await,
            &truth,
            "over budget",
        );
    }
    let before = server.metric(searched).await;
    for v in &queries {
        let truth = near(v.clone(), postgres.clone()).await;
        assert_eq!(truth.len(), 20);
        // The first search sees the generation, the second reads the copy, the third uses it.
        for round in 0..3 {
            same(
                &near(v.clone(), copies.clone()).await,
                &truth,
                &format!("round {round}"),
            );
        }
    }
    assert!(
        server.metric(searched).await >= before + 2.0 * queries.len() as f64,
        "the copies answered"
    );
    let mine = stored_vector(&server, &taught[7]).await;
    assert_eq!(near(mine.clone(), copies.clone()).await[0].0, taught[7]);

    // A new memory.
    let generation = scope_generation(&server, "u").await.expect("a row");
    let new = memoire_tests::teach(&client, fact("u", "Collects old maps of harbours"))
        .await
        .id;
    assert!(scope_generation(&server, "u").await > Some(generation));
    let newest = stored_vector(&server, &new).await;
    for _ in 0..3 {
        assert_eq!(
            near(newest.clone(), copies.clone()).await[0].0,
            new,
            "a new memory"
        );
    }
    // A tombstone.
    m.forget(pb::ForgetRequest {
        memory_ids: vec![new.clone()],
        ..Default::default()
    })
    .await
    .expect("forget");
    for _ in 0..3 {
        let hits = near(newest.clone(), copies.clone()).await;
        assert!(hits.iter().all(|h| h.0 != new), "a forgotten memory");
    }
    // A corrected text, so a new vector.
    m.teach(pb::TeachRequest {
        user_id: "u".into(),
        memory_id: Some(taught[7].clone()),
        content: "Sails a small boat around the fjord".into(),
        ..Default::default()
    })
    .await
    .expect("correct");
    let corrected = stored_vector(&server, &taught[7]).await;
    assert_ne!(corrected, mine);
    for _ in 0..3 {
        let hits = near(corrected.clone(), copies.clone()).await;
        assert_eq!(hits[0].0, taught[7], "the corrected vector");
        assert!(hits[0].1 > 0.999);
        let old = near(mine.clone(), copies.clone()).await;
        assert!(
            old.iter().all(|h| h.0 != taught[7] || h.1 < 0.99),
            "the old vector is gone"
        );
    }
    // An expiry: nothing is written, the copy applies it.
    let lisbon = stored_vector(&server, &expiring).await;
    for _ in 0..3 {
        assert_eq!(near(lisbon.clone(), copies.clone()).await[0].0, expiring);
    }
    let generation = scope_generation(&server, "u").await;
    let before = server.metric(searched).await;
    clock.advance(chrono::Duration::hours(2));
    let hits = near(lisbon.clone(), copies.clone()).await;
    assert!(hits.iter().all(|h| h.0 != expiring), "an expired memory");
    assert_eq!(scope_generation(&server, "u").await, generation);
    assert!(server.metric(searched).await > before, "from the copy");
    for v in &queries {
        same(
            &near(v.clone(), copies.clone()).await,
            &near(v.clone(), postgres.clone()).await,
            "after the writes",
        );
    }

    // A purge leaves no row naming the user; a new memory starts a new generation.
    let generation = scope_generation(&server, "u").await.expect("a row");
    m.forget(memoire_tests::purge_user("u"))
        .await
        .expect("purge");
    assert_eq!(scope_generation(&server, "u").await, None);
    assert!(near(lisbon.clone(), copies.clone()).await.is_empty());
    memoire_tests::teach(&client, fact("u", "Starts again")).await;
    assert!(scope_generation(&server, "u").await > Some(generation));
}

/// A job that writes memories without the user's lock (expiry, decay) never waits for a scope's
/// generation row: a writer holding that row (from its first vector write to its commit) may
/// next wait for one of the job's rows, and a job waiting for the row would close a deadlock.
/// The job leaves the busy scope's rows for its next run and writes the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_leave_a_scope_a_writer_holds_instead_of_waiting_for_it() {
    use sqlx::Connection as _;
    let server = TestServer::start_with(no_worker, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut ids = Vec::new();
    for (user, content) in [
        ("busy", "Keeps bees in the garden"),
        ("busy", "Plays chess on Sundays"),
        ("idle", "Collects old maps"),
    ] {
        ids.push(memoire_tests::teach(&client, fact(user, content)).await.id);
    }
    // Expired an hour ago, as written by a Teach that set its expiry.
    let mut setup = every_tenant_conn(&server).await;
    sqlx::query(
        "UPDATE memories SET expires_at = now() - interval '1 hour' WHERE id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .execute(&mut setup)
    .await
    .expect("expire");
    // A writer of "busy" holds the scope's generation row (a vector write to its other memory).
    let mut writer = every_tenant_conn(&server).await;
    let mut tx = writer.begin().await.expect("begin");
    sqlx::query("UPDATE memories SET confidence = 0.9 WHERE id = $1::uuid")
        .bind(&ids[1])
        .execute(&mut *tx)
        .await
        .expect("hold the scope");
    let sweep = tokio::time::timeout(Duration::from_secs(10), server.store.expire_due(500))
        .await
        .expect("the sweep waited for the writer")
        .expect("sweep");
    assert_eq!(sweep, 1, "only the idle scope's memory");
    let decay = tokio::time::timeout(
        Duration::from_secs(10),
        server.store.decay(
            &JobScope {
                tenant_id: None,
                user_id: Some("busy".into()),
            },
            Duration::from_secs(3600),
            0.0,
        ),
    )
    .await
    .expect("decay waited for the writer")
    .expect("decay");
    assert_eq!(decay.report["decayed"], 0, "{:?}", decay.report);
    // The writer goes on to the job's row, which is free, and commits.
    sqlx::query("UPDATE memories SET importance = 0.7 WHERE id = $1::uuid")
        .bind(&ids[0])
        .execute(&mut *tx)
        .await
        .expect("the writer's next row");
    tx.commit().await.expect("commit");
    assert_eq!(server.store.expire_due(500).await.expect("sweep"), 2);
}
