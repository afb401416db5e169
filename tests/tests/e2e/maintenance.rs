//! The periodic jobs, triggered through `AdminService.RunMaintenance`, with a clock the tests
//! move instead of sleeping: decay, retention, optimize, re-embed, and reflect (consolidation).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use memoire_core::clock::ManualClock;
use memoire_sdk::Client;
use memoire_tests::{TestServer, fact, proto as pb, teach};
use serde_json::Value;

async fn run(server: &TestServer, tenant: &str, job: pb::MaintenanceJob) -> Value {
    let r = server
        .admin()
        .admin()
        .run_maintenance(pb::RunMaintenanceRequest {
            job: job as i32,
            tenant_id: tenant.into(),
            wait: true,
            ..Default::default()
        })
        .await
        .expect("run maintenance")
        .into_inner();
    assert!(r.finished);
    serde_json::from_str(&r.result_json).expect("result json")
}

async fn recall_contents(client: &Client, user: &str, query: &str) -> Vec<String> {
    client
        .memory()
        .recall(pb::RecallRequest {
            user_id: user.into(),
            query: query.into(),
            k: 20,
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner()
        .items
        .into_iter()
        .filter_map(|i| match i.item {
            Some(pb::recall_item::Item::Memory(m)) => Some(m.content),
            _ => None,
        })
        .collect()
}

async fn confidence(server: &TestServer, id: &str) -> f32 {
    sqlx::query_scalar("SELECT confidence FROM memories WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(server.pool())
        .await
        .expect("confidence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decay_halves_confidence_per_half_life_is_idempotent_and_spares_pinned() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let server =
        TestServer::start_with(|c| c.decay_half_life_days = 30.0, Some(clock.clone())).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    let plain = teach(&client, fact("u", "Has a vintage bicycle")).await;
    let pinned = teach(
        &client,
        pb::TeachRequest {
            pinned: Some(true),
            ..fact("u", "Has a vintage camera")
        },
    )
    .await;

    clock.advance(TimeDelta::days(30));
    let r = run(&server, &tenant, pb::MaintenanceJob::Decay).await;
    assert_eq!(r["decayed"], 1, "{r}");
    assert!((confidence(&server, &plain.id).await - 0.5).abs() < 1e-3);
    assert_eq!(
        confidence(&server, &pinned.id).await,
        1.0,
        "pinned memories never decay"
    );
    // Running again at the same instant changes nothing; later runs compound to the same value
    // as one run would.
    run(&server, &tenant, pb::MaintenanceJob::Decay).await;
    assert!((confidence(&server, &plain.id).await - 0.5).abs() < 1e-3);
    clock.advance(TimeDelta::days(15));
    run(&server, &tenant, pb::MaintenanceJob::Decay).await;
    clock.advance(TimeDelta::days(15));
    let r = run(&server, &tenant, pb::MaintenanceJob::Decay).await;
    assert_eq!(r["below_floor"], 0);
    assert!((confidence(&server, &plain.id).await - 0.25).abs() < 1e-3);
    assert!(
        recall_contents(&client, "u", "vintage bicycle")
            .await
            .contains(&plain.content)
    );

    // Below the floor (0.2): out of recall, kept in history with a decay version.
    clock.advance(TimeDelta::days(30));
    let r = run(&server, &tenant, pb::MaintenanceJob::Decay).await;
    assert_eq!(r["below_floor"], 1, "{r}");
    let found = recall_contents(&client, "u", "vintage bicycle").await;
    assert!(!found.contains(&plain.content), "{found:?}");
    assert!(
        found.contains(&pinned.content)
            || recall_contents(&client, "u", "vintage camera")
                .await
                .contains(&pinned.content)
    );
    let history = client
        .memory()
        .history(pb::HistoryRequest {
            memory_id: plain.id.clone(),
        })
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(history.last().expect("v").basis, pb::Basis::Decay as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_applies_each_tenants_policy_and_never_touches_pinned_memories() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let server = TestServer::start_with(|_| {}, Some(clock.clone())).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    let (other_tenant, other) = server.tenant("keeps-all", pb::KeyRole::Writer).await;
    for c in [&client, &other] {
        c.memory()
            .ingest(pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![pb::Message {
                    role: pb::MessageRole::User as i32,
                    content: "I live in Bergen.".into(),
                    ..Default::default()
                }],
                wait_for_extraction: true,
                ..Default::default()
            })
            .await
            .expect("ingest");
    }
    let old = teach(&client, fact("u", "Once owned a red kayak")).await;
    let pinned = teach(
        &client,
        pb::TeachRequest {
            pinned: Some(true),
            ..fact("u", "Blood type is O negative")
        },
    )
    .await;
    let t = server
        .admin()
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            episode_retention_days: Some(30),
            memory_retention_days: Some(60),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(
        (t.episode_retention_days, t.memory_retention_days),
        (30, 60)
    );

    clock.advance(TimeDelta::days(31));
    let r = run(&server, &tenant, pb::MaintenanceJob::Retention).await;
    assert_eq!(
        (
            r["episodes_deleted"].as_u64(),
            r["expired_by_policy"].as_u64()
        ),
        (Some(1), Some(0)),
        "{r}"
    );
    clock.advance(TimeDelta::days(30));
    let r = run(&server, &tenant, pb::MaintenanceJob::Retention).await;
    assert!(r["expired_by_policy"].as_u64() >= Some(2), "{r}");
    let status = |id: String| {
        let pool = server.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM memories WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("status")
        }
    };
    assert_eq!(status(old.id.clone()).await, "expired");
    assert_eq!(
        status(pinned.id.clone()).await,
        "active",
        "pinned memories never expire by policy"
    );
    let (mine, theirs): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE tenant_id = $1::uuid), count(*) FILTER (WHERE tenant_id = $2::uuid) FROM episodes",
    )
    .bind(&tenant)
    .bind(&other_tenant)
    .fetch_one(server.pool())
    .await
    .expect("episodes");
    assert_eq!(
        (mine, theirs),
        (0, 1),
        "only the tenant with a policy loses episodes"
    );
    // The extracted memory no longer points at the deleted episode.
    let dangling: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memories m WHERE tenant_id = $1::uuid AND cardinality(source_episode_ids) > 0",
    )
    .bind(&tenant)
    .fetch_one(server.pool())
    .await
    .expect("provenance");
    assert_eq!(dangling, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_promotes_what_is_recalled_and_demotes_what_went_stale() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let server = TestServer::start_with(|_| {}, Some(clock.clone())).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    let often = teach(&client, fact("u", "Commutes by ferry across the fjord")).await;
    let stale = teach(
        &client,
        pb::TeachRequest {
            kind: pb::MemoryKind::Preference as i32,
            importance: Some(0.7),
            ..fact("u", "Prefers window seats on trains")
        },
    )
    .await;
    let conscious = |client: Client| async move {
        client
            .memory()
            .conscious(pb::ConsciousRequest {
                user_id: "u".into(),
                ..Default::default()
            })
            .await
            .expect("conscious")
            .into_inner()
            .context
    };
    let before = conscious(client.clone()).await;
    assert!(
        before.contains("window seats") && !before.contains("ferry"),
        "{before}"
    );
    for _ in 0..4 {
        recall_contents(&client, "u", "how does the user commute by ferry").await;
    }
    // Access statistics are written after each reply.
    for _ in 0..50 {
        let n: i64 = sqlx::query_scalar("SELECT access_count FROM memories WHERE id = $1::uuid")
            .bind(&often.id)
            .fetch_one(server.pool())
            .await
            .expect("count");
        if n >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clock.advance(TimeDelta::days(1));
    let r = run(&server, &tenant, pb::MaintenanceJob::Optimize).await;
    assert_eq!(r["promoted"], 1, "{r}");
    let after = conscious(client.clone()).await;
    assert!(
        after.contains("ferry"),
        "often recalled: promoted ({after})"
    );

    clock.advance(TimeDelta::days(100));
    let r = run(&server, &tenant, pb::MaintenanceJob::Optimize).await;
    assert_eq!(r["demoted"], 2, "both went stale: {r}");
    let after = conscious(client.clone()).await;
    assert!(
        !after.contains("window seats") && !after.contains("ferry"),
        "{after}"
    );
    let _ = stale;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reembed_replaces_vectors_of_another_model_while_recall_keeps_working() {
    let server = TestServer::start().await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    let bees = teach(&client, fact("u", "Keeps bees on the rooftop")).await;
    let cello = teach(&client, fact("u", "Plays the cello in an orchestra")).await;
    // As if they had been embedded by a model used before this one.
    sqlx::query("UPDATE memories SET embedding_model = 'old-model-384' WHERE id = $1::uuid")
        .bind(&bees.id)
        .execute(server.pool())
        .await
        .expect("age the vector");

    // Mid-way: the old vector is never compared with the new model's query vectors, so a
    // paraphrase without shared words finds only the re-embedded memory ...
    let paraphrase = recall_contents(&client, "u", "apiary honey insects").await;
    assert!(!paraphrase.contains(&bees.content), "{paraphrase:?}");
    // ... while full text still finds the other one.
    assert!(
        recall_contents(&client, "u", "bees rooftop")
            .await
            .contains(&bees.content)
    );
    assert!(
        recall_contents(&client, "u", "musical instrument")
            .await
            .contains(&cello.content)
    );

    let r = run(&server, &tenant, pb::MaintenanceJob::Reembed).await;
    assert_eq!(r["memories"], 1, "{r}");
    let paraphrase = recall_contents(&client, "u", "apiary honey insects").await;
    assert!(paraphrase.first() == Some(&bees.content), "{paraphrase:?}");
    let r = run(&server, &tenant, pb::MaintenanceJob::Reembed).await;
    assert_eq!(r["memories"], 0, "idempotent: {r}");
}

const FACTS: [(&str, &str); 5] = [
    ("I live in Porto, near the river.", "Porto"),
    ("My sister is called Ines.", "Ines"),
    ("I'm allergic to penicillin.", "penicillin"),
    ("I work at Siemens as an engineer.", "Siemens"),
    ("I love hiking in the mountains.", "hiking"),
];

/// A long conversation: the five facts among small talk and long assistant replies.
fn conversation() -> Vec<pb::Message> {
    let small_talk = [
        "What's the weather going to be like tomorrow?",
        "Can you recommend a good movie for tonight?",
        "Tell me a joke about computers.",
        "How long should I boil an egg?",
        "What's a good name for a goldfish?",
        "Thanks, that's helpful!",
    ];
    let mut out = Vec::new();
    let mut fact = FACTS.iter();
    for i in 0..30 {
        let user = if i % 6 == 3 {
            fact.next()
                .map(|f| f.0)
                .unwrap_or(small_talk[i % small_talk.len()])
        } else {
            small_talk[i % small_talk.len()]
        };
        out.push(pb::Message {
            role: pb::MessageRole::User as i32,
            content: user.into(),
            ..Default::default()
        });
        out.push(pb::Message {
            role: pb::MessageRole::Assistant as i32,
            content: format!(
                "That's a great question, and I'm happy to help with it. Here is a detailed \
                 answer with a few suggestions you might like, number {i}, and some background \
                 that explains why, so that you can decide for yourself what suits you best."
            ),
            ..Default::default()
        });
    }
    out
}

async fn ingest_conversation(client: &Client) {
    client
        .memory()
        .ingest(pb::IngestRequest {
            user_id: "u".into(),
            session_id: "long-chat".into(),
            messages: conversation(),
            ..Default::default()
        })
        .await
        .expect("ingest");
}

/// The smallest packed context (in tokens) of a Recall that holds every fact.
async fn tokens_for_all_facts(client: &Client, include_episodes: bool) -> Option<u32> {
    for budget in (50..=6000).step_by(50) {
        let r = client
            .memory()
            .recall(pb::RecallRequest {
                user_id: "u".into(),
                query: "What do we know about the user: home, family, health, work, hobbies?"
                    .into(),
                k: 100,
                token_budget: budget,
                include_episodes: Some(include_episodes),
                ..Default::default()
            })
            .await
            .expect("recall")
            .into_inner();
        if FACTS.iter().all(|(_, marker)| r.context.contains(marker)) {
            return Some(r.context_tokens);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflect_distills_a_session_so_recall_needs_fewer_tokens_for_the_same_facts() {
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false; // no extraction: raw turns are all there is to recall
            c.reflect_idle_secs = 0;
        },
        None,
    )
    .await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    ingest_conversation(&client).await;
    // Embed the turns (what the worker's embedding loop does), without extracting memories.
    let store = server.usecases().await;
    let policy = memoire_usecases::RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
    };
    while store
        .embed_pending_episodes(64, &policy)
        .await
        .expect("embed")
        > 0
    {}
    let raw = tokens_for_all_facts(&client, true)
        .await
        .expect("raw turns hold every fact at some budget");

    let r = run(&server, &tenant, pb::MaintenanceJob::Reflect).await;
    assert_eq!(r["created"], 1, "{r}");
    let again = run(&server, &tenant, pb::MaintenanceJob::Reflect).await;
    assert_eq!(
        (again["created"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(1)),
        "idempotent: {again}"
    );
    let content: String = sqlx::query_scalar("SELECT content FROM memories WHERE kind = 'summary'")
        .fetch_one(server.pool())
        .await
        .expect("summary content");
    assert!(
        FACTS.iter().all(|(_, marker)| content.contains(marker)),
        "{content}"
    );
    let summarized = tokens_for_all_facts(&client, false)
        .await
        .expect("the summary holds every fact");
    println!("tokens to recall all five facts: raw turns {raw}, session summary {summarized}");
    assert!(
        summarized * 2 < raw,
        "summary {summarized} tokens vs raw turns {raw}"
    );

    let summary: (String, i64) = sqlx::query_as(
        "SELECT m.kind, (SELECT count(*) FROM edges e WHERE e.src_id = m.id AND e.relation = 'summarizes') \
         FROM memories m WHERE m.kind = 'summary'",
    )
    .fetch_one(server.pool())
    .await
    .expect("summary");
    assert_eq!(
        summary,
        ("summary".into(), 60),
        "provenance edges to every turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_llm_reflect_writes_an_abstractive_summary_and_retries_a_failed_one() {
    use memoire_tests::fake_llm::{FakeLlm, Reply};
    use std::sync::atomic::{AtomicBool, Ordering};
    static BROKEN: AtomicBool = AtomicBool::new(true);
    // Summary requests carry no "LAST" turn; the model first answers nothing, then a summary.
    let fake = FakeLlm::start(|turn, _| {
        if !turn.is_empty() {
            return Reply::memories(serde_json::json!([]));
        }
        if BROKEN.load(Ordering::SeqCst) {
            Reply::Content("   ".into())
        } else {
            Reply::Content(
                "Dana lives in Porto, has a sister called Ines and is allergic to penicillin."
                    .into(),
            )
        }
    })
    .await;
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.reflect_idle_secs = 0;
            c.extractor = memoire_config::ExtractorKind::Llm;
            c.llm_base_url = fake.url.clone();
            c.llm_model = "fake".into();
            c.llm_max_retries = 0;
        },
        None,
    )
    .await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    ingest_conversation(&client).await;

    let r = run(&server, &tenant, pb::MaintenanceJob::Reflect).await;
    assert_eq!(
        (r["created"].as_u64(), r["failed"].as_u64()),
        (Some(0), Some(1)),
        "an empty summary is a failure: {r}"
    );
    BROKEN.store(false, Ordering::SeqCst);
    let r = run(&server, &tenant, pb::MaintenanceJob::Reflect).await;
    assert_eq!(r["created"], 1, "{r}");
    let content: String = sqlx::query_scalar("SELECT content FROM memories WHERE kind = 'summary'")
        .fetch_one(server.pool())
        .await
        .expect("summary");
    assert!(
        content.starts_with("Session long-chat (") && content.contains("sister called Ines"),
        "{content}"
    );
    let prompt =
        serde_json::to_string(&fake.requests().last().expect("request")["messages"]).expect("json");
    assert!(
        prompt.contains("My sister is called Ines.")
            && prompt.contains("You summarize a conversation")
    );
    // Covered already: the model is not asked again.
    let asked = fake.requests().len();
    let r = run(&server, &tenant, pb::MaintenanceJob::Reflect).await;
    assert_eq!(
        (r["unchanged"].as_u64(), fake.requests().len()),
        (Some(1), asked),
        "{r}"
    );
}

/// Planner statistics: tables that changed by more than autovacuum's rule allows since their last
/// analyze are analyzed by the worker's tick (this machine's Postgres runs with autovacuum off,
/// where an unanalyzed table once made BM25 scan a user's every posting), and then left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_planner_statistics_are_refreshed_once() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    for i in 0..80 {
        teach(&client, fact("u", &format!("Has visited city number {i}"))).await;
    }
    let analyzed = || async {
        let (manual, auto): (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables \
                 WHERE relname = 'memories' AND schemaname = current_schema()",
            )
            .fetch_one(server.pool())
            .await
            .expect("statistics");
        manual.or(auto)
    };
    // The writers' backends report their changes to the statistics system within seconds;
    // autovacuum, where it is on, may analyze first.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tables = server.store.analyze_stale_tables().await.expect("analyze");
        if tables.iter().any(|t| t == "memories") || analyzed().await.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "80 new memories never made the table's statistics stale"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(analyzed().await.is_some(), "memories was analyzed");
    let again = server.store.analyze_stale_tables().await.expect("analyze");
    assert!(
        !again.iter().any(|t| t == "memories"),
        "fresh statistics are left alone: {again:?}"
    );
}

/// The `optimize` runs recorded so far: (status, started_at, finished_at), in start order.
async fn optimize_runs(
    server: &TestServer,
) -> Vec<(String, chrono::DateTime<Utc>, Option<chrono::DateTime<Utc>>)> {
    sqlx::query_as(
        "SELECT status, started_at, finished_at FROM maintenance_runs \
         WHERE job = 'optimize' ORDER BY started_at",
    )
    .fetch_all(server.pool())
    .await
    .expect("maintenance runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_runs_on_its_cron_schedule_and_never_beside_another_run_of_itself() {
    // Every second: the schedule is apalis-cron's, the exclusion the job's advisory lock.
    let server = TestServer::start_with(|c| c.optimize_schedule = "* * * * * *".into(), None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Admin).await;
    teach(&client, fact("u", "My name is Ada")).await;

    // Another process runs the job (here: the test holds its lock).
    let mut elsewhere = server.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('job/optimize', 0))")
        .execute(&mut *elsewhere)
        .await
        .expect("take the job's lock");
    let before = optimize_runs(&server).await.len();
    let triggered = tokio::spawn({
        let admin = server.admin();
        let tenant = tenant.clone();
        async move {
            admin
                .admin()
                .run_maintenance(pb::RunMaintenanceRequest {
                    job: pb::MaintenanceJob::Optimize as i32,
                    tenant_id: tenant,
                    wait: true,
                    ..Default::default()
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        optimize_runs(&server).await.len(),
        before,
        "no run starts while the job runs elsewhere: the schedule's ticks are skipped"
    );
    assert!(!triggered.is_finished(), "RunMaintenance waits its turn");

    elsewhere.rollback().await.expect("release the lock");
    let answer = tokio::time::timeout(Duration::from_secs(10), triggered)
        .await
        .expect("RunMaintenance ran once the job was free")
        .expect("task")
        .expect("run maintenance")
        .into_inner();
    assert!(answer.finished);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let runs = optimize_runs(&server).await;
        // The triggered run, and at least two on the schedule.
        if runs.len() >= before + 3 && runs.iter().all(|r| r.0 == "done") {
            for pair in runs.windows(2) {
                let (_, _, first_end) = &pair[0];
                let (_, second_start, _) = &pair[1];
                assert!(
                    first_end.is_some_and(|end| end <= *second_start),
                    "two runs of one job overlapped: {runs:?}"
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule did not run the job: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
